"""The producer API (valqd.client) against a real valqd."""

import pytest
from valkey.exceptions import AuthenticationError, ResponseError

from support import ValqdProcess, as_map, valq
from valqd.client import Client, check_url, encode_body, settings_arguments


@pytest.fixture
def producer(valqd):
    with Client(f"valkey://127.0.0.1:{valqd.port}") as producer:
        producer.valkey.flushall()
        yield producer


def message(producer: Client, message_id: int) -> dict:
    return as_map(producer.command("GET", "q", message_id))


def test_create_update_stats_delete(producer):
    assert producer.create("q", visibility=7, max_attempts=3, retention=120,
                           backoff=("exponential", 2, 60), dedup_window=10, maxlen=100)
    s = producer.stats("q")
    assert (s["visibility_timeout"], s["max_delivery_attempts"], s["retention_period"],
            s["backoff"], s["dedup_window"], s["maxlen"]) == (7, 3, 120, "exponential 2 60",
                                                              10, 100)
    assert producer.create("q", exist_ok=True) is False
    assert producer.stats("q")["visibility_timeout"] == 7  # unchanged
    with pytest.raises(ResponseError, match="BUSYQUEUE"):
        producer.create("q")
    producer.update("q", visibility=9, backoff=("fixed", 5))
    s = producer.stats("q")
    assert (s["visibility_timeout"], s["max_delivery_attempts"], s["backoff"]) == (9, 3,
                                                                                  "fixed 5")
    producer.update("q", backoff="none")
    assert producer.stats("q")["backoff"] == "none"
    with pytest.raises(ValueError, match="at least one setting"):
        producer.update("q")
    producer.delete("q")
    with pytest.raises(ResponseError, match="NOQUEUE"):
        producer.stats("q")


def test_settings_arguments():
    assert settings_arguments() == []
    assert settings_arguments(visibility=5, backoff="none") == ["VISIBILITY", 5,
                                                                "BACKOFF", "none"]
    assert settings_arguments(maxlen=0, backoff=("fixed", 3)) == ["MAXLEN", 0, "BACKOFF",
                                                                  "fixed", 3]


def test_bodies_are_json_unless_bytes(producer):
    producer.create("q")
    first = producer.push("q", {"to": "ada", "n": [1, 2]})
    second = producer.push("q", b"\x00raw\xff")
    third = producer.push("q", "héllo")
    assert message(producer, first)[b"body"] == b'{"to":"ada","n":[1,2]}'
    assert message(producer, second)[b"body"] == b"\x00raw\xff"
    assert message(producer, third)[b"body"] == '"héllo"'.encode()
    assert encode_body(bytearray(b"ab")) == b"ab" and encode_body(None) == b"null"


def test_push_with_delay_priority_and_dedup(producer):
    producer.create("q")
    low = producer.push("q", "low")
    high = producer.push("q", "high", priority=5)
    later = producer.push("q", "later", delay=60)
    assert message(producer, later)[b"state"] == b"delayed"
    once = producer.push("q", "once", dedup="k1")
    assert producer.push("q", "again", dedup="k1") == once
    ready = [as_map(m)[b"id"] for m in producer.command("PEEK", "q", "READY")]
    assert ready == [str(i).encode() for i in (high, low, once)]


def test_push_many(producer):
    producer.create("q")
    assert producer.push_many("q", []) == []
    ids = producer.push_many("q", [{"n": n} for n in range(3)])
    assert ids == [1, 2, 3]
    assert message(producer, 3)[b"body"] == b'{"n":2}'
    later = producer.push_many("q", ["a", "b"], delay=30, priority=2)
    assert later == [4, 5]
    assert all(message(producer, i)[b"state"] == b"delayed" for i in later)
    assert as_map(producer.command("GET", "q", 4))[b"priority"] == b"2"
    with pytest.raises(ResponseError, match="NOQUEUE"):
        producer.push_many("nosuch", [1, 2])


def test_urls(valqd, tmp_path):
    for scheme in ("valkey", "redis"):
        with Client(f"{scheme}://127.0.0.1:{valqd.port}/0") as c:
            assert c.valkey.ping()
    with pytest.raises(ValueError, match="must start with one of"):
        Client("http://127.0.0.1:7400")
    assert check_url("VALKEYS://h:1") == "VALKEYS://h:1"
    server = ValqdProcess(tmp_path / "auth", "--requirepass", "s3cret").start()
    try:
        with Client(f"valkey://default:s3cret@127.0.0.1:{server.port}") as c:
            assert c.create("q")
        with Client(f"valkey://:s3cret@127.0.0.1:{server.port}") as c:
            assert c.push("q", 1) == 1
        with pytest.raises(AuthenticationError):
            Client(f"valkey://:wrong@127.0.0.1:{server.port}").push("q", 1)
    finally:
        server.kill()


def test_default_url_from_the_environment(valqd, monkeypatch):
    monkeypatch.setenv("VALQD_URL", f"valkey://127.0.0.1:{valqd.port}")
    with Client() as c:
        assert c.url == f"valkey://127.0.0.1:{valqd.port}"
        assert c.valkey.ping()
    monkeypatch.delenv("VALQD_URL")
    assert Client().url == "valkey://127.0.0.1:7400"


def test_resp3(valqd):
    with Client(f"valkey://127.0.0.1:{valqd.port}", protocol=3) as c:
        c.valkey.flushall()
        c.create("q", visibility=4)
        assert c.stats("q")["visibility_timeout"] == 4
        c.push("q", 1)
        assert valq(c.valkey, "POP", "q")[b"body"] == b"1"


def test_tls_with_valkeys_urls(tmp_path):
    """valkeys:// for the producer and the worker, with the TLS files as keyword options."""
    import threading

    from test_security import make_certificates, start_tls
    from test_worker import Serving
    from valqd.worker import Worker

    certs = tmp_path / "certs"
    make_certificates(certs)
    server, tls_port = start_tls(tmp_path / "valqd", certs, "yes")
    tls = {"ssl_ca_certs": str(certs / "ca.crt"), "ssl_certfile": str(certs / "client.crt"),
           "ssl_keyfile": str(certs / "client.key")}
    url = f"valkeys://localhost:{tls_port}"
    try:
        with Client(url, **tls) as producer:
            producer.create("q")
            producer.push("q", {"n": 1})
        got = threading.Event()
        worker = Worker(url, **tls)
        worker.add("q", lambda job: got.set())
        serving = Serving(worker)
        assert got.wait(20)
        assert serving.stop().done == 1
    finally:
        server.kill()
