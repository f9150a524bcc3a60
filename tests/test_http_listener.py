"""The HTTP listener locked as the RESP one: loopback unless told otherwise, the password
when one is set, its connections counted against maxclients, half-sent and idle requests
timed out (1,100 half-open requests do not use up the descriptors), `metrics-port` kept as
another name for `http-port`."""

import resource
import socket
import time

import pytest

from http_support import Api, http_valqd, raw_exchange, status_of
from support import ThreadedServer, Wire, wait_until
from valqd.config import Config, parse_command_line
from test_security import netns, remote  # noqa: F401 - the fixture and its client


def test_http_port_and_its_old_name():
    assert Config({"metrics-port": "9100"})["http-port"] == 9100
    values, *_ = parse_command_line(["--metrics-port", "9101"])
    assert values == {"http-port": "9101"}
    assert Config()["http-port"] == 0  # off unless asked for
    assert Config()["http-bind"] == "127.0.0.1"


def test_listener_binds_loopback_even_when_resp_binds_everything():
    from http_support import free_port
    port = free_port()
    with ThreadedServer(bind="0.0.0.0", **{"http-port": str(port)}) as server:
        names = [s.getsockname() for listener in server.server._listeners
                 for s in listener.sockets]
        assert ("127.0.0.1", port) in names
        assert ("0.0.0.0", port) not in names
        assert Api(port).get("/healthz").status == 200


def test_protected_mode_refuses_a_remote_http_client(tmp_path, netns):  # noqa: F811
    process, port = http_valqd(tmp_path / "pm", "--http-bind", "0.0.0.0")
    try:
        data, closed = remote(netns, port, "GET /healthz HTTP/1.1\r\nHost: 10.0.0.1\r\n")
        assert closed and status_of(data) == 403
        assert b"protected mode" in data
        assert Api(port).get("/healthz").status == 200  # loopback is welcome
    finally:
        process.stop()


# -- the password ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    process, port = http_valqd(tmp_path_factory.mktemp("locked"), "--requirepass", "s3cret")
    yield port
    process.stop()


def test_every_route_but_healthz_needs_the_password(locked):
    api = Api(locked)
    assert api.get("/healthz").json == {"status": "ok"}
    for method, path in (("GET", "/"), ("GET", "/metrics"), ("GET", "/api/openapi.json"),
                         ("GET", "/api/queues"), ("PUT", "/api/queues/q"),
                         ("POST", "/api/queues/q/messages"), ("GET", "/dashboard.js")):
        reply = api.request(method, path, {} if method != "GET" else None)
        assert (reply.status, reply.json["error"]) == (401, "NOAUTH"), (method, path)
        assert reply.headers["WWW-Authenticate"].startswith('Basic realm="valqd"')
    assert api.get("/api/queues/nope").status == 401  # nothing about queues leaks


@pytest.mark.parametrize("auth", ["s3cret", ("default", "s3cret")], ids=["bearer", "basic"])
def test_the_password_opens_every_route(locked, auth):
    api = Api(locked, auth)
    assert api.put("/api/queues/q").status in (200, 201)
    assert api.post("/api/queues/q/messages", {"body": "x"}).status == 201
    assert api.get("/metrics").status == 200
    assert api.get("/").status == 200
    # with a password, any Host is fine: a rebinding page cannot know the password
    assert api.get("/api/queues/q", headers={"Host": "queues.example"}).status == 200


@pytest.mark.parametrize("header", ["Bearer wrong", "Basic " + "ZGVmYXVsdDp3cm9uZw==",
                                    "Basic !!!", "Basic bm9jb2xvbg==", "Digest x"])
def test_wrong_credentials_are_refused(locked, header):
    reply = Api(locked).get("/api/queues", headers={"Authorization": header})
    assert reply.status == 401
    assert reply.json["error"] in ("WRONGPASS", "NOAUTH")


def test_credentials_a_server_without_password_does_not_need(tmp_path):
    process, port = http_valqd(tmp_path / "open")
    try:
        assert Api(port, "anything").get("/api/queues").status == 200
    finally:
        process.stop()


# -- connections: maxclients and timeouts -----------------------------------------------------

def test_http_connections_count_against_maxclients(tmp_path):
    process, port = http_valqd(tmp_path / "max", "--maxclients", "3")
    try:
        held = [Api(port) for _ in range(3)]
        for api in held:
            assert api.get("/healthz").status == 200  # connected and kept alive
        refused = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status_of(refused) == 503 and b"max number of clients reached" in refused
        assert Wire(process.port).reply() == "ERR max number of clients reached"
        held.pop().close()

        def resp_served() -> bool:
            try:
                return Wire(process.port).call("PING") == b"PONG"
            except ConnectionError:
                return False
        wait_until(resp_served, what="a slot for a RESP client")
    finally:
        process.stop()


def test_half_sent_and_idle_requests_time_out(tmp_path):
    process, port = http_valqd(tmp_path / "slow", "--http-timeout", "1")
    try:
        started = time.monotonic()
        half = socket.create_connection(("127.0.0.1", port), timeout=10)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        dripping = socket.create_connection(("127.0.0.1", port), timeout=10)
        answer = b""
        for byte in b"POST /api/queues/q/pause HTTP/1.1\r\nHost: 127.0.0.1\r\n":
            try:
                dripping.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)  # a slow client: drip-feeding does not reset the clock
        while chunk := half.recv(65536):
            answer += chunk
        assert status_of(answer) == 408
        assert 0.9 <= time.monotonic() - started < 5
        assert idle.recv(65536) == b""  # closed without a word: nothing was asked
        drip_answer = b""
        try:
            while chunk := dripping.recv(65536):
                drip_answer += chunk
        except ConnectionResetError:
            pass
        assert drip_answer == b"" or status_of(drip_answer) == 408
        # a keep-alive client is closed after http-timeout of silence between requests
        api = Api(port)
        assert api.get("/healthz").status == 200
        sock = api.conn.sock
        sock.settimeout(5)
        assert sock.recv(65536) == b""
    finally:
        process.stop()


def test_a_flood_of_half_open_requests_does_not_exhaust_descriptors(tmp_path):
    """1,100 half-sent requests against a server with 256 descriptors and maxclients 200:
    those over maxclients are refused at once, the others time out, and the RESP port
    serves again afterwards."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    process, port = http_valqd(tmp_path / "flood", "--maxclients", "200",
                               "--http-timeout", "2", preexec_fn=limit_files)
    sockets = []
    try:
        for _ in range(1100):
            s = socket.socket()
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            except OSError:
                pass  # already refused and closed
            sockets.append(s)
        statuses = []
        for s in sockets:
            s.settimeout(10)
            try:
                statuses.append(status_of(s.recv(200)))
            except (ConnectionResetError, socket.timeout, IndexError):
                statuses.append(0)
        # each was refused at once (maxclients) or timed out half-sent: none was left open
        assert set(statuses) == {503, 408}, sorted(set(statuses))
        def resp_served() -> bool:
            try:
                return Wire(process.port).call("PING") == b"PONG"
            except ConnectionError:
                return False
        wait_until(resp_served, timeout=15, what="the RESP port to serve again")
        assert process.proc.poll() is None
        assert "Too many open files" not in process.log()
    finally:
        for s in sockets:
            s.close()
        process.stop()


def test_acl_users_make_every_route_need_credentials(tmp_path):
    """The default user has no password, but other users exist: only credentials open the
    API (the read-only dashboard user here), and /healthz stays open."""
    process, port = http_valqd(tmp_path / "users", "--user", "dash on >d-pw ~* +@read",
                               "--user", "jobs on >j-pw ~jobs:* +@read")
    try:
        anonymous = Api(port)
        assert anonymous.get("/healthz").status == 200
        reply = anonymous.get("/api/queues")
        assert (reply.status, reply.json["error"]) == (401, "NOAUTH")
        assert Api(port, "d-pw").get("/api/queues").status == 401  # Bearer: default's password
        dash = Api(port, ("dash", "d-pw"))
        assert dash.get("/api/queues").json == {"queues": [], "cursor": "0"}
        assert dash.get("/").status == 200
        refused = dash.put("/api/queues/q")
        assert (refused.status, refused.json["error"]) == (403, "NOPERM")
        c = process.client()  # RESP's default user needs no password
        c.execute_command("VALQ", "CREATE", "jobs:a")
        c.execute_command("VALQ", "CREATE", "billing")
        c.close()
        assert [q["name"] for q in dash.get("/api/queues").json["queues"]] == \
            ["jobs:a", "billing"]
        jobs = Api(port, ("jobs", "j-pw"))
        assert [q["name"] for q in jobs.get("/api/queues").json["queues"]] == ["jobs:a"]
        assert jobs.get("/api/queues/billing").json["error"] == "NOPERM"
    finally:
        process.stop()
