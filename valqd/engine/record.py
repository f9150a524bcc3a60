"""The compact per-message record.

Every stored message is one `bytes` object: a header followed by the body. A Python object
with a field per attribute would cost about 100 bytes more per message. Most messages are
never delivered before they are acked, so they use a short header; the header is rewritten
(a copy of the record) only on the few state changes that alter it: a delivery, a delayed
message falling due.

Short header (never delivered, priority 0, not promoted), 9 bytes:
    tag 0         uint8
    enqueued_at   int64   Unix ms when the message was pushed
Full header, 31 bytes:
    tag 1         uint8
    enqueued_at   int64
    promote_seq   uint64  0, or this message's rank among delayed messages that fell due
    lease_no      uint64  serial of the message's latest delivery (0: never delivered)
    attempts      uint16  how many times it has been delivered
    priority      int32   higher is delivered first
All little-endian.
"""

import struct
from typing import Final

SHORT: Final = struct.Struct("<Bq")
FULL: Final = struct.Struct("<BqQQHi")
MAX_ATTEMPTS_STORED: Final = 0xFFFF

# Order keys: an int per ready message, smallest delivered first. A plain message's key is
# its id; a delayed message that fell due sorts before every plain one of the same
# priority, in the order in which they fell due; the id sits in the low 64 bits.
ID_BITS: Final = 64
ID_MASK: Final = (1 << ID_BITS) - 1
_PROMOTED_BASE: Final = -(1 << 128)
_PRIORITY_STEP: Final = 1 << 130


def pack(enqueued_at: int, promote_seq: int, lease_no: int, attempts: int, priority: int,
         body: bytes) -> bytes:
    if not (promote_seq or lease_no or attempts or priority):
        return SHORT.pack(0, enqueued_at) + body
    return FULL.pack(1, enqueued_at, promote_seq, lease_no, min(attempts, MAX_ATTEMPTS_STORED),
                     priority) + body


def unpack(record: bytes) -> tuple[int, int, int, int, int]:
    """(enqueued_at, promote_seq, lease_no, attempts, priority)."""
    if record[0]:
        return FULL.unpack_from(record)[1:]
    return SHORT.unpack_from(record)[1], 0, 0, 0, 0


def body_of(record: bytes) -> bytes:
    """The body, copied: for the bodies a queue carries (up to max-message-size, 1 MB by
    default) one copy costs less than the memoryview objects that would spare it, and the
    reply that carries the body copies it anyway."""
    return record[FULL.size if record[0] else SHORT.size:]


def order_key(message_id: int, promote_seq: int, priority: int) -> int:
    if promote_seq == 0 and priority == 0:
        return message_id
    key = message_id - priority * _PRIORITY_STEP
    if promote_seq:
        key += _PROMOTED_BASE + (promote_seq << ID_BITS)
    return key


def time_key(at: int, message_id: int) -> int:
    """Key ordering (at, id) pairs in one int, for the lease, delay and DLQ indexes."""
    return (at << ID_BITS) | message_id
