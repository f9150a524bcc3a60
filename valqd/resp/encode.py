"""Reply encoding for RESP2 and RESP3. Every function returns wire bytes.

Functions whose encoding depends on the protocol take `proto` (2 or 3): maps become flat
arrays under RESP2, nulls become `$-1` or `*-1`, doubles become bulk strings, and verbatim
text becomes a bulk string.
"""

from typing import Final

CRLF = b"\r\n"
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
EMPTY_BULK = b"$0\r\n\r\n"
EMPTY_ARRAY = b"*0\r\n"


def simple(text: bytes) -> bytes:
    return b"+%b\r\n" % text


def error(code: str, message: str) -> bytes:
    """`-CODE message`; CR and LF would end the line early, so they become spaces."""
    text = f"{code} {message}".replace("\r", " ").replace("\n", " ")
    return b"-%b\r\n" % text.encode("utf-8", "backslashreplace")


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


# `$L\r\n` for the lengths of bulks under 1 KiB (ids, numbers, words, most job bodies):
# compiled, a reply built from one of them is one allocation fewer than one that formats L
_BULK_HEADS: Final = tuple(b"$%d\r\n" % length for length in range(1024))


def _head(length: int) -> bytes:
    """`$L\r\n` for a bulk of `length` bytes."""
    return _BULK_HEADS[length] if length < len(_BULK_HEADS) else b"$%d\r\n" % length


def bulk(value: bytes | memoryview) -> bytes:
    if isinstance(value, bytes):  # compiled: one concatenation of typed parts
        return b"%b%b\r\n" % (_head(len(value)), value)
    # %b takes any buffer (PEP 461); mypy's format check knows only bytes
    return b"$%d\r\n%b\r\n" % (len(value), value)  # type: ignore[str-format]


def bulk_str(value: str) -> bytes:
    return bulk(value.encode())


def bulk_int(value: int, prefix: bytes = b"") -> bytes:
    """A bulk string of `prefix` and the decimal `value` (`ack 12`): the length is counted
    rather than formatted, so that the reply is formatted in one step (compiled, each
    formatting step is an allocation)."""
    return b"%b%b%d\r\n" % (_bulk_head(len(prefix), value), prefix, value)


def _bulk_head(length: int, value: int) -> bytes:
    """`$L\r\n` for a bulk of `length` bytes and then the decimal `value`."""
    if value < 0:
        length += 1
        value = -value
    length += 1
    bound = 10
    while value >= bound:
        length += 1
        bound *= 10
    return _head(length)


def array(items: list[bytes]) -> bytes:
    """An array of already-encoded items."""
    return b"*%d\r\n%b" % (len(items), b"".join(items))


def bulk_array(values: list[bytes]) -> bytes:
    return array([bulk(v) for v in values])


def map_(pairs: list[bytes], proto: int) -> bytes:
    """A map from already-encoded, alternating keys and values."""
    if proto == 3:
        return b"%%%d\r\n%b" % (len(pairs) // 2, b"".join(pairs))
    return array(pairs)


def body_id_map(body: bytes, message_id: int, proto: int) -> bytes:
    """POP's `{body, id}` map (id as a bulk string), in one formatting step: the hot path
    (compiled, a format of typed bytes and ints is one concatenation)."""
    head = b"%2\r\n$4\r\nbody\r\n" if proto == 3 else b"*4\r\n$4\r\nbody\r\n"
    return b"%b%b%b\r\n$2\r\nid\r\n%b%d\r\n" % (
        head, _head(len(body)), body, _bulk_head(0, message_id), message_id)


def set_(items: list[bytes], proto: int) -> bytes:
    if proto == 3:
        return b"~%d\r\n%b" % (len(items), b"".join(items))
    return array(items)


def null(proto: int) -> bytes:
    return b"_\r\n" if proto == 3 else b"$-1\r\n"


def null_array(proto: int) -> bytes:
    return b"_\r\n" if proto == 3 else b"*-1\r\n"


def double(value: float, proto: int) -> bytes:
    text = repr(value).encode()
    return b",%b\r\n" % text if proto == 3 else bulk(text)


def verbatim(text: bytes, proto: int) -> bytes:
    if proto == 3:
        return b"=%d\r\ntxt:%b\r\n" % (len(text) + 4, text)
    return bulk(text)


def push(items: list[bytes], proto: int) -> bytes:
    """An out-of-band message (pub/sub): `>` under RESP3, a plain array under RESP2."""
    if proto == 3:
        return b">%d\r\n%b" % (len(items), b"".join(items))
    return array(items)
