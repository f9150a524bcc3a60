"""The AOF file format.

    VALQD-AOF 1\\n                          magic line, once
    B <length> <crc32> <check>\\n<payload>  one batch per group commit, repeated

A payload is a run of records, each a RESP array of bulk strings: the engine's effect
tuples (`engine.py`) with ints written in decimal, e.g. `*7 $4 push $1 q $1 1 ...`. The CRC
covers the payload, so a torn or flipped batch is detected before anything of it is
applied; `check` (16 bits of the header's own CRC) catches a flipped length, which would
otherwise pass for a batch cut short. A file that ends inside a batch, or in zero bytes (space the file system allocated
but never wrote), was cut short by a crash: that is truncation, not corruption.
"""

import zlib

import hiredis

MAGIC = b"VALQD-AOF 1\n"
MAX_BATCH_HEADER = 32


class AofCorruption(Exception):
    """The file is damaged before its end; `offset` is where the bad batch starts."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"Bad file format reading the append only file {path} at offset "
                         f"{offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


def encode_effect(effect: tuple) -> bytes:
    parts = [b"*%d\r\n" % len(effect)]
    for field in effect:
        if type(field) is int:
            field = b"%d" % field
        elif type(field) is str:
            field = field.encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(field), field))
    return b"".join(parts)


def _header(length: int, crc: int) -> bytes:
    head = b"B %d %08x" % (length, crc)
    return b"%b %04x\n" % (head, zlib.crc32(head) & 0xFFFF)


def encode_batch(payload: bytes | bytearray) -> bytes:
    return _header(len(payload), zlib.crc32(payload)) + payload


# How each record kind's fields are typed: b = bytes, i = int, s = str.
SCHEMAS: dict[bytes, str] = {
    b"create": "biii", b"update": "biii", b"tune": "bsiiii", b"delete": "b", b"flush": "",
    b"pause": "bi", b"push": "biiiib", b"dedup": "bbii", b"lease": "biiii",
    b"hold": "biiii", b"remove": "bi", b"take": "bi", b"cancel": "bi", b"drop": "bi",
    b"expire": "bii", b"nack": "bii", b"defer": "bii", b"reason": "bib", b"dead": "bii",
    b"promote": "bii", b"redrive": "bibii", b"purge": "bs",
    b"counters": "biii", b"restore": "bisiiiiiib",
}


def decode_effect(fields: list) -> tuple:
    """A parsed RESP array back into an effect tuple; ValueError if it does not fit."""
    if not fields or type(fields) is not list:
        raise ValueError("record is not an array")
    schema = SCHEMAS.get(fields[0])
    if schema is None or len(fields) != len(schema) + 1:
        raise ValueError(f"unknown record {fields[0]!r} or wrong field count")
    effect: list = [fields[0].decode()]
    for kind, raw in zip(schema, fields[1:]):
        if type(raw) is not bytes:
            raise ValueError("record field is not a bulk string")
        effect.append(raw if kind == "b" else int(raw) if kind == "i" else raw.decode())
    return tuple(effect)


def iter_batches(data: bytes | memoryview, path: str):
    """Yield (offset, end, payload) per intact batch. Stops at a cut-off tail, returning
    its offset via StopIteration.value; raises AofCorruption for damage before the end."""
    view = memoryview(data)
    size = len(view)
    if bytes(view[:len(MAGIC)]) != MAGIC:
        if size < len(MAGIC) and MAGIC.startswith(bytes(view)):
            return 0
        raise AofCorruption(path, 0, "not a valqd AOF (bad magic line)")
    offset = len(MAGIC)
    while offset < size:
        newline = bytes(view[offset:offset + MAX_BATCH_HEADER]).find(b"\n")
        if newline < 0:
            if _is_cut_off(view, offset, size):
                return offset
            raise AofCorruption(path, offset, "bad batch header")
        line = bytes(view[offset:offset + newline + 1])
        header = line.split(b" ")
        try:
            if len(header) != 4 or header[0] != b"B":
                raise ValueError
            length, crc = int(header[1]), int(header[2], 16)
            if length < 0 or _header(length, crc) != line:
                raise ValueError
        except ValueError:
            if _is_cut_off(view, offset, size):
                return offset
            raise AofCorruption(path, offset, "bad batch header") from None
        start = offset + newline + 1
        end = start + length
        if end > size:
            return offset  # the last batch was being written when the process died
        payload = view[start:end]
        if zlib.crc32(payload) != crc:
            if not any(view[end - 1:size]):  # a payload ends in "\n": zeros to the end of the
                return offset  # file are space allocated but never written, as after power loss
            raise AofCorruption(path, offset, "checksum mismatch")
        yield offset, end, payload
        offset = end
    return offset


def _is_cut_off(view: memoryview, offset: int, size: int) -> bool:
    """A header that runs into the end of the file, or a tail of zero bytes."""
    tail = bytes(view[offset:size])
    return tail.count(0) == len(tail) or (b"\n" not in tail and tail.startswith(b"B"))


def parse_records(payload: memoryview):
    """Yield the effect tuples of one intact batch payload."""
    reader = hiredis.Reader()
    reader.feed(payload)
    while (fields := reader.gets()) is not False:
        yield decode_effect(fields)
