"""The per-message record (valqd/engine/record.py): the readers and the rewrite a delivery
uses agree with `unpack` and `pack` on every header, and key helpers with their definitions."""

import random

import pytest

from valqd.engine import record
from valqd.engine.record import ID_MASK, MAX_ATTEMPTS_STORED, order_key, time_key


def random_header(rng: random.Random) -> tuple[int, int, int, int, int]:
    """(enqueued_at, promote_seq, lease_no, attempts, priority), short or full, at the
    ends of each field's range as often as within it."""
    def pick(low: int, high: int) -> int:
        return rng.choice([low, high, 0 if low <= 0 <= high else low,
                           rng.randint(low, high)])
    if rng.random() < 0.3:
        return pick(-(2**63), 2**63 - 1), 0, 0, 0, 0
    return (pick(-(2**63), 2**63 - 1), pick(0, 2**64 - 1), pick(0, 2**64 - 1),
            pick(0, MAX_ATTEMPTS_STORED + 5), pick(-(2**31), 2**31 - 1))


@pytest.mark.parametrize("seed", range(4))
def test_readers_and_the_delivery_rewrite_agree_with_unpack_and_pack(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(2000):
        enqueued_at, promote_seq, lease_no, attempts, priority = random_header(rng)
        body = rng.randbytes(rng.choice([0, 1, 40]))
        rec = record.pack(enqueued_at, promote_seq, lease_no, attempts, priority, body)
        stored = record.unpack(rec)
        assert stored[0] == enqueued_at and record.body_of(rec) == body
        assert record.attempts_of(rec) == stored[3] == min(attempts, MAX_ATTEMPTS_STORED)
        assert record.lease_no_of(rec) == stored[2] == lease_no
        new_lease, new_attempts = rng.randint(1, 2**64 - 1), rng.randint(1, 2**17)
        assert record.delivered(rec, new_lease, new_attempts) == record.pack(
            enqueued_at, promote_seq, new_lease, new_attempts, priority, body)
        message_id = rng.randint(1, 2**64 - 1)
        key = record.ready_key(message_id, rec)
        assert key == order_key(message_id, promote_seq, priority)
        if not (promote_seq or priority):
            assert key is message_id  # the record's own key object, not a copy
        assert record.id_of(key) == message_id
        assert record.id_of(time_key(rng.randint(0, 2**70), message_id)) == message_id


def test_id_of_at_the_edges_of_the_plain_keys() -> None:
    for message_id in (1, 2, 255, 256, 2**62 - 1, 2**62, 2**62 + 1, 2**63, ID_MASK):
        for key in (message_id, order_key(message_id, 0, 1), order_key(message_id, 0, -1),
                    order_key(message_id, 1, 0), order_key(message_id, ID_MASK, -(2**31)),
                    time_key(0, message_id), time_key(1, message_id)):
            assert record.id_of(key) == key & ID_MASK == message_id


def test_the_field_offsets_are_those_of_the_struct_layouts() -> None:
    assert (record.SHORT_SIZE, record.FULL_SIZE) == (record.SHORT.size, record.FULL.size)
    # tag, enqueued_at, promote_seq | lease_no | attempts | priority
    assert record._LEASE_NO_AT == record.struct.calcsize("<BqQ")
    assert record._ATTEMPTS_AT == record.struct.calcsize("<BqQQ")
    assert record._PRIORITY_AT == record.struct.calcsize("<BqQQH")


def test_times_encoded_in_a_row_and_in_turn_each_get_their_own_encoding() -> None:
    """pack and time_key reuse the last time's encoding: the same time twice, two times in
    turn, and a time after another all come out as if encoded afresh."""
    times = [0, 5, 5, 5, 7, 5, 7, 7, 2**63 - 1, -(2**63), -1, 0, 1_764_500_000_000]
    for at in times:
        assert record.unpack(record.pack(at, 0, 0, 0, 0, b"b")) == (at, 0, 0, 0, 0)
        assert record.pack(at, 0, 0, 0, 0, b"b") == record.SHORT.pack(0, at) + b"b"
        if at >= 0:
            for message_id in (1, 2**64 - 1):
                assert time_key(at, message_id) == (at << 64) | message_id
