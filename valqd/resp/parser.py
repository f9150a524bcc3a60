"""Incremental request parsing: bytes in, commands (lists of bytes) out. No sockets.

Usage: `feed(data)` whenever bytes arrive, then call `next_command()` until it returns
`NEED_DATA`. Multibulk requests (`*N\\r\\n$L\\r\\n...`) are parsed by hiredis. A request
that starts with any other byte is an inline command (`PING\\r\\n` typed into telnet),
split as Valkey's sdssplitargs splits it. Errors raise `ProtocolError`; the caller replies
`-ERR Protocol error: ...` and closes the connection, as Valkey does.

The parser can work out where each request ended (from the canonical RESP size of what
hiredis returned), so an inline command may follow a multibulk one in the same read, and an
unfinished request is checked against Valkey's limits (element count, bulk length, query
buffer size) before it grows without bound.
"""

from dataclasses import dataclass

import hiredis

from ..errors import ProtocolError

NEED_DATA = None  # next_command() has nothing complete yet
INLINE_MAX_SIZE = 64 * 1024  # Valkey's PROTO_INLINE_MAX_SIZE
CHECK_ABOVE = 64 * 1024  # unfinished requests smaller than this cannot break a limit
RESYNC_ABOVE = 1024 * 1024  # bytes kept for positions before they are worked out

_TYPE_BYTE = {int: ":", list: "*", float: ",", dict: "%", bool: "#",
              hiredis.ReplyError: "-"}


@dataclass
class Limits:
    max_bulk_len: int = 512 * 1024 * 1024  # proto-max-bulk-len
    max_query_buffer: int = 1024 * 1024 * 1024  # client-query-buffer-limit
    max_multibulk_len: int = 1024 * 1024  # elements in one request
    unauthenticated_multibulk_len: int = 10  # Valkey's limits before AUTH
    unauthenticated_bulk_len: int = 16384


class RequestParser:
    """While hiredis holds data (`_reader_busy`), `_chunks` keeps the bytes fed to it since
    the last point where it was empty, and `_returned` the requests it returned since then.
    hiredis does not say where a request ends, so positions are worked out from those two
    only when needed (`_resync`): rarely, since hiredis is usually empty after each read."""

    __slots__ = ("_reader", "_reader_busy", "_chunks", "_held", "_returned", "_pending",
                 "limits", "authenticated")

    def __init__(self, limits: Limits | None = None) -> None:
        self._reader = hiredis.Reader()
        self._reader_busy = False
        self._chunks: list[bytes] = []
        self._held = 0  # bytes in _chunks
        self._returned: list[list | None] = []  # None for a skipped `*0` / `*-1`
        self._pending = b""  # bytes not given to hiredis, starting at a request boundary
        self.limits = limits or Limits()
        self.authenticated = True

    def feed(self, data: bytes) -> None:
        if self._reader_busy:
            self._reader.feed(data)
            self._chunks.append(data)
            self._held += len(data)
        else:
            self._pending += data

    def next_command(self) -> list[bytes] | None:
        while True:
            if self._reader_busy:
                try:
                    command = self._reader.gets()
                except hiredis.ProtocolError as exc:
                    if self._switch_to_inline():
                        continue
                    raise ProtocolError(_hiredis_message(str(exc))) from None
                if command is False:
                    if self._reader.len() > CHECK_ABOVE:
                        self._resync()
                        self._check_unfinished()
                    return NEED_DATA
                if command is not None and type(command) is not list:
                    # `:1`, `+x`, `-x` ...: not a multibulk request, so an inline one
                    if self._switch_to_inline():
                        continue
                if not self._reader.has_data():
                    self._reader_busy = False
                    self._chunks = []
                    self._held = 0
                    self._returned = []
                else:
                    self._returned.append(command or None)
                    if self._held > RESYNC_ABOVE:
                        self._resync()
                if command:
                    self._check_items(command)
                    return command
            elif not self._pending:
                return NEED_DATA
            elif self._pending[0] == 42:  # b"*": a multibulk request starts here
                self._reader.feed(self._pending)
                self._chunks = [self._pending]
                self._held = len(self._pending)
                self._pending = b""
                self._reader_busy = True
            else:
                command = self._next_inline()
                if command is None:
                    return NEED_DATA
                if command:
                    return command

    def _check_items(self, command: list) -> None:
        for item in command:
            if type(item) is not bytes:
                if item is None:
                    raise ProtocolError("invalid bulk length")
                raise ProtocolError(f"expected '$', got '{_TYPE_BYTE.get(type(item), '?')}'")
        limit = (self.limits.max_multibulk_len if self.authenticated
                 else self.limits.unauthenticated_multibulk_len)
        if len(command) > limit:
            raise ProtocolError("invalid multibulk length" if self.authenticated
                                else "unauthenticated multibulk length")

    def _resync(self) -> None:
        """Drop the bytes of the requests already returned: `_chunks` becomes exactly the
        bytes hiredis has not returned yet."""
        data = b"".join(self._chunks)
        pos = 0
        for command in self._returned:
            if command is None:
                pos = data.index(b"\n", pos) + 1
            else:
                self._check_items(command)
                pos += _wire_size(command)
        rest = data[pos:]
        self._chunks = [rest]
        self._held = len(rest)
        self._returned = []

    def _switch_to_inline(self) -> bool:
        """hiredis met a byte that does not start a multibulk request: if it sits where a
        request starts, it is an inline command; parse it and what follows ourselves."""
        self._resync()
        rest = self._chunks[0]
        if not rest or rest[0] == 42:
            return False
        self._reader = hiredis.Reader()
        self._reader_busy = False
        self._chunks = []
        self._held = 0
        self._pending = rest
        return True

    def _check_unfinished(self) -> None:
        """Walk the headers of the unfinished request (all of `_chunks` after a resync)
        and apply the limits."""
        limits = self.limits
        buf = self._chunks[0]
        if len(buf) > limits.max_query_buffer:
            raise ProtocolError("query buffer limit exceeded")
        end = buf.find(b"\r\n", 0, INLINE_MAX_SIZE)
        if end < 0:
            raise ProtocolError("too big mbulk count string")
        count = _int(buf[1:end])
        max_count = (limits.max_multibulk_len if self.authenticated
                     else limits.unauthenticated_multibulk_len)
        if count is None or count > max_count:
            raise ProtocolError("invalid multibulk length" if self.authenticated
                                else "unauthenticated multibulk length")
        max_bulk = limits.max_bulk_len if self.authenticated else limits.unauthenticated_bulk_len
        pos = end + 2
        for _ in range(count):
            if pos >= len(buf):
                return
            end = buf.find(b"\r\n", pos, pos + INLINE_MAX_SIZE)
            if end < 0:
                if len(buf) - pos > INLINE_MAX_SIZE:
                    raise ProtocolError("too big bulk count string")
                return
            length = _int(buf[pos + 1:end])
            if buf[pos] != 36 or length is None or length > max_bulk:  # b"$"
                raise ProtocolError("invalid bulk length" if self.authenticated
                                    else "unauthenticated bulk length")
            pos = end + 2 + length + 2

    def _next_inline(self) -> list[bytes] | None:
        end = self._pending.find(b"\n")
        if end < 0:
            if len(self._pending) > INLINE_MAX_SIZE:
                raise ProtocolError("too big inline request")
            return None
        line = self._pending[:end]
        self._pending = self._pending[end + 1:]
        return split_inline(line)


def _int(raw: bytes) -> int | None:
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def _wire_size(command: list) -> int:
    """Bytes of a multibulk request of bulk strings, as every client encodes it."""
    size = 3 + len(str(len(command)))
    for arg in command:
        n = len(arg)
        size += n + (6 if n < 10 else 7 if n < 100 else 8 if n < 1000 else 5 + len(str(n)))
    return size




def _hiredis_message(message: str) -> str:
    if "multi-bulk length" in message.lower():
        return "invalid multibulk length"
    if "bulk string length" in message.lower():
        return "invalid bulk length"
    if "as reply type byte" in message:  # `got "?" as reply type byte`
        return "expected '$', got '%s'" % message.split('"')[1]
    return message.removeprefix("Protocol error, ")


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"
_SPACE = b" \n\r\t\v\f"


def split_inline(line: bytes) -> list[bytes]:
    """Split one inline request line into arguments, with Valkey's quoting rules."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        token = bytearray()
        quote = line[i] if line[i] in b"\"'" else 0
        if quote:
            i += 1
        while True:
            if i >= n:
                if quote:
                    raise ProtocolError("unbalanced quotes in request")
                break
            c = line[i]
            if quote == 34 and c == 92 and i + 3 < n and line[i + 1] == 120 \
                    and line[i + 2] in _HEX and line[i + 3] in _HEX:  # \xHH
                token.append(int(line[i + 2:i + 4], 16))
                i += 4
            elif quote == 34 and c == 92 and i + 1 < n:  # backslash escape
                token.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                i += 2
            elif quote == 39 and c == 92 and i + 1 < n and line[i + 1] == 39:  # \'
                token.append(39)
                i += 2
            elif quote and c == quote:
                i += 1
                if i < n and line[i] not in _SPACE:
                    raise ProtocolError("unbalanced quotes in request")
                break
            elif not quote and c in _SPACE:
                break
            else:
                token.append(c)
                i += 1
        args.append(bytes(token))
