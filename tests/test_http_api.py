"""The JSON API against a real valqd: the same queues as RESP, the same error codes, every
reply checked against the OpenAPI document the server serves."""

import base64
import json
import re
import threading
import time

import pytest

from http_support import Api, http_valqd, raw_exchange, status_of
from support import stats, valq, wait_until
from valqd.http.routes import ROUTES, STATUS_BY_CODE

jsonschema = pytest.importorskip("jsonschema", reason="pip install -e '.[test]' (jsonschema)")

RUN_ON_STORES = True  # and again with valqd in front of Valkey (conftest.py)


@pytest.fixture(scope="module")
def server(tmp_path_factory, store_valkey):
    store = () if store_valkey is None else ("--store", store_valkey.url)
    process, port = http_valqd(tmp_path_factory.mktemp("http"), *store)
    process.http_port = port
    yield process
    process.stop()


@pytest.fixture(scope="module")
def document(server):
    api = Api(server.http_port)
    doc = api.get("/api/openapi.json").json
    api.close()
    return doc


@pytest.fixture
def api(server, document):
    """A JSON client whose every reply is checked against the OpenAPI document."""
    server.client().flushall()
    client = CheckedApi(server.http_port, document)
    yield client
    client.close()


@pytest.fixture
def resp(server):
    c = server.client(protocol=3)
    yield c
    c.close()


def _route_of(method: str, path: str):
    segments = tuple(path.split("?")[0].strip("/").split("/")) if path != "/" else ()
    for route in ROUTES:
        if route.method == method and len(route.segments) == len(segments) and all(
                want.startswith("{") or want == got
                for want, got in zip(route.segments, segments)):
            return route
    return None


class CheckedApi(Api):
    """Every reply of a known route must be documented: its status among the operation's
    responses, its JSON valid against that response's schema, an error's code among the
    codes listed for its status."""

    def __init__(self, port, document, **kw):
        super().__init__(port, **kw)
        self.document = document
        self.seen: set[tuple[str, str, int]] = set()

    def request(self, method, path, body=None, headers=None, raw=None):
        reply = super().request(method, path, body, headers, raw)
        route = _route_of("GET" if method == "HEAD" else method, path)
        if route is None:
            return reply
        operation = self.document["paths"][route.path][route.method.lower()]
        documented = operation["responses"].get(str(reply.status))
        assert documented is not None, (method, path, reply.status, reply)
        if method != "HEAD" and reply.headers["Content-Type"] == "application/json":
            schema = documented["content"]["application/json"].get("schema")
            if schema is not None:
                resolver_doc = dict(schema, components=self.document["components"])
                jsonschema.validate(reply.json, resolver_doc)
            if reply.status >= 400:
                assert reply.json["error"] in documented["x-error-codes"] or \
                    reply.json["error"] == "ERR", (route.path, reply)
        self.seen.add((route.method, route.path, reply.status))
        return reply


# -- the document ---------------------------------------------------------------------------

def test_openapi_document_is_valid_and_lists_every_route(document):
    validator = pytest.importorskip("openapi_spec_validator",
                                    reason="pip install -e '.[test]' (openapi-spec-validator)")
    validator.validate(document)
    served = {(r.method.lower(), r.path) for r in ROUTES}
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert served == documented
    for code, status in STATUS_BY_CODE.items():
        assert 400 <= status < 600, code


# -- the same queues as RESP ----------------------------------------------------------------

def test_push_over_http_pop_over_resp_and_back(api, resp):
    assert api.put("/api/queues/jobs", {"visibility": 30}).status == 201
    reply = api.post("/api/queues/jobs/messages", {"body": "resize 42"})
    assert (reply.status, reply.json) == (201, {"id": 1})
    popped = valq(resp, "POP", "jobs")
    assert popped == {b"body": b"resize 42", b"id": b"1"}
    assert valq(resp, "ACK", "jobs", 1) == b"ack 1"
    assert valq(resp, "PUSH", "jobs", "from resp", "PRIORITY", "3") == b"2"
    reply = api.post("/api/queues/jobs/pop", {"count": 5})
    (message,) = reply.json["messages"]
    assert message["body"] == "from resp" and message["id"] == 2
    assert message["priority"] == 3 and message["attempts"] == 1
    assert message["lease"].startswith("2-") and message["encoding"] == "utf-8"
    assert api.post("/api/queues/jobs/messages/2/ack", {"lease": message["lease"]}).json == \
        {"id": 2}
    assert stats(resp, "jobs")["acked"] == 2


def test_queue_routes(api, resp, store_kind):
    assert api.get("/api/queues").json == {"queues": [], "cursor": "0"}
    created = api.put("/api/queues/a", {"visibility": 10, "maxattempts": 2, "retention": 60,
                                        "backoff": "exponential 1 30", "dedup_window": 5,
                                        "maxlen": 100})
    assert created.status == 201
    assert {k: created.json[k] for k in ("visibility_timeout", "max_delivery_attempts",
                                         "retention_period", "backoff", "dedup_window",
                                         "maxlen")} == \
        {"visibility_timeout": 10, "max_delivery_attempts": 2, "retention_period": 60,
         "backoff": "exponential 1 30", "dedup_window": 5, "maxlen": 100}
    updated = api.put("/api/queues/a", {"visibility": 20})
    assert updated.status == 200 and updated.json["visibility_timeout"] == 20
    assert updated.json["max_delivery_attempts"] == 2
    assert api.put("/api/queues/a").status == 200  # exists, nothing to change
    for name in ("b", "c d", "jobs/x"):
        path = name.replace(" ", "%20").replace("/", "%2F")
        assert api.put(f"/api/queues/{path}").status == 201
    valq(resp, "PUSH", "a", "m")
    page = api.get("/api/queues").json
    assert [q["name"] for q in page["queues"]] == ["a", "b", "c d", "jobs/x"]
    assert [q["path"] for q in page["queues"]] == ["a", "b", "c%20d", "jobs%2Fx"]
    assert page["queues"][0]["ready"] == 1 and page["queues"][0]["pushed"] == 1
    assert api.get("/api/queues/jobs%2Fx").json["name"] == "jobs/x"
    # pages (in front of Valkey, `count` is a hint, as SCAN's COUNT is there)
    first = api.get("/api/queues?count=3").json
    names = [q["name"] for q in first["queues"]]
    if store_kind == "embedded":
        assert len(names) == 3 and first["cursor"] != "0"
    if first["cursor"] != "0":
        rest = api.get(f"/api/queues?count=3&cursor={first['cursor']}").json
        names += [q["name"] for q in rest["queues"]]
        assert rest["cursor"] == "0"
    assert sorted(names) == ["a", "b", "c d", "jobs/x"]
    assert [q["name"] for q in api.get("/api/queues?match=jobs*").json["queues"]] == \
        ["jobs/x"]
    assert api.get("/api/queues/a").json["ready"] == 1
    assert api.delete("/api/queues/b").json == {"deleted": True}
    assert valq(resp, "LIST") == [b"a", b"c d", b"jobs/x"]


def test_queue_actions(api, resp):
    valq(resp, "CREATE", "q", "VISIBILITY", "30", "MAXATTEMPTS", "1")
    valq(resp, "MPUSH", "q", "a", "b", "c")
    popped = api.post("/api/queues/q/pop", {"count": 2}).json["messages"]
    for m in popped:
        api.post(f"/api/queues/q/messages/{m['id']}/nack",
                 {"lease": m["lease"], "reason": f"failed <{m['body']}>"})
    dlq = api.get("/api/queues/q/peek?state=dlq").json["messages"]
    assert [(m["id"], m["state"], m["last_reason"]) for m in dlq] == \
        [(1, "dlq", "failed <a>"), (2, "dlq", "failed <b>")]
    assert "dead_at" in dlq[0]
    assert api.post("/api/queues/q/redrive", {"count": 1}).json == {"moved": 1}
    assert api.get("/api/queues/q").json["dlq"] == 1
    assert api.post("/api/queues/q/pause").json == {"paused": True}
    assert api.post("/api/queues/q/pop").json == {"messages": []}
    assert api.post("/api/queues/q/resume").json == {"paused": False}
    assert api.post("/api/queues/q/purge", {"part": "dlq"}).json == {"removed": 1}
    assert api.post("/api/queues/q/purge").json == {"removed": 2}
    assert api.get("/api/queues/q").json["ready"] == 0


def test_message_routes(api, resp):
    api.put("/api/queues/q", {"visibility": 30})
    assert api.post("/api/queues/q/messages", {"body": "later", "delay": 100}).json == {"id": 1}
    assert api.post("/api/queues/q/messages", {"body": "hi", "priority": 5,
                                               "dedup": "k"}).json == {"id": 2}
    assert api.post("/api/queues/q/messages", {"body": "again", "dedup": "k"}).json == \
        {"id": 2}
    message = api.get("/api/queues/q/messages/1").json
    assert (message["state"], message["body"], message["last_reason"]) == \
        ("delayed", "later", None)
    assert "due_at" in message
    assert api.post("/api/queues/q/messages/1/reschedule", {"delay": 0}).json == {"id": 1}
    assert [m["id"] for m in api.get("/api/queues/q/peek?count=5").json["messages"]] == [2, 1]
    (m,) = api.post("/api/queues/q/pop").json["messages"]
    assert m["id"] == 2
    before = api.get("/api/queues/q/messages/2").json["lease_deadline"]
    assert api.post("/api/queues/q/messages/2/extend",
                    {"seconds": 600, "lease": m["lease"]}).json == {"id": 2}
    assert api.get("/api/queues/q/messages/2").json["lease_deadline"] > before
    assert [x["id"] for x in api.get("/api/queues/q/peek?state=inflight").json["messages"]] \
        == [2]
    assert api.post("/api/queues/q/messages/2/cancel").json == {"id": 2}
    assert api.get("/api/queues/q/messages/2").json["error"] == "NOMSG"
    assert api.get("/api/queues/q/peek?state=delayed").json == {"messages": []}


def test_bodies_text_or_base64(api, resp):
    api.put("/api/queues/q")
    binary = b"\xff\x00raw"
    encoded = base64.b64encode(binary).decode()
    assert api.post("/api/queues/q/messages",
                    {"body": encoded, "encoding": "base64"}).json == {"id": 1}
    assert api.post("/api/queues/q/messages", {"body": "<script>alert(1)</script> ü"}).json \
        == {"id": 2}
    assert valq(resp, "GET", "q", 1)[b"body"] == binary
    messages = api.get("/api/queues/q/peek?count=2").json["messages"]
    assert (messages[0]["body"], messages[0]["encoding"]) == (encoded, "base64")
    assert (messages[1]["body"], messages[1]["encoding"]) == \
        ("<script>alert(1)</script> ü", "utf-8")
    valq(resp, "CREATE", b"bin\xfe")
    (queue,) = [q for q in api.get("/api/queues").json["queues"] if q["path"] != "q"]
    assert (queue["name"], queue["path"]) == ("bin\ufffd", "bin%FE")
    assert api.get("/api/queues/bin%FE").status == 200


# -- blocking pops ----------------------------------------------------------------------------

def waiting_pop(server, resp) -> tuple[threading.Thread, dict]:
    """An HTTP pop of queue q with block_ms 10 s, in a thread, parked by the server:
    (the thread, a dict whose "reply" it sets)."""
    result: dict = {}

    def pop():
        waiter = Api(server.http_port)
        result["reply"] = waiter.post("/api/queues/q/pop", {"block_ms": 10000})
        waiter.close()

    thread = threading.Thread(target=pop)
    thread.start()
    wait_until(lambda: stats(resp, "q")["blocked"] == 1, what="the HTTP pop to wait")
    return thread, result


def test_blocking_pop_waits_for_a_resp_push(api, resp, server):
    valq(resp, "CREATE", "q")
    thread, result = waiting_pop(server, resp)
    assert api.get("/healthz").status == 200  # the loop is not blocked
    valq(resp, "PUSH", "q", "wake")
    thread.join(10)
    reply = result["reply"]
    assert reply.status == 200 and reply.json["messages"][0]["body"] == "wake"
    assert stats(resp, "q")["blocked"] == 0


def test_blocking_pop_times_out_empty(api, resp):
    valq(resp, "CREATE", "q")
    started = time.monotonic()
    assert api.post("/api/queues/q/pop", {"block_ms": 200, "count": 3}).json == \
        {"messages": []}
    assert time.monotonic() - started >= 0.15
    # the connection goes on serving
    assert api.get("/api/queues/q").json["blocked"] == 0


def test_blocking_pop_of_a_client_that_leaves(api, resp, server):
    valq(resp, "CREATE", "q")
    body = b'{"block_ms": 0}'
    import socket
    s = socket.create_connection(("127.0.0.1", server.http_port))
    s.sendall(b"POST /api/queues/q/pop HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
              b"\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    wait_until(lambda: stats(resp, "q")["blocked"] == 1, what="the pop to wait")
    s.close()
    wait_until(lambda: stats(resp, "q")["blocked"] == 0, what="the waiter to go")
    valq(resp, "PUSH", "q", "kept")
    assert valq(resp, "POP", "q")[b"body"] == b"kept"  # nobody took it


def test_blocking_pop_of_a_queue_deleted_and_created_again(api, resp, server):
    valq(resp, "CREATE", "q")
    thread, result = waiting_pop(server, resp)
    valq(resp, "DELETE", "q")
    valq(resp, "CREATE", "q")
    valq(resp, "PUSH", "q", "x")
    thread.join(10)
    reply = result["reply"]
    assert reply.status == 200 and reply.json["messages"][0]["body"] == "x"


# -- errors: the codes of RESP, with fitting statuses ----------------------------------------

def test_error_codes(api, resp):
    api.put("/api/queues/q", {"visibility": 30, "maxlen": 1})
    cases = [
        (api.get("/api/queues/nope"), 404, "NOQUEUE", "no such queue 'nope'"),
        (api.get("/api/queues/q/messages/9"), 404, "NOMSG", "no message with id 9 in queue 'q'"),
        (api.post("/api/queues/q/messages/9/ack"), 404, "NOMSG", None),
        (api.get("/api/queues/q/messages/x"), 400, "ERR",
         "message id must be a positive integer"),
        (api.put("/api/queues/q", {"visibility": -1}), 400, "ERR", None),
        (api.put("/api/queues/q", {"visibility": "10"}), 400, "ERR",
         "field 'visibility' must be an integer"),
        (api.put("/api/queues/q", {"visiblity": 10}), 400, "ERR", "unknown field 'visiblity'"),
        (api.post("/api/queues/q/messages", {}), 400, "ERR", "field 'body' is required"),
        (api.post("/api/queues/q/messages", {"body": "x", "encoding": "rot13"}), 400, "ERR",
         "encoding must be utf-8 or base64"),
        (api.post("/api/queues/q/messages", {"body": "!!", "encoding": "base64"}), 400, "ERR",
         "body is not valid base64"),
        (api.post("/api/queues/q/messages", raw=b"{nope"), 400, "ERR",
         "the body is not valid JSON"),
        (api.post("/api/queues/q/messages", raw=b"[1]"), 400, "ERR",
         "the body must be a JSON object"),
        (api.post("/api/queues/q/pop", {"count": 0}), 400, "ERR",
         "COUNT must be between 1 and 1000"),
        (api.post("/api/queues/q/pop", {"noack": "yes"}), 400, "ERR",
         "field 'noack' must be true or false"),
        (api.get("/api/queues/q/peek?state=gone"), 400, "ERR",
         "state must be one of ready, inflight, delayed, dlq"),
        (api.get("/api/queues/q/peek?count=-1"), 400, "ERR",
         "query parameter 'count' must be a non-negative integer"),
        (api.get("/api/queues?count=0"), 400, "ERR", "count must be between 1 and 1000"),
        (api.post("/api/queues/q/purge", {"part": "all"}), 400, "ERR",
         "purge type must be one of main, dlq, delayed"),
        (api.post("/api/queues/q/messages/1/extend", {}), 400, "ERR",
         "field 'seconds' is required"),
    ]
    assert api.post("/api/queues/q/messages", {"body": "one"}).status == 201
    cases.append((api.post("/api/queues/q/messages", {"body": "two"}), 409, "QUEUEFULL", None))
    (m,) = api.post("/api/queues/q/pop").json["messages"]
    cases.append((api.post("/api/queues/q/messages/1/ack", {"lease": "1-7"}), 409, "NOLEASE",
                  None))
    cases.append((api.post("/api/queues/q/messages/1/reschedule", {"delay": 5}), 400, "ERR",
                  None))
    for reply, status, code, message in cases:
        assert (reply.status, reply.json["error"]) == (status, code), reply
        if message is not None:
            assert reply.json["message"] == message
    assert api.post("/api/queues/q/messages/1/ack", {"lease": m["lease"]}).status == 200


def test_route_method_and_media_errors(api):
    reply = api.get("/api/nothing")
    assert (reply.status, reply.json["error"]) == (404, "ERR")
    reply = api.request("PATCH", "/api/queues/q", {})
    assert reply.status == 405 and reply.headers["Allow"] == "GET, PUT, DELETE"
    reply = api.post("/api/queues/q/pause", headers={"Content-Type": "text/plain"})
    assert (reply.status, reply.json["error"]) == (415, "ERR")
    reply = api.post("/api/queues/q/pause",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 415
    reply = api.post("/api/queues/q/pause", headers={"Origin": "http://evil.example"})
    assert reply.status == 403
    reply = api.request("OPTIONS", "/api/queues/q")
    assert reply.status == 405 and "Access-Control-Allow-Origin" not in reply.headers


def test_oom_and_internal_statuses(tmp_path):
    process, port = http_valqd(tmp_path / "oom", "--maxmemory", "1")
    try:
        api = Api(port)
        assert api.put("/api/queues/q").status in (201, 507)
        reply = api.post("/api/queues/q/messages", {"body": "x"})
        assert (reply.status, reply.json["error"]) == (507, "OOM")
    finally:
        process.stop()


# -- HTTP itself --------------------------------------------------------------------------------

def test_keep_alive_pipelining_and_head(server):
    port = server.http_port
    requests = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                b"GET /api/queues/none HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = raw_exchange(port, requests)
    statuses = re.findall(rb"HTTP/1.1 (\d+)", answer)
    assert statuses == [b"200", b"200", b"404"]
    assert answer.count(b'{"status": "ok"}') == 1  # HEAD has no body
    assert answer.endswith(b'{"error": "NOQUEUE", "message": "no such queue \'none\'"}')


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"POST /api/queues/q/pause HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"POST /api/queues/q/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n", 400),
    (b"POST /api/queues/q/pause HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /api/queues/q/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
     413),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
])
def test_malformed_requests_are_answered_and_closed(server, request_bytes, status):
    answer = raw_exchange(server.http_port, request_bytes)
    assert status_of(answer) == status, answer[:200]
    assert b"Connection: close" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "ERR"
    assert raw_exchange(server.http_port, b"GET /healthz HTTP/1.0\r\n\r\n").startswith(
        b"HTTP/1.1 200")


def test_security_headers_and_no_cors(api):
    reply = api.get("/api/queues", headers={"Origin": "http://evil.example"})
    assert reply.status == 200
    assert "Access-Control-Allow-Origin" not in reply.headers
    assert "Set-Cookie" not in reply.headers
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]
    page = api.get("/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


def test_host_must_be_an_address_without_a_password(server):
    api = Api(server.http_port)
    for host in ("evil.example", "evil.example:80", "attacker.test"):
        reply = api.get("/api/queues", headers={"Host": host})
        assert (reply.status, reply.json["error"]) == (403, "ERR"), host
    for host in ("127.0.0.1", f"127.0.0.1:{server.http_port}", "localhost:1", "[::1]:2",
                 "LOCALHOST"):
        assert api.get("/api/queues", headers={"Host": host}).status == 200, host
    assert api.get("/healthz", headers={"Host": "evil.example"}).status == 200
    api.close()


def test_metrics_over_the_http_listener(api, resp):
    valq(resp, "CREATE", "q")
    reply = api.get("/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"valqd_" in reply.body


def test_static_files_never_build_html_from_data():
    """The dashboard renders every name and body with textContent: no HTML sink is used."""
    from importlib import resources
    script = (resources.files("valqd.http") / "static" / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in script, sink


def test_healthz_and_the_api_answer_503_while_the_aof_loads():
    """Sans-IO: the app over a real dispatcher whose state is still loading."""
    from support import ThreadedServer
    from valqd.http.parser import Request

    with ThreadedServer() as threaded:
        server = threaded.server
        server.state.loading = True
        try:
            def ask(method, path):
                request = Request(method, path, {}, {"host": "127.0.0.1",
                                                     "content-type": "application/json"},
                                  b"", True)
                response = server.http_app.handle(request, "127.0.0.1:1", "127.0.0.1:2")
                return response.status, json.loads(response.body)

            assert ask("GET", "/healthz") == \
                (503, {"error": "LOADING", "message": "valqd is loading the dataset in memory"})
            status, body = ask("GET", "/api/queues/q")
            assert (status, body["error"]) == (503, "LOADING")
        finally:
            server.state.loading = False
        assert ask("GET", "/healthz") == (200, {"status": "ok"})


def test_the_dashboard_files_go_into_the_wheel():
    """pyproject's package data names every static file (a wheel without them serves 500s)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["valqd.http"]
    static = root / "valqd" / "http" / "static"
    for path in static.iterdir():
        relative = str(path.relative_to(static.parent))
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


def test_a_long_pipeline_is_answered_whole_and_in_order(api, server, resp):
    """More requests in one send than one turn serves (REQUESTS_PER_TURN): reading pauses
    and resumes, every one is answered, in order."""
    valq(resp, "CREATE", "pipe")
    body = b'{"body": "x"}'
    push = (b"POST /api/queues/pipe/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (len(body), body))
    last = b"GET /api/queues/pipe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(server.http_port, push * 1000 + last, timeout=60)
    ids = [int(i) for i in re.findall(rb'\{"id": (\d+)\}', answer)]
    assert ids == list(range(1, 1001))
    assert answer.count(b"HTTP/1.1 201") == 1000 and b'"ready": 1000' in answer


def test_every_route_answers_as_its_document_says(api, resp):
    """One successful call of every route in the table, each checked by CheckedApi against
    the OpenAPI document; none is left out."""
    valq(resp, "CREATE", "other")
    calls = [
        ("GET", "/healthz", None), ("GET", "/", None), ("GET", "/dashboard.js", None),
        ("GET", "/dashboard.css", None), ("GET", "/metrics", None),
        ("GET", "/api/openapi.json", None),
        ("PUT", "/api/queues/q", {"visibility": 30, "maxattempts": 1}),
        ("GET", "/api/queues", None), ("GET", "/api/queues/q", None),
        ("POST", "/api/queues/q/messages", {"body": "one"}),
        ("POST", "/api/queues/q/messages", {"body": "two", "delay": 60}),
        ("GET", "/api/queues/q/messages/1", None),
        ("GET", "/api/queues/q/peek?state=ready&count=5", None),
        ("POST", "/api/queues/q/pop", {"count": 1}),
        ("POST", "/api/queues/q/messages/1/extend", {"seconds": 60}),
        ("POST", "/api/queues/q/messages/1/nack", {"reason": "no"}),
        ("POST", "/api/queues/q/redrive", {"to": "other"}),
        ("POST", "/api/queues/other/pop", {}),
        ("POST", "/api/queues/other/messages/1/ack", {}),
        ("POST", "/api/queues/q/messages/2/reschedule", {"delay": 0}),
        ("POST", "/api/queues/q/messages/2/cancel", {}),
        ("POST", "/api/queues/q/pause", {}), ("POST", "/api/queues/q/resume", {}),
        ("POST", "/api/queues/q/purge", {"part": "main"}),
        ("DELETE", "/api/queues/q", None),
    ]
    for method, path, body in calls:
        reply = api.request(method, path, body)
        assert reply.status < 300, (method, path, reply)
    served = {(route.method, route.path) for route in ROUTES}
    assert {(method, path) for method, path, _ in api.seen} == served
