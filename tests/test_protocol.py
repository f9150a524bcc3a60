"""RESP over a raw socket against a real valqd process: pipelining, partial reads, inline
commands, protocol errors, RESP2/RESP3 per connection and flow control.

Replies are read with a hiredis Reader (it reads RESP3 too); where the exact encoding is the
point, the raw bytes are compared instead.
"""

import random
import socket

import pytest
from support import Error, encode_command, flushed_wires, send_in_thread

TIMEOUT_S = 10


@pytest.fixture
def connect(valqd):
    """`connect()` opens a raw connection to a server whose queues were flushed."""
    yield from flushed_wires(valqd.port)


# -- pipelining and partial reads ------------------------------------------------------------

def _pipeline(count: int, seed: int) -> tuple[list[bytes], list]:
    """`count` requests mixing CREATE, PUSH, POP, PING and ECHO, with the replies a correct
    server gives, computed from a model of FIFO queues."""
    rng = random.Random(seed)
    queues: dict[str, list[tuple[int, bytes]]] = {}
    next_id: dict[str, int] = {}
    requests: list[bytes] = []
    expected: list = []
    for i in range(count):
        kind = rng.choice(("create", "push", "push", "pop", "ping", "echo", "echo"))
        name = f"pipe{rng.randrange(20)}"
        if kind == "create":
            requests.append(encode_command(("VALQ", "CREATE", name)))
            if name in queues:
                expected.append(Error(f"BUSYQUEUE queue '{name}' already exists"))
            else:
                queues[name], next_id[name] = [], 1
                expected.append(b"created " + name.encode())
        elif kind == "push":
            body = rng.randbytes(rng.choice((0, 1, 10, 100, 1000)))
            requests.append(encode_command(("VALQ", "PUSH", name, body)))
            if name not in queues:
                expected.append(Error(f"NOQUEUE no such queue '{name}'"))
            else:
                queues[name].append((next_id[name], body))
                expected.append(b"%d" % next_id[name])
                next_id[name] += 1
        elif kind == "pop":
            requests.append(encode_command(("VALQ", "POP", name)))
            if name not in queues:
                expected.append(Error(f"NOQUEUE no such queue '{name}'"))
            elif not queues[name]:
                expected.append(b"")
            else:
                message_id, body = queues[name].pop(0)
                expected.append([b"body", body, b"id", b"%d" % message_id])
        elif kind == "ping":
            if i % 2:
                requests.append(encode_command(("PING",)))
                expected.append(b"PONG")
            else:
                requests.append(encode_command(("PING", b"p%d" % i)))
                expected.append(b"p%d" % i)
        else:
            payload = rng.randbytes(rng.choice((0, 1, 2, 50, 500, 5000, 20000)))
            requests.append(encode_command(("ECHO", payload)))
            expected.append(payload)
    return requests, expected


def test_10000_pipelined_commands_in_one_send(connect):
    requests, expected = _pipeline(10_000, seed=1)
    wire = connect()
    sender = send_in_thread(wire, b"".join(requests))  # one sendall; replies read meanwhile
    replies = wire.replies(len(expected))
    sender.join(TIMEOUT_S)
    assert not sender.errors
    for i, (got, want) in enumerate(zip(replies, expected)):
        assert got == want, f"reply {i} to {requests[i][:60]!r}"
    wire.send(encode_command(("PING",)))
    assert wire.reply() == b"PONG"  # nothing extra was sent before it


def test_command_sent_one_byte_at_a_time(connect):
    wire = connect(nodelay=True)
    request = (encode_command(("VALQ", "CREATE", "slow")) + encode_command(("VALQ", "PUSH", "slow", b"a\r\n\0b"))
               + encode_command(("VALQ", "POP", "slow")))
    for i in range(len(request) - 1):
        wire.send(request[i:i + 1])
    assert wire.replies(2) == [b"created slow", b"1"]
    wire.sock.settimeout(0.1)
    with pytest.raises(socket.timeout):  # the POP is not complete without its last byte
        wire.sock.recv(1)
    wire.sock.settimeout(TIMEOUT_S)
    wire.send(request[-1:])
    assert wire.reply() == [b"body", b"a\r\n\0b", b"id", b"1"]


# -- inline commands -------------------------------------------------------------------------

def test_inline_ping(connect):
    wire = connect()
    wire.send(b"PING\r\n")
    assert wire.raw(7) == b"+PONG\r\n"


def test_inline_valq_commands(connect):
    wire = connect()
    wire.send(b"VALQ CREATE q\r\n")
    assert wire.raw(15) == b"$9\r\ncreated q\r\n"
    wire.send(b'VALQ PUSH q "hello world"\r\nVALQ  PUSH  q  \'it\\\'s\'\n')
    assert wire.replies(2) == [b"1", b"2"]
    wire.send(b"VALQ POP q\r\n" + encode_command(("VALQ", "POP", "q")))  # inline, then multibulk
    assert wire.replies(2) == [[b"body", b"hello world", b"id", b"1"],
                               [b"body", b"it's", b"id", b"2"]]


# -- protocol errors -------------------------------------------------------------------------

PUSH_X = encode_command(("VALQ", "PUSH", "q", "x"))


@pytest.mark.parametrize("bad, message", [
    (b"*4\r\n$4\r\nVALQ\r\n$4\r\nPUSH\r\n$1\r\nq\r\n:5\r\n", "expected '$', got ':'"),
    (b"*3\r\n$4\r\nVALQ\r\n$4\r\nPUSH\r\n*1\r\n$1\r\nq\r\n", "expected '$', got '*'"),
    (b"*abc\r\n", "invalid multibulk length"),
    (b"*3\r\n$4\r\nVALQ\r\n$abc\r\n", "invalid bulk length"),
    (b"*2\r\n$4\r\nVALQ\r\n$-1\r\n", "invalid bulk length"),
    (b'VALQ PUSH q "x\r\n', "unbalanced quotes in request"),
], ids=["integer-item", "nested-item", "multibulk-length", "bulk-length", "null-bulk",
        "unbalanced-quotes"])
def test_protocol_error_closes_only_that_connection(connect, bad, message):
    other = connect()
    other.send(encode_command(("VALQ", "CREATE", "q")))
    assert other.reply() == b"created q"
    wire = connect()
    # a good command first, the bad one, then a PUSH that must never run (the good one is
    # inline before an inline request, see the limitation in valqd/resp/parser.py)
    wire.send((encode_command(("PING",)) if bad[:1] == b"*" else b"PING\r\n") + bad + PUSH_X)
    assert wire.replies(2) == [b"PONG", Error(f"ERR Protocol error: {message}")]
    assert wire.closed_by_server()
    other.send(encode_command(("VALQ", "INFO", "q")) + encode_command(("PING",)))
    info, pong = other.replies(2)
    assert dict(zip(info[::2], info[1::2]))[b"msgs"] == b"0"
    assert pong == b"PONG"


def test_too_big_inline_request(connect):
    wire = connect()
    wire.send(b"x" * (64 * 1024 + 1))  # no newline within Valkey's inline limit
    assert wire.reply() == Error("ERR Protocol error: too big inline request")
    assert wire.closed_by_server()


# -- RESP2 and RESP3 -------------------------------------------------------------------------

def test_hello_3_switches_the_connection_to_resp3(connect):
    wire = connect()
    wire.send(encode_command(("VALQ", "CREATE", "q")) + encode_command(("VALQ", "PUSH", "q", "m")))
    assert wire.replies(2) == [b"created q", b"1"]
    wire.send(encode_command(("VALQ", "INFO", "q")))
    assert wire.raw(5) == b"*14\r\n"  # RESP2: a flat array of 7 pairs
    assert len(wire.replies(14)) == 14
    wire.send(encode_command(("CLIENT", "GETNAME")))
    assert wire.raw(5) == b"$-1\r\n"

    wire.send(encode_command(("HELLO", "3")))
    hello = wire.reply()
    assert type(hello) is dict and hello[b"proto"] == 3
    wire.send(encode_command(("VALQ", "INFO", "q")))
    assert wire.raw(4) == b"%7\r\n"
    assert len(wire.replies(14)) == 14  # keys and values, read one by one
    wire.send(encode_command(("CLIENT", "GETNAME")))
    assert wire.raw(3) == b"_\r\n"
    wire.send(encode_command(("VALQ", "POP", "q")))
    assert wire.reply() == {b"body": b"m", b"id": b"1"}


def test_resp2_and_resp3_clients_at_the_same_time(connect):
    resp3, resp2 = connect(), connect()
    resp3.send(encode_command(("HELLO", "3")))
    assert resp3.reply()[b"proto"] == 3
    resp2.send(encode_command(("HELLO", "2")))
    hello2 = resp2.reply()
    assert type(hello2) is list and dict(zip(hello2[::2], hello2[1::2]))[b"proto"] == 2
    resp2.send(encode_command(("VALQ", "CREATE", "q")))
    assert resp2.reply() == b"created q"
    batch = (encode_command(("VALQ", "PUSH", "q", "a")) + encode_command(("VALQ", "POP", "q"))
             + encode_command(("CLIENT", "GETNAME")) + encode_command(("VALQ", "INFO", "q")))
    resp3.send(batch)  # both pipelines are in flight before either is read
    resp2.send(batch)
    push3, pop3, name3, info3 = resp3.replies(4)
    push2, pop2, name2, info2 = resp2.replies(4)
    assert (pop3, name3) == ({b"body": b"a", b"id": push3}, None)
    assert (pop2, name2) == ([b"body", b"a", b"id", push2], None)
    assert type(info3) is dict and len(info3) == 7
    assert type(info2) is list and dict(zip(info2[::2], info2[1::2])).keys() == info3.keys()


# -- flow control ----------------------------------------------------------------------------

def test_client_that_reads_only_after_sending_everything(connect):
    """~48 MB of requests and as much in replies, far beyond both sides' socket buffers. A
    client (a valkey-py pipeline, say) that writes its whole batch before reading must get
    every reply: Valkey keeps reading and buffers the output; it never stops reading."""
    payload = bytes(range(256)) * 64  # 16 KiB
    count = 3000
    wire = connect()
    sender = send_in_thread(wire, encode_command(("ECHO", payload)) * count + encode_command(("PING",)))
    sender.join(TIMEOUT_S / 2)
    if sender.is_alive():
        wire.sock.shutdown(socket.SHUT_RDWR)  # unblock the sender before failing
        sender.join(TIMEOUT_S)
        pytest.fail("the server stopped reading requests while the client was not reading "
                    "replies: a client that sends its whole pipeline first waits forever")
    assert not sender.errors
    replies = wire.replies(count + 1)
    assert replies[-1] == b"PONG"
    assert all(reply == payload for reply in replies[:-1])
