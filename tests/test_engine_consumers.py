"""Engine tests for the consumers and operators issues, on explicit `now` values (Unix ms).

Backoff, dedup, priorities, NACK, receipts, MAXLEN, batches, NOACK, CANCEL, RESCHEDULE,
REDRIVE, PAUSE, the lifetime counters, live events, and the replay of a journal of all of
these. No test sleeps or reads a clock; like the dispatcher, helpers tick before acting.
"""

import hiredis
import pytest

from valqd.engine import PRIORITY_RANGE, Engine, make_settings
from valqd.engine import record
from valqd.engine.queue import COUNTERS
from valqd.engine.record import ID_MASK
from valqd.errors import (CommandError, NoLeaseError, NoMessageError, NoQueueError,
                          QueueFullError)
from valqd.persistence.format import decode_effect, encode_effect

Q = b"q"
T0 = 1_700_000_000_000
SEC = 1000


# -- helpers ---------------------------------------------------------------------------------

def make(vt=30, mda=5, rp=86400, journal=None, name=Q, **extra):
    """An engine with one queue; `extra` are make_settings keywords (backoff=..., ...);
    `journal`, a list, collects every effect."""
    e = Engine(journal=None if journal is None else journal.append)
    e.create_queue(name, make_settings(vt, mda, rp, **extra))
    return e


def pop(e, now, name=Q, count=1, noack=False):
    """pop_many as the server runs it: tick first."""
    e.tick(now)
    return e.pop_many(name, now, count, noack)


def pop_id(e, now, name=Q):
    got = pop(e, now, name)
    return got[0].id if got else None


def pop_one(e, now, name=Q):
    got = pop(e, now, name)
    assert len(got) == 1, got
    return got[0]


def drain(e, now, name=Q):
    out = []
    while (got := pop_id(e, now, name)) is not None:
        out.append(got)
    return out


def ready_ids(e, name=Q):
    return [key & ID_MASK for key in e.queue(name).ready]


def header(e, message_id, name=Q):
    """(enqueued_at, promote_seq, lease_no, attempts, priority)."""
    return record.unpack(e.queue(name).records[message_id])


def attempts(e, message_id, name=Q):
    return header(e, message_id, name)[3]


def state(e, message_id, name=Q):
    return e.queue(name).state_of(message_id)


def visible_at(e, message_id, name=Q):
    """The due time of a delayed message."""
    return e.queue(name).delayed[message_id]


def replay(journal, through_aof_format=True):
    """A fresh engine rebuilt from journal records (optionally encoded as in the AOF)."""
    e = Engine()
    if through_aof_format:
        reader = hiredis.Reader()
        reader.feed(b"".join(encode_effect(effect) for effect in journal))
        while (fields := reader.gets()) is not False:
            e.apply(decode_effect(fields))
    else:
        for effect in journal:
            e.apply(effect)
    return e


def full_state(e):
    """What a restart must preserve: the digest plus what the digest leaves out."""
    return (e.digest(), {n: (dict(q.dedup), dict(q.reasons), q.paused, q.settings)
                         for n, q in e.queues.items()})


# -- backoff ---------------------------------------------------------------------------------

def test_fixed_backoff_on_lease_expiry():
    e = make(vt=10, backoff=("fixed", 7, 7))
    e.push(Q, b"a", T0)
    assert pop_id(e, T0) == 1
    e.tick(T0 + 10 * SEC)
    assert state(e, 1) == "delayed"
    assert visible_at(e, 1) == T0 + 17 * SEC  # from the lease deadline, not from the tick
    assert pop_id(e, T0 + 17 * SEC - 1) is None
    assert pop_id(e, T0 + 17 * SEC) == 1
    assert attempts(e, 1) == 2


def test_fixed_backoff_counts_from_the_deadline_even_when_the_tick_is_late():
    e = make(vt=10, backoff=("fixed", 7, 7))
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.tick(T0 + 12 * SEC)
    assert visible_at(e, 1) == T0 + 17 * SEC


def _failure_waits(e, fail, rounds):
    """Deliver message 1 `rounds` times, failing each delivery with `fail(now)`, and return
    the waits (s) between each failure and the next time it is visible."""
    waits = []
    now = T0
    for _ in range(rounds):
        assert pop_id(e, now) == 1, now
        failed_at = fail(now)
        e.tick(failed_at)
        due = visible_at(e, 1) if state(e, 1) == "delayed" else failed_at
        assert pop_id(e, due - 1) is None
        waits.append((due - failed_at) // SEC)
        now = due
    return waits


def test_exponential_backoff_sequence_with_ceiling_on_lease_expiry():
    e = make(vt=1, mda=20, backoff=("exponential", 2, 20))
    e.push(Q, b"a", T0)
    waits = _failure_waits(e, lambda now: now + SEC, 7)
    assert waits == [2, 4, 8, 16, 20, 20, 20]


def test_exponential_backoff_sequence_on_nack_without_delay():
    e = make(vt=60, mda=20, backoff=("exponential", 3, 30))
    e.push(Q, b"a", T0)

    def fail(now):
        e.nack(Q, 1, now + 5)
        return now + 5

    assert _failure_waits(e, fail, 6) == [3, 6, 12, 24, 30, 30]


def test_fixed_backoff_on_nack_without_delay():
    e = make(vt=60, backoff=("fixed", 9, 9))
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.nack(Q, 1, T0 + 100)
    assert visible_at(e, 1) == T0 + 100 + 9 * SEC


def test_no_backoff_is_the_module_behaviour():
    e = make(vt=5)
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.tick(T0 + 5 * SEC)
    assert state(e, 1) == "ready"
    pop(e, T0 + 5 * SEC)
    e.nack(Q, 1, T0 + 6 * SEC)
    assert state(e, 1) == "ready"


def test_nack_delay_overrides_backoff_and_zero_means_now():
    e = make(vt=60, backoff=("fixed", 100, 100))
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.nack(Q, 1, T0, delay=3)
    assert visible_at(e, 1) == T0 + 3 * SEC
    assert pop_id(e, T0 + 3 * SEC) == 1
    e.nack(Q, 1, T0 + 4 * SEC, delay=0)
    assert state(e, 1) == "ready"
    assert pop_id(e, T0 + 4 * SEC) == 1


def test_backed_off_message_returns_to_its_original_place():
    e = make(vt=10, backoff=("fixed", 5, 5))
    for body in (b"a", b"b", b"c", b"d"):
        e.push(Q, body, T0)
    assert pop_id(e, T0) == 1
    assert pop_id(e, T0) == 2
    e.nack(Q, 1, T0, delay=0)  # 1 back at once, in its place
    e.tick(T0 + 10 * SEC)  # 2's lease runs out: backoff 5 s
    assert state(e, 2) == "delayed"
    e.push(Q, b"e", T0 + 11 * SEC)
    e.tick(T0 + 15 * SEC)
    # 2 goes back between 1 and 3, not to the head as a fresh delayed message would
    assert ready_ids(e) == [1, 2, 3, 4, 5]
    assert drain(e, T0 + 15 * SEC) == [1, 2, 3, 4, 5]


def test_backoff_then_last_attempt_goes_to_dlq_at_the_deadline():
    e = make(vt=10, mda=2, backoff=("fixed", 5, 5))
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.tick(T0 + 10 * SEC)
    assert pop_id(e, T0 + 15 * SEC) == 1
    e.tick(T0 + 40 * SEC)
    assert state(e, 1) == "dlq"
    assert e.queue(Q).dead[1] == T0 + 25 * SEC


def test_backoff_settings_are_validated():
    with pytest.raises(CommandError, match="exponential backoff max must not be below"):
        make_settings(backoff=("exponential", 10, 5))
    with pytest.raises(CommandError, match="backoff seconds must be between 0 and 604800"):
        make_settings(backoff=("fixed", 604801, 604801))
    with pytest.raises(CommandError, match="backoff must be NONE, FIXED or EXPONENTIAL"):
        make_settings(backoff=("linear", 1, 1))
    s = make_settings(backoff=("exponential", 0, 604800))
    assert (s.backoff, s.backoff_base, s.backoff_max) == ("exponential", 0, 604800)
    assert s.backoff_ms(64) == 0


def test_exponential_backoff_huge_attempt_counts_stay_at_the_ceiling():
    s = make_settings(backoff=("exponential", 1, 604800))
    assert [s.backoff_ms(n) for n in (1, 2, 3, 20, 1000)] == \
        [1000, 2000, 4000, 524288 * 1000, 604800 * 1000]


# -- dedup -----------------------------------------------------------------------------------

def test_dedup_second_push_returns_first_id_and_stores_nothing():
    journal = []
    e = make(journal=journal)
    assert e.push(Q, b"a", T0, dedup_key=b"k") == 1
    before = (len(journal), dict(e.queue(Q).records), e.queue(Q).id_sequence)
    assert e.push(Q, b"other body", T0 + 1000, dedup_key=b"k") == 1
    assert e.push(Q, b"a", T0 + 2000, delay=5, priority=3, dedup_key=b"k") == 1
    assert (len(journal), dict(e.queue(Q).records), e.queue(Q).id_sequence) == before
    assert e.queue(Q).counters["deduplicated"] == 2
    assert e.queue(Q).counters["pushed"] == 1


def test_dedup_window_expiry_is_exact():
    e = make(dedup_window=10)
    assert e.push(Q, b"a", T0, dedup_key=b"k") == 1
    e.tick(T0 + 10 * SEC - 1)
    assert e.push(Q, b"a", T0 + 10 * SEC - 1, dedup_key=b"k") == 1
    e.tick(T0 + 10 * SEC)
    assert e.push(Q, b"a", T0 + 10 * SEC, dedup_key=b"k") == 2
    # the new message opened a new window
    assert e.push(Q, b"a", T0 + 19 * SEC, dedup_key=b"k") == 2
    assert e.push(Q, b"a", T0 + 20 * SEC, dedup_key=b"k") == 3


def test_dedup_holds_after_the_first_message_is_gone():
    e = make()
    e.push(Q, b"a", T0, dedup_key=b"k")
    pop(e, T0)
    e.ack(Q, 1)
    assert e.push(Q, b"a", T0 + SEC, dedup_key=b"k") == 1
    assert not e.queue(Q).records


def test_dedup_keys_are_per_key_and_per_queue():
    e = make()
    e.create_queue(b"other", make_settings())
    assert e.push(Q, b"a", T0, dedup_key=b"k1") == 1
    assert e.push(Q, b"a", T0, dedup_key=b"k2") == 2
    assert e.push(Q, b"a", T0) == 3  # no key: never deduplicated
    assert e.push(Q, b"a", T0) == 4
    assert e.push(b"other", b"a", T0, dedup_key=b"k1") == 1


def test_dedup_key_is_forgotten_by_the_timer():
    e = make(dedup_window=60)
    e.push(Q, b"a", T0, dedup_key=b"k")
    assert e.next_deadline() == T0 + 60 * SEC
    assert e.tick(T0 + 60 * SEC) is None
    assert e.queue(Q).dedup == {}


def test_dedup_window_setting_applies_to_new_keys():
    e = make(dedup_window=5)
    e.push(Q, b"a", T0, dedup_key=b"old")
    e.update_queue(Q, make_settings(base=e.queue(Q).settings, dedup_window=100))
    e.push(Q, b"a", T0, dedup_key=b"new")
    e.tick(T0 + 50 * SEC)
    assert e.push(Q, b"a", T0 + 50 * SEC, dedup_key=b"old") == 3
    assert e.push(Q, b"a", T0 + 50 * SEC, dedup_key=b"new") == 2


def test_dedup_range():
    with pytest.raises(CommandError, match="dedup_window must be between 1 and 604800"):
        make_settings(dedup_window=0)
    with pytest.raises(CommandError, match="dedup_window must be between 1 and 604800"):
        make_settings(dedup_window=604801)
    assert make_settings().dedup_window == 300


def test_dedup_keys_survive_replay():
    journal = []
    e = make(journal=journal, dedup_window=100)
    e.push(Q, b"a", T0, dedup_key=b"k1")
    e.push(Q, b"b", T0 + 50 * SEC, dedup_key=b"k2")
    e.push(Q, b"c", T0 + 50 * SEC, dedup_key=b"\x00bin\xff")
    pop(e, T0 + 50 * SEC)
    e.ack(Q, 1)
    r = replay(journal)
    assert r.queue(Q).dedup == e.queue(Q).dedup
    assert r.push(Q, b"x", T0 + 60 * SEC, dedup_key=b"k1") == 1
    assert r.push(Q, b"x", T0 + 60 * SEC, dedup_key=b"\x00bin\xff") == 3
    r.tick(T0 + 100 * SEC)
    assert r.push(Q, b"x", T0 + 100 * SEC, dedup_key=b"k1") == 4
    assert r.push(Q, b"x", T0 + 100 * SEC, dedup_key=b"k2") == 2
    # and from a snapshot (AOF rewrite)
    s = replay(list(e.snapshot()))
    assert s.queue(Q).dedup == e.queue(Q).dedup


def test_dedup_on_a_full_queue_answers_the_first_id():
    e = make(maxlen=1)
    e.push(Q, b"a", T0, dedup_key=b"k")
    assert e.push(Q, b"a", T0, dedup_key=b"k") == 1
    with pytest.raises(QueueFullError):
        e.push(Q, b"a", T0, dedup_key=b"k2")
    assert b"k2" not in e.queue(Q).dedup


# -- priorities ------------------------------------------------------------------------------

def test_higher_priority_first_fifo_within_a_priority():
    e = make()
    for body, priority in ((b"a", 0), (b"b", 5), (b"c", -1), (b"d", 5), (b"e", 0),
                           (b"f", 2**31 - 1), (b"g", -(2**31))):
        e.push(Q, body, T0, priority=priority)
    assert drain(e, T0) == [6, 2, 4, 1, 5, 3, 7]


def test_priority_range():
    assert PRIORITY_RANGE == (-(2**31), 2**31 - 1)


def test_priority_mixes_with_delayed_messages_falling_due():
    e = make()
    e.push(Q, b"a", T0)  # 1: p0
    e.push(Q, b"b", T0)  # 2: p0
    e.push(Q, b"c", T0, delay=5, priority=1)  # 3: p1, due later
    e.push(Q, b"d", T0, delay=5)  # 4: p0, due later
    e.push(Q, b"e", T0, priority=1)  # 5: p1
    e.push(Q, b"f", T0, delay=3, priority=-1)  # 6: p-1, due first
    # a message that fell due goes ahead of the waiting ones of its priority only
    assert drain(e, T0 + 5 * SEC) == [3, 5, 4, 1, 2, 6]


def test_priority_kept_through_expiry_nack_and_redrive():
    e = make(vt=10, mda=1)
    e.push(Q, b"low", T0)
    e.push(Q, b"high", T0, priority=9)
    d = pop_one(e, T0)
    assert (d.id, d.priority) == (2, 9)
    e.tick(T0 + 10 * SEC)  # last attempt: DLQ
    assert state(e, 2) == "dlq"
    e.redrive(Q, T0 + 10 * SEC)
    assert header(e, 2)[4] == 9
    assert drain(e, T0 + 10 * SEC) == [2, 1]


# -- NACK ------------------------------------------------------------------------------------

def test_nack_with_delay_hides_then_returns_in_place():
    e = make(vt=60)
    for body in (b"a", b"b"):
        e.push(Q, body, T0)
    pop(e, T0)
    e.nack(Q, 1, T0 + SEC, delay=4)
    assert state(e, 1) == "delayed"
    assert visible_at(e, 1) == T0 + 5 * SEC
    assert 1 not in e.queue(Q).leases
    assert attempts(e, 1) == 1
    e.tick(T0 + 5 * SEC)
    assert ready_ids(e) == [1, 2]


def test_nack_last_attempt_goes_to_dlq_at_once():
    e = make(vt=60, mda=2, backoff=("fixed", 30, 30))
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.nack(Q, 1, T0 + SEC, delay=0)
    pop(e, T0 + 2 * SEC)
    e.nack(Q, 1, T0 + 3 * SEC, delay=50)  # the delay does not matter on the last attempt
    assert state(e, 1) == "dlq"
    assert e.queue(Q).dead[1] == T0 + 3 * SEC
    assert not e.queue(Q).leases


def test_nack_reason_stored_kept_in_dlq_and_last_wins():
    e = make(vt=60, mda=3)
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.nack(Q, 1, T0, reason=b"first")
    assert e.queue(Q).reasons[1] == b"first"
    pop(e, T0)
    e.nack(Q, 1, T0)  # no reason: the last one stays
    assert e.queue(Q).reasons[1] == b"first"
    pop(e, T0)
    e.nack(Q, 1, T0, reason=b"second \x00\xff")
    assert state(e, 1) == "dlq"
    assert e.queue(Q).reasons[1] == b"second \x00\xff"
    e.redrive(Q, T0)
    assert e.queue(Q).reasons[1] == b"second \x00\xff"
    e.cancel(Q, 1)
    assert e.queue(Q).reasons == {}


def test_reason_forgotten_when_message_is_acked():
    e = make()
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.nack(Q, 1, T0, reason=b"oops")
    pop(e, T0)
    e.ack(Q, 1)
    assert e.queue(Q).reasons == {}


def test_nack_errors():
    e = make()
    e.push(Q, b"ready", T0)
    e.push(Q, b"later", T0, delay=10)
    with pytest.raises(NoLeaseError) as exc:
        e.nack(Q, 1, T0)
    assert exc.value.message == "message 1 in queue 'q' is not in flight"
    assert exc.value.code == "NOLEASE"
    with pytest.raises(NoMessageError):
        e.nack(Q, 2, T0)
    with pytest.raises(NoMessageError):
        e.nack(Q, 99, T0)
    with pytest.raises(NoQueueError):
        e.nack(b"nope", 1, T0)
    assert state(e, 1) == "ready" and state(e, 2) == "delayed"


# -- receipts --------------------------------------------------------------------------------

def test_receipts_are_stale_after_expiry():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    first = pop_one(e, T0)
    assert first.lease_no == 1
    e.tick(T0 + 10 * SEC)  # back in the queue, nobody has it
    for call in (lambda: e.ack(Q, 1, first.lease_no),
                 lambda: e.extend(Q, 1, 30, T0 + 10 * SEC, first.lease_no),
                 lambda: e.nack(Q, 1, T0 + 10 * SEC, lease_no=first.lease_no)):
        with pytest.raises(NoLeaseError) as exc:
            call()
        assert exc.value.message == "message 1 in queue 'q' is not leased with that receipt"
    second = pop_one(e, T0 + 10 * SEC)
    assert second.lease_no == 2
    with pytest.raises(NoLeaseError):
        e.ack(Q, 1, first.lease_no)
    e.ack(Q, 1, second.lease_no)
    assert not e.queue(Q).records


def test_receipts_are_stale_after_ack_and_after_nack():
    e = make()
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0)
    d1, d2 = pop(e, T0, count=2)
    e.ack(Q, 1, d1.lease_no)
    with pytest.raises(NoLeaseError):
        e.ack(Q, 1, d1.lease_no)
    e.nack(Q, 2, T0, lease_no=d2.lease_no)
    for call in (lambda: e.ack(Q, 2, d2.lease_no), lambda: e.nack(Q, 2, T0, None, d2.lease_no),
                 lambda: e.extend(Q, 2, 10, T0, d2.lease_no)):
        with pytest.raises(NoLeaseError):
            call()
    assert state(e, 2) == "ready"


def test_receipt_of_another_message_never_matches():
    e = make()
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0)
    d1, d2 = pop(e, T0, count=2)
    with pytest.raises(NoLeaseError):
        e.ack(Q, 1, -1)  # what a receipt naming another message parses to
    with pytest.raises(NoLeaseError):
        e.ack(Q, 1, d2.lease_no)
    e.ack(Q, 1, d1.lease_no)


def test_extend_with_stale_receipt_changes_nothing():
    journal = []
    e = make(vt=10, journal=journal)
    e.push(Q, b"a", T0)
    old = pop_one(e, T0)
    e.tick(T0 + 10 * SEC)
    new = pop_one(e, T0 + 10 * SEC)
    before, records = e.digest(), len(journal)
    with pytest.raises(NoLeaseError):
        e.extend(Q, 1, 300, T0 + 11 * SEC, old.lease_no)
    assert (e.digest(), len(journal)) == (before, records)
    assert e.queue(Q).lease_deadline(1) == T0 + 20 * SEC
    e.extend(Q, 1, 300, T0 + 11 * SEC, new.lease_no)
    assert e.queue(Q).lease_deadline(1) == T0 + 311 * SEC
    e.ack(Q, 1, new.lease_no)  # extending keeps the receipt valid


def test_extend_by_id_does_not_revive_a_stale_receipt():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0)
    old = pop_one(e, T0)
    e.tick(T0 + 10 * SEC)  # message 1 is visible again; `old` is stale
    e.extend(Q, 1, 60, T0 + 10 * SEC)  # the module's by-id EXTEND hides it again
    assert state(e, 1) == "inflight"
    with pytest.raises(NoLeaseError):
        e.ack(Q, 1, old.lease_no)
    # a message never delivered, held by id, has no receipt either
    e.extend(Q, 2, 60, T0 + 10 * SEC)
    with pytest.raises(NoLeaseError):
        e.ack(Q, 2, 0)
    assert attempts(e, 1) == 1 and attempts(e, 2) == 0


def test_without_receipt_the_module_by_id_behaviour_stays():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.tick(T0 + 10 * SEC)
    e.ack(Q, 1)  # acking a visible message by id still works
    assert not e.queue(Q).records


# -- MAXLEN ----------------------------------------------------------------------------------

def test_push_to_full_queue_raises_and_stores_nothing():
    journal = []
    e = make(vt=10, mda=1, maxlen=3, journal=journal)
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0, delay=60)  # delayed messages count
    pop(e, T0)
    e.push(Q, b"c", T0)  # in flight counts too: 3 stored
    n = len(journal)
    with pytest.raises(QueueFullError) as exc:
        e.push(Q, b"d", T0)
    assert exc.value.code == "QUEUEFULL"
    assert exc.value.message == "queue 'q' is full (maxlen 3)"
    assert len(journal) == n and e.queue(Q).id_sequence == 3
    e.tick(T0 + 10 * SEC)  # message 1 goes to the DLQ: the DLQ does not count
    assert state(e, 1) == "dlq"
    assert e.push(Q, b"d", T0 + 10 * SEC) == 4
    with pytest.raises(QueueFullError):
        e.push(Q, b"e", T0 + 10 * SEC)
    e.ack(Q, 3)
    assert e.push(Q, b"e", T0 + 10 * SEC) == 5


def test_push_many_is_all_or_nothing():
    journal = []
    e = make(maxlen=5, journal=journal)
    assert e.push_many(Q, [b"a", b"b", b"c"], T0) == [1, 2, 3]
    n = len(journal)
    with pytest.raises(QueueFullError):
        e.push_many(Q, [b"d", b"e", b"f"], T0)
    assert len(journal) == n
    assert sorted(e.queue(Q).records) == [1, 2, 3]
    assert e.queue(Q).id_sequence == 3
    assert e.push_many(Q, [b"d", b"e"], T0) == [4, 5]


def test_maxlen_zero_is_unlimited_and_range_checked():
    e = make(maxlen=0)
    assert e.push_many(Q, [b"x"] * 1000, T0)[-1] == 1000
    with pytest.raises(CommandError, match="maxlen must be between 0 and 9223372036854775807"):
        make_settings(maxlen=-1)


# -- pop_many: COUNT and NOACK ---------------------------------------------------------------

def test_pop_many_count():
    e = make(vt=30)
    e.push_many(Q, [b"a", b"b", b"c", b"d", b"e"], T0)
    got = pop(e, T0 + 5, count=3)
    assert [(d.id, bytes(d.body)) for d in got] == [(1, b"a"), (2, b"b"), (3, b"c")]
    assert [d.lease_no for d in got] == [1, 2, 3]
    assert {d.lease_deadline for d in got} == {T0 + 5 + 30 * SEC}
    assert {d.attempts for d in got} == {1}
    assert {d.enqueued_at for d in got} == {T0}
    got = pop(e, T0 + 5, count=1000)
    assert [d.id for d in got] == [4, 5]
    assert pop(e, T0 + 5, count=10) == []
    assert len(e.queue(Q).leases) == 5


def test_pop_many_noack_removes_as_it_delivers():
    e = make()
    e.push_many(Q, [b"a", b"b", b"c"], T0)
    e.push(Q, b"p", T0, priority=1)
    got = pop(e, T0, count=2, noack=True)
    assert [(d.id, bytes(d.body), d.attempts, d.lease_no, d.lease_deadline, d.priority)
            for d in got] == [(4, b"p", 1, 0, 0, 1), (1, b"a", 1, 0, 0, 0)]
    q = e.queue(Q)
    assert sorted(q.records) == [2, 3] and not q.leases
    assert e.next_deadline() is None
    with pytest.raises(NoMessageError):
        e.ack(Q, 1)
    assert q.counters["delivered"] == 2 and q.counters["acked"] == 0


def test_noack_delivery_of_a_redelivered_message_counts_its_attempt():
    e = make(vt=10)
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.tick(T0 + 10 * SEC)
    (d,) = pop(e, T0 + 10 * SEC, noack=True)
    assert (d.id, d.attempts) == (1, 2)
    assert not e.queue(Q).records


# -- CANCEL ----------------------------------------------------------------------------------

def test_cancel_in_every_state():
    e = make(vt=10, mda=1)
    e.push(Q, b"ready", T0)  # 1
    e.push(Q, b"inflight", T0)  # 2
    e.push(Q, b"delayed", T0, delay=100)  # 3
    e.push(Q, b"dead", T0, priority=5)  # 4
    assert pop_id(e, T0) == 4
    e.tick(T0 + 10 * SEC)
    assert state(e, 4) == "dlq"
    assert pop_id(e, T0 + 10 * SEC) == 1
    assert pop_id(e, T0 + 10 * SEC) == 2
    e.cancel(Q, 1)  # in flight
    e.cancel(Q, 3)  # delayed
    e.cancel(Q, 4)  # dlq
    e.tick(T0 + 10 * SEC + 1)
    q = e.queue(Q)
    assert sorted(q.records) == [2]
    assert not q.delayed and not q.dead and list(q.leases) == [2]
    e.tick(T0 + 20 * SEC)
    assert state(e, 2) == "dlq"
    e.push(Q, b"r", T0 + 20 * SEC)
    e.cancel(Q, 5)  # ready
    e.cancel(Q, 2)
    assert not q.records and not q.ready and not q.dead and q.next_deadline() is None
    assert q.counters["cancelled"] == 5
    for missing in (1, 5, 99):
        with pytest.raises(NoMessageError):
            e.cancel(Q, missing)
    assert e.totals.bytes == 0 and e.totals.messages == 0


def test_cancelled_in_flight_message_has_no_expiry():
    journal = []
    e = make(vt=10, journal=journal)
    e.push(Q, b"a", T0)
    pop(e, T0)
    e.cancel(Q, 1)
    n = len(journal)
    e.tick(T0 + 100 * SEC)
    assert len(journal) == n


# -- RESCHEDULE ------------------------------------------------------------------------------

def test_reschedule_ready_and_delayed():
    e = make()
    e.push(Q, b"a", T0)  # 1
    e.push(Q, b"b", T0)  # 2
    e.push(Q, b"c", T0, delay=100)  # 3
    e.reschedule(Q, 1, 10, T0 + SEC)
    assert visible_at(e, 1) == T0 + 11 * SEC
    e.reschedule(Q, 3, 5, T0 + SEC)
    assert visible_at(e, 3) == T0 + 6 * SEC
    assert drain(e, T0 + 6 * SEC) == [3, 2]
    assert pop_id(e, T0 + 11 * SEC - 1) is None
    assert pop_id(e, T0 + 11 * SEC) == 1


def test_reschedule_zero_falls_due_at_once_and_goes_to_the_head():
    e = make()
    e.push_many(Q, [b"a", b"b", b"c"], T0)
    e.reschedule(Q, 3, 0, T0)
    assert drain(e, T0) == [3, 1, 2]


def test_reschedule_errors():
    e = make(vt=10, mda=1)
    e.push(Q, b"a", T0)
    e.push(Q, b"b", T0)
    pop(e, T0)
    with pytest.raises(CommandError) as exc:
        e.reschedule(Q, 1, 5, T0)
    assert exc.value.message == ("message 1 is inflight: only ready or delayed messages can "
                                 "be rescheduled")
    e.tick(T0 + 10 * SEC)
    with pytest.raises(CommandError) as exc:
        e.reschedule(Q, 1, 5, T0 + 10 * SEC)
    assert exc.value.message == ("message 1 is dlq: only ready or delayed messages can be "
                                 "rescheduled")
    with pytest.raises(NoMessageError):
        e.reschedule(Q, 9, 5, T0)
    assert state(e, 1) == "dlq" and state(e, 2) == "ready"


def test_reschedule_of_a_redelivered_message_keeps_its_place():
    e = make(vt=10)
    e.push_many(Q, [b"a", b"b"], T0)
    pop(e, T0)
    e.tick(T0 + 10 * SEC)
    e.reschedule(Q, 1, 5, T0 + 10 * SEC)
    e.push(Q, b"c", T0 + 11 * SEC)
    assert drain(e, T0 + 15 * SEC) == [1, 2, 3]


# -- REDRIVE ---------------------------------------------------------------------------------

def _fill_dlq(e, n, now=T0, name=Q):
    """Push n messages and kill them all with NACK on their only attempt (mda must be 1)."""
    ids = e.push_many(name, [b"m%d" % i for i in range(n)], now)
    for d in pop(e, now, name, count=n):
        e.nack(name, d.id, now)
    return ids


def test_redrive_same_queue_keeps_ids_order_and_resets_attempts():
    e = make(vt=10, mda=1)
    e.push_many(Q, [b"a", b"b", b"c", b"d", b"e"], T0)
    assert {d.attempts for d in pop(e, T0, count=5)} == {1}
    # they die in the order 4, 2, 5, 1, 3
    for at, message_id in enumerate((4, 2, 5, 1, 3), 1):
        e.nack(Q, message_id, T0 + at)
    assert [k & ID_MASK for k in e.queue(Q).dead_order] == [4, 2, 5, 1, 3]
    e.push(Q, b"f", T0 + 10)
    assert e.redrive(Q, T0 + 20) == 5
    assert {attempts(e, i) for i in range(1, 6)} == {0}
    assert ready_ids(e) == [1, 2, 3, 4, 5, 6]
    assert [bytes(d.body) for d in pop(e, T0 + 20, count=10)] == \
        [b"a", b"b", b"c", b"d", b"e", b"f"]


def test_redrive_moves_the_oldest_first_with_count():
    e = make(vt=10, mda=1)
    e.push_many(Q, [b"a", b"b", b"c", b"d"], T0)
    pop(e, T0, count=4)
    for message_id, at in ((3, 1), (1, 2), (4, 3), (2, 4)):
        e.nack(Q, message_id, T0 + at)
    assert e.redrive(Q, T0 + 10, count=2) == 2
    assert sorted(ready_ids(e)) == [1, 3]
    assert [k & ID_MASK for k in e.queue(Q).dead_order] == [4, 2]
    assert e.redrive(Q, T0 + 10, count=100) == 2
    assert e.redrive(Q, T0 + 10) == 0
    assert ready_ids(e) == [1, 2, 3, 4]


def test_redrive_to_another_queue_gives_new_ids_in_dlq_order():
    e = make(vt=10, mda=1)
    e.create_queue(b"other", make_settings())
    e.push(b"other", b"existing", T0)
    e.push_many(Q, [b"a", b"b", b"c"], T0)
    e.push(Q, b"hi", T0, priority=7)  # 4
    pop(e, T0, count=4)
    for message_id, at in ((2, 1), (4, 2), (1, 3), (3, 4)):
        e.nack(Q, message_id, T0 + at, reason=b"r%d" % message_id)
    e.readied.clear()
    assert e.redrive(Q, T0 + 50, to=b"other") == 4
    assert (0, b"other") in e.readied  # (database, queue)
    assert not e.queue(Q).records and not e.queue(Q).reasons
    other = e.queue(b"other")
    assert sorted(other.records) == [1, 2, 3, 4, 5]
    bodies = {i: bytes(record.body_of(other.records[i])) for i in other.records}
    assert bodies == {1: b"existing", 2: b"b", 3: b"hi", 4: b"a", 5: b"c"}
    assert [header(e, i, b"other")[0] for i in (2, 3, 4, 5)] == [T0 + 50] * 4
    assert {header(e, i, b"other")[3] for i in other.records} == {0}
    assert header(e, 3, b"other")[4] == 7
    assert drain(e, T0 + 50, b"other") == [3, 1, 2, 4, 5]


def test_redrive_to_its_own_name_is_a_same_queue_redrive():
    e = make(vt=10, mda=1)
    _fill_dlq(e, 3)
    assert e.redrive(Q, T0 + SEC, to=Q) == 3
    assert ready_ids(e) == [1, 2, 3] and e.queue(Q).id_sequence == 3


def test_redrive_errors_change_nothing():
    e = make(vt=10, mda=1)
    e.create_queue(b"small", make_settings(maxlen=2))
    e.push(b"small", b"x", T0)
    _fill_dlq(e, 3)
    before = e.digest()
    with pytest.raises(NoQueueError):
        e.redrive(Q, T0, to=b"missing")
    with pytest.raises(QueueFullError) as exc:
        e.redrive(Q, T0, to=b"small")
    assert exc.value.message == "queue 'small' is full (maxlen 2)"
    assert e.digest() == before
    assert e.redrive(Q, T0, count=1, to=b"small") == 1
    with pytest.raises(NoQueueError):
        e.redrive(b"missing", T0)


def test_redrive_into_the_same_queue_readies_it():
    e = make(vt=10, mda=1)
    _fill_dlq(e, 2)
    e.readied.clear()
    e.redrive(Q, T0)
    assert e.readied == {(0, Q)}


# -- PAUSE / RESUME ------------------------------------------------------------------------

def test_pause_stops_delivery_only():
    journal = []
    e = make(vt=10, journal=journal)
    e.push_many(Q, [b"a", b"b"], T0)
    pop(e, T0)
    e.pause(Q, True)
    n = len(journal)
    e.pause(Q, True)  # already paused: nothing recorded
    assert len(journal) == n
    assert e.queue(Q).paused
    assert pop(e, T0) == [] and e.pop(Q, T0) is None
    assert pop(e, T0, count=5, noack=True) == []
    assert e.push(Q, b"c", T0) == 3  # pushes work
    e.ack(Q, 2)  # acks work (a visible one, by id)
    e.tick(T0 + 10 * SEC)  # leases still run out
    assert state(e, 1) == "ready"
    e.readied.clear()
    e.pause(Q, False)
    assert e.readied == {(0, Q)}
    assert drain(e, T0 + 10 * SEC) == [1, 3]
    e.pause(Q, False)
    with pytest.raises(NoQueueError):
        e.pause(b"nope", True)


def test_pause_survives_replay_and_snapshot():
    journal = []
    e = make(journal=journal)
    e.pause(Q, True)
    assert replay(journal).queue(Q).paused
    assert replay(list(e.snapshot())).queue(Q).paused
    e.pause(Q, False)
    assert not replay(journal).queue(Q).paused


# -- counters --------------------------------------------------------------------------------

def test_counters_agree_with_a_scripted_workload():
    e = make(vt=10, mda=2, rp=60, dedup_window=100)
    e.create_queue(b"other", make_settings())
    e.push_many(Q, [b"m"] * 6, T0)  # pushed 6
    e.push(Q, b"x", T0, dedup_key=b"k")  # pushed 7
    e.push(Q, b"x", T0, dedup_key=b"k")  # deduplicated 1
    e.push(Q, b"x", T0, dedup_key=b"k")  # deduplicated 2
    pop(e, T0, count=3)  # delivered 3 (1, 2, 3)
    e.ack(Q, 1)  # acked 1
    assert e.ack_many(Q, [2, 99, 4]) == 2  # acked 3
    e.nack(Q, 3, T0)  # nacked 1 (attempt 1 of 2)
    pop(e, T0, noack=True)  # delivered 4: 3 taken
    pop(e, T0, count=2)  # delivered 6: 5, 6
    e.tick(T0 + 10 * SEC)  # expired 2 (5 and 6 go back)
    pop(e, T0 + 10 * SEC, count=2)  # delivered 8: 5, 6 (last attempts)
    e.nack(Q, 5, T0 + 10 * SEC)  # nacked 2, dead_lettered 1
    e.tick(T0 + 20 * SEC)  # 6 runs out on its last attempt: expired 3, dead_lettered 2
    assert e.redrive(Q, T0 + 20 * SEC, count=1) == 1  # redriven 1 (5 back)
    e.cancel(Q, 7)  # cancelled 1
    e.tick(T0 + 80 * SEC)  # 6 dropped by retention: dropped 1
    e.push(Q, b"d", T0 + 80 * SEC, delay=5)
    e.cancel(Q, 8)  # cancelled 2
    e.purge(Q, "main")  # purges count nowhere
    assert e.queue(Q).counters.as_dict() == {
        "pushed": 8, "delivered": 8, "acked": 3, "nacked": 2, "expired": 3,
        "dead_lettered": 2, "dropped": 1, "deduplicated": 2, "redriven": 1, "cancelled": 2}
    assert list(e.queue(Q).counters.as_dict()) == list(COUNTERS)
    assert e.queue(b"other").counters.as_dict() == dict.fromkeys(COUNTERS, 0)


def test_counters_are_not_part_of_replay():
    journal = []
    e = make(journal=journal)
    e.push(Q, b"a", T0)
    r = replay(journal)
    assert r.queue(Q).counters.as_dict() == dict.fromkeys(COUNTERS, 0)


# -- events ----------------------------------------------------------------------------------

def test_listener_gets_every_event_kind_in_order():
    e = make(vt=10, mda=2, rp=60)
    e.create_queue(b"other", make_settings())
    events = []
    e.listener = lambda event, queue, message_id: events.append((event, queue, message_id))
    e.push(Q, b"a", T0)  # 1
    e.push(Q, b"a", T0, dedup_key=b"k")  # 2
    e.push(Q, b"a", T0, dedup_key=b"k")  # duplicate: no event
    pop(e, T0)  # 1
    e.ack(Q, 1)
    pop(e, T0)  # 2
    e.nack(Q, 2, T0, reason=b"why")
    pop(e, T0)  # 2, last attempt
    e.nack(Q, 2, T0 + SEC)  # nacked then dead
    e.redrive(Q, T0 + 2 * SEC)
    pop(e, T0 + 2 * SEC)  # 2 again
    e.tick(T0 + 12 * SEC)  # expired
    pop(e, T0 + 12 * SEC)  # 2, last attempt again
    e.tick(T0 + 22 * SEC)  # expired then dead
    e.tick(T0 + 82 * SEC)  # dropped
    e.push(Q, b"b", T0 + 82 * SEC, delay=5)  # 3
    e.cancel(Q, 3)
    e.pause(Q, True)
    e.pause(Q, True)
    e.pause(Q, False)
    e.push(Q, b"c", T0 + 83 * SEC)  # 4
    pop(e, T0 + 83 * SEC, noack=True)
    e.push(Q, b"d", T0 + 83 * SEC)  # 5
    pop(e, T0 + 83 * SEC, count=1)
    e.nack(Q, 5, T0 + 83 * SEC)
    pop(e, T0 + 83 * SEC)
    e.nack(Q, 5, T0 + 83 * SEC)  # last attempt: DLQ
    e.redrive(Q, T0 + 84 * SEC, to=b"other")
    e.ack_many(b"other", [1])
    assert events == [
        ("pushed", Q, 1), ("pushed", Q, 2), ("delivered", Q, 1), ("acked", Q, 1),
        ("delivered", Q, 2), ("nacked", Q, 2), ("delivered", Q, 2), ("nacked", Q, 2),
        ("dead", Q, 2), ("redriven", Q, 2), ("delivered", Q, 2), ("expired", Q, 2),
        ("delivered", Q, 2), ("expired", Q, 2), ("dead", Q, 2), ("dropped", Q, 2),
        ("pushed", Q, 3), ("cancelled", Q, 3), ("paused", Q, None), ("resumed", Q, None),
        ("pushed", Q, 4), ("delivered", Q, 4), ("pushed", Q, 5), ("delivered", Q, 5),
        ("nacked", Q, 5), ("delivered", Q, 5), ("nacked", Q, 5), ("dead", Q, 5),
        ("redriven", Q, 5), ("acked", b"other", 1),
    ]
    # every counted event kind matches its counter
    counts = e.queue(Q).counters
    for event, counter in (("pushed", "pushed"), ("delivered", "delivered"),
                           ("acked", "acked"), ("nacked", "nacked"), ("expired", "expired"),
                           ("dead", "dead_lettered"), ("dropped", "dropped"),
                           ("redriven", "redriven"), ("cancelled", "cancelled")):
        assert counts[counter] == sum(1 for ev in events if ev[0] == event and ev[1] == Q), \
            event


def test_no_listener_no_events_needed():
    e = make()
    assert e.listener is None
    e.push(Q, b"a", T0)
    pop(e, T0)


# -- replay ----------------------------------------------------------------------------------

def _everything(journal):
    """A workload touching every record kind of the consumers and operators issues."""
    e = make(vt=10, mda=3, rp=60, journal=journal, backoff=("exponential", 1, 4),
             dedup_window=120, maxlen=1000)
    e.create_queue(b"other", make_settings(5, 2, 100, backoff=("fixed", 3, 3)))
    e.push_many(Q, [b"a", b"b", b"c", b"d"], T0)
    e.push(Q, b"p", T0, priority=4, dedup_key=b"key-1")
    e.push(Q, b"n", T0, priority=-2, dedup_key=b"key-2")
    e.push(Q, b"late", T0, delay=30, priority=1)
    e.push(b"other", b"o1", T0, dedup_key=b"key-1")
    got = pop(e, T0, count=3)
    e.ack(Q, got[0].id, got[0].lease_no)
    e.nack(Q, got[1].id, T0 + SEC, reason=b"transient")
    e.extend(Q, got[2].id, 50, T0 + SEC, got[2].lease_no)
    pop(e, T0 + 2 * SEC, noack=True)
    e.tick(T0 + 12 * SEC)
    for d in pop(e, T0 + 12 * SEC, count=3):
        e.nack(Q, d.id, T0 + 12 * SEC, delay=0, reason=b"fail %d" % d.id)
    e.ack_many(Q, [99])
    e.reschedule(Q, 7, 1, T0 + 13 * SEC)
    e.tick(T0 + 14 * SEC)
    e.extend(Q, ready_ids(e)[0], 3, T0 + 14 * SEC)  # by id: a visible message gets a serial
    for _ in range(3):
        for d in pop(e, T0 + 30 * SEC, count=10):
            e.nack(Q, d.id, T0 + 30 * SEC, delay=0, reason=b"boom")
    e.redrive(Q, T0 + 31 * SEC, count=1)
    e.redrive(Q, T0 + 31 * SEC, count=1, to=b"other")
    e.push(Q, b"doomed", T0 + 31 * SEC, delay=500)
    e.cancel(Q, e.queue(Q).id_sequence)
    e.pause(Q, True)
    e.pause(b"other", True)
    e.pause(b"other", False)
    pop(e, T0 + 32 * SEC, b"other")
    e.update_queue(b"other", make_settings(base=e.queue(b"other").settings, maxlen=50,
                                           backoff=("none", 0, 0)))
    e.tick(T0 + 40 * SEC)
    return e


def test_replay_of_everything_equals_the_live_state():
    journal = []
    e = _everything(journal)
    assert e.queue(Q).reasons and e.queue(Q).dedup and e.queue(Q).dead and e.queue(Q).paused
    kinds = {effect[0] for effect in journal}
    assert {"tune", "dedup", "reason", "pause", "take", "nack", "expire", "dead", "redrive",
            "defer", "cancel", "hold", "promote", "lease", "remove"} <= kinds
    for through_aof in (False, True):
        r = replay(journal, through_aof)
        assert full_state(r) == full_state(e)
        assert {n: q.next_deadline() for n, q in r.queues.items()} == \
            {n: q.next_deadline() for n, q in e.queues.items()}
    # and a snapshot (what BGREWRITEAOF writes) rebuilds the same
    assert full_state(replay(list(e.snapshot()))) == full_state(e)


def test_replay_then_continue_behaves_like_the_live_engine():
    journal = []
    e = _everything(journal)
    r = replay(journal)
    for engine in (e, r):
        engine.pause(Q, False)
        engine.push(Q, b"new", T0 + 50 * SEC, dedup_key=b"key-2")
        engine.push(Q, b"new", T0 + 200 * SEC, dedup_key=b"key-1")
    assert [d.id for d in pop(e, T0 + 200 * SEC, count=100)] == \
        [d.id for d in pop(r, T0 + 200 * SEC, count=100)]
    assert full_state(r) == full_state(e)
    for t in (T0 + 300 * SEC, T0 + 10_000 * SEC):
        e.tick(t)
        r.tick(t)
        assert full_state(r) == full_state(e)
