"""Incremental request parsing: bytes in, commands (lists of bytes) out. No sockets.

Usage: `feed(data)` whenever bytes arrive, then call `next_command()` until it returns
`NEED_DATA`. Multibulk requests (`*N\\r\\n$L\\r\\n...`) are parsed by hiredis. A request
that starts with any other byte is an inline command (`PING\\r\\n` typed into telnet),
split as Valkey's sdssplitargs splits it. Errors raise `ProtocolError`; the caller replies
`-ERR Protocol error: ...` and closes the connection, as Valkey does.

Limitation: an inline command that follows a multibulk one in the same pipeline is seen
by hiredis and rejected; inline commands are accepted at the start of a read and after
other inline commands, which is how people type them.
"""

import hiredis

from ..errors import ProtocolError

NEED_DATA = None  # next_command() has nothing complete yet
INLINE_MAX_SIZE = 64 * 1024  # Valkey's PROTO_INLINE_MAX_SIZE

_TYPE_BYTE = {int: ":", list: "*", float: ",", dict: "%", bool: "#",
              hiredis.ReplyError: "-"}


class RequestParser:
    __slots__ = ("_reader", "_reader_busy", "_pending")

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._reader_busy = False  # hiredis holds bytes of an unfinished or further request
        self._pending = b""  # bytes not yet given to hiredis, starting at a request boundary

    def feed(self, data: bytes) -> None:
        if self._reader_busy:
            self._reader.feed(data)
        else:
            self._pending += data

    def next_command(self) -> list[bytes] | None:
        while True:
            if self._reader_busy:
                try:
                    command = self._reader.gets()
                except hiredis.ProtocolError as exc:
                    raise ProtocolError(_hiredis_message(str(exc))) from None
                if command is False:
                    return NEED_DATA
                if not self._reader.has_data():
                    self._reader_busy = False
                if type(command) is not list and command is not None:
                    # a RESP value, not a request, pipelined after a multibulk one (the
                    # limitation above): reject it rather than iterate or dispatch it
                    raise ProtocolError(
                        f"expected '*', got '{_TYPE_BYTE.get(type(command), '?')}'")
                if command:  # `*0` and `*-1` are skipped, as Valkey skips them
                    _check_bulk_items(command)
                    return command
            elif not self._pending:
                return NEED_DATA
            elif self._pending[0] == 42:  # b"*"
                self._reader.feed(self._pending)
                self._pending = b""
                self._reader_busy = True
            else:
                command = self._next_inline()
                if command is None:
                    return NEED_DATA
                if command:
                    return command

    def _next_inline(self) -> list[bytes] | None:
        end = self._pending.find(b"\n")
        if end < 0:
            if len(self._pending) > INLINE_MAX_SIZE:
                raise ProtocolError("too big inline request")
            return None
        line = self._pending[:end]
        self._pending = self._pending[end + 1:]
        return split_inline(line)


def _check_bulk_items(command: list) -> None:
    for item in command:
        if type(item) is not bytes:
            if item is None:
                raise ProtocolError("invalid bulk length")
            raise ProtocolError(f"expected '$', got '{_TYPE_BYTE.get(type(item), '?')}'")


def _hiredis_message(message: str) -> str:
    if "Bad multi-bulk length" in message or "Multi-bulk length" in message:
        return "invalid multibulk length"
    if "Bad bulk string length" in message or "Bulk string length" in message:
        return "invalid bulk length"
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
