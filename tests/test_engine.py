"""Unit tests of the pure engine (valqd/engine), driven by explicit `now` values in Unix ms.

No test sleeps or reads a clock. Like the server's dispatcher, a helper calls `tick(now)`
before an operation at time `now`.
"""

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from valqd.engine import (ATTEMPTS_RANGE, EXTEND_RANGE, MAX_DELAY, RETENTION_RANGE,
                          VISIBILITY_RANGE, Engine, make_settings)
from valqd.engine import record
from valqd.engine.engine import _KINDS, MAX_DUE_AT
from valqd.engine.queue import Queue
from valqd.engine.record import ID_BITS, ID_MASK, time_key
from valqd.errors import BusyQueueError, CommandError, NoMessageError, NoQueueError

Q = b"q"
T0 = 1_700_000_000_000  # a realistic Unix ms start time
SEC = 1000
DAY = 86_400 * SEC


# -- helpers ---------------------------------------------------------------------------------


def make(vt=30, mda=5, rp=86400, journal=None, name=Q):
    e = Engine(journal=journal)
    e.create_queue(name, make_settings(vt, mda, rp))
    return e


def pop(e, now, name=Q):
    """POP as the server does it: tick first. Returns (id, bytes body) or None."""
    e.tick(now)
    got = e.pop(name, now)
    if got is None:
        return None
    message_id, body = got
    return message_id, bytes(body)


def pop_id(e, now, name=Q):
    got = pop(e, now, name)
    return None if got is None else got[0]


def drain(e, now, name=Q):
    """Pop every visible message at `now`, returning their ids in delivery order."""
    out = []
    while (got := pop_id(e, now, name)) is not None:
        out.append(got)
    return out


def attempts(e, message_id, name=Q):
    return record.unpack(e.queue(name).records[message_id])[3]


def ready_ids(q):
    return [key & ID_MASK for key in q.ready]


def snapshot(e):
    """The complete state of every queue, as plain comparable values."""
    out = {}
    for name, q in e.queues.items():
        out[name] = {
            "serial": q.serial,
            "settings": dataclasses.astuple(q.settings),
            "paused": getattr(q, "paused", False),
            "dedup": dict(getattr(q, "dedup", {})),
            "reasons": dict(getattr(q, "reasons", {})),
            "id_sequence": q.id_sequence,
            "promote_seq": q.promote_seq,
            "lease_seq": q.lease_seq,
            "records": dict(q.records),
            "ready": list(q.ready),
            "leases": dict(q.leases),
            "lease_order": list(q.lease_order),
            "delayed": dict(q.delayed),
            "delayed_order": list(q.delayed_order),
            "dead": dict(q.dead),
            "dead_order": list(q.dead_order),
            "next_deadline": q.next_deadline(),
        }
    return out


def replay(records):
    e = Engine()
    for effect in records:
        e.apply(effect)
    return e


def real_next_event(e):
    """The earliest pending event over all queues, computed from the queues themselves."""
    ats = [at for q in e.queues.values() if (at := q.next_deadline()) is not None]
    return min(ats) if ats else None


def deadlines(q):
    """id -> lease deadline of every message in flight (`leases` holds their index keys)."""
    return {message_id: key >> ID_BITS for message_id, key in q.leases.items()}


def check_indexes(q):
    """Every message in exactly one state, and every index consistent with its dict."""
    ready = ready_ids(q)
    assert len(ready) == len(set(ready))
    parts = [set(ready), set(q.leases), set(q.delayed), set(q.dead)]
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            assert not (a & b)
    assert set().union(*parts) == set(q.records)
    assert sum(map(len, parts)) == len(q.records)
    assert q.main_count() == len(q.ready) + len(q.leases)
    assert list(q.lease_order) == sorted(q.leases.values())
    assert all(key == time_key(key >> ID_BITS, i) for i, key in q.leases.items())
    assert list(q.delayed_order) == sorted(time_key(at, i) for i, at in q.delayed.items())
    assert list(q.dead_order) == sorted(time_key(at, i) for i, at in q.dead.items())
    for message_id in q.records:
        assert message_id <= q.id_sequence
    for message_id in ready:
        assert q.state_of(message_id) == "ready"
    for message_id in q.leases:
        assert q.state_of(message_id) == "inflight"
    for message_id in q.delayed:
        assert q.state_of(message_id) == "delayed"
    for message_id in q.dead:
        assert q.state_of(message_id) == "dlq"


# -- ids -------------------------------------------------------------------------------------


def test_ids_start_at_one_and_count_up():
    e = make()
    assert e.queue(Q).id_sequence == 0
    assert [e.push(Q, b"m%d" % i, T0) for i in range(5)] == [1, 2, 3, 4, 5]
    assert e.queue(Q).id_sequence == 5


def test_a_waiting_message_id_is_one_object_in_both_indexes():
    """Memory per message: the records key and the ready entry of a plain message are the
    same int object. Compiled, a machine integer boxed once per use would cost 32 bytes more
    per message (ids above 256: smaller ints are shared by CPython anyway)."""
    e = make()
    for n in range(300):
        e.push(Q, b"x", T0)
    q = e.queue(Q)
    assert q.ready[-1] is next(reversed(q.records)) and q.ready[-1] == 300


def test_ids_are_per_queue():
    e = make()
    e.create_queue(b"other", make_settings())
    assert e.push(Q, b"a", T0) == 1
    assert e.push(Q, b"b", T0) == 2
    assert e.push(b"other", b"c", T0) == 1


def test_ids_not_reused_after_ack():
    e = make()
    assert e.push(Q, b"a", T0) == 1
    assert e.push(Q, b"b", T0) == 2
    e.ack(Q, 2)
    e.ack(Q, 1)
    assert e.queue(Q).records == {}
    assert e.push(Q, b"c", T0) == 3
    assert e.queue(Q).id_sequence == 3


@pytest.mark.parametrize("part", ["main", "delayed", "dlq"])
def test_ids_not_reused_after_purge(part):
    e = make(vt=1, mda=1)
    e.push(Q, b"a", T0, 10 if part == "delayed" else 0)
    e.push(Q, b"b", T0, 10 if part == "delayed" else 0)
    if part == "dlq":
        assert drain(e, T0) == [1, 2]
        e.tick(T0 + SEC)
        assert set(e.queue(Q).dead) == {1, 2}
    assert e.purge(Q, part) == 2
    assert e.queue(Q).records == {}
    assert e.push(Q, b"c", T0 + SEC) == 3
    assert e.queue(Q).id_sequence == 3


def test_ids_not_reused_after_dlq_drop():
    e = make(vt=1, mda=1, rp=60)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.tick(T0 + SEC + 60 * SEC)
    assert e.queue(Q).records == {}
    assert e.push(Q, b"b", T0 + 100 * SEC) == 2


# -- delivery order and leases -----------------------------------------------------------------


def test_fifo_delivery_in_id_order():
    e = make()
    for i in range(1, 6):
        e.push(Q, b"m%d" % i, T0 + i)
    got = [pop(e, T0 + 10) for _ in range(5)]
    assert got == [(i, b"m%d" % i) for i in range(1, 6)]
    assert pop(e, T0 + 10) is None


def test_pop_on_empty_queue_returns_none():
    e = make()
    assert pop(e, T0) is None


def test_body_is_binary_safe():
    e = make()
    body = bytes(range(256)) * 3
    e.push(Q, body, T0)
    assert pop(e, T0) == (1, body)
    e.push(Q, b"", T0)
    assert pop(e, T0) == (2, b"")


def test_pop_increments_delivery_count():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    assert attempts(e, 1) == 0
    now = T0
    for n in range(1, 4):
        assert pop_id(e, now) == 1
        assert attempts(e, 1) == n
        now += 10 * SEC


def test_pop_leases_for_exactly_visibility_timeout():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0 + 5) == 1
    q = e.queue(Q)
    deadline = T0 + 5 + 10 * SEC
    assert deadlines(q) == {1: deadline}
    assert q.state_of(1) == "inflight"
    assert pop(e, deadline - 1) is None
    assert q.state_of(1) == "inflight"
    assert q.main_count() == 1
    e.tick(deadline)
    assert q.state_of(1) == "ready"
    assert pop(e, deadline) == (1, b"a")
    assert deadlines(q) == {1: deadline + 10 * SEC}


def test_leased_message_invisible_but_others_delivered():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0)
    assert pop_id(e, T0) == 1
    assert pop_id(e, T0 + 1) == 2
    assert pop(e, T0 + 2) is None


def test_expired_message_keeps_its_place():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.push(Q, b"b", T0 + 1)
    e.push(Q, b"c", T0 + 2)
    e.tick(T0 + 10 * SEC)
    assert drain(e, T0 + 10 * SEC) == [1, 2, 3]


def test_expired_messages_return_in_id_order_not_expiry_order():
    e = make(vt=10)
    for body in (b"a", b"b", b"c"):
        e.push(Q, body, T0)
    assert pop_id(e, T0) == 1
    assert pop_id(e, T0) == 2
    e.extend(Q, 1, 20, T0)  # 1 now expires after 2
    e.tick(T0 + 10 * SEC)
    assert ready_ids(e.queue(Q)) == [2, 3]
    e.tick(T0 + 20 * SEC)
    assert ready_ids(e.queue(Q)) == [1, 2, 3]


def test_update_visibility_timeout_applies_to_next_pop():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0)
    assert pop_id(e, T0) == 1
    e.update_queue(Q, make_settings(20, base=e.queue(Q).settings))
    assert pop_id(e, T0) == 2
    assert deadlines(e.queue(Q)) == {1: T0 + 10 * SEC, 2: T0 + 20 * SEC}


# -- dead-letter queue -------------------------------------------------------------------------


def test_message_moves_to_dlq_after_max_deliveries_at_lease_deadline():
    records = []
    e = make(vt=10, mda=3, journal=records.append)
    e.push(Q, b"a", T0)
    q = e.queue(Q)
    now = T0
    for n in range(1, 4):
        assert pop_id(e, now) == 1
        assert attempts(e, 1) == n
        deadline = now + 10 * SEC
        assert pop(e, deadline - 1) is None
        now = deadline
    # the third lease ran out at `now`: DLQ, not visible again
    e.tick(now)
    assert q.state_of(1) == "dlq"
    assert q.dead == {1: now}
    assert q.main_count() == 0
    assert pop(e, now) is None
    assert pop(e, now + DAY - 1) is None
    assert [r for r in records if r[0] == "dead"] == [("dead", Q, 1, now)]
    assert [r[:3] for r in records if r[0] == "expire"] == [("expire", Q, 1)] * 2


def test_not_dead_before_max_deliveries():
    e = make(vt=10, mda=3)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    assert pop_id(e, T0 + 10 * SEC) == 1
    e.tick(T0 + 20 * SEC)
    assert e.queue(Q).state_of(1) == "ready"
    assert e.queue(Q).dead == {}


def test_dead_at_is_lease_deadline_even_when_tick_is_late():
    e = make(vt=10, mda=1, rp=3600)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.tick(T0 + 10 * SEC + 1234 * SEC)  # timer fired late, before retention ran out
    q = e.queue(Q)
    assert q.dead == {1: T0 + 10 * SEC}
    # retention counts from the lease deadline, not from the late tick
    e.tick(T0 + 10 * SEC + 3600 * SEC - 1)
    assert q.dead == {1: T0 + 10 * SEC}
    e.tick(T0 + 10 * SEC + 3600 * SEC)
    assert q.records == {}


def test_message_moves_to_dlq_exactly_once():
    records = []
    e = make(vt=1, mda=1, rp=60, journal=records.append)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    for t in range(T0, T0 + 120 * SEC, 250):
        e.tick(t)
    assert [r[0] for r in records] == ["create", "push", "lease", "dead", "drop"]


def test_acked_message_never_dies():
    e = make(vt=1, mda=1)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.ack(Q, 1)
    e.tick(T0 + 10 * SEC)
    assert e.queue(Q).dead == {}
    assert e.queue(Q).records == {}


def test_lowering_max_delivery_attempts_applies_at_next_expiry():
    e = make(vt=10, mda=5)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    assert pop_id(e, T0 + 10 * SEC) == 1
    e.update_queue(Q, make_settings(10, 2, 86400))
    e.tick(T0 + 20 * SEC)
    assert e.queue(Q).dead == {1: T0 + 20 * SEC}


def test_dlq_retention_drops_exactly_at_dead_at_plus_retention():
    e = make(vt=1, mda=1, rp=60)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.tick(T0 + SEC)
    q = e.queue(Q)
    dead_at = T0 + SEC
    assert q.dead == {1: dead_at}
    e.tick(dead_at + 60 * SEC - 1)
    assert q.dead == {1: dead_at}
    assert 1 in q.records
    e.tick(dead_at + 60 * SEC)
    assert q.dead == {}
    assert q.records == {}
    assert q.state_of(1) is None


def test_dlq_retention_not_a_ms_early_when_queue_has_other_work_then():
    # another event of the same queue falls due 1 ms before the retention runs out, so the
    # queue is processed at that moment: the DLQ message must still stay
    e = make(vt=1, mda=1, rp=60)
    e.push(Q, b"dies", T0)
    assert pop_id(e, T0) == 1
    dead_at = T0 + SEC
    e.tick(dead_at)
    e.push(Q, b"due", dead_at, 59)  # due at dead_at + 59 s
    e.tick(dead_at + 59 * SEC)
    assert pop_id(e, dead_at + 59 * SEC) == 2
    e.extend(Q, 2, 0, dead_at + 60 * SEC - 1)  # lease runs out 1 ms before the drop
    e.tick(dead_at + 60 * SEC - 1)
    q = e.queue(Q)
    assert q.dead == {1: dead_at, 2: dead_at + 60 * SEC - 1}
    e.tick(dead_at + 60 * SEC)
    assert q.dead == {2: dead_at + 60 * SEC - 1}


def test_dlq_retention_drops_only_expired_messages():
    e = make(vt=1, mda=1, rp=60)
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0)
    assert pop_id(e, T0) == 1
    assert pop_id(e, T0 + 5 * SEC) == 2
    e.tick(T0 + 6 * SEC)
    q = e.queue(Q)
    assert q.dead == {1: T0 + SEC, 2: T0 + 6 * SEC}
    e.tick(T0 + SEC + 60 * SEC)
    assert q.dead == {2: T0 + 6 * SEC}
    e.tick(T0 + 6 * SEC + 60 * SEC - 1)
    assert q.dead == {2: T0 + 6 * SEC}
    e.tick(T0 + 6 * SEC + 60 * SEC)
    assert q.dead == {}


def test_recent_dlq_messages_survive_cleanup_of_old_ones():
    # the module's cleanup compared the wrong way round and deleted recent messages
    e = make(vt=1, mda=1, rp=60)
    e.push(Q, b"old", T0)
    assert pop_id(e, T0) == 1
    e.push(Q, b"new", T0 + 59 * SEC)
    assert pop_id(e, T0 + 59 * SEC) == 2
    e.tick(T0 + 61 * SEC)
    assert e.queue(Q).dead == {2: T0 + 60 * SEC}


def test_update_shorter_retention_drops_earlier():
    e = make(vt=1, mda=1, rp=600)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    dead_at = T0 + SEC
    e.tick(dead_at)
    e.update_queue(Q, make_settings(1, 1, 60))
    assert e.next_deadline() <= dead_at + 60 * SEC
    e.tick(dead_at + 60 * SEC - 1)
    assert e.queue(Q).dead == {1: dead_at}
    assert e.tick(dead_at + 60 * SEC) is None
    assert e.queue(Q).records == {}


def test_update_longer_retention_keeps_dlq_messages_longer():
    e = make(vt=1, mda=1, rp=60)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    dead_at = T0 + SEC
    e.tick(dead_at)
    e.update_queue(Q, make_settings(1, 1, 120))
    e.tick(dead_at + 60 * SEC)
    assert e.queue(Q).dead == {1: dead_at}
    e.tick(dead_at + 120 * SEC - 1)
    assert e.queue(Q).dead == {1: dead_at}
    e.tick(dead_at + 120 * SEC)
    assert e.queue(Q).dead == {}


def test_update_retention_below_age_drops_at_next_tick():
    e = make(vt=1, mda=1, rp=600)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.tick(T0 + 300 * SEC)
    assert 1 in e.queue(Q).dead
    e.update_queue(Q, make_settings(1, 1, 60))
    assert e.next_deadline() <= T0 + 300 * SEC
    e.tick(T0 + 300 * SEC)
    assert e.queue(Q).dead == {}


# -- delayed messages --------------------------------------------------------------------------


def test_delayed_message_becomes_visible_exactly_at_due_time():
    e = make()
    assert e.push(Q, b"a", T0 + 7, 5) == 1
    q = e.queue(Q)
    due = T0 + 7 + 5 * SEC
    assert q.delayed == {1: due}
    assert q.state_of(1) == "delayed"
    assert q.main_count() == 0
    assert e.next_deadline() == due
    assert pop(e, due - 1) is None
    assert q.state_of(1) == "delayed"
    assert pop(e, due) == (1, b"a")


def test_delayed_message_not_a_ms_early_when_queue_has_other_work_then():
    e = make(vt=30)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.extend(Q, 1, 4, T0 + SEC - 1)  # lease runs out at T0 + 5 s - 1 ms
    e.push(Q, b"b", T0, 5)  # due at T0 + 5 s
    e.tick(T0 + 5 * SEC - 1)
    q = e.queue(Q)
    assert q.state_of(1) == "ready"
    assert q.state_of(2) == "delayed"
    assert pop_id(e, T0 + 5 * SEC - 1) == 1
    assert pop(e, T0 + 5 * SEC - 1) is None
    assert pop_id(e, T0 + 5 * SEC) == 2


def test_delay_zero_is_visible_at_once():
    e = make()
    e.push(Q, b"a", T0, 0)
    assert e.queue(Q).delayed == {}
    assert pop_id(e, T0) == 1


def test_due_delayed_message_goes_ahead_of_older_waiting_ones():
    e = make()
    e.push(Q, b"old1", T0)
    e.push(Q, b"delayed", T0, 5)
    e.push(Q, b"old2", T0 + 1)
    e.tick(T0 + 5 * SEC)
    assert ready_ids(e.queue(Q)) == [2, 1, 3]
    e.push(Q, b"new", T0 + 6 * SEC)
    assert drain(e, T0 + 6 * SEC) == [2, 1, 3, 4]


def test_due_delayed_messages_keep_the_order_they_fell_due():
    e = make()
    e.push(Q, b"plain", T0)
    e.push(Q, b"late", T0, 10)
    e.push(Q, b"early", T0, 5)
    e.push(Q, b"same-as-late", T0 + 5 * SEC, 5)  # due at T0+10s like id 2, higher id
    # one late tick: every due message goes to the head in the order it fell due
    e.tick(T0 + 60 * SEC)
    assert ready_ids(e.queue(Q)) == [3, 2, 4, 1]


def test_due_delayed_messages_in_separate_ticks_keep_order():
    e = make()
    e.push(Q, b"plain", T0)
    e.push(Q, b"late", T0, 10)
    e.push(Q, b"early", T0, 5)
    e.tick(T0 + 5 * SEC)
    assert ready_ids(e.queue(Q)) == [3, 1]
    e.tick(T0 + 10 * SEC)
    assert ready_ids(e.queue(Q)) == [3, 2, 1]


def test_promoted_message_keeps_its_head_place_after_lease_expiry():
    e = make(vt=10)
    e.push(Q, b"plain", T0)
    e.push(Q, b"delayed", T0, 1)
    assert pop_id(e, T0 + SEC) == 2
    e.tick(T0 + 11 * SEC)
    assert drain(e, T0 + 11 * SEC) == [2, 1]


def test_maximum_delay_saturates_and_never_falls_due():
    e = make()
    assert e.push(Q, b"far", T0, MAX_DELAY) == 1
    assert e.push(Q, b"far too", 0, MAX_DELAY) == 2
    q = e.queue(Q)
    assert q.delayed == {1: MAX_DUE_AT, 2: MAX_DUE_AT}
    assert e.next_deadline() == MAX_DUE_AT
    horizon = T0 + 1000 * 365 * DAY  # a thousand years
    assert e.tick(horizon) == MAX_DUE_AT
    assert pop(e, horizon) is None
    assert q.state_of(1) == q.state_of(2) == "delayed"
    # the queue keeps working normally around them
    assert e.push(Q, b"now", horizon) == 3
    assert pop(e, horizon) == (3, b"now")
    assert e.purge(Q, "delayed") == 2


def test_large_delays_below_saturation_are_exact():
    e = make()
    delay = 2**62
    e.push(Q, b"a", T0, delay)
    assert e.queue(Q).delayed == {1: T0 + delay * 1000}
    assert e.queue(Q).delayed[1] < MAX_DUE_AT
    e.tick(T0 + delay * 1000 - 1)
    assert e.queue(Q).state_of(1) == "delayed"
    e.tick(T0 + delay * 1000)
    assert e.queue(Q).state_of(1) == "ready"


def test_saturated_delay_survives_replay():
    records = []
    e = make(journal=records.append)
    e.push(Q, b"far", T0, MAX_DELAY)
    assert snapshot(replay(records)) == snapshot(e)


# -- EXTEND ------------------------------------------------------------------------------------


def test_extend_sets_deadline_to_now_plus_seconds_not_added():
    e = make(vt=30)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.extend(Q, 1, 10, T0 + 5 * SEC)
    q = e.queue(Q)
    assert deadlines(q) == {1: T0 + 15 * SEC}  # not T0 + 40 s
    assert pop(e, T0 + 15 * SEC - 1) is None
    assert pop_id(e, T0 + 15 * SEC) == 1


def test_extend_can_lengthen_a_lease():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.extend(Q, 1, 100, T0 + 9 * SEC)
    assert pop(e, T0 + 10 * SEC) is None
    assert pop(e, T0 + 109 * SEC - 1) is None
    assert pop_id(e, T0 + 109 * SEC) == 1


def test_extend_does_not_count_a_delivery():
    e = make(vt=10, mda=1)
    e.push(Q, b"a", T0)
    e.extend(Q, 1, 5, T0)  # a visible message: hidden, not delivered
    q = e.queue(Q)
    assert q.state_of(1) == "inflight"
    assert attempts(e, 1) == 0
    assert pop(e, T0 + 5 * SEC - 1) is None
    e.tick(T0 + 5 * SEC)
    assert q.state_of(1) == "ready"  # not the DLQ: never delivered
    assert pop_id(e, T0 + 5 * SEC) == 1
    assert attempts(e, 1) == 1


def test_extend_visible_message_keeps_its_place():
    e = make()
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0)
    e.extend(Q, 1, 5, T0)
    assert pop_id(e, T0) == 2
    e.tick(T0 + 5 * SEC)
    e.push(Q, b"c", T0 + 5 * SEC)
    assert drain(e, T0 + 5 * SEC) == [1, 3]


def test_extend_zero_releases_at_once():
    e = make(vt=30)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.extend(Q, 1, 0, T0 + 3)
    assert deadlines(e.queue(Q)) == {1: T0 + 3}
    assert e.next_deadline() <= T0 + 3
    assert pop_id(e, T0 + 3) == 1
    assert attempts(e, 1) == 2


def test_extend_zero_on_last_delivery_moves_to_dlq():
    e = make(vt=30, mda=1)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.extend(Q, 1, 0, T0 + 3)
    e.tick(T0 + 3)
    assert e.queue(Q).dead == {1: T0 + 3}


def test_extend_seconds_range():
    e = make()
    e.push(Q, b"a", T0)
    assert EXTEND_RANGE == (0, 43200)
    for bad in (-1, 43201, 2**64):
        with pytest.raises(CommandError) as info:
            e.extend(Q, 1, bad, T0)
        assert info.value.code == "ERR"
    assert e.queue(Q).state_of(1) == "ready"
    e.extend(Q, 1, 43200, T0)
    assert deadlines(e.queue(Q)) == {1: T0 + 43200 * SEC}
    e.extend(Q, 1, 0, T0)
    assert deadlines(e.queue(Q)) == {1: T0}


def test_extend_delayed_dlq_and_unknown_messages_not_found():
    e = make(vt=1, mda=1)
    e.push(Q, b"dead", T0)
    assert pop_id(e, T0) == 1
    e.tick(T0 + SEC)
    e.push(Q, b"delayed", T0 + SEC, 100)
    q = e.queue(Q)
    assert q.state_of(1) == "dlq" and q.state_of(2) == "delayed"
    before = snapshot(e)
    for message_id in (1, 2, 3, 0):
        with pytest.raises(NoMessageError) as info:
            e.extend(Q, message_id, 10, T0 + SEC)
        assert info.value.code == "NOMSG"
    assert snapshot(e) == before


# -- ACK ---------------------------------------------------------------------------------------


def test_ack_in_flight_message():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.ack(Q, 1)
    q = e.queue(Q)
    assert q.records == {} and not q.leases and q.main_count() == 0
    e.tick(T0 + 10 * SEC)
    assert pop(e, T0 + 10 * SEC) is None


def test_ack_visible_message_never_popped():
    e = make()
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0)
    e.ack(Q, 1)
    assert e.queue(Q).main_count() == 1
    assert drain(e, T0) == [2]


def test_ack_expired_message_that_was_released():
    e = make(vt=1)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.tick(T0 + SEC)
    e.ack(Q, 1)
    assert e.queue(Q).records == {}


def test_ack_twice_is_not_found():
    e = make()
    e.push(Q, b"a", T0)
    e.ack(Q, 1)
    with pytest.raises(NoMessageError):
        e.ack(Q, 1)


def test_ack_delayed_dlq_and_unknown_messages_not_found():
    e = make(vt=1, mda=1)
    e.push(Q, b"dead", T0)
    assert pop_id(e, T0) == 1
    e.tick(T0 + SEC)
    e.push(Q, b"delayed", T0 + SEC, 100)
    before = snapshot(e)
    for message_id in (1, 2, 3, 0, -1):
        with pytest.raises(NoMessageError) as info:
            e.ack(Q, message_id)
        assert info.value.code == "NOMSG"
    assert snapshot(e) == before


# -- PURGE -------------------------------------------------------------------------------------


def _mixed_queue():
    """A queue with 2 visible, 1 in flight, 3 delayed and 1 DLQ message."""
    e = make(vt=10, mda=1)
    e.push(Q, b"dies", T0)
    assert pop_id(e, T0) == 1
    e.tick(T0 + 10 * SEC)
    now = T0 + 10 * SEC
    e.push(Q, b"inflight", now)
    assert pop_id(e, now) == 2
    e.push(Q, b"v1", now)
    e.push(Q, b"v2", now)
    for _ in range(3):
        e.push(Q, b"d", now, 100)
    q = e.queue(Q)
    assert (len(q.ready), len(q.leases), len(q.delayed), len(q.dead)) == (2, 1, 3, 1)
    return e, now


def test_purge_main_counts_visible_and_in_flight():
    e, now = _mixed_queue()
    assert e.purge(Q, "main") == 3
    q = e.queue(Q)
    assert (len(q.ready), len(q.leases), len(q.delayed), len(q.dead)) == (0, 0, 3, 1)
    assert set(q.records) == {1, 5, 6, 7}
    assert e.purge(Q, "main") == 0
    e.tick(now + 10 * SEC)  # the purged lease leaves nothing behind
    assert q.dead == {1: T0 + 10 * SEC}
    check_indexes(q)


def test_purge_delayed_counts_delayed():
    e, now = _mixed_queue()
    assert e.purge(Q, "delayed") == 3
    q = e.queue(Q)
    assert (len(q.ready), len(q.leases), len(q.delayed), len(q.dead)) == (2, 1, 0, 1)
    assert e.purge(Q, "delayed") == 0
    e.tick(now + 100 * SEC)
    assert len(q.ready) == 2
    check_indexes(q)


def test_purge_dlq_counts_dlq():
    e, now = _mixed_queue()
    assert e.purge(Q, "dlq") == 1
    q = e.queue(Q)
    assert (len(q.ready), len(q.leases), len(q.delayed), len(q.dead)) == (2, 1, 3, 0)
    assert e.purge(Q, "dlq") == 0
    check_indexes(q)


def test_purge_empty_queue_is_zero():
    e = make()
    for part in ("main", "delayed", "dlq"):
        assert e.purge(Q, part) == 0


# -- settings ----------------------------------------------------------------------------------


def test_settings_defaults():
    s = make_settings()
    assert (s.visibility_timeout, s.max_delivery_attempts, s.retention_period) == (30, 5, 86400)
    e = Engine()
    e.create_queue(Q, make_settings())
    s = e.queue(Q).settings
    assert (s.visibility_timeout, s.max_delivery_attempts, s.retention_period) == (30, 5, 86400)


def test_settings_partial_defaults():
    s = make_settings(7)
    assert (s.visibility_timeout, s.max_delivery_attempts, s.retention_period) == (7, 5, 86400)
    s = make_settings(7, 3)
    assert (s.visibility_timeout, s.max_delivery_attempts, s.retention_period) == (7, 3, 86400)


def test_settings_ranges_constants():
    assert VISIBILITY_RANGE == (1, 43200)
    assert ATTEMPTS_RANGE == (1, 20)
    assert RETENTION_RANGE == (60, 604800)


@pytest.mark.parametrize("args", [(1, 1, 60), (43200, 20, 604800)])
def test_settings_boundaries_accepted(args):
    s = make_settings(*args)
    assert (s.visibility_timeout, s.max_delivery_attempts, s.retention_period) == args


@pytest.mark.parametrize("args", [
    (0, None, None), (43201, None, None), (-1, None, None),
    (None, 0, None), (None, 21, None),
    (None, None, 59), (None, None, 604801), (None, None, 0),
])
def test_settings_out_of_range_rejected(args):
    with pytest.raises(CommandError) as info:
        make_settings(*args)
    assert info.value.code == "ERR"


def test_update_settings_from_base():
    e = make(10, 3, 600)
    e.update_queue(Q, make_settings(20, 4, 700))
    s = e.queue(Q).settings
    assert (s.visibility_timeout, s.max_delivery_attempts, s.retention_period) == (20, 4, 700)
    s2 = make_settings(None, 2, None, base=s)
    assert (s2.visibility_timeout, s2.max_delivery_attempts, s2.retention_period) == (20, 2, 700)
    assert s.max_delivery_attempts == 4  # the base is not modified


# -- queues ------------------------------------------------------------------------------------


def test_create_existing_queue_is_busy():
    e = make(10, 3, 600)
    e.push(Q, b"a", T0)
    with pytest.raises(BusyQueueError) as info:
        e.create_queue(Q, make_settings())
    assert info.value.code == "BUSYQUEUE"
    q = e.queue(Q)
    assert q.settings.visibility_timeout == 10
    assert len(q.records) == 1


def test_unknown_queue_errors():
    e = make()
    n = b"nope"
    calls = [
        lambda: e.queue(n),
        lambda: e.push(n, b"a", T0),
        lambda: e.pop(n, T0),
        lambda: e.ack(n, 1),
        lambda: e.extend(n, 1, 1, T0),
        lambda: e.purge(n, "main"),
        lambda: e.update_queue(n, make_settings()),
        lambda: e.delete_queue(n),
    ]
    for call in calls:
        with pytest.raises(NoQueueError) as info:
            call()
        assert info.value.code == "NOQUEUE"
        assert info.value.message


def test_delete_queue_drops_messages_and_timers():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0, 5)
    assert pop_id(e, T0) == 1
    e.delete_queue(Q)
    assert Q not in e.queues
    assert e.next_deadline() is None
    assert e.tick(T0 + DAY) is None
    e.create_queue(Q, make_settings(10))
    assert e.queue(Q).records == {}
    assert e.tick(T0 + 2 * DAY) is None


def test_old_timers_do_not_touch_recreated_queue():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.delete_queue(Q)
    e.create_queue(Q, make_settings(100))
    e.push(Q, b"b", T0)
    first = pop_id(e, T0)
    e.tick(T0 + 10 * SEC)  # the old queue's lease deadline
    q = e.queue(Q)
    assert deadlines(q) == {first: T0 + 100 * SEC}
    assert e.next_deadline() == T0 + 100 * SEC


def test_flush_drops_every_queue():
    e = make()
    e.create_queue(b"b", make_settings())
    e.push(Q, b"a", T0, 5)
    e.push(b"b", b"a", T0)
    e.flush()
    assert e.queues == {}
    assert e.queue_names() == []
    assert e.next_deadline() is None
    assert e.tick(T0 + DAY) is None


def test_queue_names_sorted():
    e = Engine()
    for name in (b"b", b"a", b"c"):
        e.create_queue(name, make_settings())
    assert e.queue_names() == [b"a", b"b", b"c"]


# -- tick and next_deadline ----------------------------------------------------------------------


def test_tick_on_empty_engine():
    e = Engine()
    assert e.tick(T0) is None
    assert e.next_deadline() is None


def test_tick_returns_earliest_deadline_over_queues():
    e = make(vt=30)
    e.create_queue(b"b", make_settings(30))
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1  # lease until T0+30s
    e.push(b"b", b"x", T0, 5)  # due at T0+5s
    assert e.next_deadline() == T0 + 5 * SEC
    assert e.tick(T0 + 1) == T0 + 5 * SEC
    assert e.tick(T0 + 5 * SEC) == T0 + 30 * SEC
    assert e.queue(b"b").state_of(1) == "ready"
    assert e.tick(T0 + 30 * SEC) is None
    assert e.queue(Q).state_of(1) == "ready"


def test_tick_return_is_never_in_the_past():
    e = make(vt=1, mda=2, rp=60)
    for i in range(5):
        e.push(Q, b"m", T0 + i * 100, i)
    now = T0
    for step in range(400):
        pop_id(e, now)
        nxt = e.tick(now)
        assert nxt is None or nxt > now
        now += 337
    assert e.queue(Q).records == {}


def test_long_missed_events_processed_in_one_tick_in_order():
    records = []
    e = make(vt=10, mda=1, rp=60, journal=records.append)
    e.push(Q, b"dies", T0)
    assert pop_id(e, T0) == 1  # dead at T0+10s, dropped at T0+70s
    e.push(Q, b"later", T0, 20)  # due at T0+20s
    e.create_queue(b"b", make_settings(5, 2, 60))
    e.push(b"b", b"x", T0)
    assert pop_id(e, T0, b"b") == 1  # expires at T0+5s, stays visible (1 of 2 deliveries)
    del records[:]
    assert e.tick(T0 + 365 * DAY) is None
    q = e.queue(Q)
    assert q.records.keys() == {2}
    assert ready_ids(q) == [2]
    assert ready_ids(e.queue(b"b")) == [1]
    mine = [r for r in records if r[1] == Q]
    assert mine == [("dead", Q, 1, T0 + 10 * SEC), ("promote", Q, 2, 1), ("drop", Q, 1)]
    assert [r[:3] for r in records if r[1] == b"b"] == [("expire", b"b", 1)]


def test_long_missed_events_chronological_within_queue():
    # a release at 5 s and a promotion at 3 s: both land, the promoted message first
    records = []
    e = make(vt=5, mda=3, journal=records.append)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.push(Q, b"b", T0, 3)
    e.push(Q, b"c", T0, 7)
    del records[:]
    e.tick(T0 + DAY)
    assert [r[0] for r in records] == ["promote", "expire", "promote"]
    assert ready_ids(e.queue(Q)) == [2, 3, 1]


def test_next_deadline_after_ack_is_not_late():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0)
    assert pop_id(e, T0) == 1
    assert pop_id(e, T0 + SEC) == 2
    e.ack(Q, 1)
    # possibly early (the timer for the acked lease), never later than the real event
    assert e.next_deadline() <= T0 + 11 * SEC
    nxt = e.tick(T0 + 10 * SEC)
    assert nxt == T0 + 11 * SEC
    assert e.queue(Q).state_of(2) == "inflight"


def test_next_deadline_follows_earlier_extend():
    e = make(vt=100)
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    assert e.next_deadline() == T0 + 100 * SEC
    e.extend(Q, 1, 2, T0 + SEC)
    assert e.next_deadline() == T0 + 3 * SEC
    e.tick(T0 + 3 * SEC)
    assert e.queue(Q).state_of(1) == "ready"


def test_next_deadline_follows_earlier_delayed_push():
    e = make()
    e.push(Q, b"a", T0, 100)
    assert e.next_deadline() == T0 + 100 * SEC
    e.push(Q, b"b", T0, 1)
    assert e.next_deadline() == T0 + SEC


# -- replay ------------------------------------------------------------------------------------


def test_replay_rebuilds_complete_state():
    records = []
    e = Engine(journal=records.append)
    e.create_queue(Q, make_settings(5, 2, 60))
    e.create_queue(b"b", make_settings(10, 3, 120))
    e.create_queue(b"gone", make_settings())
    now = T0
    e.push(b"gone", b"x", now, 3)
    for i in range(30):
        e.push(Q, b"m%d" % i, now, (0, 0, 4, 9)[i % 4])
        e.push(b"b", b"n%d" % i, now)
    e.push(Q, b"far", now, MAX_DELAY)
    e.delete_queue(b"gone")
    for step in range(60):
        now += 1700
        e.tick(now)
        for name in (Q, b"b"):
            got = e.pop(name, now)
            if got and got[0] % 3 == 0:
                e.ack(name, got[0])
            elif got and got[0] % 5 == 0:
                e.extend(name, got[0], 1, now)
        if step == 20:
            e.update_queue(b"b", make_settings(4, 1, 60))
        if step == 30:
            assert e.purge(b"b", "dlq") >= 0
        if step == 40:
            e.push(Q, b"late", now)
            e.ack(Q, e.queue(Q).id_sequence)
    q = e.queue(Q)
    assert q.dead or q.leases  # the workload reached interesting states
    live = snapshot(e)
    replica = replay(records)
    assert snapshot(replica) == live
    assert e.queue_names() == replica.queue_names()
    # the replica goes on exactly like the live engine
    for t in (now + 1, now + 6 * SEC, now + 100 * SEC, now + 1000 * SEC):
        e.tick(t)
        replica.tick(t)
        for name in (Q, b"b"):
            a, b = e.pop(name, t), replica.pop(name, t)
            assert (a and (a[0], bytes(a[1]))) == (b and (b[0], bytes(b[1])))
        assert snapshot(replica) == snapshot(e)


def test_replay_of_flush_and_recreate():
    records = []
    e = make(journal=records.append)
    e.push(Q, b"a", T0, 5)
    e.flush()
    e.create_queue(Q, make_settings(7))
    e.push(Q, b"b", T0)
    assert pop_id(e, T0) == 1
    replica = replay(records)
    assert snapshot(replica) == snapshot(e)
    assert replica.next_deadline() == T0 + 7 * SEC


def test_the_hot_records_apply_through_the_functions_push_pop_ack_and_extend_call():
    """PUSH, POP, ACK and EXTEND call Queue.add, Queue.lease and Queue.remove directly,
    skipping the table; replay goes through the table: both must name the same functions."""
    assert _KINDS["push"][0] is Queue.add
    assert _KINDS["lease"][0] is Queue.lease
    assert _KINDS["hold"][0] is Queue.lease
    assert _KINDS["remove"][0] is Queue.remove


def test_apply_rejects_unknown_record():
    e = Engine()
    with pytest.raises(ValueError):
        e.apply(("nonsense", Q))
    with pytest.raises(ValueError):
        e.apply((None,))


# -- complexity --------------------------------------------------------------------------------


def test_fifty_thousand_push_pop_ack():
    e = make(vt=30)
    n = 50_000
    for i in range(n):
        assert e.push(Q, b"x", T0 + i) == i + 1
    for i in range(n):
        got = e.pop(Q, T0 + n)
        assert got is not None and got[0] == i + 1
        e.ack(Q, got[0])
    assert e.queue(Q).records == {}
    assert e.queue(Q).id_sequence == n


def test_fifty_thousand_leases_expire_in_one_tick():
    e = make(vt=10, mda=1, rp=60)
    n = 50_000
    for i in range(n):
        e.push(Q, b"x", T0)
        e.pop(Q, T0 + i)
    assert len(e.queue(Q).leases) == n
    e.tick(T0 + 10 * SEC + n)
    assert len(e.queue(Q).dead) == n
    assert e.tick(T0 + 10 * SEC + n + 60 * SEC) is None
    assert e.queue(Q).records == {}


# -- property test against a reference model -----------------------------------------------------


class Model:
    """A deliberately naive reference implementation of one queue (linear scans)."""

    def __init__(self, vt, mda, rp):
        self.vt, self.mda, self.rp = vt, mda, rp
        self.msgs = {}  # id -> [state, attempts, at, key]
        self.seq = 0
        self.promoted = 0

    def events(self):
        for message_id, (state, _, at, _) in self.msgs.items():
            if state == "inflight":
                yield at, 0, message_id
            elif state == "delayed":
                yield at, 1, message_id
            elif state == "dlq":
                yield at + self.rp * 1000, 2, message_id

    def next_event(self):
        return min((ev[0] for ev in self.events()), default=None)

    def tick(self, now):
        while True:
            ev = min(self.events(), default=None)
            if ev is None or ev[0] > now:
                return
            at, kind, message_id = ev
            m = self.msgs[message_id]
            if kind == 0:
                if m[1] >= self.mda:
                    m[0], m[2] = "dlq", at
                else:
                    m[0], m[2] = "ready", None
            elif kind == 1:
                self.promoted += 1
                m[0], m[2], m[3] = "ready", None, (0, self.promoted, message_id)
            else:
                del self.msgs[message_id]

    def push(self, now, delay):
        self.seq += 1
        if delay:
            self.msgs[self.seq] = ["delayed", 0, min(now + delay * 1000, MAX_DUE_AT),
                                   (1, 0, self.seq)]
        else:
            self.msgs[self.seq] = ["ready", 0, None, (1, 0, self.seq)]
        return self.seq

    def pop(self, now):
        ready = [(m[3], i) for i, m in self.msgs.items() if m[0] == "ready"]
        if not ready:
            return None
        message_id = min(ready)[1]
        m = self.msgs[message_id]
        m[0], m[1], m[2] = "inflight", m[1] + 1, now + self.vt * 1000
        return message_id

    def in_main(self, message_id):
        return message_id in self.msgs and self.msgs[message_id][0] in ("ready", "inflight")

    def ack(self, message_id):
        if not self.in_main(message_id):
            return "NOMSG"
        del self.msgs[message_id]

    def extend(self, message_id, seconds, now):
        if not self.in_main(message_id):
            return "NOMSG"
        m = self.msgs[message_id]
        m[0], m[2] = "inflight", now + seconds * 1000

    def purge(self, which):
        state = {"main": ("ready", "inflight"), "delayed": ("delayed",), "dlq": ("dlq",)}[which]
        ids = [i for i, m in self.msgs.items() if m[0] in state]
        for i in ids:
            del self.msgs[i]
        return len(ids)


def compare(e, model):
    q = e.queue(Q)
    check_indexes(q)
    assert set(q.records) == set(model.msgs)
    assert q.id_sequence == model.seq
    for message_id, (state, n, at, _) in model.msgs.items():
        assert q.state_of(message_id) == state
        assert attempts(e, message_id) == n
    assert deadlines(q) == {i: m[2] for i, m in model.msgs.items() if m[0] == "inflight"}
    assert q.delayed == {i: m[2] for i, m in model.msgs.items() if m[0] == "delayed"}
    assert q.dead == {i: m[2] for i, m in model.msgs.items() if m[0] == "dlq"}
    expected_ready = sorted((m[3], i) for i, m in model.msgs.items() if m[0] == "ready")
    assert ready_ids(q) == [i for _, i in expected_ready]
    assert q.main_count() == sum(m[0] in ("ready", "inflight") for m in model.msgs.values())
    real = model.next_event()
    assert q.next_deadline() == real
    if real is not None:
        nd = e.next_deadline()
        assert nd is not None and nd <= real


small_settings = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(60, 120))
OP_KINDS = ["push", "push", "push", "pop", "pop", "pop", "ack", "ack", "extend", "extend",
            "purge", "update"]
advance = st.sampled_from([0, 0, 1, 999, 1000, 1001, 2000, 2999, 3000, 59_999, 60_000,
                           61_000, 200_000, 10**9])


def draw_operation(data, model):
    """One random operation; ACK and EXTEND mostly aim at ids that exist."""
    kind = data.draw(st.sampled_from(OP_KINDS))
    if kind == "push":
        return kind, data.draw(st.sampled_from([0, 0, 0, 1, 2, 3, 60, MAX_DELAY]))
    if kind in ("ack", "extend"):
        ids = sorted(model.msgs) or [1]
        message_id = data.draw(st.one_of(st.sampled_from(ids), st.integers(0, model.seq + 1)))
        if kind == "ack":
            return kind, message_id
        return kind, message_id, data.draw(st.integers(0, 4))
    if kind == "purge":
        return kind, data.draw(st.sampled_from(["main", "delayed", "dlq"]))
    if kind == "update":
        return kind, data.draw(small_settings)
    return (kind,)


@hsettings(max_examples=200, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow])
@given(initial=small_settings, count=st.integers(5, 60), data=st.data())
def test_property_engine_matches_model_and_replay(initial, count, data):
    records = []
    e = Engine(journal=records.append)
    e.create_queue(Q, make_settings(*initial))
    model = Model(*initial)
    now = T0
    running = {}  # id -> the deadline of its latest lease or extension, as seen by callers
    for _ in range(count):
        dt = data.draw(advance)
        op = draw_operation(data, model)
        now += dt
        nxt = e.tick(now)
        model.tick(now)
        assert nxt is None or nxt > now
        compare(e, model)
        kind = op[0]
        if kind == "push":
            assert e.push(Q, b"body%d" % model.seq, now, op[1]) == model.push(now, op[1])
        elif kind == "pop":
            got = e.pop(Q, now)
            expected = model.pop(now)
            assert (got and got[0]) == expected
            if got is not None:
                assert bytes(got[1]) == b"body%d" % (got[0] - 1)
                assert running.get(got[0], now) <= now, "delivered while its lease ran"
                running[got[0]] = now + model.vt * 1000
        elif kind == "ack":
            try:
                e.ack(Q, op[1])
                result = None
            except NoMessageError as err:
                result = err.code
            assert result == model.ack(op[1])
            if result is None:
                running.pop(op[1], None)
        elif kind == "extend":
            try:
                e.extend(Q, op[1], op[2], now)
                result = None
            except NoMessageError as err:
                result = err.code
            assert result == model.extend(op[1], op[2], now)
            if result is None:
                running[op[1]] = now + op[2] * 1000
        elif kind == "purge":
            assert e.purge(Q, op[1]) == model.purge(op[1])
        elif kind == "update":
            e.update_queue(Q, make_settings(*op[1]))
            model.vt, model.mda, model.rp = op[1]
        compare(e, model)
    replica = replay(records)
    assert snapshot(replica) == snapshot(e)
    real = real_next_event(replica)
    if real is not None:
        assert replica.next_deadline() <= real
