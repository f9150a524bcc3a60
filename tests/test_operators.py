"""Integration tests of the operators issue: GET, PEEK, CANCEL, RESCHEDULE, REDRIVE, PAUSE and
RESUME, STATS, INFO queues and commandstats, SLOWLOG, live events over pub/sub on both
protocols, the Prometheus endpoint, and the state that must survive a restart.

`client` is a valkey-py client (RESP2 and RESP3) on a shared, flushed valqd process;
`timed_server` runs the real server in-process on a manual clock. Pub/sub is read on a raw
socket with hiredis, so the exact reply types (RESP2 arrays, RESP3 pushes) are checked.
"""

import socket
import time
import urllib.error
import urllib.request

import hiredis
import pytest
from prometheus_client.parser import text_string_to_metric_families
from valkey.exceptions import ResponseError

from support import (Background, Error, ManualClock, ThreadedServer, Wire, as_map, valq,
                     valq_error, wait_until)
from support import stats as support_stats

RUN_ON_STORES = True  # and again with valqd in front of Valkey (conftest.py)

T0 = 1_700_000_000_000  # the ManualClock's start
BAD_ID = "message id must be a positive integer"
BAD_DELAY = "delay must be an integer between 0 and 18446744073709551615"
BAD_COUNT = "COUNT must be between 1 and 1000"
COUNTER_NAMES = ("pushed", "delivered", "acked", "nacked", "expired", "dead_lettered",
                 "dropped", "deduplicated", "redriven", "cancelled")
STATS_KEYS = sorted([*COUNTER_NAMES, "backoff", "blocked", "dedup_window", "delayed", "dlq",
                     "id_sequence", "inflight", "max_delivery_attempts", "maxlen",
                     "oldest_ready_age_ms", "paused", "ready", "retention_period",
                     "visibility_timeout"])
GET_KEYS = ["attempts", "body", "enqueued_at", "id", "last_reason", "priority", "state"]


# -- helpers ---------------------------------------------------------------------------------

def get(c, message_id, name="q") -> dict:
    """VALQ GET as a dict of str keys; numbers as ints."""
    m = as_map(valq(c, "GET", name, message_id))
    out = {}
    for k, v in m.items():
        key = k.decode()
        out[key] = v if key in ("body", "last_reason", "state") else int(v)
    return out


def peek(c, *args, name="q") -> list[int]:
    return [int(as_map(m)[b"id"]) for m in valq(c, "PEEK", name, *args)]


def pop_ids(c, count=1000, name="q") -> list[int]:
    return [int(as_map(m)[b"id"]) for m in valq(c, "POP", name, "COUNT", count)]


def stats(c, name="q") -> dict:
    return support_stats(c, name, STATS_KEYS)


def subscriber(port: int, proto: int = 2) -> Wire:
    """A raw connection (RESP3 when `proto` is 3): pub/sub messages exactly as sent."""
    wire = Wire(port)
    if proto == 3:
        assert wire.call("HELLO", "3")[b"proto"] == 3
    return wire


# -- GET -------------------------------------------------------------------------------------

def test_get_in_every_state(timed_server, tc):
    valq(tc, "CREATE", "q", "VISIBILITY", "10", "MAXATTEMPTS", "2")
    valq(tc, "PUSH", "q", "ready", "PRIORITY", "3")  # 1
    valq(tc, "PUSH", "q", "later", "20", "PRIORITY", "-1")  # 2
    valq(tc, "PUSH", "q", "flying")  # 3
    timed_server.advance(1)
    assert get(tc, 1) == {"attempts": 0, "body": b"ready", "enqueued_at": T0, "id": 1,
                          "last_reason": None, "priority": 3, "state": b"ready"}
    assert get(tc, 2) == {"attempts": 0, "body": b"later", "due_at": T0 + 20_000,
                          "enqueued_at": T0, "id": 2, "last_reason": None, "priority": -1,
                          "state": b"delayed"}
    valq(tc, "POP", "q", "COUNT", "2")  # 1 and 3
    assert get(tc, 3) == {"attempts": 1, "body": b"flying", "enqueued_at": T0, "id": 3,
                          "last_reason": None, "lease_deadline": T0 + 11_000, "priority": 0,
                          "state": b"inflight"}
    valq(tc, "NACK", "q", "3", "REASON", "first try")
    assert get(tc, 3)["state"] == b"ready" and get(tc, 3)["last_reason"] == b"first try"
    valq(tc, "POP", "q", "COUNT", "2")
    timed_server.advance(2)
    valq(tc, "NACK", "q", "3", "REASON", "second try")
    assert get(tc, 3) == {"attempts": 2, "body": b"flying", "dead_at": T0 + 3000,
                          "enqueued_at": T0, "id": 3, "last_reason": b"second try",
                          "priority": 0, "state": b"dlq"}
    # the exact keys of each state, in ascending order
    as_map(valq(tc, "GET", "q", "3"), GET_KEYS + ["dead_at"])
    as_map(valq(tc, "GET", "q", "2"), GET_KEYS + ["due_at"])
    as_map(valq(tc, "GET", "q", "1"), GET_KEYS + ["lease_deadline"])


def test_get_errors(client):
    valq(client, "CREATE", "q")
    valq_error(client, ("GET", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")
    valq_error(client, ("GET", "nope", "1"), "NOQUEUE", "no such queue 'nope'")
    for bad in ("0", "-1", "x", "01"):
        valq_error(client, ("GET", "q", bad), "ERR", BAD_ID)
    valq_error(client, ("GET", "q"), "ERR", "wrong number of arguments for 'valq|get' command")
    valq_error(client, ("GET", "q", "1", "2"), "ERR",
               "wrong number of arguments for 'valq|get' command")
    valq(client, "PUSH", "q", "m")
    valq(client, "ACK", "q", "1")
    valq_error(client, ("GET", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")


def test_get_binary_body_and_reason(client):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", b"\x00\xff\r\n")
    valq(client, "POP", "q")
    valq(client, "NACK", "q", "1", "REASON", b"bad\r\nbytes\x00")
    g = get(client, 1)
    assert (g["body"], g["last_reason"]) == (b"\x00\xff\r\n", b"bad\r\nbytes\x00")


# -- PEEK ------------------------------------------------------------------------------------

def test_peek_ready_order_equals_pop_order(timed_server, tc):
    valq(tc, "CREATE", "q", "VISIBILITY", "10")
    plan = [("a", None, None), ("b", "2", None), ("c", None, "5"), ("d", "2", "5"),
            ("e", "-1", None), ("f", None, None), ("g", "2", None), ("h", None, "3"),
            ("i", "-1", "5"), ("j", None, "100")]
    for body, prio, delay in plan:
        args = ["PUSH", "q", body] + ([delay] if delay else []) + \
            (["PRIORITY", prio] if prio else [])
        valq(tc, *args)
    valq(tc, "POP", "q")  # b, priority 2, leased ...
    timed_server.advance(10)  # ... and back in its place; c, d, h, i fell due meanwhile
    before = stats(tc)
    order = peek(tc, "READY", "COUNT", "1000")
    assert peek(tc) == order  # READY and COUNT 10 are the defaults (9 are ready)
    assert stats(tc) == before  # peeking changed nothing
    assert get(tc, 2)["attempts"] == 1
    assert order == pop_ids(tc)
    assert order == [4, 2, 7, 8, 3, 1, 6, 9, 5]


def test_peek_each_part_in_its_order(timed_server, tc):
    valq(tc, "CREATE", "q", "VISIBILITY", "10", "MAXATTEMPTS", "1")
    valq(tc, "MPUSH", "q", *[f"m{i}" for i in range(1, 7)])
    valq(tc, "PUSH", "q", "d1", "50")  # 7
    valq(tc, "PUSH", "q", "d2", "20")  # 8
    valq(tc, "PUSH", "q", "d3", "30")  # 9
    valq(tc, "POP", "q", "COUNT", "4")  # 1..4 in flight
    valq(tc, "EXTEND", "q", "1", "40")
    valq(tc, "EXTEND", "q", "3", "5")
    assert peek(tc, "INFLIGHT") == [3, 2, 4, 1]
    assert peek(tc, "delayed") == [8, 9, 7]
    assert peek(tc, "DELAYED", "COUNT", "2") == [8, 9]
    timed_server.advance(5)  # 3 dies first
    valq(tc, "NACK", "q", "4")  # then 4
    timed_server.advance(5)  # then 2
    assert peek(tc, "DLQ") == [3, 4, 2]
    dlq = [as_map(m) for m in valq(tc, "PEEK", "q", "DLQ")]
    assert [int(m[b"dead_at"]) for m in dlq] == [T0 + 5000, T0 + 5000, T0 + 10_000]
    assert peek(tc, "READY") == [5, 6]
    assert peek(tc, "INFLIGHT", "COUNT", "1000") == [1]
    assert valq(tc, "PEEK", "q", "READY", "COUNT", "1") and len(peek(tc, "COUNT", "1")) == 1


def test_peek_count_default_and_limits(client):
    valq(client, "CREATE", "q")
    valq(client, "MPUSH", "q", *["m"] * 1005)
    assert peek(client) == list(range(1, 11))
    assert len(peek(client, "COUNT", "1000")) == 1000
    assert peek(client, "DLQ") == [] and peek(client, "INFLIGHT") == []


@pytest.mark.parametrize("args,message", [
    (("COUNT", "0"), BAD_COUNT), (("COUNT", "1001"), BAD_COUNT), (("COUNT", "x"), BAD_COUNT),
    (("READY", "COUNT", "-1"), BAD_COUNT), (("COUNT",), "syntax error"),
    (("NOWHERE",), "syntax error"), (("READY", "DLQ"), "syntax error"),
    (("COUNT", "1", "READY"), "syntax error"), (("COUNT", "1", "COUNT", "2"), "syntax error"),
], ids=" ".join)
def test_peek_errors(client, args, message):
    valq(client, "CREATE", "q")
    valq_error(client, ("PEEK", "q", *args), "ERR", message)


def test_peek_missing_queue(client):
    valq_error(client, ("PEEK", "nope"), "NOQUEUE", "no such queue 'nope'")


# -- CANCEL, RESCHEDULE ------------------------------------------------------------------------

def test_cancel_in_every_state(timed_server, tc):
    valq(tc, "CREATE", "q", "VISIBILITY", "10", "MAXATTEMPTS", "1")
    valq(tc, "MPUSH", "q", "ready", "inflight", "dead")
    valq(tc, "PUSH", "q", "delayed", "100")
    valq(tc, "POP", "q", "COUNT", "1")
    valq(tc, "NACK", "q", "1")  # 1: dlq
    valq(tc, "POP", "q")  # 2: in flight
    states = {i: get(tc, i)["state"] for i in (1, 2, 3, 4)}
    assert states == {1: b"dlq", 2: b"inflight", 3: b"ready", 4: b"delayed"}
    for message_id in (1, 2, 3, 4):
        assert valq(tc, "CANCEL", "q", message_id) == 1
        valq_error(tc, ("GET", "q", str(message_id)), "NOMSG",
                   f"no message with id {message_id} in queue 'q'")
    valq_error(tc, ("CANCEL", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")
    valq_error(tc, ("CANCEL", "q", "0"), "ERR", BAD_ID)
    valq_error(tc, ("CANCEL", "nope", "1"), "NOQUEUE", "no such queue 'nope'")
    timed_server.advance(200)  # the cancelled lease and delay never fire
    s = stats(tc)
    assert (s["ready"], s["inflight"], s["delayed"], s["dlq"]) == (0, 0, 0, 0)
    assert (s["cancelled"], s["expired"]) == (4, 0)


def test_reschedule(timed_server, tc):
    valq(tc, "CREATE", "q")
    valq(tc, "MPUSH", "q", "a", "b", "c")
    valq(tc, "PUSH", "q", "d", "100")
    assert valq(tc, "RESCHEDULE", "q", "1", "10") == b"rescheduled 1"
    assert get(tc, 1)["state"] == b"delayed" and get(tc, 1)["due_at"] == T0 + 10_000
    assert valq(tc, "RESCHEDULE", "q", "4", "5") == b"rescheduled 4"
    assert get(tc, 4)["due_at"] == T0 + 5000
    assert peek(tc, "DELAYED") == [4, 1]
    timed_server.advance(5)
    assert pop_ids(tc) == [4, 2, 3]
    valq_error(tc, ("RESCHEDULE", "q", "2", "5"), "ERR",
               "message 2 is inflight: only ready or delayed messages can be rescheduled")
    valq_error(tc, ("RESCHEDULE", "q", "9", "5"), "NOMSG", "no message with id 9 in queue 'q'")
    valq_error(tc, ("RESCHEDULE", "q", "1", "-1"), "ERR", BAD_DELAY)
    valq_error(tc, ("RESCHEDULE", "q", "1", "x"), "ERR", BAD_DELAY)
    valq_error(tc, ("RESCHEDULE", "q", "x", "1"), "ERR", BAD_ID)
    valq_error(tc, ("RESCHEDULE", "nope", "1", "1"), "NOQUEUE", "no such queue 'nope'")
    valq_error(tc, ("RESCHEDULE", "q", "1"), "ERR",
               "wrong number of arguments for 'valq|reschedule' command")
    assert valq(tc, "RESCHEDULE", "q", "1", "0") == b"rescheduled 1"
    assert pop_ids(tc) == [1]


def test_reschedule_dlq_message_is_refused(client):
    valq(client, "CREATE", "q", "MAXATTEMPTS", "1")
    valq(client, "PUSH", "q", "m")
    valq(client, "POP", "q")
    valq(client, "NACK", "q", "1")
    valq_error(client, ("RESCHEDULE", "q", "1", "5"), "ERR",
               "message 1 is dlq: only ready or delayed messages can be rescheduled")


# -- REDRIVE ---------------------------------------------------------------------------------

N_REDRIVE = 10_000


@pytest.mark.parametrize("target", [None, "other"], ids=["same-queue", "to-other"])
def test_redrive_ten_thousand_keeps_order_and_resets_attempts(client, target):
    valq(client, "CREATE", "q", "MAXATTEMPTS", "1")
    valq(client, "CREATE", "other")
    pipe = client.pipeline(transaction=False)
    for start in range(0, N_REDRIVE, 1000):
        pipe.execute_command("VALQ", "MPUSH", "q", *[f"m{i}" for i in range(start, start + 1000)])
    ids = [int(x) for reply in pipe.execute() for x in reply]
    assert ids == list(range(1, N_REDRIVE + 1))
    pipe = client.pipeline(transaction=False)
    for _ in range(N_REDRIVE // 1000):
        pipe.execute_command("VALQ", "POP", "q", "COUNT", "1000")
    popped = [int(as_map(m)[b"id"]) for reply in pipe.execute() for m in reply]
    assert popped == ids
    pipe = client.pipeline(transaction=False)
    for message_id in ids:  # in id order: the DLQ's order is the id order
        pipe.execute_command("VALQ", "NACK", "q", message_id, "REASON", "bug 42")
    assert pipe.execute() == [b"nack %d" % i for i in ids]
    s = stats(client)
    assert (s["dlq"], s["dead_lettered"], s["ready"], s["inflight"]) == (N_REDRIVE, N_REDRIVE,
                                                                           0, 0)
    args = ("REDRIVE", "q") + (("TO", target) if target else ())
    assert valq(client, *args) == N_REDRIVE
    name = target or "q"
    assert stats(client)["dlq"] == 0 and stats(client)["redriven"] == N_REDRIVE
    assert stats(client, name)["ready"] == N_REDRIVE
    first = get(client, 1, name)
    assert (first["attempts"], first["state"], first["body"]) == (0, b"ready", b"m0")
    pipe = client.pipeline(transaction=False)
    for _ in range(N_REDRIVE // 1000):
        pipe.execute_command("VALQ", "POP", name, "COUNT", "1000", "WITHMETA")
    maps = [as_map(m) for reply in pipe.execute() for m in reply]
    assert [int(m[b"id"]) for m in maps] == ids
    assert [m[b"body"] for m in maps] == [b"m%d" % i for i in range(N_REDRIVE)]
    assert {m[b"attempts"] for m in maps} == {b"1"}


def test_redrive_count_to_and_errors(client):
    valq(client, "CREATE", "q", "MAXATTEMPTS", "1")
    valq(client, "CREATE", "small", "MAXLEN", "2")
    valq(client, "MPUSH", "q", "a", "b", "c", "d")
    for message_id in (3, 1, 4, 2):  # DLQ order: 3, 1, 4, 2 (different milliseconds)
        valq(client, "POP", "q")
    for message_id in (3, 1, 4, 2):
        valq(client, "NACK", "q", message_id)
        time.sleep(0.002)
    assert peek(client, "DLQ") == [3, 1, 4, 2]
    valq_error(client, ("REDRIVE", "q", "TO", "small"), "QUEUEFULL",
               "queue 'small' is full (maxlen 2)")
    valq_error(client, ("REDRIVE", "q", "TO", "nope"), "NOQUEUE", "no such queue 'nope'")
    valq_error(client, ("REDRIVE", "nope"), "NOQUEUE", "no such queue 'nope'")
    for bad in ("0", "-1", "x"):
        valq_error(client, ("REDRIVE", "q", "COUNT", bad), "ERR",
                   "COUNT must be a positive integer")
    valq_error(client, ("REDRIVE", "q", "COUNT"), "ERR", "syntax error")
    valq_error(client, ("REDRIVE", "q", "TO"), "ERR", "syntax error")
    valq_error(client, ("REDRIVE", "q", "NOW"), "ERR", "syntax error")
    valq_error(client, ("REDRIVE", "q", "COUNT", "1", "COUNT", "1"), "ERR", "syntax error")
    assert stats(client)["dlq"] == 4  # errors moved nothing
    assert valq(client, "REDRIVE", "q", "COUNT", "2", "TO", "small") == 2
    assert [as_map(m)[b"body"] for m in valq(client, "PEEK", "small")] == [b"c", b"a"]
    assert valq(client, "REDRIVE", "q", "count", "1") == 1
    assert peek(client, "DLQ") == [2] and peek(client) == [4]
    assert valq(client, "REDRIVE", "q", "COUNT", "1000") == 1
    assert valq(client, "REDRIVE", "q") == 0
    assert peek(client) == [2, 4]  # back in their original places


# -- PAUSE / RESUME --------------------------------------------------------------------------

def test_pause_resume_with_blocked_pops(timed_server, tc, proto):
    valq(tc, "CREATE", "q", "VISIBILITY", "10")
    valq(tc, "MPUSH", "q", "a", "b")
    valq(tc, "POP", "q")  # 1 in flight
    assert valq(tc, "PAUSE", "q") == b"paused q"
    assert valq(tc, "PAUSE", "q") == b"paused q"
    assert stats(tc)["paused"] == 1
    assert valq(tc, "POP", "q") == b""
    assert valq(tc, "POP", "q", "COUNT", "5") == []
    assert valq(tc, "MPOP", "1", "q") is None
    waiters = []
    for _ in range(2):
        waiters.append(Background(timed_server.port, proto, "VALQ", "POP", "q", "BLOCK", "0"))
        wait_until(lambda: stats(tc)["blocked"] == len(waiters), what="blocked")
    assert valq(tc, "PUSH", "q", "c") == b"3"  # pushes work while paused
    timed_server.advance(10)  # leases still run out
    assert get(tc, 1)["state"] == b"ready"
    assert valq(tc, "ACK", "q", "2") == b"ack 2"  # acks work
    time.sleep(0.05)
    assert not any(w.done() for w in waiters) and stats(tc)["blocked"] == 2
    short = Background(timed_server.port, proto, "VALQ", "POP", "q", "BLOCK", "100")
    assert short.get() == b""  # a blocked pop times out while paused
    assert valq(tc, "RESUME", "q") == b"resumed q"
    assert [int(as_map(w.get())[b"id"]) for w in waiters] == [1, 3]
    s = stats(tc)
    assert (s["paused"], s["blocked"], s["inflight"]) == (0, 0, 2)
    assert valq(tc, "RESUME", "q") == b"resumed q"
    valq_error(tc, ("PAUSE", "nope"), "NOQUEUE", "no such queue 'nope'")
    valq_error(tc, ("RESUME", "nope"), "NOQUEUE", "no such queue 'nope'")


# -- STATS -----------------------------------------------------------------------------------

def test_stats_agree_with_a_scripted_workload(timed_server, tc, proto):
    valq(tc, "CREATE", "q", "VISIBILITY", "10", "MAXATTEMPTS", "2", "RETENTION", "60",
         "DEDUPWINDOW", "100", "BACKOFF", "FIXED", "1", "MAXLEN", "1000")
    valq(tc, "CREATE", "other")
    valq(tc, "MPUSH", "q", *["m"] * 6)  # pushed 6
    valq(tc, "PUSH", "q", "x", "DEDUP", "k")  # pushed 7
    valq(tc, "PUSH", "q", "x", "DEDUP", "k")  # deduplicated 1
    valq(tc, "PUSH", "q", "x", "DEDUP", "k")  # deduplicated 2
    valq(tc, "POP", "q", "COUNT", "3")  # delivered 3: 1, 2, 3
    valq(tc, "ACK", "q", "1")  # acked 1
    assert valq(tc, "MACK", "q", "2", "99", "4") == 2  # acked 3
    valq(tc, "NACK", "q", "3", "0")  # nacked 1
    valq(tc, "POP", "q", "NOACK")  # delivered 4: 3 taken
    valq(tc, "POP", "q", "COUNT", "2")  # delivered 6: 5, 6
    timed_server.advance(10)  # expired 2: 5, 6 back after 1 s
    timed_server.advance(1)
    valq(tc, "POP", "q", "COUNT", "2")  # delivered 8: 5, 6 on their last attempt
    valq(tc, "NACK", "q", "5")  # nacked 2, dead_lettered 1
    timed_server.advance(10)  # expired 3, dead_lettered 2
    assert valq(tc, "REDRIVE", "q", "COUNT", "1") == 1  # redriven 1: 5
    assert valq(tc, "CANCEL", "q", "7") == 1  # cancelled 1
    timed_server.advance(60)  # dropped 1: 6
    valq(tc, "PUSH", "q", "d", "500")  # pushed 8
    timed_server.advance(2.5)
    blocked = Background(timed_server.port, proto, "VALQ", "POP", "other", "BLOCK", "0")
    wait_until(lambda: stats(tc, "other")["blocked"] == 1, what="blocked")
    assert stats(tc) == {
        "pushed": 8, "delivered": 8, "acked": 3, "nacked": 2, "expired": 3,
        "dead_lettered": 2, "dropped": 1, "deduplicated": 2, "redriven": 1, "cancelled": 1,
        "ready": 1, "inflight": 0, "delayed": 1, "dlq": 0, "paused": 0, "blocked": 0,
        "oldest_ready_age_ms": 83_500, "id_sequence": 8,
        "visibility_timeout": 10, "max_delivery_attempts": 2, "retention_period": 60,
        "backoff": "fixed 1", "dedup_window": 100, "maxlen": 1000}
    other = stats(tc, "other")
    assert other["blocked"] == 1
    assert all(other[k] == 0 for k in COUNTER_NAMES)
    valq(tc, "PUSH", "other", "wake")
    assert as_map(blocked.get())[b"id"] == b"1"
    valq_error(tc, ("STATS", "nope"), "NOQUEUE", "no such queue 'nope'")


def test_stats_oldest_ready_age_is_the_next_message_to_deliver(timed_server, tc):
    valq(tc, "CREATE", "q")
    assert stats(tc)["oldest_ready_age_ms"] == 0
    valq(tc, "PUSH", "q", "old")
    timed_server.advance(3)
    valq(tc, "PUSH", "q", "urgent", "PRIORITY", "5")
    timed_server.advance(1)
    assert stats(tc)["oldest_ready_age_ms"] == 1000  # `urgent` is delivered next
    valq(tc, "POP", "q")
    assert stats(tc)["oldest_ready_age_ms"] == 4000


# -- INFO, SLOWLOG ---------------------------------------------------------------------------

def test_info_queues_and_commandstats(client, store_kind):
    client.config_resetstat()
    valq(client, "CREATE", "q", "MAXATTEMPTS", "1")
    valq(client, "CREATE", "b")
    valq(client, "MPUSH", "q", "a", "b", "c")
    valq(client, "PUSH", "q", "later", "100")
    valq(client, "PUSH", "q", "x")
    valq(client, "POP", "q", "COUNT", "2")
    valq(client, "NACK", "q", "2")
    with pytest.raises(ResponseError):
        valq(client, "PUSH", "nope", "x")
    queues = client.info("queues")
    assert queues == {
        "queue0": {"name": "b", "msgs": 0, "ready": 0, "inflight": 0, "delayed": 0, "dlq": 0},
        "queue1": {"name": "q", "msgs": 3, "ready": 2, "inflight": 1, "delayed": 1, "dlq": 1}}
    stats_ = client.info("commandstats")
    assert stats_["cmdstat_valq|push"]["calls"] == 3
    assert stats_["cmdstat_valq|push"]["failed_calls"] == 1
    assert stats_["cmdstat_valq|create"]["calls"] == 2
    assert stats_["cmdstat_valq|mpush"]["calls"] == 1
    assert stats_["cmdstat_valq|pop"]["calls"] == 1
    assert stats_["cmdstat_valq|nack"]["calls"] == 1
    assert "usec" in stats_["cmdstat_valq|push"]
    everything = client.info("everything")
    assert "queue1" in everything and "cmdstat_valq|push" in everything
    default = client.info()
    assert "queue1" not in default and "cmdstat_valq|push" not in default
    assert "queue1" not in client.info("all")  # a line per queue only when asked by name
    # the totals: in the default sections of the embedded store (it keeps them); a Valkey
    # store walks its queues for them, so only when asked for by name (test_store_info.py)
    totals = default if store_kind == "embedded" else client.info("messages")
    assert totals["queues"] == 2 and totals["messages"] == 5
    assert (totals["messages_ready"], totals["messages_inflight"],
            totals["messages_delayed"], totals["messages_dlq"]) == (2, 1, 1, 1)


def test_slowlog_get_len_reset(client):
    client.config_set("slowlog-log-slower-than", "0")
    try:
        assert client.execute_command("SLOWLOG", "RESET") in (True, b"OK")
        assert client.execute_command("SLOWLOG", "LEN") <= 1  # at most the RESET itself
        valq(client, "CREATE", "q")
        valq(client, "PUSH", "q", "x" * 200)
        valq(client, "MPUSH", "q", *[f"b{i}" for i in range(40)])
        entries = client.execute_command("SLOWLOG", "GET", "-1")
        assert client.execute_command("SLOWLOG", "LEN") >= len(entries) >= 3
        ids = [e[0] for e in entries]
        assert ids == sorted(ids, reverse=True)  # newest first
        by_sub = {tuple(e[3][:2]): e for e in entries}
        push = by_sub[(b"VALQ", b"PUSH")]
        assert push[3] == [b"VALQ", b"PUSH", b"q", b"x" * 128 + b"... (72 more bytes)"]
        assert isinstance(push[1], int) and push[2] >= 0 and push[4].startswith(b"127.0.0.1:")
        mpush = by_sub[(b"VALQ", b"MPUSH")]
        assert len(mpush[3]) == 32 and mpush[3][-1] == b"... (12 more arguments)"
        assert len(client.execute_command("SLOWLOG", "GET", "1")) == 1
        assert len(client.execute_command("SLOWLOG", "GET")) <= 10
        with pytest.raises(ResponseError, match="count should be greater than or equal to -1"):
            client.execute_command("SLOWLOG", "GET", "-2")
        client.execute_command("SLOWLOG", "RESET")
        assert client.execute_command("SLOWLOG", "LEN") <= 1
        client.config_set("slowlog-log-slower-than", "-1")
        client.execute_command("SLOWLOG", "RESET")
        valq(client, "PUSH", "q", "y")
        assert client.execute_command("SLOWLOG", "LEN") == 0
    finally:
        client.config_set("slowlog-log-slower-than", "10000")


# -- live events -----------------------------------------------------------------------------

def _expect_event(sub, proto, channel, payload, pattern=None):
    reply = sub.reply()
    if proto == 3:
        assert isinstance(reply, hiredis.PushNotification), reply
    else:
        assert type(reply) is list, reply
    if pattern is None:
        assert reply == [b"message", channel, payload]
    else:
        assert reply == [b"pmessage", pattern, channel, payload]


def test_events_for_every_kind_in_order(timed_server, tc, proto):
    sub = subscriber(timed_server.port, proto)
    assert sub.call("SUBSCRIBE", "valq:q") == [b"subscribe", b"valq:q", 1]
    assert sub.call("PSUBSCRIBE", "valq:*") == [b"psubscribe", b"valq:*", 2]
    valq(tc, "CREATE", "q", "VISIBILITY", "10", "MAXATTEMPTS", "2", "RETENTION", "60")
    valq(tc, "CREATE", "other")
    valq(tc, "PUSH", "q", "a")  # pushed 1
    valq(tc, "POP", "q")  # delivered 1
    valq(tc, "ACK", "q", "1")  # acked 1
    valq(tc, "PUSH", "q", "b")  # pushed 2
    valq(tc, "POP", "q")  # delivered 2
    valq(tc, "NACK", "q", "2")  # nacked 2
    valq(tc, "POP", "q")  # delivered 2 (last attempt)
    timed_server.advance(10)  # expired 2, dead 2
    valq(tc, "REDRIVE", "q")  # redriven 2
    valq(tc, "POP", "q", "NOACK")  # delivered 2
    valq(tc, "PUSH", "q", "c")  # pushed 3
    valq(tc, "POP", "q")  # delivered 3
    timed_server.advance(10)  # expired 3
    valq(tc, "POP", "q")  # delivered 3 (last attempt)
    valq(tc, "NACK", "q", "3", "REASON", "x")  # nacked 3, dead 3
    timed_server.advance(60)  # dropped 3
    valq(tc, "PUSH", "q", "d", "100")  # pushed 4
    valq(tc, "CANCEL", "q", "4")  # cancelled 4
    valq(tc, "PAUSE", "q")  # paused
    valq(tc, "RESUME", "q")  # resumed
    valq(tc, "PUSH", "other", "o")  # only the pattern sees this one
    valq(tc, "MPUSH", "q", "e", "f")  # pushed 5, pushed 6
    valq(tc, "MACK", "q", "5", "6")  # acked 5, acked 6
    expected = ["pushed 1", "delivered 1", "acked 1", "pushed 2", "delivered 2", "nacked 2",
                "delivered 2", "expired 2", "dead 2", "redriven 2", "delivered 2", "pushed 3",
                "delivered 3", "expired 3", "delivered 3", "nacked 3", "dead 3", "dropped 3",
                "pushed 4", "cancelled 4", "paused", "resumed", ("other", "pushed 1"),
                "pushed 5", "pushed 6", "acked 5", "acked 6"]
    for event in expected:
        if isinstance(event, tuple):
            _expect_event(sub, proto, b"valq:other", event[1].encode(), b"valq:*")
            continue
        _expect_event(sub, proto, b"valq:q", event.encode())
        _expect_event(sub, proto, b"valq:q", event.encode(), b"valq:*")
    # nothing else came: the next thing on the connection is the PING reply
    assert sub.call("PING") == ([b"pong", b""] if proto == 2 else b"PONG")
    sub.close()


def test_events_counts_match_stats(timed_server, tc, proto):
    """Every counted event kind arrives as often as STATS counts it."""
    sub = subscriber(timed_server.port, proto)
    sub.call("SUBSCRIBE", "valq:q")
    valq(tc, "CREATE", "q", "VISIBILITY", "5", "MAXATTEMPTS", "2", "RETENTION", "60")
    valq(tc, "MPUSH", "q", *["m"] * 8)
    valq(tc, "POP", "q", "COUNT", "4")
    valq(tc, "NACK", "q", "1")
    valq(tc, "NACK", "q", "2", "REASON", "r")
    timed_server.advance(5)
    valq(tc, "POP", "q", "COUNT", "8")
    valq(tc, "NACK", "q", "1")
    timed_server.advance(5)
    valq(tc, "REDRIVE", "q", "COUNT", "2")
    valq(tc, "MACK", "q", "5", "6")
    valq(tc, "CANCEL", "q", "7")
    timed_server.advance(100)
    s = stats(tc)
    total = sum(s[k] for k in COUNTER_NAMES if k != "deduplicated")
    counts = dict.fromkeys(COUNTER_NAMES, 0)
    names = {"pushed": "pushed", "delivered": "delivered", "acked": "acked",
             "nacked": "nacked", "expired": "expired", "dead": "dead_lettered",
             "dropped": "dropped", "redriven": "redriven", "cancelled": "cancelled"}
    for _ in range(total):
        kind = sub.reply()[2].split()[0].decode()
        counts[names[kind]] += 1
    assert counts == {k: (0 if k == "deduplicated" else s[k]) for k in COUNTER_NAMES}
    assert s["expired"] and s["dead_lettered"] and s["dropped"]
    sub.close()


def test_unsubscribe_and_no_listener_without_subscribers(timed_server, tc, proto):
    engine = timed_server.server.databases[0]
    valq(tc, "CREATE", "q")
    assert engine.listener is None
    sub = subscriber(timed_server.port, proto)
    sub.call("SUBSCRIBE", "valq:q", "valq:other")
    assert sub.reply() == [b"subscribe", b"valq:other", 2]
    sub.call("PSUBSCRIBE", "valq:q*")
    wait_until(lambda: engine.listener is not None)
    valq(tc, "PUSH", "q", "a")
    assert sub.reply() == [b"message", b"valq:q", b"pushed 1"]
    assert sub.reply() == [b"pmessage", b"valq:q*", b"valq:q", b"pushed 1"]
    assert sub.call("UNSUBSCRIBE") in ([b"unsubscribe", b"valq:other", 2],
                                       [b"unsubscribe", b"valq:q", 2])
    sub.reply()
    assert sub.call("PUNSUBSCRIBE") == [b"punsubscribe", b"valq:q*", 0]
    wait_until(lambda: engine.listener is None, what="listener detached")
    valq(tc, "PUSH", "q", "b")
    # subscribed mode is over: commands work again, and no event came meanwhile
    assert sub.call("PING") == b"PONG"
    assert sub.call("UNSUBSCRIBE") == [b"unsubscribe", None, 0]
    sub.close()


def test_resp2_subscribed_mode_rejects_other_commands(timed_server):
    sub = subscriber(timed_server.port, 2)
    sub.call("SUBSCRIBE", "valq:q")
    for args, name in ((("VALQ", "PUSH", "q", "x"), "valq|push"),
                       (("VALQ", "STATS", "q"), "valq|stats"), (("GET", "k"), None),
                       (("CLIENT", "ID"), "client|id"), (("ECHO", "x"), "echo")):
        reply = sub.call(*args)
        assert isinstance(reply, Error), reply
        if name is None:
            assert str(reply).startswith("ERR unknown command 'GET'")
            continue
        assert str(reply) == (f"ERR Can't execute '{name}': only (P|S)SUBSCRIBE / "
                              "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this "
                              "context")
    assert sub.call("PING") == [b"pong", b""]
    assert sub.call("PING", "hello") == [b"pong", b"hello"]
    assert sub.call("PSUBSCRIBE", "x*") == [b"psubscribe", b"x*", 2]
    assert sub.call("RESET") == b"RESET"
    assert sub.call("PING") == b"PONG"
    assert sub.call("VALQ", "LIST") == []
    sub.close()


def test_resp3_subscribed_connection_keeps_running_commands(timed_server):
    sub = subscriber(timed_server.port, 3)
    sub.call("SUBSCRIBE", "valq:q")
    assert sub.call("VALQ", "CREATE", "q") == b"created q"
    # the event is published while PUSH runs, so it arrives before PUSH's reply
    event = sub.call("VALQ", "PUSH", "q", "x")
    assert isinstance(event, hiredis.PushNotification)
    assert event == [b"message", b"valq:q", b"pushed 1"]
    assert sub.reply() == b"1"
    assert sub.call("PING") == b"PONG"
    sub.close()


# -- metrics ---------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families


def _sample(families, family, queue=None):
    values = [s.value for s in families[family].samples
              if queue is None or s.labels.get("queue") == queue]
    assert len(values) == 1, (family, queue, values)
    return values[0]


def test_metrics_endpoint_matches_stats():
    port = _free_port()
    with ThreadedServer(**{"metrics-port": str(port)}) as server:
        c = server.client(protocol=3)
        weird = 'we"ird\\q\nx'
        valq(c, "CREATE", "q", "VISIBILITY", "10", "MAXATTEMPTS", "1", "RETENTION", "60")
        valq(c, "CREATE", weird)
        valq(c, "CREATE", "idle")
        valq(c, "MPUSH", "q", *["m"] * 10)
        valq(c, "PUSH", "q", "later", "100")
        valq(c, "PUSH", "q", "dup", "DEDUP", "k")
        valq(c, "PUSH", "q", "dup", "DEDUP", "k")
        valq(c, "POP", "q", "COUNT", "4")
        valq(c, "ACK", "q", "1")
        valq(c, "NACK", "q", "2")
        server.advance(10)  # 3, 4 run out: DLQ
        valq(c, "REDRIVE", "q", "COUNT", "1")
        valq(c, "CANCEL", "q", "5")
        valq(c, "PUSH", weird, "w")
        valq(c, "PAUSE", weird)
        server.advance(7)
        blocked = Background(server.port, 2, "VALQ", "POP", "idle", "BLOCK", "0")
        wait_until(lambda: stats(c, "idle")["blocked"] == 1, what="blocked")
        families = _scrape(port)
        for name in ("q", weird, "idle"):
            s = stats(c, name)
            for gauge, key in (("ready", "ready"), ("inflight", "inflight"),
                               ("delayed", "delayed"), ("dlq", "dlq"), ("paused", "paused"),
                               ("blocked_consumers", "blocked")):
                family = f"valqd_queue_{gauge}"
                assert families[family].type == "gauge"
                assert _sample(families, family, name) == s[key], (name, gauge)
            assert _sample(families, "valqd_queue_oldest_ready_age_seconds", name) == \
                s["oldest_ready_age_ms"] / 1000
            for counter in COUNTER_NAMES:
                family = f"valqd_queue_{counter}"
                assert families[family].type == "counter"
                assert families[family].samples[0].name == family + "_total"
                assert _sample(families, family, name) == s[counter], (name, counter)
        q = stats(c, "q")
        assert (q["dlq"], q["dead_lettered"], q["redriven"], q["deduplicated"]) == (2, 3, 1, 1)
        assert _sample(families, "valqd_queue_oldest_ready_age_seconds", "q") == 17.0
        assert _sample(families, "valqd_queue_paused", weird) == 1
        assert families["valqd_connected_clients"].type == "gauge"
        assert _sample(families, "valqd_connected_clients") >= 2
        assert _sample(families, "valqd_uptime_seconds") >= 0
        assert _sample(families, "valqd_memory_rss_bytes") > 0
        assert _sample(families, "valqd_aof_size_bytes") == 0  # appendonly no
        assert families["valqd_info"].samples[0].labels["version"]
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert excinfo.value.code == 404
        valq(c, "PUSH", "idle", "wake")
        blocked.get()
        assert _sample(_scrape(port), "valqd_queue_blocked_consumers", "idle") == 0
        c.close()


def test_metrics_stay_bounded_with_many_queues():
    """Totals over every queue always; series per queue for the first metrics-queue-series
    queues in name order only, so the page is as long with 500 queues as with 5."""
    port = _free_port()
    with ThreadedServer(**{"metrics-port": str(port), "metrics-queue-series": "3"}) as server:
        c = server.client()
        for i in range(5):
            valq(c, "CREATE", f"q{i}")
            valq(c, "PUSH", f"q{i}", "x")
        small = len(server.server.metrics())
        pipe = c.pipeline(transaction=False)
        for i in range(5, 500):
            pipe.execute_command("VALQ", "CREATE", f"q{i}")
            pipe.execute_command("VALQ", "PUSH", f"q{i}", "x")
        pipe.execute()
        valq(c, "POP", "q7")
        families = _scrape(port)
        assert len(server.server.metrics()) <= small + 64  # longer numbers only
        assert {s.labels["queue"] for s in families["valqd_queue_ready"].samples} == \
            {"q0", "q1", "q10"}
        assert _sample(families, "valqd_queues") == 500
        assert _sample(families, "valqd_queues_without_series") == 497
        by_state = {s.labels["state"]: s.value for s in families["valqd_messages"].samples}
        assert by_state == {"ready": 499, "inflight": 1, "delayed": 0, "dlq": 0}
        assert _sample(families, "valqd_pushed") == 500
        assert _sample(families, "valqd_delivered") == 1
        c.config_set("metrics-queue-series", "0")
        families = _scrape(port)
        assert not families["valqd_queue_ready"].samples
        assert _sample(families, "valqd_queues_without_series") == 500
        c.close()


def test_metrics_off_by_default(timed_server):
    assert timed_server.config["http-port"] == 0


# -- restart -----------------------------------------------------------------------------------

def _observe(c):
    """Everything a restart must keep, as plain values."""
    out = {"digest": c.execute_command("DEBUG", "DIGEST"), "list": valq(c, "LIST")}
    for name in out["list"]:
        s = stats(c, name)
        out[name.decode()] = {
            "settings": {k: s[k] for k in ("visibility_timeout", "max_delivery_attempts",
                                           "retention_period", "backoff", "dedup_window",
                                           "maxlen", "paused", "id_sequence")},
            "counts": {k: s[k] for k in ("ready", "inflight", "delayed", "dlq")},
            "messages": [get(c, i, name) for i in range(1, s["id_sequence"] + 1)
                         if _exists(c, name, i)],
            "peek": {part: peek(c, part, "COUNT", "1000", name=name)
                     for part in ("READY", "INFLIGHT", "DELAYED", "DLQ")},
        }
    return out


def _exists(c, name, message_id):
    try:
        valq(c, "GET", name, message_id)
        return True
    except ResponseError:
        return False


def test_state_survives_restarts(tmp_path, proto):
    clock = ManualClock()
    settings = {"appendonly": "yes", "dir": str(tmp_path)}
    with ThreadedServer(clock, **settings) as first:
        c = first.client(protocol=proto)
        valq(c, "CREATE", "q", "VISIBILITY", "10", "MAXATTEMPTS", "3", "RETENTION", "600",
             "BACKOFF", "EXPONENTIAL", "2", "30", "DEDUPWINDOW", "100", "MAXLEN", "50")
        valq(c, "CREATE", "calm", "BACKOFF", "FIXED", "5")
        valq(c, "PUSH", "q", "low", "PRIORITY", "-5", "DEDUP", "order-1")  # 1
        valq(c, "PUSH", "q", "high", "PRIORITY", "9")  # 2
        valq(c, "PUSH", "q", "later", "40", "PRIORITY", "1", "DEDUP", "order-2")  # 3
        valq(c, "MPUSH", "q", "a", "b", "c")  # 4, 5, 6
        valq(c, "POP", "q", "COUNT", "2")  # 2, 4
        valq(c, "NACK", "q", "2", "REASON", "flaky")  # back after 2 s
        valq(c, "EXTEND", "q", "4", "60")
        first.advance(2)
        for _ in range(2):  # 2 dies on its third and last attempt, with its reason
            valq(c, "POP", "q")
            valq(c, "NACK", "q", "2", "0", "REASON", "still flaky")
        valq(c, "POP", "q")  # 5
        valq(c, "NACK", "q", "5", "REASON", "once")
        valq(c, "PAUSE", "q")
        valq(c, "PUSH", "calm", "x")
        valq(c, "PAUSE", "calm")
        valq(c, "RESUME", "calm")
        before = _observe(c)
        c.close()
    assert before["q"]["settings"]["paused"] == 1
    assert before["q"]["peek"]["DLQ"] == [2]
    for restart in range(2):
        with ThreadedServer(clock, **settings) as again:
            c = again.client(protocol=proto)
            assert _observe(c) == before
            s = stats(c)
            assert all(s[k] == 0 for k in COUNTER_NAMES)  # counters restart at zero
            assert get(c, 2)["last_reason"] == b"still flaky"
            assert get(c, 5)["last_reason"] == b"once"
            assert [get(c, i)["priority"] for i in (1, 2, 3)] == [-5, 9, 1]
            assert valq(c, "PUSH", "q", "again", "DEDUP", "order-1") == b"1"  # dedup kept
            assert valq(c, "PUSH", "q", "again", "DEDUP", "order-2") == b"3"
            assert stats(c)["deduplicated"] == 2
            assert valq(c, "POP", "q") == b""  # still paused
            if restart == 0:
                assert c.execute_command("SAVE") in (True, b"OK")  # a rewritten AOF too
            c.close()
    clock.advance(100)  # dedup keys run out while the server is down
    with ThreadedServer(clock, **settings) as later:
        c = later.client(protocol=proto)
        assert valq(c, "PUSH", "q", "new", "DEDUP", "order-1") == b"7"
        valq(c, "RESUME", "q")
        ready = peek(c, "COUNT", "1000")
        assert ready == pop_ids(c)
        assert ready[:2] == [3, 4]  # 3 fell due (priority 1), 4's lease ran out
        c.close()
