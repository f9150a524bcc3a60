"""The canonical dump (valqd/engine/dump.py): the format every store produces, compared
line by line by the differential test (tests/test_valkey_library.py)."""

from valqd.engine import Engine, make_settings
from valqd.engine.dump import dump, dump_queue, escape

T0 = 1_700_000_000_000
SEC = 1000


def test_escape_keeps_printable_ascii_and_escapes_the_rest():
    assert escape(b"abc-XYZ_09~!") == "abc-XYZ_09~!"
    assert escape(b"a b%\r\n\x00\xff\xc3\xa9") == "a%20b%25%0D%0A%00%FF%C3%A9"
    assert escape(b"") == ""


def test_every_state_in_its_own_order_with_settings_sequences_reasons_and_dedup_keys():
    e = Engine()
    e.create_queue(b"q", make_settings(30, 2, 60, backoff=("fixed", 5, 5)))
    e.create_queue(b"a b", make_settings())
    e.pause(b"a b", True)
    e.push(b"q", b"hello world", T0)
    e.push(b"q", b"100%\n", T0, priority=3)
    e.push(b"q", b"later", T0, delay=10, dedup_key=b"k1")
    e.push(b"q", b"x", T0)
    e.push(b"q", b"doomed", T0, priority=9)
    e.pop(b"q", T0)  # 5: the highest priority
    e.nack(b"q", 5, T0)
    e.tick(T0 + 5 * SEC)
    e.pop(b"q", T0 + 5 * SEC)  # 5 again, after its backoff: its last attempt
    e.nack(b"q", 5, T0 + 5 * SEC, reason=b"bad thing")  # to the DLQ
    e.pop(b"q", T0 + 5 * SEC)  # 2, priority 3
    e.pop_many(b"q", T0 + 5 * SEC, 1)  # 1
    e.nack(b"q", 1, T0 + 5 * SEC, reason=b"retry")  # backoff: delayed until T0 + 10 s
    e.tick(T0 + 11 * SEC)  # 3 falls due (a first rank), then 1 (delivered before: no rank)
    assert dump_queue(e.queues[b"a b"]) == [
        "queue a%20b visibility_timeout=30 max_delivery_attempts=5 retention_period=86400 "
        "backoff=none backoff_base=0 backoff_max=0 dedup_window=300 maxlen=0 paused=1 "
        "id_sequence=0 promote_seq=0 lease_seq=0"]
    common = f"priority=0 enqueued_at={T0}"
    assert dump_queue(e.queues[b"q"]) == [
        "queue q visibility_timeout=30 max_delivery_attempts=2 retention_period=60 "
        "backoff=fixed backoff_base=5 backoff_max=5 dedup_window=300 maxlen=0 paused=0 "
        "id_sequence=5 promote_seq=1 lease_seq=4",
        f"message q 3 state=ready at=0 attempts=0 {common} promote_seq=1 lease_no=0 "
        "body=later",
        f"message q 1 state=ready at=0 attempts=1 {common} promote_seq=0 lease_no=4 "
        "reason=retry body=hello%20world",
        f"message q 4 state=ready at=0 attempts=0 {common} promote_seq=0 lease_no=0 body=x",
        f"message q 2 state=inflight at={T0 + 35 * SEC} attempts=1 priority=3 "
        f"enqueued_at={T0} promote_seq=0 lease_no=3 body=100%25%0A",
        f"message q 5 state=dlq at={T0 + 5 * SEC} attempts=2 priority=9 enqueued_at={T0} "
        "promote_seq=0 lease_no=2 reason=bad%20thing body=doomed",
        f"dedup q k1 id=3 expires_at={T0 + 300 * SEC}",
    ]
    assert dump(e.queues) == dump_queue(e.queues[b"a b"]) + dump_queue(e.queues[b"q"])


def test_delayed_messages_by_due_time_then_id():
    e = Engine()
    e.create_queue(b"q", make_settings())
    e.push(b"q", b"a", T0, delay=20)
    e.push(b"q", b"b", T0, delay=10)
    e.push(b"q", b"c", T0, delay=10)
    lines = dump_queue(e.queues[b"q"])[1:]
    assert [line.split()[2:4] for line in lines] == [
        ["2", "state=delayed"], ["3", "state=delayed"], ["1", "state=delayed"]]
    assert lines[0].split()[4] == f"at={T0 + 10 * SEC}"


def test_the_dump_is_a_pure_function_of_the_state():
    """A queue rebuilt from its snapshot dumps the same lines (nothing of the history)."""
    e = Engine()
    e.create_queue(b"q", make_settings(backoff=("exponential", 1, 8)))
    for i in range(5):
        e.push(b"q", b"m%d" % i, T0 + i, priority=i % 2, delay=i % 3,
                dedup_key=b"k%d" % (i % 2))
    e.tick(T0 + 2 * SEC)
    e.pop_many(b"q", T0 + 2 * SEC, 2)
    e.nack(b"q", e.queues[b"q"].lease_order[0] & ((1 << 64) - 1), T0 + 2 * SEC,
           reason=b"r")
    copy = Engine()
    for effect in e.snapshot():
        copy.apply(effect)
    assert dump(copy.queues) == dump(e.queues)
    assert dump(e.queues) == dump(e.queues)
