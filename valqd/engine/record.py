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
from typing import Any, Final

SHORT: Final = struct.Struct("<Bq")
FULL: Final = struct.Struct("<BqQQHi")
# (Final sizes: compiled, constants, where `SHORT.size` is an attribute lookup per use)
SHORT_SIZE: Final = 9
FULL_SIZE: Final = 31
MAX_ATTEMPTS_STORED: Final = 0xFFFF
# Where the fields a delivery reads and rewrites sit in a full header. The hot paths read
# and write these alone, a byte at a time or by slices, rather than unpack the whole header
# into a tuple of objects and pack it again: each struct call costs as much as the rest of
# a delivery's record work. They build records with `b"%s%s" % (...)`, which mypyc turns
# into one allocation and copies, where `+` allocates per step and `join` takes a tuple.
_LEASE_NO_AT: Final = 17
_ATTEMPTS_AT: Final = 25
_PRIORITY_AT: Final = 27
DELIVERY: Final = struct.Struct("<QH")  # lease_no, attempts: the fields a delivery rewrites
_pack_delivery: Final = DELIVERY.pack  # bound once: compiled, a call then skips a lookup

# Order keys: an int per ready message, smallest delivered first. A plain message's key is
# its id; a delayed message that fell due sorts before every plain one of the same
# priority, in the order in which they fell due; the id sits in the low 64 bits.
ID_BITS: Final = 64
ID_MASK: Final = (1 << ID_BITS) - 1
_PROMOTED_BASE: Final = -(1 << 128)
_PRIORITY_STEP: Final = 1 << 130
_MACHINE_MAX: Final = (1 << 62) - 1  # mypyc keeps an int up to this one unboxed


class _LastTime:
    """What the last time encoded came to, to reuse while the time stays the same: the
    commands of one read (the server reads its clock once per read) or of one millisecond
    push with one enqueued_at and lease until one deadline, and encoding a time costs more
    than the rest of a record's work, compiled: ~450 instructions for a short header's 8
    bytes, ~550 for the shift of a time key. Each memo is one (time, encoding) tuple,
    replaced whole, so that a thread switch between reading its time and its encoding
    cannot pair them wrongly."""

    __slots__ = ("header", "shifted")

    def __init__(self) -> None:
        self.header: tuple[int, bytes] = (0, SHORT.pack(0, 0))  # enqueued_at: short header
        self.shifted: tuple[int, int] = (0, 0)  # at: at << ID_BITS


_last: Final = _LastTime()


def pack(enqueued_at: int, promote_seq: int, lease_no: int, attempts: int, priority: int,
         body: bytes) -> bytes:
    if not (promote_seq or lease_no or attempts or priority):  # most messages
        at, header = _last.header
        if at != enqueued_at:
            header = b"\0%s" % enqueued_at.to_bytes(8, "little", signed=True)  # no struct call
            _last.header = (enqueued_at, header)
        return header + body
    return FULL.pack(1, enqueued_at, promote_seq, lease_no, min(attempts, MAX_ATTEMPTS_STORED),
                     priority) + body


def unpack(record: bytes) -> tuple[int, int, int, int, int]:
    """(enqueued_at, promote_seq, lease_no, attempts, priority)."""
    if record[0]:
        return FULL.unpack_from(record)[1:]
    return SHORT.unpack_from(record)[1], 0, 0, 0, 0


def attempts_of(record: bytes) -> int:
    """How many times the message was delivered: the one field a POP reads."""
    if not record[0]:
        return 0
    return record[_ATTEMPTS_AT] | record[_ATTEMPTS_AT + 1] << 8


def lease_no_of(record: bytes) -> int:
    """The serial of the message's latest delivery (0: never delivered)."""
    if not record[0]:
        return 0
    return int.from_bytes(record[_LEASE_NO_AT:_ATTEMPTS_AT], "little")


def delivered(record: bytes, lease_no: int, attempts: int) -> bytes:
    """The record after a delivery: a new delivery serial and attempt count, the rest as
    it was (a short header becomes a full one)."""
    fields = _pack_delivery(lease_no, min(attempts, MAX_ATTEMPTS_STORED))
    if record[0]:
        return b"%s%s%s" % (record[:_LEASE_NO_AT], fields, record[_PRIORITY_AT:])
    # a first delivery: the short header's enqueued_at, as it is, in a full header with
    # promote_seq 0 and priority 0
    return b"\1%s\0\0\0\0\0\0\0\0%s\0\0\0\0%s" % (record[1:SHORT_SIZE], fields,
                                                 record[SHORT_SIZE:])


def body_of(record: bytes) -> bytes:
    """The body, copied: for the bodies a queue carries (up to max-message-size, 1 MB by
    default) one copy costs less than the memoryview objects that would spare it, and the
    reply that carries the body copies it anyway."""
    return record[FULL_SIZE if record[0] else SHORT_SIZE:]


def ready_key(message_id: Any, record: bytes) -> Any:
    """The message's key in the ready index. A message never delivered nor promoted with
    priority 0 (the usual one) is keyed by its id, and this returns the very object passed
    (compiled, an `int` would come back as a new box of the same value)."""
    if not record[0]:
        return message_id
    _, promote_seq, _, _, priority = unpack(record)
    if promote_seq == 0 and priority == 0:
        return message_id
    return order_key(message_id, promote_seq, priority)


def order_key(message_id: int, promote_seq: int, priority: int) -> int:
    if promote_seq == 0 and priority == 0:
        return message_id
    key = message_id - priority * _PRIORITY_STEP
    if promote_seq:
        key += _PROMOTED_BASE + (promote_seq << ID_BITS)
    return key


def id_of(key: int) -> int:
    """The message id in an order key or a time key. A plain order key, the id itself, is
    tested first: compiled, it is a machine integer, and `& ID_MASK` a big-int operation."""
    if 0 < key <= _MACHINE_MAX:
        return key
    return key & ID_MASK


def time_key(at: int, message_id: int) -> int:
    """Key ordering (at, id) pairs in one int, for the lease, delay and DLQ indexes."""
    last_at, shifted = _last.shifted
    if last_at != at:
        shifted = at << ID_BITS
        _last.shifted = (at, shifted)
    return shifted | message_id
