"""INFO in front of Valkey: the default sections cost the same however many queues there are
(a `store` section from what the front end knows: no call to Valkey), and the sections
that walk the queues (`messages`, `keyspace`, `queues`) answer from the store when asked
for by name. INFO's sections with the embedded store are checked by test_operators.py."""

import contextlib
import time
from typing import Iterator

import pytest
import valkey
from valkey.exceptions import ResponseError

from support import ThreadedServer, ValkeyServerProcess, Wire, stats, wait_until
from valqd.store.url import parse_store_url
from valqd.store.valkey import VERSION
from valqd.store.valkey.store import ValkeyStore


@pytest.fixture(scope="module")
def frontend(valkey_server):
    with ThreadedServer(store=ValkeyStore(parse_store_url(valkey_server.url),
                                          test_clock=True)) as server:
        yield server


def test_default_info_shows_the_store_and_walks_no_queue(frontend):
    c = frontend.client()
    c.flushall()
    info = c.info()
    assert info["store"] == "valkey" and info["store_library_version"] == VERSION
    assert info["store_url"].startswith("unix://")
    for field in ("relay_queues", "relay_messages", "reaper_primaries", "reaper_calls",
                  "reaper_queues", "reaper_events"):
        assert isinstance(info[field], int), field
    wire = Wire(frontend.port)
    text = wire.call("INFO", "default").decode()
    assert "# Store" in text and "# Messages" not in text and "# Keyspace" not in text
    assert "# Commandstats" in wire.call("INFO", "all").decode()
    wire.sock.close()
    c.close()


def test_the_walking_sections_answer_from_the_store_by_name(frontend):
    c = frontend.client()
    c.flushall()
    c.execute_command("VALQ", "CREATE", "q", "MAXATTEMPTS", "1")
    c.execute_command("VALQ", "CREATE", "b")
    c.execute_command("VALQ", "MPUSH", "q", "a", "b", "c")
    c.execute_command("VALQ", "PUSH", "q", "later", "100")
    c.execute_command("VALQ", "PUSH", "q", "x")
    c.execute_command("VALQ", "POP", "q", "COUNT", "2")
    c.execute_command("VALQ", "NACK", "q", "2")
    three = frontend.client(db=3)
    three.execute_command("VALQ", "CREATE", "other")
    three.execute_command("VALQ", "PUSH", "other", "o")
    assert c.info("messages") == {"queues": 3, "messages": 6, "messages_ready": 3,
                                  "messages_inflight": 1, "messages_delayed": 1,
                                  "messages_dlq": 1}
    assert c.info("keyspace") == {"db0": {"keys": 2, "expires": 0, "avg_ttl": 0},
                                  "db3": {"keys": 1, "expires": 0, "avg_ttl": 0}}
    assert c.info("queues") == {
        "queue0": {"name": "b", "msgs": 0, "ready": 0, "inflight": 0, "delayed": 0, "dlq": 0},
        "queue1": {"name": "q", "msgs": 3, "ready": 2, "inflight": 1, "delayed": 1, "dlq": 1}}
    assert three.info("queues") == {"queue0": {"name": "other", "msgs": 1, "ready": 1,
                                               "inflight": 0, "delayed": 0, "dlq": 0}}
    everything = c.info("everything")
    assert everything["queue1"]["name"] == "q" and everything["queues"] == 3
    assert everything["store"] == "valkey"
    # a walk has several steps: not in MULTI (the default sections are)
    pipe = c.pipeline(transaction=True)
    pipe.execute_command("INFO")
    pipe.execute_command("INFO", "messages")
    default, walked = pipe.execute(raise_on_error=False)
    assert default["store"] == "valkey"
    assert isinstance(walked, ResponseError) and "a transaction cannot hold" in str(walked)
    c.close()
    three.close()


def test_an_unreachable_store_fails_only_the_walking_sections(tmp_path):
    valkey_ = ValkeyServerProcess(tmp_path / "v", True).start()
    store = ValkeyStore(parse_store_url(valkey_.url), timeout_s=0.5, test_clock=True)
    try:
        with ThreadedServer(store=store) as server:
            c = server.client()
            valkey_.stop()
            assert c.info()["store"] == "valkey"
            started = time.monotonic()
            with pytest.raises(ResponseError, match="TRYAGAIN .*unreachable"):
                c.info("keyspace")
            assert time.monotonic() - started < 3
            c.close()
    finally:
        valkey_.stop()


def test_the_embedded_store_names_itself():
    with ThreadedServer() as server:
        c = server.client()
        assert c.info("store") == {"store": "embedded"}
        assert "store" not in c.info()  # not among the embedded store's default sections
        c.close()


# -- the HTTP listener in store mode (the JSON API runs on both stores: test_http_api.py) --------

def http_pop_that_waits(port: int) -> Wire:
    """A connection whose `POST /api/queues/q/pop` waits for a message (block_ms 0)."""
    payload = b'{"block_ms": 0}'
    pop = Wire(port)
    pop.send(b"POST /api/queues/q/pop HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
             % (len(payload), payload))
    return pop


@contextlib.contextmanager
def http_store_server(valkey_server: ValkeyServerProcess) -> Iterator[tuple[int, valkey.Valkey]]:
    """A server on the Valkey store with its HTTP listener, and queue `q`: (HTTP port, a
    client of it)."""
    from http_support import free_port
    port = free_port()
    store = ValkeyStore(parse_store_url(valkey_server.url), test_clock=True)
    with ThreadedServer(store=store, **{"http-port": str(port)}) as server:
        c = server.client()
        c.flushall()
        c.execute_command("VALQ", "CREATE", "q")
        yield port, c


def test_metrics_have_the_process_figures_only_and_a_waiting_request_ends_with_the_server(
        valkey_server):
    from http_support import Api
    with http_store_server(valkey_server) as (port, c):
        api = Api(port)
        body = api.get("/metrics").body.decode()
        assert "valqd_info{" in body and "valqd_connected_clients" in body
        assert "valqd_queues" not in body and "valqd_messages" not in body
        waiting = http_pop_that_waits(port)  # in one of the HTTP threads
        wait_until(lambda: stats(c)["blocked"] == 1, what="the HTTP pop waits")
        api.close()
        c.close()
    # the server stopped without waiting for the pop (the test got here); what the request
    # saw: a 500 when the answer made it out before the event loop stopped, else nothing
    waiting.sock.settimeout(1)
    try:
        answer = waiting.sock.recv(4096)
    except OSError:  # (socket.timeout) an in-process server's socket outlives its loop
        answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 500"), answer
    waiting.sock.close()


def test_the_health_route_answers_while_every_http_thread_waits(valkey_server):
    from http_support import Api
    from valqd.store.bridge import HTTP_THREADS
    with http_store_server(valkey_server) as (port, c):
        pops = [http_pop_that_waits(port) for _ in range(HTTP_THREADS)]  # every thread
        wait_until(lambda: stats(c)["blocked"] == HTTP_THREADS, what="every thread waits")
        api = Api(port)
        assert api.get("/healthz").status == 200
        assert api.get("/nowhere").status == 404
        c.execute_command("VALQ", "MPUSH", "q", *["m"] * HTTP_THREADS)
        for pop in pops:
            assert pop.raw(15) == b"HTTP/1.1 200 OK"
            pop.sock.close()
        assert api.get("/api/queues/q").json["inflight"] == HTTP_THREADS
        api.close()
        c.close()
