"""The AOF file format, version 2.

    VALQD-AOF 2\\n                          magic line, once
    C <length> <crc32> <check>\\n<payload>  one batch per group commit, repeated

A payload is a run of records, each a RESP array: the engine's effect tuples (`engine.py`),
bytes and strings as bulk strings and ints as RESP integers, e.g.
`*7 $4 push $1 q :1 :1795420000000 :0 :0 $5 hello`. The CRC (8 hex digits) covers the payload,
so a torn or flipped batch is detected before anything of it is applied. `check` (4 hex digits)
is (length * 40503 + crc) mod 65521 and catches a flipped length, which would otherwise pass
for a batch cut short: 65521 is a prime, so a change of any one digit of length or crc (a
change by d * 10^k or d * 16^k) always changes it, and garbage passes one time in 65521. A file
that ends inside a batch, or in zero bytes (space the file system allocated but never wrote),
was cut short by a crash: that is truncation, not corruption.

Version 1 (`VALQD-AOF 1`, valqd up to 2026-11) is the same but for its batch header,
`B <length> <crc32> <check>\\n`, whose check is the low 16 bits of the CRC-32 of
`B <length> <crc32>`: a second CRC call per batch, the header's largest cost. valqd loads both
versions, appends version 1 batches to a version 1 file until its next rewrite (which writes
version 2), and a version 2 file may hold `B` batches too: those a rewrite of a version 1 file
copied from it (what was committed while the rewrite ran).
"""

import mmap
import zlib
from typing import Final, Generator, Iterator

import hiredis

from ..engine import Effect

MAGIC = b"VALQD-AOF 2\n"
MAGIC_V1 = b"VALQD-AOF 1\n"
# magic line -> the batch kinds a file may hold
BATCH_KINDS: Final = {MAGIC_V1: (b"B",), MAGIC: (b"B", b"C")}
MAX_BATCH_HEADER = 32


class AofCorruption(Exception):
    """The file is damaged before its end; `offset` is where the bad batch starts."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"Bad file format reading the append only file {path} at offset "
                         f"{offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


INT64_MAX: Final = 2**63 - 1  # Final: compiled, a constant rather than a global looked up


def _encode_fields(effect: Effect) -> bytes:
    """Any record, field by field."""
    parts = [b"*%d\r\n" % len(effect)]
    for field in effect:
        if type(field) is int and -INT64_MAX <= field <= INT64_MAX:
            parts.append(b":%d\r\n" % field)
        elif type(field) is int:  # a due time past int64 (delays up to 2^64-1 seconds)
            parts.append(b"$%d\r\n%d\r\n" % (len(b"%d" % field), field))
        else:
            if type(field) is str:
                field = field.encode()
            parts.append(b"$%d\r\n%b\r\n" % (len(field), field))
    return b"".join(parts)


# What the encoders below avoid, compiled (each costs a few hundred instructions): an int
# formatted anew (`b"%d" % n`, CPyTagged_AsciiBytes: a bytes object made and freed), a global
# looked up by name (names are Final: C constants), a module attribute looked up per call
# (`zlib.crc32`), a dict lookup to pick a record's encoder, a comparison with an int too large
# for mypyc's short ints (INT64_MAX), and pieces to join (each ~50). Small ints (attempts,
# name, body and batch lengths) come from tables, a time and a record's start up to its
# queue name from caches of the last one; only a message id and a lease number are formatted.
SMALL: Final = 1024
_INT_FIELDS: Final = [b":%d\r\n" % n for n in range(SMALL)]
_BULK_HEADS: Final = [b"$%d\r\n" % n for n in range(SMALL)]
# a push due later goes field by field (an int past int64 as a bulk string, the others as the
# same bytes as below): a bound mypyc compares inline, unlike INT64_MAX
_DUE_AT_MAX: Final = 1 << 60
_crc32: Final = zlib.crc32


def _int_field(n: int) -> bytes:
    """`:<n>\r\n`, a RESP integer."""
    return _INT_FIELDS[n] if 0 <= n < SMALL else b":%d\r\n" % n


def _bulk_head(length: int) -> bytes:
    """`$<length>\r\n`, the head of a bulk string."""
    return _BULK_HEADS[length] if length < SMALL else b"$%d\r\n" % length


# The caches below are one for the process: only the event-loop thread encodes (a rewrite's
# child is a process of its own).

class _TimeField:
    """The last time (epoch ms) encoded, as a RESP integer. Every record of one event-loop
    turn carries the same `now`, and every lease of a POP of several messages the same
    deadline, so most times are the one before."""

    def __init__(self) -> None:
        self.at = 0
        self.field = b":0\r\n"

    def get(self, at: int) -> bytes:
        if at != self.at:
            self.field = b":%d\r\n" % at
            self.at = at
        return self.field


_TIMES: Final = _TimeField()


class _RecordStart:
    """A record of one kind up to its message id: array header, kind and queue name, kept
    for the last queue (the records of one read are mostly one queue's)."""

    def __init__(self, fields: int, kind: str) -> None:
        self.head = b"*%d\r\n$%d\r\n%b\r\n" % (fields, len(kind), kind.encode())
        self.queue = b""
        self.start = b"%b$0\r\n\r\n:" % self.head

    def get(self, queue: bytes) -> bytes:
        if queue != self.queue:
            self.start = b"%b%b%b\r\n:" % (self.head, _bulk_head(len(queue)), queue)
            self.queue = queue
        return self.start


def _encode_push(start: _RecordStart, e: Effect) -> bytes:
    # the fields as locals of their types: mypyc then formats them in a step of its own
    # instead of through bytes.__mod__ (the same holds for the encoders below)
    queue: bytes = e[1]
    message_id: int = e[2]
    enqueued_at: int = e[3]
    due_at: int = e[4]
    priority: int = e[5]
    body: bytes = e[6]
    if due_at >= _DUE_AT_MAX:
        return _encode_fields(e)
    if due_at == enqueued_at and not priority:  # the usual push
        at = _TIMES.get(due_at)
        return b"%b%d\r\n%b%b:0\r\n%b%b\r\n" % (
            start.get(queue), message_id, at, at, _bulk_head(len(body)), body)
    return b"%b%d\r\n%b%b%b%b%b\r\n" % (
        start.get(queue), message_id, _TIMES.get(enqueued_at), _int_field(due_at),
        _int_field(priority), _bulk_head(len(body)), body)


def _encode_lease(start: _RecordStart, e: Effect) -> bytes:
    """(kind, queue, id, at, attempts, lease_no): a delivery or an EXTEND."""
    queue: bytes = e[1]
    message_id: int = e[2]
    at: int = e[3]
    attempts: int = e[4]
    lease_no: int = e[5]
    return b"%b%d\r\n%b%b:%d\r\n" % (
        start.get(queue), message_id, _TIMES.get(at), _int_field(attempts), lease_no)


def _encode_removal(start: _RecordStart, e: Effect) -> bytes:
    """(kind, queue, id): an ack, a NOACK delivery, a cancel or a DLQ drop."""
    queue: bytes = e[1]
    message_id: int = e[2]
    return b"%b%d\r\n" % (start.get(queue), message_id)


# The records written on every push, delivery and removal, each formatted in one step; any
# other record field by field.
_PUSH: Final = _RecordStart(7, "push")
_LEASE: Final = _RecordStart(6, "lease")
_HOLD: Final = _RecordStart(6, "hold")
_REMOVE: Final = _RecordStart(3, "remove")
_REMOVALS: Final = {kind: _RecordStart(3, kind) for kind in ("take", "cancel", "drop")}


def encode_effect(effect: Effect) -> bytes:
    # the three records of every job, tried first, by a comparison each (typed: compiled,
    # a str comparison, and the kinds are interned like the engine's, so an identity test)
    kind: str = effect[0]
    if kind == "push":
        return _encode_push(_PUSH, effect)
    if kind == "lease":
        return _encode_lease(_LEASE, effect)
    if kind == "remove":
        return _encode_removal(_REMOVE, effect)
    if kind == "hold":
        return _encode_lease(_HOLD, effect)
    start = _REMOVALS.get(kind)
    if start is not None:
        return _encode_removal(start, effect)
    return _encode_fields(effect)


def encode_effects(effects: list[Effect]) -> bytes:
    if len(effects) == 1:  # a read of one request, unpipelined: no list, no join
        return encode_effect(effects[0])
    return b"".join([encode_effect(e) for e in effects])


_HEX: Final = [b"%02x" % byte for byte in range(256)]
_B_HEADS: Final = [b"B %d " % n for n in range(SMALL)]
_C_HEADS: Final = [b"C %d " % n for n in range(SMALL)]
CHECK_FACTOR: Final = 40503
CHECK_MODULUS: Final = 65521  # a prime: see the module's docstring


def _c_batch(length: int, crc: int, payload: bytes) -> bytes:
    """`C <length> <crc> <check>\\n` and `payload` (b"": the header alone), in one step: the
    hex digits come from a table (mypyc formats %b and %d in a step of its own, %x only
    through bytes.__mod__, at twice the cost) and the check is arithmetic."""
    hexes = _HEX
    check = (length * CHECK_FACTOR + crc) % CHECK_MODULUS
    return b"%b%b%b%b%b %b%b\n%b" % (
        _C_HEADS[length] if length < SMALL else b"C %d " % length,
        hexes[crc >> 24], hexes[(crc >> 16) & 0xFF], hexes[(crc >> 8) & 0xFF], hexes[crc & 0xFF],
        hexes[check >> 8], hexes[check & 0xFF], payload)


def _b_batch(length: int, crc: int, payload: bytes) -> bytes:
    """`B <length> <crc> <check>\\n` and `payload`: version 1's batch."""
    hexes = _HEX
    head = b"%b%b%b%b%b" % (_B_HEADS[length] if length < SMALL else b"B %d " % length,
                            hexes[crc >> 24], hexes[(crc >> 16) & 0xFF],
                            hexes[(crc >> 8) & 0xFF], hexes[crc & 0xFF])
    check = _crc32(head)
    return b"%b %b%b\n%b" % (head, hexes[(check >> 8) & 0xFF], hexes[check & 0xFF], payload)


def encode_batch(payload: bytes) -> bytes:
    return _c_batch(len(payload), _crc32(payload), payload)


def encode_batch_v1(payload: bytes) -> bytes:
    """A batch for a version 1 file (appended to until its next rewrite)."""
    return _b_batch(len(payload), _crc32(payload), payload)


# How each record kind's fields are typed: b = bytes, i = int, s = str.
SCHEMAS: dict[bytes, str] = {
    b"create": "biii", b"update": "biii", b"tune": "bsiiii", b"delete": "b", b"flush": "",
    b"pause": "bi", b"push": "biiiib", b"dedup": "bbii", b"lease": "biiii",
    b"hold": "biiii", b"remove": "bi", b"take": "bi", b"cancel": "bi", b"drop": "bi",
    b"expire": "bii", b"nack": "bii", b"defer": "bii", b"reason": "bib", b"dead": "bii",
    b"promote": "bii", b"redrive": "bibii", b"purge": "bs",
    b"counters": "biii", b"restore": "bisiiiiiib",
    b"select": "i", b"swapdb": "ii", b"move": "bii",
}
_TYPES = {"b": bytes, "i": int, "s": bytes}
# kind -> (its name as str, the parsed field types hiredis gives, positions of str fields)
_DECODERS = {kind: (kind.decode(), (bytes, *(_TYPES[c] for c in schema)),
                    tuple(i + 1 for i, c in enumerate(schema) if c == "s"))
             for kind, schema in SCHEMAS.items()}


def decode_effect(fields: object) -> Effect:
    """A parsed RESP array back into an effect tuple; ValueError if it does not fit."""
    if type(fields) is not list or not fields or type(fields[0]) is not bytes:
        raise ValueError("record is not an array")
    decoder = _DECODERS.get(fields[0])
    if decoder is None:
        raise ValueError(f"unknown record {fields[0]!r}")
    name, types, text_fields = decoder
    if tuple(map(type, fields)) != types:
        if len(fields) != len(types):
            raise ValueError(f"{name} record with wrong fields")
        for i, (field, wanted) in enumerate(zip(fields, types)):
            if wanted is int and type(field) is bytes and field.isdigit():
                fields[i] = int(field)  # an int too large for a RESP integer
            elif type(field) is not wanted:
                raise ValueError(f"{name} record with wrong fields")
    fields[0] = name
    for i in text_fields:
        fields[i] = fields[i].decode()
    return tuple(fields)


def iter_batches(data: bytes | memoryview | mmap.mmap,
                 path: str) -> Generator[tuple[int, int, memoryview], None, int]:
    """Yield (offset, end, payload) per intact batch. Stops at a cut-off tail, returning
    its offset via StopIteration.value; raises AofCorruption for damage before the end.
    `data` may be a mapped file: every view of it is released on the way out, so that it
    can be closed (the caller releases the payloads it was given)."""
    view = memoryview(data)
    try:
        return (yield from _batches(view, path))
    finally:
        view.release()


def _batches(view: memoryview,
             path: str) -> Generator[tuple[int, int, memoryview], None, int]:
    size = len(view)
    kinds = BATCH_KINDS.get(bytes(view[:len(MAGIC)]))
    if kinds is None:
        if size < len(MAGIC) and any(magic.startswith(bytes(view)) for magic in BATCH_KINDS):
            return 0
        raise AofCorruption(path, 0, "not a valqd AOF (bad magic line)")
    offset = len(MAGIC)
    while offset < size:
        newline = bytes(view[offset:offset + MAX_BATCH_HEADER]).find(b"\n")
        if newline < 0:
            if _is_cut_off(view, offset, size, kinds):
                return offset
            raise AofCorruption(path, offset, "bad batch header")
        line = bytes(view[offset:offset + newline + 1])
        header = line.split(b" ")
        try:
            if len(header) != 4 or header[0] not in kinds:
                raise ValueError
            length, crc = int(header[1]), int(header[2], 16)
            if length < 0 or not 0 <= crc <= 0xFFFFFFFF:
                raise ValueError
            expected = _c_batch(length, crc, b"") if header[0] == b"C" \
                else _b_batch(length, crc, b"")
            if expected != line:  # (a check that does not fit, or digits not as written)
                raise ValueError
        except ValueError:
            if _is_cut_off(view, offset, size, kinds):
                return offset
            raise AofCorruption(path, offset, "bad batch header") from None
        start = offset + newline + 1
        end = start + length
        if end > size:
            return offset  # the last batch was being written when the process died
        if _crc32(view[start:end]) != crc:  # (no name holds a view: see iter_batches)
            if not any(view[end - 1:size]):  # a payload ends in "\n": zeros to the end of the
                return offset  # file are space allocated but never written, as after power loss
            raise AofCorruption(path, offset, "checksum mismatch")
        yield offset, end, view[start:end]
        offset = end
    return offset


def _is_cut_off(view: memoryview, offset: int, size: int, kinds: tuple[bytes, ...]) -> bool:
    """A header that runs into the end of the file, or a tail of zero bytes."""
    tail = bytes(view[offset:size])
    return tail.count(0) == len(tail) or (b"\n" not in tail and tail[:1] in kinds)


PARSE_FEED_BYTES = 16 * 1024


def parse_records(payload: memoryview) -> Iterator[Effect]:
    """Yield the effect tuples of one intact batch payload. The reader is fed a slice at a
    time: hiredis moves what it holds to the front of its buffer after every kilobyte it
    returns, so a whole batch of a big pipeline fed at once cost time quadratic in its size
    (100k records in 1,000-record batches loaded in 8.9 s instead of 1 s)."""
    reader = hiredis.Reader()
    at, size = 0, len(payload)
    while True:
        fields = reader.gets()
        if fields is False:
            if at >= size:
                return
            # the stub says str | bytes; the C function takes any buffer
            reader.feed(payload[at:at + PARSE_FEED_BYTES])  # type: ignore[arg-type]
            at += PARSE_FEED_BYTES
            continue
        yield decode_effect(fields)
