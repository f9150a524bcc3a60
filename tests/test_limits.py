"""Limits and protocol errors against a real valqd process, over raw sockets.

One test per limit and per error: the exact error text, whether the connection is closed
(as Valkey closes it), that other clients keep being served and that no data changed. Real
time is used only by the `timeout` test, with waits of at most 3 s.
"""

import os
import socket
import time

import pytest
import valkey

from support import Error, ValqdProcess, Wire, encode_command, flushed_wires, send_in_thread

TIMEOUT_S = 10
MB = 1024 * 1024
DEFAULTS = {  # the settings these tests change, put back after each test
    "proto-max-bulk-len": "512mb",
    "client-query-buffer-limit": "1gb",
    "max-message-size": "1mb",
    "maxmemory": "0",
    "maxclients": "10000",
    "timeout": "0",
    "client-output-buffer-limit": "normal 256mb 64mb 60 replica 256mb 64mb 60 "
                                  "pubsub 32mb 8mb 60",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ValqdProcess(tmp_path_factory.mktemp("limits")).start()
    yield process
    process.stop()
    assert "Traceback" not in process.log() and "bug:" not in process.log()


@pytest.fixture
def wires(server):
    """`wires()` opens a raw connection; all are closed, and the changed settings put
    back, after the test. The server's queues are flushed before it."""
    yield from flushed_wires(server.port)
    admin = Wire(server.port)
    for name, value in DEFAULTS.items():
        assert admin.call("CONFIG", "SET", name, value) == b"OK"
    admin.close()


def info(wire: Wire, queue: str) -> dict:
    reply = wire.call("VALQ", "INFO", queue)
    return dict(zip(reply[::2], reply[1::2]))


def setup_data(wire: Wire) -> bytes:
    """A queue with messages in several states; returns the state digest."""
    assert wire.call("VALQ", "CREATE", "kept") == b"created kept"
    assert wire.call("VALQ", "MPUSH", "kept", "a", "b", "c") == [b"1", b"2", b"3"]
    assert wire.call("VALQ", "PUSH", "kept", "later", 3600) == b"4"
    assert wire.call("VALQ", "POP", "kept") == [b"body", b"a", b"id", b"1"]
    return wire.call("DEBUG", "DIGEST")


def assert_others_served(wire: Wire, digest: bytes) -> None:
    assert wire.call("PING") == b"PONG"
    assert wire.call("DEBUG", "DIGEST") == digest
    assert wire.call("VALQ", "POP", "kept") == [b"body", b"b", b"id", b"2"]


# -- protocol errors: reply, then close -------------------------------------------------------

PROTOCOL_ERRORS = [
    pytest.param({}, b"*abc\r\n", "invalid multibulk length", id="multibulk-length-abc"),
    pytest.param({}, b"*2\r\n$4\r\nECHO\r\n$abc\r\n", "invalid bulk length",
                 id="bulk-length-abc"),
    pytest.param({}, b"*2\r\n$4\r\nECHO\r\n$-5\r\n", "invalid bulk length",
                 id="bulk-length-negative"),
    pytest.param({}, b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n", "invalid bulk length",
                 id="bulk-length-negative-last"),
    pytest.param({"proto-max-bulk-len": "1mb"}, b"*2\r\n$4\r\nECHO\r\n$2000000\r\nabc",
                 "invalid bulk length", id="bulk-over-proto-max-bulk-len"),
    pytest.param({}, b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n", "invalid bulk length",
                 id="bulk-over-default-proto-max-bulk-len"),
    pytest.param({}, b"*1048577\r\n", "invalid multibulk length", id="multibulk-count-over-1m"),
    pytest.param({}, b"*3000000000\r\n", "invalid multibulk length",
                 id="multibulk-count-over-int-max"),
    pytest.param({}, b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n", "expected '$', got 'f'",
                 id="payload-header-not-bulk"),
    pytest.param({}, b"*1\r\nfoo\r\n", "expected '$', got 'f'", id="no-bulk-after-count"),
    pytest.param({}, b'VALQ PUSH kept "abc\r\n', "unbalanced quotes in request",
                 id="unbalanced-quotes"),
    pytest.param({}, b'set """test-key"" test-value\r\n', "unbalanced quotes in request",
                 id="unbalanced-quotes-valkey-test"),  # Valkey 9.1 reads `"""test-key"""`
    pytest.param({}, b"*1\r\n$4\r\nPINGAB", "invalid CRLF in request",
                 id="bulk-not-ended-by-crlf"),
    pytest.param({}, b"VALQ PUSH kept " + b"x" * (64 * 1024), "too big inline request",
                 id="too-big-inline-request"),
    pytest.param({}, b"*" + b"1" * (64 * 1024 + 10), "too big mbulk count string",
                 id="too-big-mbulk-count-string"),
    pytest.param({}, b"*1\r\n$" + b"1" * (64 * 1024 + 10), "too big bulk count string",
                 id="too-big-bulk-count-string"),
]


SENT = [pytest.param(*case.values, False, id=case.id + "-whole") for case in PROTOCOL_ERRORS]
SENT += [pytest.param(*case.values, True, id=case.id + "-bytewise")
         for case in PROTOCOL_ERRORS if len(case.values[1]) < 1000]


@pytest.mark.parametrize("settings, bad, message, bytewise", SENT)
def test_protocol_error_replies_at_once_and_closes(wires, settings, bad, message, bytewise):
    other = wires()
    for name, value in settings.items():
        assert other.call("CONFIG", "SET", name, value) == b"OK"
    digest = setup_data(other)
    wire = wires(nodelay=True)
    if bytewise:
        for i in range(len(bad)):
            wire.send(bad[i:i + 1])
    else:
        wire.send(bad)
    # nothing more is sent: the error comes as soon as the bad header (or line) is complete
    assert wire.reply(timeout=5) == Error(f"ERR Protocol error: {message}")
    assert wire.closed_by_server()
    assert_others_served(other, digest)


def test_commands_after_a_protocol_error_never_run(wires):
    other = wires()
    digest = setup_data(other)
    wire = wires()
    wire.send(encode_command(("PING",)) + b"*abc\r\n" + encode_command(("VALQ", "PUSH", "kept", "never")))
    assert wire.reply() == b"PONG"
    assert wire.reply() == Error("ERR Protocol error: invalid multibulk length")
    assert wire.closed_by_server()
    assert_others_served(other, digest)


def test_negative_multibulk_length_is_skipped_as_in_valkey(wires):
    wire = wires()
    wire.send(b"*-10\r\n" + encode_command(("PING",)) + b"*0\r\n*-1\r\n" + encode_command(("ECHO", "x")))
    assert wire.reply() == b"PONG"
    assert wire.reply() == b"x"


def test_multibulk_count_at_the_limit_is_accepted(wires):
    """`*1048576` is not over the limit: the server waits for the elements."""
    wire = wires()
    wire.send(b"*1048576\r\n$4\r\nECHO\r\n")
    assert not wire.closed_by_server(timeout=0.5)


def test_bulk_at_proto_max_bulk_len_is_accepted(wires):
    wire = wires()
    assert wire.call("CONFIG", "SET", "proto-max-bulk-len", "1mb") == b"OK"
    assert wire.call("CONFIG", "GET", "proto-max-bulk-len") == [b"proto-max-bulk-len",
                                                                 b"1048576"]
    body = os.urandom(MB)
    assert wire.call("ECHO", body) == body
    wire.send(b"*2\r\n$4\r\nECHO\r\n$1048577\r\n")
    assert wire.reply(timeout=5) == Error("ERR Protocol error: invalid bulk length")
    assert wire.closed_by_server()


# -- query buffer -------------------------------------------------------------------------------

def test_query_buffer_limit(wires):
    other = wires()
    assert other.call("CONFIG", "SET", "client-query-buffer-limit", "1mb") == b"OK"
    digest = setup_data(other)
    wire = wires()
    # a PUSH of a 3 MB body (within proto-max-bulk-len), of which 2 MB are sent
    request = encode_command(("VALQ", "PUSH", "kept", b"x" * 3 * MB))[:2 * MB]
    sender = send_in_thread(wire, request)  # the server may close while the rest is on its way
    assert wire.reply() == Error("ERR Protocol error: query buffer limit exceeded")
    assert wire.closed_by_server()
    sender.join(TIMEOUT_S)
    assert not sender.is_alive()
    assert_others_served(other, digest)
    assert info(other, "kept")[b"id_sequence"] == b"4"


@pytest.mark.parametrize("careful", [False, True], ids=["hiredis", "framer"])
def test_a_bulk_larger_than_the_query_buffer_is_refused_at_its_header(wires, careful):
    """A bulk header that announces more than client-query-buffer-limit is refused as soon
    as the header arrives: nothing of the body has to be sent (200 MB were received and
    held first)."""
    other = wires()
    assert other.call("CONFIG", "SET", "client-query-buffer-limit", "1mb") == b"OK"
    wire = wires()
    # careful: what looks like a huge count in the same read makes the framer read it
    before = encode_command(("ECHO", b"*99999")) if careful else b""
    wire.send(before + b"*4\r\n$4\r\nVALQ\r\n$4\r\nPUSH\r\n$1\r\nq\r\n$200000000\r\n")
    if careful:
        assert wire.reply() == b"*99999"
    assert wire.reply(timeout=5) == Error("ERR Protocol error: query buffer limit exceeded")
    assert wire.closed_by_server()
    assert other.call("PING") == b"PONG"


def test_query_buffer_below_the_limit_is_served(wires):
    wire = wires()
    assert wire.call("CONFIG", "SET", "client-query-buffer-limit", "1mb") == b"OK"
    body = b"y" * (MB - 1024)
    assert wire.call("ECHO", body) == body


def test_query_buffer_limit_applies_while_blocked(wires):
    """A client parked in a blocking pop may go on sending; what it sends is buffered
    unparsed, but not beyond client-query-buffer-limit."""
    other = wires()
    assert other.call("CONFIG", "SET", "client-query-buffer-limit", "1mb") == b"OK"
    assert other.call("VALQ", "CREATE", "empty") == b"created empty"
    wire = wires()
    wire.send(encode_command(("VALQ", "POP", "empty", "BLOCK", 0)))
    time.sleep(0.1)
    sender = send_in_thread(wire, encode_command(("ECHO", b"z" * 100_000)) * 20)
    assert wire.reply() == Error("ERR Protocol error: query buffer limit exceeded")
    assert wire.closed_by_server()
    sender.join(TIMEOUT_S)
    assert other.call("VALQ", "PUSH", "empty", "m") == b"1"
    assert info(other, "empty")[b"msgs"] == b"1"
    assert other.call("VALQ", "POP", "empty") == [b"body", b"m", b"id", b"1"]


# -- max-message-size -----------------------------------------------------------------------------

def test_max_message_size_default_is_1mib(wires):
    wire = wires()
    assert wire.call("CONFIG", "GET", "max-message-size") == [b"max-message-size", b"1048576"]
    assert wire.call("VALQ", "CREATE", "q") == b"created q"
    assert wire.call("VALQ", "PUSH", "q", b"a" * MB) == b"1"
    assert wire.call("VALQ", "PUSH", "q", b"b" * (MB + 1)) == Error(
        "ERR message body is 1048577 bytes, more than max-message-size (1048576)")
    assert wire.call("VALQ", "PUSH", "q", b"c" * (MB + 1), 10) == Error(
        "ERR message body is 1048577 bytes, more than max-message-size (1048576)")
    assert wire.call("PING") == b"PONG"  # not a protocol error: the connection stays
    fields = info(wire, "q")
    assert (fields[b"msgs"], fields[b"delayed_msgs"], fields[b"id_sequence"]) == \
        (b"1", b"0", b"1")


def test_max_message_size_mpush_stores_nothing(wires):
    wire = wires()
    assert wire.call("VALQ", "CREATE", "q") == b"created q"
    assert wire.call("VALQ", "MPUSH", "q", "small", b"x" * (MB + 1), "small") == Error(
        "ERR message body is 1048577 bytes, more than max-message-size (1048576)")
    assert info(wire, "q")[b"id_sequence"] == b"0"
    assert wire.call("VALQ", "MPUSH", "q", "a", b"x" * MB) == [b"1", b"2"]


def test_max_message_size_config_set(wires):
    wire = wires()
    assert wire.call("VALQ", "CREATE", "q") == b"created q"
    assert wire.call("CONFIG", "SET", "max-message-size", "1kb") == b"OK"
    assert wire.call("CONFIG", "GET", "max-message-size") == [b"max-message-size", b"1024"]
    assert wire.call("VALQ", "PUSH", "q", b"x" * 1024) == b"1"
    assert wire.call("VALQ", "PUSH", "q", b"x" * 1025) == Error(
        "ERR message body is 1025 bytes, more than max-message-size (1024)")
    assert wire.call("VALQ", "MPUSH", "q", "a", b"x" * 1025) == Error(
        "ERR message body is 1025 bytes, more than max-message-size (1024)")
    assert info(wire, "q")[b"id_sequence"] == b"1"
    assert wire.call("CONFIG", "SET", "max-message-size", "2mb") == b"OK"
    assert wire.call("VALQ", "PUSH", "q", b"x" * (MB + 1)) == b"2"
    assert wire.call("CONFIG", "SET", "max-message-size", "lots") == Error(
        "ERR CONFIG SET failed (possibly related to argument 'max-message-size') - "
        "argument must be a memory value")


# -- maxmemory ------------------------------------------------------------------------------------

OOM = Error("OOM command not allowed when used memory > 'maxmemory'.")


def used_memory(wire: Wire) -> int:
    text = wire.call("INFO", "memory").decode()
    return int(dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)
               ["used_memory"])


def test_maxmemory_refuses_adding_data_and_lets_queues_drain(wires):
    wire = wires()
    assert wire.call("VALQ", "CREATE", "q", 43200) == b"created q"
    assert wire.call("VALQ", "CREATE", "other") == b"created other"
    assert wire.call("VALQ", "PUSH", "other", b"o" * 1000) == b"1"
    limit = used_memory(wire) + 100_000
    assert wire.call("CONFIG", "SET", "maxmemory", limit) == b"OK"
    assert wire.call("CONFIG", "GET", "maxmemory") == [b"maxmemory", b"%d" % limit]
    pushed = 0
    for _ in range(1000):  # about 100 pushes of 1 KB pass the limit
        reply = wire.call("VALQ", "PUSH", "q", b"m" * 1000)
        if isinstance(reply, Error):
            assert reply == OOM
            break
        pushed += 1
    else:
        pytest.fail("1 MB of pushes never reached maxmemory")
    assert 50 <= pushed <= 150
    assert used_memory(wire) > limit
    assert wire.call("VALQ", "PUSH", "q", "tiny") == OOM
    assert wire.call("VALQ", "MPUSH", "q", "a", "b") == OOM
    assert wire.call("VALQ", "CREATE", "new") == OOM
    assert wire.call("EXISTS", "new") == 0
    assert info(wire, "q")[b"msgs"] == b"%d" % pushed
    # what frees memory still works: POP, ACK, DEL, PURGE
    popped = wire.call("VALQ", "POP", "q", "WITHMETA")
    meta = dict(zip(popped[::2], popped[1::2]))
    assert wire.call("VALQ", "ACK", "q", meta[b"id"], "LEASE", meta[b"lease"]) == \
        b"ack " + meta[b"id"]
    assert wire.call("DEL", "other") == 1
    assert wire.call("VALQ", "PURGE", "q") == pushed - 1
    assert used_memory(wire) <= limit
    assert wire.call("VALQ", "PUSH", "q", "again") == b"%d" % (pushed + 1)
    assert wire.call("VALQ", "CREATE", "new") == b"created new"


def test_maxmemory_drain_by_pop_and_ack(wires):
    wire = wires()
    assert wire.call("VALQ", "CREATE", "q") == b"created q"
    assert wire.call("CONFIG", "SET", "maxmemory", used_memory(wire) + 20_000) == b"OK"
    ids = []
    for _ in range(100):
        reply = wire.call("VALQ", "PUSH", "q", b"m" * 1000)
        if isinstance(reply, Error):
            assert reply == OOM
            break
        ids.append(reply)
    assert ids and len(ids) < 100
    while got := wire.call("VALQ", "POP", "q"):  # an empty queue answers an empty string
        assert wire.call("VALQ", "ACK", "q", got[3]) == b"ack " + got[3]
    assert wire.call("VALQ", "PUSH", "q", "works again") == b"%d" % (len(ids) + 1)


def test_maxmemory_zero_is_no_limit(wires):
    wire = wires()
    assert wire.call("CONFIG", "GET", "maxmemory") == [b"maxmemory", b"0"]
    assert wire.call("VALQ", "CREATE", "q") == b"created q"
    assert wire.call("VALQ", "MPUSH", "q", *[b"x" * 10_000] * 100) == \
        [b"%d" % i for i in range(1, 101)]


# -- maxclients -----------------------------------------------------------------------------------

def clients(admin: Wire) -> int:
    return admin.call("CLIENT", "LIST").decode().count("\n")


def only_ours(admin: Wire) -> int:
    """Wait until the connections of earlier tests are gone from the server's view; the
    number left: the `wires` fixture's and this one."""
    deadline = time.monotonic() + TIMEOUT_S
    while clients(admin) > 2:
        assert time.monotonic() < deadline, admin.call("CLIENT", "LIST").decode()
        time.sleep(0.01)
    return 2


def test_maxclients(server, wires):
    admin = wires()
    connected = only_ours(admin)
    assert admin.call("CONFIG", "SET", "maxclients", connected + 2) == b"OK"
    first, second = wires(), wires()
    assert first.call("PING") == b"PONG" and second.call("PING") == b"PONG"
    refused = wires()
    assert refused.reply() == Error("ERR max number of clients reached")
    assert refused.closed_by_server()
    assert admin.call("PING") == b"PONG"
    first.close()
    deadline = time.monotonic() + TIMEOUT_S
    while clients(admin) > connected + 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    again = wires()
    assert again.call("PING") == b"PONG"
    stats = admin.call("INFO", "stats").decode()
    assert "rejected_connections:" in stats
    assert int(stats.split("rejected_connections:")[1].split()[0]) >= 1


def test_maxclients_with_valkey_py(server, wires):
    admin = wires()
    assert admin.call("CONFIG", "SET", "maxclients", only_ours(admin)) == b"OK"
    client = valkey.Valkey(port=server.port, socket_timeout=5)
    with pytest.raises(valkey.exceptions.ConnectionError, match="max number of clients"):
        client.ping()
    client.close()


# -- timeout --------------------------------------------------------------------------------------

def test_timeout_closes_idle_clients_only(wires):
    admin = wires()
    assert admin.call("VALQ", "CREATE", "jobs") == b"created jobs"
    assert admin.call("CONFIG", "SET", "timeout", 1) == b"OK"
    idle = wires()
    assert idle.call("PING") == b"PONG"
    idle_since = time.monotonic()
    blocked = wires()
    blocked.send(encode_command(("VALQ", "POP", "jobs", "BLOCK", 0)))
    subscribed = wires()
    assert subscribed.call("SUBSCRIBE", "news") == [b"subscribe", b"news", 1]
    busy = wires()
    started = time.monotonic()
    closed_after = None
    while time.monotonic() - started < 3.0:
        assert busy.call("PING") == b"PONG"  # a client that keeps talking stays
        if closed_after is None and idle.closed_by_server(timeout=0.25):
            closed_after = time.monotonic() - idle_since
        if closed_after is not None and time.monotonic() - idle_since > closed_after + 0.3:
            break
    assert closed_after is not None, "an idle client was not closed within 3 s"
    assert closed_after >= 0.9
    # the blocked and the subscribed clients were idle as long, and are still there
    admin2 = wires()
    assert admin2.call("VALQ", "PUSH", "jobs", "wake") == b"1"
    assert blocked.reply() == [b"body", b"wake", b"id", b"1"]
    subscribed.send(encode_command(("PING",)))
    assert subscribed.reply() == [b"pong", b""]
    assert admin2.call("CONFIG", "GET", "timeout") == [b"timeout", b"1"]


def test_timeout_zero_never_closes(wires):
    wire = wires()
    assert wire.call("CONFIG", "GET", "timeout") == [b"timeout", b"0"]
    assert wire.call("PING") == b"PONG"
    assert not wire.closed_by_server(timeout=1.3)
    assert wire.call("PING") == b"PONG"


# -- client-output-buffer-limit --------------------------------------------------------------------

def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def own_server(tmp_path):
    process = ValqdProcess(tmp_path / "own", "--appendonly", "no").start()
    yield process
    process.stop()
    assert "Traceback" not in process.log()


@pytest.mark.parametrize("kind", ["echo", "peek"])
def test_client_output_buffer_limit(own_server, kind):
    admin = Wire(own_server.port)
    assert admin.call("CONFIG", "SET", "client-output-buffer-limit",
                      "normal 1mb 512kb 1") == b"OK"
    assert admin.call("CONFIG", "GET", "client-output-buffer-limit") == [
        b"client-output-buffer-limit",
        b"normal 1048576 524288 1 replica 268435456 67108864 60 pubsub 33554432 8388608 60"]
    body = os.urandom(100_000)
    if kind == "peek":
        assert admin.call("VALQ", "CREATE", "big") == b"created big"
        for _ in range(10):
            admin.call("VALQ", "PUSH", "big", body)
        # 1000 requests of 40 bytes; each reply is 1 MB: 1 GB if all were built
        flood = encode_command(("VALQ", "PEEK", "big", "COUNT", 10)) * 1000
    else:
        flood = encode_command(("ECHO", body)) * 300  # 30 MB of replies
    baseline = peak_rss(own_server.proc.pid)
    reader = Wire(own_server.port)
    reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    reader_id = reader.call("CLIENT", "ID")
    try:
        reader.send(flood)  # and never read the replies
    except OSError:
        pass  # the server closed the connection while the requests were on their way
    deadline = time.monotonic() + TIMEOUT_S
    while admin.call("CLIENT", "LIST", "ID", reader_id):
        assert time.monotonic() < deadline, "the client that does not read was not closed"
        assert admin.call("PING") == b"PONG"
        time.sleep(0.05)
    assert admin.call("PING") == b"PONG"
    assert admin.call("ECHO", body) == body
    grown = peak_rss(own_server.proc.pid) - baseline
    assert grown < 150 * MB, f"peak memory grew by {grown >> 20} MB"
    assert "closed for overcoming of output buffer limits" in own_server.log()
    reader.close()
    admin.close()


def test_client_that_reads_is_not_disconnected(own_server):
    """The limits bound what waits to be sent, not what was sent: 20 MB of replies, five
    times the hard limit, read as they come. The limits leave room for a test process
    that a loaded machine does not schedule for a while (1 MB of replies is ~1 ms of the
    server's time)."""
    wire = Wire(own_server.port)
    assert wire.call("CONFIG", "SET", "client-output-buffer-limit",
                     "normal 4mb 1mb 5") == b"OK"
    body = os.urandom(200_000)
    sender = send_in_thread(wire, encode_command(("ECHO", body)) * 100)
    for _ in range(100):
        assert wire.reply() == body
    sender.join(TIMEOUT_S)
    assert wire.call("PING") == b"PONG"
    wire.close()


@pytest.mark.parametrize("name", ["proto-max-bulk-len", "client-query-buffer-limit"])
def test_protocol_limits_cannot_lock_every_client_out(wires, name):
    """As Valkey: at least 1mb, or no client (the one that set it included) could send
    even a PING."""
    wire = wires()
    assert wire.call("CONFIG", "SET", name, "1kb") == Error(
        f"ERR CONFIG SET failed (possibly related to argument '{name}') - argument must be "
        "between 1048576 and 9223372036854775807 inclusive")
    assert wire.call("CONFIG", "SET", name, "1mb") == b"OK"
    assert wire.call("PING") == b"PONG"
