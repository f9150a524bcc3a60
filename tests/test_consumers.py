"""Integration tests of the consumers issue over RESP2 and RESP3: batches, blocking pops,
several queues, WITHMETA, NOACK, LEASE receipts, MACK/MPUSH, priorities, dedup, queue
settings, their errors and docs, and 50 blocking consumers against 20,000 messages.

`client` is a valkey-py client (RESP2 and RESP3) on a shared, flushed valqd process;
`timed_server` runs the real server in-process on a manual clock, so leases and delays run
out when a test says so. Blocking clients run in threads, each on its own connection with a
socket timeout, and every wait is bounded.
"""

import socket
import threading
import time

import pytest
import valkey
from support import (Background, as_map, block, encode_command, stats, valq, valq_error,
                     wait_blocked, wait_until)

RUN_ON_STORES = True  # and again with valqd in front of Valkey (conftest.py)

NOT_INT = "value is not an integer or out of range"
BAD_COUNT = "COUNT must be between 1 and 1000"
BAD_TIMEOUT = "timeout is not an integer or out of range"
BAD_ID = "message id must be a positive integer"
BAD_DELAY = "delay must be an integer between 0 and 18446744073709551615"
BAD_PRIORITY = "priority must be an integer between -2147483648 and 2147483647"
STALE = "message {} in queue 'q' is not leased with that receipt"
META_KEYS = [b"attempts", b"body", b"enqueued_at", b"id", b"lease", b"lease_deadline",
             b"priority"]
T0 = 1_700_000_000_000  # the ManualClock's start


# -- helpers ---------------------------------------------------------------------------------

def msg(reply) -> tuple[int, bytes]:
    m = as_map(reply, [b"body", b"id"])
    return int(m[b"id"]), m[b"body"]


def meta(reply) -> dict:
    m = as_map(reply, META_KEYS)
    return {k.decode(): (v if k in (b"body", b"lease") else int(v)) for k, v in m.items()}


def connect(server, proto=2, timeout=20.0) -> valkey.Valkey:
    """A client of `server` (ValqdProcess or ThreadedServer) with its own socket timeout."""
    return valkey.Valkey(host="127.0.0.1", port=server.port, protocol=proto,
                         socket_timeout=timeout)


# -- POP COUNT -------------------------------------------------------------------------------

def test_pop_count_returns_an_array_of_maps(client):
    valq(client, "CREATE", "q")
    assert valq(client, "MPUSH", "q", "a", "b", "c", "d") == [b"1", b"2", b"3", b"4"]
    got = valq(client, "POP", "q", "COUNT", "3")
    assert [msg(m) for m in got] == [(1, b"a"), (2, b"b"), (3, b"c")]
    assert [msg(m) for m in valq(client, "POP", "q", "count", "1")] == [(4, b"d")]
    assert valq(client, "POP", "q", "COUNT", "1000") == []
    assert valq(client, "POP", "q") == b""  # without COUNT: the module's reply
    assert stats(client)["inflight"] == 4


def test_pop_count_more_than_available(client):
    valq(client, "CREATE", "q")
    valq(client, "MPUSH", "q", "a", "b")
    assert [msg(m) for m in valq(client, "POP", "q", "COUNT", "10")] == [(1, b"a"), (2, b"b")]


@pytest.mark.parametrize("args,message", [
    (("COUNT", "0"), BAD_COUNT), (("COUNT", "1001"), BAD_COUNT), (("COUNT", "-1"), BAD_COUNT),
    (("COUNT", "abc"), BAD_COUNT), (("COUNT", "01"), BAD_COUNT),
    (("COUNT",), "syntax error"), (("COUNT", "1", "COUNT", "2"), "syntax error"),
    (("BLOCK", "-1"), BAD_TIMEOUT), (("BLOCK", "1.5"), BAD_TIMEOUT),
    (("BLOCK", "x"), BAD_TIMEOUT), (("BLOCK",), "syntax error"),
    (("BLOCK", "1", "BLOCK", "2"), "syntax error"), (("NOWAIT",), "syntax error"),
    (("WITHMETA", "x"), "syntax error"),
], ids=" ".join)
def test_pop_option_errors(client, args, message):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "m")
    valq_error(client, ("POP", "q", *args), "ERR", message)
    valq_error(client, ("MPOP", "1", "q", *args), "ERR", message)
    assert stats(client)["ready"] == 1 and stats(client)["blocked"] == 0


def test_pop_options_are_case_insensitive_and_in_any_order(client):
    valq(client, "CREATE", "q")
    valq(client, "MPUSH", "q", "a", "b")
    got = valq(client, "POP", "q", "noack", "withmeta", "count", "2", "block", "10")
    assert [meta(m)["id"] for m in got] == [1, 2]
    assert stats(client)["ready"] + stats(client)["inflight"] == 0


def test_pop_with_options_on_missing_queue(client):
    for args in (("COUNT", "2"), ("BLOCK", "0"), ("WITHMETA",), ("NOACK",)):
        valq_error(client, ("POP", "nope", *args), "NOQUEUE", "no such queue 'nope'")


# -- BLOCK -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args,empty", [
    (("POP", "q", "BLOCK", "150"), b""),
    (("POP", "q", "COUNT", "5", "BLOCK", "150"), []),
    (("POP", "q", "BLOCK", "150", "WITHMETA", "NOACK"), b""),
    (("MPOP", "2", "q", "q2", "BLOCK", "150"), None),
    (("MPOP", "2", "q", "q2", "COUNT", "3", "BLOCK", "150"), None),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else repr(v))
def test_block_timeout_reply_is_the_empty_reply(client, args, empty):
    valq(client, "CREATE", "q")
    valq(client, "CREATE", "q2")
    started = time.monotonic()
    assert valq(client, *args) == empty
    elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 10, elapsed
    assert stats(client)["blocked"] == 0
    assert valq(client, "PUSH", "q", "m") == b"1"  # the connection still works


def test_block_returns_at_once_when_a_message_is_visible(client):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "m")
    started = time.monotonic()
    assert msg(valq(client, "POP", "q", "BLOCK", "0")) == (1, b"m")
    assert time.monotonic() - started < 5


def test_blocked_pop_gets_a_message_pushed_meanwhile(valqd, client):
    proto = client.connection_pool.connection_kwargs.get("protocol", 2)
    valq(client, "CREATE", "q")
    b = block(valqd, client, proto, "POP", "q", "BLOCK", "10000", "WITHMETA")
    assert valq(client, "PUSH", "q", "hello") == b"1"
    m = meta(b.get())
    assert (m["id"], m["body"], m["attempts"]) == (1, b"hello", 1)
    assert stats(client)["inflight"] == 1 and stats(client)["blocked"] == 0


def _prepare_and_trigger(kind, ts, c):
    """Queue `q` set up so that two successive triggers of `kind` each make one message
    visible; returns (trigger(k), ids the triggers make visible, in order)."""
    if kind == "push":
        valq(c, "CREATE", "q")
        return (lambda k: valq(c, "PUSH", "q", f"m{k}")), [1, 2]
    if kind == "delayed":
        valq(c, "CREATE", "q")
        valq(c, "PUSH", "q", "m0", "5")
        valq(c, "PUSH", "q", "m1", "10")
        return (lambda k: ts.advance(5)), [1, 2]
    if kind == "lease":
        valq(c, "CREATE", "q", "VISIBILITY", "10")
        valq(c, "MPUSH", "q", "m0", "m1")
        valq(c, "POP", "q", "COUNT", "2")
        valq(c, "EXTEND", "q", "2", "15")
        return (lambda k: ts.advance(5 if k else 10)), [1, 2]
    if kind == "nack":
        valq(c, "CREATE", "q")
        valq(c, "MPUSH", "q", "m0", "m1")
        valq(c, "POP", "q", "COUNT", "2")
        return (lambda k: valq(c, "NACK", "q", str(k + 1))), [1, 2]
    if kind == "redrive":
        valq(c, "CREATE", "q", "MAXATTEMPTS", "1")
        valq(c, "MPUSH", "q", "m0", "m1")
        valq(c, "POP", "q", "COUNT", "2")
        valq(c, "NACK", "q", "1")
        valq(c, "NACK", "q", "2")
        assert stats(c)["dlq"] == 2
        return (lambda k: valq(c, "REDRIVE", "q", "COUNT", "1")), [1, 2]
    if kind == "resume":
        valq(c, "CREATE", "q")
        valq(c, "PAUSE", "q")
        valq(c, "PUSH", "q", "m0")

        def trigger(k):
            if k == 1:
                valq(c, "PAUSE", "q")
                valq(c, "PUSH", "q", "m1")
                time.sleep(0.05)
                assert stats(c)["blocked"] == 1  # paused: the push woke nobody
            valq(c, "RESUME", "q")
        return trigger, [1, 2]
    if kind == "extend0":  # EXTEND q id 0 gives a message back at once
        valq(c, "CREATE", "q")
        valq(c, "MPUSH", "q", "m0", "m1")
        valq(c, "POP", "q", "COUNT", "2")
        return (lambda k: valq(c, "EXTEND", "q", str(k + 1), "0")), [1, 2]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["push", "delayed", "lease", "nack", "redrive", "resume",
                                  "extend0"])
def test_blocked_clients_woken_in_arrival_order(timed_server, tc, proto, kind):
    trigger, ids = _prepare_and_trigger(kind, timed_server, tc)
    first = block(timed_server, tc, proto, "POP", "q", "BLOCK", "0")
    second = block(timed_server, tc, proto, "POP", "q", "COUNT", "5", "BLOCK", "0")
    trigger(0)
    assert msg(first.get())[0] == ids[0]
    assert not second.done()
    assert stats(tc)["blocked"] == 1
    trigger(1)
    assert [msg(m)[0] for m in second.get()] == [ids[1]]
    s = stats(tc)
    assert (s["blocked"], s["inflight"], s["ready"]) == (0, 2, 0)


@pytest.mark.parametrize("kind", ["mpush", "redrive"])
def test_one_event_readying_several_messages_serves_waiters_in_order(timed_server, tc, proto,
                                                                     kind):
    valq(tc, "CREATE", "q", "MAXATTEMPTS", "1")
    if kind == "redrive":
        valq(tc, "MPUSH", "q", "a", "b", "c")
        for m in valq(tc, "POP", "q", "COUNT", "3"):
            valq(tc, "NACK", "q", msg(m)[0])
    waiters = [block(timed_server, tc, proto, "POP", "q", "BLOCK", "0") for _ in range(3)]
    if kind == "mpush":
        valq(tc, "MPUSH", "q", "a", "b", "c")
    else:
        assert valq(tc, "REDRIVE", "q") == 3
    assert [msg(w.get()) for w in waiters] == [(1, b"a"), (2, b"b"), (3, b"c")]


def test_blocked_mpop_woken_by_a_push_to_any_of_its_queues(timed_server, tc, proto):
    for name in ("a", "b", "c"):
        valq(tc, "CREATE", name)
    w1 = block(timed_server, tc, proto, "MPOP", "3", "a", "b", "c", "BLOCK", "0", name="c")
    w2 = block(timed_server, tc, proto, "POP", "c", "BLOCK", "0", name="c")
    valq(tc, "PUSH", "c", "x")
    reply = w1.get()
    assert reply[0] == b"c" and [msg(m) for m in reply[1]] == [(1, b"x")]
    assert not w2.done()
    valq(tc, "PUSH", "c", "y")
    assert msg(w2.get()) == (2, b"y")
    assert stats(tc, "a")["blocked"] == 0


def test_mpop_naming_a_queue_twice_is_one_blocked_consumer(timed_server, tc, proto):
    valq(tc, "CREATE", "q")
    valq(tc, "CREATE", "r")
    waiter = block(timed_server, tc, proto, "MPOP", "3", "q", "r", "q", "BLOCK", "0")
    assert stats(tc)["blocked"] == 1 and stats(tc, "r")["blocked"] == 1
    valq(tc, "PUSH", "q", "a")
    assert waiter.get()[0] == b"q"
    assert stats(tc)["blocked"] == 0 and stats(tc, "r")["blocked"] == 0
    valq(tc, "PUSH", "q", "b")
    assert msg(valq(tc, "POP", "q")) == (2, b"b")


def test_blocked_pop_waits_out_a_pause_until_its_timeout(timed_server, tc, proto):
    valq(tc, "CREATE", "q")
    valq(tc, "PAUSE", "q")
    valq(tc, "PUSH", "q", "m")
    b = Background(timed_server.port, proto, "VALQ", "POP", "q", "BLOCK", "200")
    assert b.get() == b""
    assert stats(tc)["ready"] == 1


def test_disconnected_blocked_client_takes_no_message(valqd, client):
    valq(client, "CREATE", "q")
    kwargs = client.connection_pool.connection_kwargs
    gone = []
    for args in (("POP", "q", "BLOCK", "0"), ("POP", "q", "BLOCK", "0", "NOACK"),
                 ("POP", "q", "COUNT", "3", "BLOCK", "0")):
        s = socket.create_connection((kwargs["host"], kwargs["port"]), timeout=10)
        s.sendall(encode_command(("VALQ", *args)))
        gone.append(s)
        wait_blocked(client, len(gone))
    proto = kwargs.get("protocol", 2)
    survivor = block(valqd, client, proto, "POP", "q", "BLOCK", "10000")
    for s in gone:
        s.close()
    wait_blocked(client, 1)
    assert valq(client, "PUSH", "q", "precious") == b"1"
    assert msg(survivor.get()) == (1, b"precious")
    assert valq(client, "PUSH", "q", "second") == b"2"
    assert msg(valq(client, "POP", "q")) == (2, b"second")
    s = stats(client)
    assert (s["delivered"], s["blocked"], s["inflight"]) == (2, 0, 2)
    info = client.info("clients")
    assert info["blocked_clients"] == 0


def test_commands_sent_behind_a_blocked_pop_run_after_it(valqd, client):
    valq(client, "CREATE", "q")
    kwargs = client.connection_pool.connection_kwargs
    with socket.create_connection((kwargs["host"], kwargs["port"]), timeout=10) as s:
        s.sendall(encode_command(("VALQ", "POP", "q", "BLOCK", "0")) + encode_command(("PING",)) +
                  encode_command(("VALQ", "POP", "q", "COUNT", "1", "BLOCK", "100")))
        wait_blocked(client, 1)
        time.sleep(0.05)
        assert stats(client)["blocked"] == 1  # the rest waits behind the blocked pop
        valq(client, "PUSH", "q", "m")
        expected = b"*4\r\n$4\r\nbody\r\n$1\r\nm\r\n$2\r\nid\r\n$1\r\n1\r\n+PONG\r\n*0\r\n"
        data = b""
        while len(data) < len(expected):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        assert data == expected


def test_info_blocked_clients_counts_clients_not_queues(timed_server, tc, proto):
    for name in ("a", "b", "c"):
        valq(tc, "CREATE", name)
    waiter = block(timed_server, tc, proto, "MPOP", "3", "a", "b", "c", "BLOCK", "0", name="c")
    try:
        assert tc.info("clients")["blocked_clients"] == 1
    finally:
        valq(tc, "PUSH", "a", "x")
        waiter.get()


# -- MPOP ------------------------------------------------------------------------------------

def test_mpop_takes_from_the_first_queue_with_a_visible_message(client):
    for name in ("a", "b", "c"):
        valq(client, "CREATE", name)
    valq(client, "MPUSH", "b", "b1")
    valq(client, "MPUSH", "c", "c1", "c2", "c3")
    reply = valq(client, "MPOP", "3", "a", "b", "c", "COUNT", "2")
    assert reply[0] == b"b" and [msg(m) for m in reply[1]] == [(1, b"b1")]
    reply = valq(client, "MPOP", "3", "a", "b", "c", "COUNT", "2")
    assert reply[0] == b"c" and [msg(m) for m in reply[1]] == [(1, b"c1"), (2, b"c2")]
    reply = valq(client, "MPOP", "2", "c", "a")
    assert reply[0] == b"c" and [msg(m) for m in reply[1]] == [(3, b"c3")]
    assert valq(client, "MPOP", "3", "a", "b", "c") is None
    assert valq(client, "MPOP", "1", "a", "COUNT", "5", "NOACK") is None
    valq(client, "PUSH", "a", "a1")
    reply = valq(client, "MPOP", "2", "c", "a", "WITHMETA")
    assert reply[0] == b"a" and meta(reply[1][0])["body"] == b"a1"


def test_mpop_skips_a_paused_queue(client):
    valq(client, "CREATE", "a")
    valq(client, "CREATE", "b")
    valq(client, "PUSH", "a", "x")
    valq(client, "PUSH", "b", "y")
    valq(client, "PAUSE", "a")
    assert valq(client, "MPOP", "2", "a", "b")[0] == b"b"


def test_mpop_errors(client):
    valq(client, "CREATE", "a")
    for bad in ("0", "-1", "x", "1.5"):
        valq_error(client, ("MPOP", bad, "a"), "ERR", "numqueues should be greater than 0")
    valq_error(client, ("MPOP", "3", "a", "b"), "ERR",
               "Number of queues can't be greater than number of args")
    valq_error(client, ("MPOP", "2", "a", "nope"), "NOQUEUE", "no such queue 'nope'")
    valq_error(client, ("MPOP", "1"), "ERR", "wrong number of arguments for 'valq|mpop' command")
    valq_error(client, ("MPOP", "1", "a", "EXTRA"), "ERR", "syntax error")


# -- WITHMETA, NOACK -------------------------------------------------------------------------

def test_withmeta_fields(timed_server, tc):
    valq(tc, "CREATE", "q", "VISIBILITY", "10")
    valq(tc, "PUSH", "q", "a", "PRIORITY", "7")
    timed_server.advance(2)
    m = meta(valq(tc, "POP", "q", "WITHMETA"))
    assert m == {"attempts": 1, "body": b"a", "enqueued_at": T0, "id": 1, "lease": b"1-1",
                 "lease_deadline": T0 + 12_000, "priority": 7}
    timed_server.advance(10)
    m2 = meta(valq(tc, "POP", "q", "COUNT", "1", "WITHMETA")[0])
    assert (m2["attempts"], m2["lease_deadline"], m2["enqueued_at"]) == (2, T0 + 22_000, T0)
    assert m2["lease"] != m["lease"] and m2["lease"].startswith(b"1-")
    assert valq(tc, "ACK", "q", "1", "LEASE", m2["lease"]) == b"ack 1"


def test_withmeta_noack_has_no_lease(timed_server, tc):
    valq(tc, "CREATE", "q")
    valq(tc, "PUSH", "q", "a", "PRIORITY", "-3")
    m = meta(valq(tc, "POP", "q", "WITHMETA", "NOACK"))
    assert m == {"attempts": 1, "body": b"a", "enqueued_at": T0, "id": 1, "lease": b"",
                 "lease_deadline": 0, "priority": -3}


def test_noack_removes_messages_as_delivered(client):
    valq(client, "CREATE", "q")
    valq(client, "MPUSH", "q", "a", "b", "c")
    assert msg(valq(client, "POP", "q", "NOACK")) == (1, b"a")
    assert [msg(m) for m in valq(client, "POP", "q", "COUNT", "5", "NOACK")] == \
        [(2, b"b"), (3, b"c")]
    valq_error(client, ("ACK", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")
    s = stats(client)
    assert (s["ready"], s["inflight"], s["delivered"], s["acked"]) == (0, 0, 3, 0)
    assert as_map(valq(client, "INFO", "q"))[b"msgs"] == b"0"


# -- LEASE receipts ----------------------------------------------------------------------------

def test_too_slow_worker_cannot_ack_or_extend_with_its_old_receipt(timed_server, tc):
    valq(tc, "CREATE", "q", "VISIBILITY", "10")
    valq(tc, "PUSH", "q", "job")
    slow = meta(valq(tc, "POP", "q", "WITHMETA"))
    timed_server.advance(10)  # the slow worker's lease ran out
    # back in the queue, nobody has it yet: the old receipt is already stale
    valq_error(tc, ("ACK", "q", "1", "LEASE", slow["lease"]), "NOLEASE", STALE.format(1))
    fast = meta(valq(tc, "POP", "q", "WITHMETA"))
    assert fast["id"] == 1 and fast["attempts"] == 2
    for args in (("ACK", "q", "1", "LEASE", slow["lease"]),
                 ("EXTEND", "q", "1", "60", "LEASE", slow["lease"]),
                 ("NACK", "q", "1", "LEASE", slow["lease"]),
                 ("NACK", "q", "1", "5", "LEASE", slow["lease"], "REASON", "x")):
        valq_error(tc, args, "NOLEASE", STALE.format(1))
    g = as_map(valq(tc, "GET", "q", "1"))
    assert g[b"state"] == b"inflight" and int(g[b"lease_deadline"]) == T0 + 20_000
    assert g[b"last_reason"] is None
    assert valq(tc, "EXTEND", "q", "1", "30", "LEASE", fast["lease"]) == b"extend"
    assert valq(tc, "ACK", "q", "1", "LEASE", fast["lease"]) == b"ack 1"
    valq_error(tc, ("ACK", "q", "1", "LEASE", fast["lease"]), "NOLEASE", STALE.format(1))
    assert stats(tc)["acked"] == 1


def test_stale_receipt_after_by_id_extend_stays_stale(timed_server, tc):
    valq(tc, "CREATE", "q", "VISIBILITY", "10")
    valq(tc, "PUSH", "q", "job")
    old = meta(valq(tc, "POP", "q", "WITHMETA"))
    timed_server.advance(10)
    assert valq(tc, "EXTEND", "q", "1", "60") == b"extend"  # the module's by-id form
    valq_error(tc, ("ACK", "q", "1", "LEASE", old["lease"]), "NOLEASE", STALE.format(1))


def test_without_lease_the_module_by_id_behaviour_stays(timed_server, tc):
    valq(tc, "CREATE", "q", "VISIBILITY", "10")
    valq(tc, "PUSH", "q", "job")
    valq(tc, "POP", "q")
    timed_server.advance(10)
    valq(tc, "POP", "q")
    assert valq(tc, "EXTEND", "q", "1", "5") == b"extend"
    assert valq(tc, "ACK", "q", "1") == b"ack 1"


def test_lease_errors(client):
    valq(client, "CREATE", "q")
    valq(client, "MPUSH", "q", "a", "b")
    m1, m2 = (meta(m) for m in valq(client, "POP", "q", "COUNT", "2", "WITHMETA"))
    # receipts are two plain decimal numbers, read as strictly as every other number
    for bad in ("garbage", "1", "1-", "-1", "1-x", "x-1", " 1-1", "1-1 ", "+1-1", "1_0-1",
                "01-1", "1-+1", "1--1"):
        valq_error(client, ("ACK", "q", "1", "LEASE", bad), "ERR", "invalid lease receipt")
        valq_error(client, ("EXTEND", "q", "1", "5", "LEASE", bad), "ERR",
                   "invalid lease receipt")
        valq_error(client, ("NACK", "q", "1", "LEASE", bad), "ERR", "invalid lease receipt")
    # a receipt of another message
    valq_error(client, ("ACK", "q", "1", "LEASE", m2["lease"]), "NOLEASE", STALE.format(1))
    valq_error(client, ("ACK", "q", "1", "LEASE"), "ERR", "syntax error")
    valq_error(client, ("ACK", "q", "1", "LEASE", m1["lease"], "LEASE", m1["lease"]), "ERR",
               "syntax error")
    valq_error(client, ("ACK", "q", "1", "REASON", "x"), "ERR", "syntax error")
    valq_error(client, ("EXTEND", "q", "1", "5", "REASON", "x"), "ERR", "syntax error")
    valq_error(client, ("ACK", "q", "1", "NOPE"), "ERR", "syntax error")
    valq_error(client, ("NACK", "q", "1", "REASON"), "ERR", "syntax error")
    valq_error(client, ("NACK", "q", "1", "REASON", "a", "REASON", "b"), "ERR", "syntax error")
    valq_error(client, ("NACK", "q", "1", "x"), "ERR", BAD_DELAY)
    valq_error(client, ("NACK", "q", "1", "-1"), "ERR", BAD_DELAY)
    valq_error(client, ("NACK", "q", "0"), "ERR", BAD_ID)
    valq_error(client, ("NACK", "q", "9"), "NOMSG", "no message with id 9 in queue 'q'")
    valq_error(client, ("NACK", "nope", "1"), "NOQUEUE", "no such queue 'nope'")
    valq_error(client, ("EXTEND", "q", "1", "43201", "LEASE", m1["lease"]), "ERR",
               "seconds must be between 0 and 43200")
    s = stats(client)
    assert (s["inflight"], s["acked"], s["nacked"]) == (2, 0, 0)
    assert valq(client, "ACK", "q", "1", "lease", m1["lease"]) == b"ack 1"


# -- NACK ------------------------------------------------------------------------------------

def test_nack_delay_reason_and_dlq(timed_server, tc):
    valq(tc, "CREATE", "q", "MAXATTEMPTS", "3", "BACKOFF", "FIXED", "30")
    valq(tc, "MPUSH", "q", "a", "b")
    m = meta(valq(tc, "POP", "q", "WITHMETA"))
    assert valq(tc, "NACK", "q", "1", "5", "LEASE", m["lease"], "REASON", "db down") == \
        b"nack 1"
    g = as_map(valq(tc, "GET", "q", "1"))
    assert (g[b"state"], int(g[b"due_at"]), g[b"last_reason"]) == \
        (b"delayed", T0 + 5000, b"db down")
    assert msg(valq(tc, "POP", "q")) == (2, b"b")
    valq(tc, "NACK", "q", "2", "0")  # explicit 0: visible at once despite the backoff
    assert msg(valq(tc, "POP", "q")) == (2, b"b")
    valq(tc, "NACK", "q", "2")  # no delay: the backoff
    assert as_map(valq(tc, "GET", "q", "2"))[b"due_at"] == str(T0 + 30_000).encode()
    timed_server.advance(5)
    assert msg(valq(tc, "POP", "q")) == (1, b"a")
    valq(tc, "NACK", "q", "1", "0")
    assert msg(valq(tc, "POP", "q")) == (1, b"a")  # third and last attempt
    timed_server.advance(1)
    valq_error(tc, ("NACK", "q", "1", "LEASE", m["lease"]), "NOLEASE", STALE.format(1))
    valq(tc, "PUSH", "q", "c")
    valq_error(tc, ("NACK", "q", "3"), "NOLEASE", "message 3 in queue 'q' is not in flight")
    valq_error(tc, ("NACK", "q", "2"), "NOMSG", "no message with id 2 in queue 'q'")
    assert valq(tc, "NACK", "q", "1", "100", "REASON", "still down") == b"nack 1"
    g = as_map(valq(tc, "GET", "q", "1"))
    assert (g[b"state"], int(g[b"dead_at"]), g[b"last_reason"], g[b"attempts"]) == \
        (b"dlq", T0 + 6000, b"still down", b"3")
    s = stats(tc)
    assert (s["nacked"], s["dead_lettered"], s["dlq"]) == (5, 1, 1)


# -- MACK, MPUSH -----------------------------------------------------------------------------

def test_mack(client):
    valq(client, "CREATE", "q")
    valq(client, "MPUSH", "q", "a", "b", "c", "d")
    valq(client, "PUSH", "q", "later", "100")
    valq(client, "POP", "q", "COUNT", "2")
    # in flight (1, 2) and visible (3) are acked; missing (9), delayed (5), repeats are not
    assert valq(client, "MACK", "q", "1", "2", "3", "9", "5", "1") == 3
    assert valq(client, "MACK", "q", "9") == 0
    s = stats(client)
    assert (s["acked"], s["ready"], s["delayed"]) == (3, 1, 1)
    valq_error(client, ("MACK", "q", "4", "x"), "ERR", BAD_ID)
    valq_error(client, ("MACK", "q", "0"), "ERR", BAD_ID)
    assert stats(client)["ready"] == 1  # a bad id acks nothing
    valq_error(client, ("MACK", "nope", "1"), "NOQUEUE", "no such queue 'nope'")
    valq_error(client, ("MACK", "q"), "ERR", "wrong number of arguments for 'valq|mack' command")


def test_mpush(client):
    valq(client, "CREATE", "q", "MAXLEN", "4")
    assert valq(client, "MPUSH", "q", "a", b"\x00\xff", "") == [b"1", b"2", b"3"]
    valq_error(client, ("MPUSH", "q", "x", "y"), "QUEUEFULL", "queue 'q' is full (maxlen 4)")
    assert stats(client)["id_sequence"] == 3  # all or nothing
    assert valq(client, "MPUSH", "q", "d") == [b"4"]
    assert [msg(m) for m in valq(client, "POP", "q", "COUNT", "10")] == \
        [(1, b"a"), (2, b"\x00\xff"), (3, b""), (4, b"d")]
    valq_error(client, ("MPUSH", "nope", "a"), "NOQUEUE", "no such queue 'nope'")
    valq_error(client, ("MPUSH", "q"), "ERR",
               "wrong number of arguments for 'valq|mpush' command")


def test_mpush_body_size_limit(client):
    valq(client, "CREATE", "q")
    client.config_set("max-message-size", "10")
    try:
        valq_error(client, ("MPUSH", "q", "ok", "x" * 11), "ERR",
                   "message body is 11 bytes, more than max-message-size (10)")
        assert stats(client)["id_sequence"] == 0
    finally:
        client.config_set("max-message-size", str(1 << 20))


# -- PUSH PRIORITY / DEDUP -------------------------------------------------------------------

def test_push_priority_order(client):
    valq(client, "CREATE", "q")
    for body, prio in (("a", None), ("b", "5"), ("c", "-1"), ("d", "5"), ("e", "0"),
                       ("f", "2147483647"), ("g", "-2147483648")):
        args = ("PUSH", "q", body) + (("priority", prio) if prio else ())
        valq(client, *args)
    got = [msg(m)[1] for m in valq(client, "POP", "q", "COUNT", "10")]
    assert got == [b"f", b"b", b"d", b"a", b"e", b"c", b"g"]


def test_push_priority_with_delay(timed_server, tc):
    valq(tc, "CREATE", "q")
    valq(tc, "PUSH", "q", "low")
    valq(tc, "PUSH", "q", "high-later", "5", "PRIORITY", "3")
    valq(tc, "PUSH", "q", "mid", "PRIORITY", "1")
    timed_server.advance(5)
    assert [msg(m)[1] for m in valq(tc, "POP", "q", "COUNT", "10")] == \
        [b"high-later", b"mid", b"low"]


def test_push_dedup(timed_server, tc):
    valq(tc, "CREATE", "q", "DEDUPWINDOW", "60")
    assert valq(tc, "PUSH", "q", "a", "DEDUP", "order-17") == b"1"
    assert valq(tc, "PUSH", "q", "b", "DEDUP", "order-17") == b"1"
    assert valq(tc, "PUSH", "q", "c", "10", "PRIORITY", "4", "dedup", "order-17") == b"1"
    assert valq(tc, "MPUSH", "q", "x") == [b"2"]  # MPUSH has no dedup
    assert valq(tc, "PUSH", "q", "d", "DEDUP", "order-18") == b"3"
    s = stats(tc)
    assert (s["ready"], s["pushed"], s["deduplicated"]) == (3, 3, 2)
    assert msg(valq(tc, "POP", "q")) == (1, b"a")
    valq(tc, "ACK", "q", "1")
    timed_server.advance(59.999)
    assert valq(tc, "PUSH", "q", "e", "DEDUP", "order-17") == b"1"
    timed_server.advance(0.001)
    assert valq(tc, "PUSH", "q", "f", "DEDUP", "order-17") == b"4"


def test_push_errors(client):
    valq(client, "CREATE", "q", "MAXLEN", "1")
    for bad in ("2147483648", "-2147483649", "x", "1.0", "+1"):
        valq_error(client, ("PUSH", "q", "m", "PRIORITY", bad), "ERR", BAD_PRIORITY)
    valq_error(client, ("PUSH", "q", "m", "PRIORITY"), "ERR", "syntax error")
    valq_error(client, ("PUSH", "q", "m", "DEDUP"), "ERR", "syntax error")
    valq_error(client, ("PUSH", "q", "m", "0", "NOPE", "1"), "ERR", "syntax error")
    valq_error(client, ("PUSH", "q", "m", "0", "1"), "ERR", "syntax error")
    valq_error(client, ("PUSH", "q", "m", "soon", "PRIORITY", "1"), "ERR", BAD_DELAY)
    valq_error(client, ("PUSH", "nope", "m", "PRIORITY", "1"), "NOQUEUE",
               "no such queue 'nope'")
    assert stats(client)["id_sequence"] == 0
    assert valq(client, "PUSH", "q", "m", "DEDUP", "k") == b"1"
    valq_error(client, ("PUSH", "q", "m", "PRIORITY", "1"), "QUEUEFULL",
               "queue 'q' is full (maxlen 1)")
    valq_error(client, ("PUSH", "q", "m"), "QUEUEFULL", "queue 'q' is full (maxlen 1)")
    valq_error(client, ("PUSH", "q", "m", "5"), "QUEUEFULL", "queue 'q' is full (maxlen 1)")
    assert valq(client, "PUSH", "q", "m", "DEDUP", "k") == b"1"  # a duplicate stores nothing


# -- CREATE / UPDATE settings ----------------------------------------------------------------

SETTING_FIELDS = ("visibility_timeout", "max_delivery_attempts", "retention_period", "backoff",
                  "dedup_window", "maxlen")


def settings_of(c, name="q"):
    s = stats(c, name)
    return tuple(s[k] for k in SETTING_FIELDS)


def test_create_defaults_in_stats(client):
    valq(client, "CREATE", "q")
    assert settings_of(client) == (30, 5, 86400, "none", 300, 0)


def test_create_with_keywords(client):
    assert valq(client, "CREATE", "q", "visibility", "10", "MAXATTEMPTS", "3", "RETENTION",
                "600", "BACKOFF", "exponential", "2", "60", "DEDUPWINDOW", "30", "MAXLEN",
                "100") == b"created q"
    assert settings_of(client) == (10, 3, 600, "exponential 2 60", 30, 100)
    info = as_map(valq(client, "INFO", "q"))
    assert sorted(info) == [b"delayed_msgs", b"dlq_msgs", b"id_sequence",
                            b"max_delivery_attempts", b"msgs", b"retention_period",
                            b"visibility_timeout"]
    assert (info[b"visibility_timeout"], info[b"max_delivery_attempts"],
            info[b"retention_period"]) == (b"10", b"3", b"600")


def test_create_positionals_then_keywords(client):
    valq(client, "CREATE", "q", "15", "4", "MAXLEN", "7", "BACKOFF", "FIXED", "5")
    assert settings_of(client) == (15, 4, 86400, "fixed 5", 300, 7)
    valq(client, "CREATE", "q2", "15", "4", "120", "BACKOFF", "NONE")
    assert settings_of(client, "q2") == (15, 4, 120, "none", 300, 0)
    # keywords override the positional values they name
    valq(client, "CREATE", "q3", "15", "VISIBILITY", "20")
    assert settings_of(client, "q3")[0] == 20


def test_update_with_keywords_changes_only_what_is_named(client):
    valq(client, "CREATE", "q", "10", "3", "600", "BACKOFF", "FIXED", "4", "MAXLEN", "9")
    assert valq(client, "UPDATE", "q", "DEDUPWINDOW", "50") == b"updated q"
    assert settings_of(client) == (10, 3, 600, "fixed 4", 50, 9)
    valq(client, "UPDATE", "q", "BACKOFF", "NONE", "MAXLEN", "0", "VISIBILITY", "1")
    assert settings_of(client) == (1, 3, 600, "none", 50, 0)
    valq(client, "UPDATE", "q", "20", "2", "60")  # the module's form keeps the others
    assert settings_of(client) == (20, 2, 60, "none", 50, 0)
    valq(client, "UPDATE", "q", "backoff", "Exponential", "1", "1")
    assert settings_of(client)[3] == "exponential 1 1"


@pytest.mark.parametrize("args,message", [
    (("VISIBILITY", "0"), "visibility_timeout must be between 1 and 43200"),
    (("VISIBILITY", "43201"), "visibility_timeout must be between 1 and 43200"),
    (("MAXATTEMPTS", "21"), "max_delivery_attempts must be between 1 and 20"),
    (("RETENTION", "59"), "retention_period must be between 60 and 604800"),
    (("DEDUPWINDOW", "0"), "dedup_window must be between 1 and 604800"),
    (("DEDUPWINDOW", "604801"), "dedup_window must be between 1 and 604800"),
    (("MAXLEN", "-1"), "maxlen must be between 0 and 9223372036854775807"),
    (("BACKOFF", "LINEAR", "1"), "backoff must be NONE, FIXED or EXPONENTIAL"),
    (("BACKOFF", "FIXED", "604801"), "backoff seconds must be between 0 and 604800"),
    (("BACKOFF", "FIXED", "-1"), "backoff seconds must be between 0 and 604800"),
    (("BACKOFF", "EXPONENTIAL", "10", "5"), "exponential backoff max must not be below its base"),
    (("BACKOFF", "EXPONENTIAL", "1", "604801"), "backoff seconds must be between 0 and 604800"),
    (("BACKOFF", "FIXED"), "syntax error"),
    (("BACKOFF", "EXPONENTIAL", "1"), "syntax error"),
    (("BACKOFF",), "syntax error"),
    (("MAXLEN",), "syntax error"),
    (("MAXLEN", "x"), NOT_INT),
    (("VISIBILITY", "1.5"), NOT_INT),
    (("MAXLEN", "1", "NOPE", "1"), "syntax error"),
    (("MAXLEN", "1", "MAXLEN", "2"), "MAXLEN given twice"),
    (("visibility", "5", "VISIBILITY", "6"), "VISIBILITY given twice"),
    (("BACKOFF", "NONE", "BACKOFF", "FIXED", "1"), "BACKOFF given twice"),
], ids=" ".join)
def test_setting_keyword_errors(client, args, message):
    valq_error(client, ("CREATE", "q", *args), "ERR", message)
    assert valq(client, "LIST") == []
    valq(client, "CREATE", "q", "VISIBILITY", "7")
    valq_error(client, ("UPDATE", "q", *args), "ERR", message)
    assert settings_of(client) == (7, 5, 86400, "none", 300, 0)


def test_create_update_errors(client):
    valq_error(client, ("UPDATE", "nope", "MAXLEN", "1"), "NOQUEUE", "no such queue 'nope'")
    valq(client, "CREATE", "q")
    valq_error(client, ("CREATE", "q", "MAXLEN", "1"), "BUSYQUEUE", "queue 'q' already exists")
    valq_error(client, ("CREATE", "q2", "10", "3", "600", "7"), "ERR", "syntax error")
    valq_error(client, ("UPDATE", "q", "10", "3", "600", "MAXLEN", "1"), "ERR",
               "wrong number of arguments for 'valq|update' command")
    valq_error(client, ("UPDATE", "q", "10", "MAXLEN", "1"), "ERR", NOT_INT)
    valq_error(client, ("UPDATE", "q", "NOPE", "1"), "ERR",
               "wrong number of arguments for 'valq|update' command")
    valq_error(client, ("CREATE", "q2", "NOPE", "1"), "ERR", NOT_INT)


def test_settings_take_effect(timed_server, tc):
    valq(tc, "CREATE", "q", "VISIBILITY", "5", "MAXATTEMPTS", "3", "BACKOFF", "EXPONENTIAL",
         "2", "3", "RETENTION", "60")
    valq(tc, "PUSH", "q", "m")
    m = meta(valq(tc, "POP", "q", "WITHMETA"))
    assert m["lease_deadline"] == T0 + 5000
    timed_server.advance(5)  # lease out: backoff 2 s
    assert valq(tc, "POP", "q") == b""
    timed_server.advance(1.999)
    assert valq(tc, "POP", "q") == b""
    timed_server.advance(0.001)
    assert msg(valq(tc, "POP", "q")) == (1, b"m")
    valq(tc, "NACK", "q", "1")  # second failure: 4 s capped at 3
    g = as_map(valq(tc, "GET", "q", "1"))
    assert int(g[b"due_at"]) == T0 + 7000 + 3000
    timed_server.advance(3)
    valq(tc, "POP", "q")
    timed_server.advance(5)  # third and last attempt ran out
    g = as_map(valq(tc, "GET", "q", "1"))
    assert (g[b"state"], int(g[b"dead_at"])) == (b"dlq", T0 + 15_000)
    timed_server.advance(60)
    valq_error(tc, ("GET", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")
    s = stats(tc)
    assert (s["expired"], s["nacked"], s["dead_lettered"], s["dropped"]) == (2, 1, 1, 1)


# -- docs ------------------------------------------------------------------------------------

def _tokens(node) -> set:
    """Every name and token in a COMMAND DOCS argument tree."""
    found = set()
    if isinstance(node, dict):
        node = [x for kv in node.items() for x in kv]
    if isinstance(node, list):
        for i, item in enumerate(node):
            if item in (b"name", b"token") and i + 1 < len(node) and \
                    isinstance(node[i + 1], bytes):
                found.add(node[i + 1].decode())
            found |= _tokens(item)
    return found


def _subcommand_docs(c) -> dict:
    reply = c.execute_command("COMMAND DOCS", "valq")
    top = as_map(reply) if isinstance(reply, dict) else dict(zip(reply[0::2], reply[1::2]))
    valq_doc = top[b"valq"]
    valq_doc = valq_doc if isinstance(valq_doc, dict) else dict(zip(valq_doc[0::2],
                                                                    valq_doc[1::2]))
    subs = valq_doc[b"subcommands"]
    subs = subs if isinstance(subs, dict) else dict(zip(subs[0::2], subs[1::2]))
    out = {}
    for name, doc in subs.items():
        out[name.decode()] = doc if isinstance(doc, dict) else dict(zip(doc[0::2], doc[1::2]))
    return out


@pytest.mark.parametrize("sub,expected", [
    ("pop", {"queue", "COUNT", "BLOCK", "WITHMETA", "NOACK"}),
    ("mpop", {"numqueues", "queue", "COUNT", "BLOCK", "WITHMETA", "NOACK"}),
    ("ack", {"queue", "id", "LEASE"}),
    ("extend", {"queue", "id", "seconds", "LEASE"}),
    ("nack", {"queue", "id", "delay", "LEASE", "REASON"}),
    ("mack", {"queue", "id"}),
    ("mpush", {"queue", "body"}),
    ("push", {"queue", "body", "delay", "PRIORITY", "DEDUP"}),
    ("create", {"VISIBILITY", "MAXATTEMPTS", "RETENTION", "BACKOFF", "NONE", "FIXED",
                "EXPONENTIAL", "DEDUPWINDOW", "MAXLEN"}),
    ("update", {"VISIBILITY", "MAXATTEMPTS", "RETENTION", "BACKOFF", "NONE", "FIXED",
                "EXPONENTIAL", "DEDUPWINDOW", "MAXLEN", "visibility_timeout"}),
])
def test_command_docs_describe_the_new_syntax(client, sub, expected):
    doc = _subcommand_docs(client)[f"valq|{sub}"]
    assert expected <= _tokens(doc[b"arguments"])
    assert doc[b"summary"]


def test_help_lists_the_new_subcommands_with_their_summaries(client):
    lines = valq(client, "HELP")
    docs = _subcommand_docs(client)
    for sub in ("mpush", "mpop", "mack", "nack"):
        assert f"valq {sub} - {docs[f'valq|{sub}'][b'summary'].decode()}".encode() in lines
    info = client.execute_command("COMMAND INFO", "valq")
    assert info  # and the arity of the new forms is Valkey's signed arity
    for sub, arity in (("pop", -3), ("mpop", -4), ("mack", -4), ("mpush", -4), ("nack", -4),
                       ("push", -4), ("ack", -4), ("extend", -5)):
        entry = client.execute_command("COMMAND INFO", f"valq|{sub}")[0]
        assert entry[0] == f"valq|{sub}".encode() and entry[1] == arity


# -- load: 50 blocking consumers, 20,000 messages ------------------------------------------

CONSUMERS = 50
PRODUCERS = 4
MESSAGES = 20_000


def test_fifty_blocking_consumers_each_message_once(valqd):
    admin = valqd.client(protocol=2)
    admin.flushall()
    valq(admin, "CREATE", "q", "VISIBILITY", "3600")
    got: list[list[int]] = [[] for _ in range(CONSUMERS)]
    errors: list[BaseException] = []
    clients = [connect(valqd, 2 + i % 2, 30) for i in range(CONSUMERS)]

    def consume(i):
        c = clients[i]
        try:
            while True:
                m = as_map(valq(c, "POP", "q", "BLOCK", "0"))
                valq(c, "ACK", "q", m[b"id"])
                if m[b"body"] == b"STOP":
                    return
                got[i].append(int(m[b"id"]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pushed: list[list[int]] = [[] for _ in range(PRODUCERS)]

    def produce(p):
        c = connect(valqd, 2, 30)
        try:
            per = MESSAGES // PRODUCERS
            for start in range(0, per, 500):
                pipe = c.pipeline(transaction=False)
                for k in range(start, min(start + 500, per)):
                    if p % 2:
                        pipe.execute_command("VALQ", "PUSH", "q", f"p{p}-{k}")
                    elif k % 50 == 0:
                        pipe.execute_command("VALQ", "MPUSH", "q",
                                             *[f"p{p}-{j}" for j in range(k, k + 50)])
                for reply in pipe.execute():
                    pushed[p] += [int(x) for x in reply] if isinstance(reply, list) \
                        else [int(reply)]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            c.close()

    consumers = [threading.Thread(target=consume, args=(i,), daemon=True)
                 for i in range(CONSUMERS)]
    try:
        for t in consumers:
            t.start()
        wait_until(lambda: stats(admin)["blocked"] == CONSUMERS, 30, "consumers blocked")
        producers = [threading.Thread(target=produce, args=(p,), daemon=True)
                     for p in range(PRODUCERS)]
        for t in producers:
            t.start()
        deadline = time.monotonic() + 120
        for t in producers:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in producers), "producers hung"
        assert not errors, errors
        valq(admin, "MPUSH", "q", *["STOP"] * CONSUMERS)
        for t in consumers:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in consumers), "consumers hung"
    finally:
        if any(t.is_alive() for t in consumers):  # unstick them before failing
            valq(admin, "MPUSH", "q", *["STOP"] * CONSUMERS)
            for t in consumers:
                t.join(5)
        for c in clients:
            c.close()
    assert not errors, errors
    all_pushed = sorted(i for ids in pushed for i in ids)
    assert len(all_pushed) == MESSAGES
    delivered = [i for ids in got for i in ids]
    assert len(delivered) == len(set(delivered)) == MESSAGES  # exactly once
    assert sorted(delivered) == all_pushed
    assert min(len(ids) for ids in got) >= 5, sorted(len(ids) for ids in got)
    s = stats(admin)
    assert (s["pushed"], s["delivered"], s["acked"]) == (MESSAGES + CONSUMERS,) * 3
    assert (s["ready"], s["inflight"], s["blocked"], s["expired"]) == (0, 0, 0, 0)
    admin.close()
