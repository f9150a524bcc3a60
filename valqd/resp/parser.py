"""Incremental request parsing: bytes in, commands (lists of bytes) out. No sockets.

Usage: `feed(data)` whenever bytes arrive, then call `next_command()` until it returns
`NEED_DATA`. A request that starts with `*` is a multibulk request (`*N\\r\\n$L\\r\\n...`);
one that starts with any other byte is an inline command (`PING\\r\\n` typed into telnet),
split as Valkey 9.1's sdssplitargs splits it. Errors raise `ProtocolError`; the caller replies
`-ERR Protocol error: ...` and closes the connection, as Valkey does.

Two ways to read multibulk requests:

- hiredis, fast. hiredis does not report where a request ends, so the parser keeps the
  bytes fed since hiredis was last empty and works out where each request it returns ends
  (`_request_end`), checking on the way that Valkey reads the same request there: hiredis
  returns the same list for more (`*1\r\n+x\r\n`, an element of another type where a
  bulk belongs; `~1\r\n...`, another aggregate type), which Valkey reads otherwise
  ("expected '$', got '+'"; inline commands). Such a request, and all that follows it,
  goes to the framer unread. The headers of an unfinished request are checked against
  Valkey's limits as they arrive (`_check_unfinished`, each header looked at once).
- a framer in Python (`_next_framed`), header by header as Valkey's processMultibulkBuffer,
  checking every limit before anything is allocated. hiredis allocates a list as long as
  any aggregate header it meets (`*N`, `~N`, ... nested ones included) before a single
  element arrives (`*4000000000\r\n` stalled the garbage collector for seconds); so a
  connection whose bytes contain what could be a header of 10,000 elements or more
  (`_holds_big_header`, rare in real traffic) is read by the framer from then on, until
  it has read everything held (the end of a read, in the usual case).

Inline commands are always read by the framer. Each byte is looked at about once: a bulk
still arriving is kept as a list of chunks and joined once, when complete.
"""

import enum
from dataclasses import dataclass
from typing import Final, Literal

import hiredis

from ..errors import ProtocolError

NEED_DATA: Final = None  # next_command() has nothing complete yet
INLINE_MAX_SIZE: Final = 64 * 1024  # Valkey's PROTO_INLINE_MAX_SIZE
RESYNC_ABOVE: Final = 1024 * 1024  # bytes kept for positions before they are worked out
MAX_DIGITS: Final = 19  # longer counts and lengths are out of range whatever their value

# hiredis must not read what could be a header for which it allocates 10,000 elements or
# more (Valkey allocates at most 1024 ahead): `*`, `~`, `>` or `|` and five digits (`%`
# makes a dict, which grows as elements come). It is looked for in every byte fed while
# hiredis reads (and in the last bytes held with the next feed, for one split between two
# reads): that is a cost of every read, so the search uses what CPython does cheapest per
# call: `byte in data` (memchr) for the rare marks, and str.find on the latin-1 text of
# the bytes for `*`. bytes.find parses its arguments with PyArg_ParseTuple (~1.3k
# instructions a call in 3.11); the translation of every byte into classes this replaced
# cost 7 instructions a byte, and is still the answer for bytes full of marks
# (_MARKS_SEARCHED).
HEADER_DIGITS: Final = 5  # digits of a header of 10,000 elements or more
_TILDE: Final = 126  # b"~", b">", b"|": aggregate marks rare in real traffic (`*` is not)
_GREATER: Final = 62
_BAR: Final = 124
# Past this many aggregate marks in one feed, one translation of every byte into classes
# (_CLASSES: `A` a mark, `1` a digit) costs less than a search per mark.
_MARKS_SEARCHED: Final = 32
_CLASSES: Final = bytes(ord("A") if c in b"*~>|" else ord("1") if c in b"0123456789" else
                        ord(".") for c in range(256))
_BIG_HEADER_CLASSES: Final = "A" + "1" * HEADER_DIGITS


class _Handoff(enum.Enum):
    """The framer stopped where hiredis should read a multibulk request."""
    HANDOFF = 0


_HANDOFF = _Handoff.HANDOFF


@dataclass
class Limits:
    max_bulk_len: int = 512 * 1024 * 1024  # proto-max-bulk-len
    max_query_buffer: int = 1024 * 1024 * 1024  # client-query-buffer-limit
    max_multibulk_len: int = 1024 * 1024  # elements in one request
    unauthenticated_multibulk_len: int = 10  # Valkey's limits before AUTH
    unauthenticated_bulk_len: int = 16384


class RequestParser:
    """While hiredis holds data (`_reader_busy`), `_chunks` keeps the bytes fed to it since
    the last point where it was empty, and `_consumed` how many of them the requests it
    returned since then took (each checked to be read there as Valkey reads it).
    Otherwise the framer holds them: `_buf[_pos:]` is what it has not parsed yet; inside a
    multibulk request `_args` has the arguments read so far and `_left` how many are
    missing (-1: between requests); `_bulk` is the length of the bulk whose header was read
    (-1: none), and a bulk still arriving waits in `_parts` instead of `_buf`."""

    __slots__ = ("_reader", "_reader_busy", "_chunks", "_held", "_consumed", "_walk_pos",
                 "_walk_left", "_careful", "_buf", "_pos", "_args",
                 "_args_len", "_left", "_bulk", "_parts", "_parts_len", "limits",
                 "authenticated")

    def __init__(self, limits: Limits | None = None) -> None:
        self._reader = hiredis.Reader()
        self._reader_busy = False
        self._chunks: list[bytes] = []
        self._held = 0  # bytes in _chunks
        self._consumed = 0
        # How far the headers of the unfinished request (which starts at `_chunks[0][0]`
        # when `_consumed` is 0) were checked: the offset of the next header, and how
        # many bulk headers are left (-1: the count header is next).
        self._walk_pos = 0
        self._walk_left = -1
        self._careful = False  # True: the framer reads multibulk requests too
        self._buf = b""
        self._pos = 0
        self._args: list[bytes] = []
        self._args_len = 0  # bytes in _args
        self._left = -1
        self._bulk = -1
        self._parts: list[bytes] = []
        self._parts_len = 0  # bytes in _parts
        self.limits = limits or Limits()
        self.authenticated = True

    def feed(self, data: bytes) -> None:
        if not self._careful:
            if self._reader_busy:
                if not self._continues_safely(data):
                    self._become_careful()
                else:
                    self._reader.feed(data)
                    self._chunks.append(data)
                    self._held += len(data)
                    return
            elif self._pos >= len(self._buf) and not self._parts_len:
                # nothing held: what came before was read whole, so a header cannot start
                # before `data`
                if _holds_big_header(data):
                    self._become_careful()
                elif data[:1] == b"*":
                    # a multibulk request at a request boundary: straight to hiredis, as
                    # the framer would hand it over (the usual way a request arrives)
                    self._buf, self._pos = b"", 0
                    self._reader.feed(data)
                    self._rebase([data])
                    self._reader_busy = True
                    return
            elif _holds_big_header(
                    self._buf[max(self._pos, len(self._buf) - HEADER_DIGITS):] + data):
                self._become_careful()  # (the framer holds the start of a line)
        if self._parts_len:
            self._parts.append(data)
            self._parts_len += len(data)
        elif self._pos >= len(self._buf):
            self._buf = data
            self._pos = 0
        else:
            self._buf = self._buf[self._pos:] + data
            self._pos = 0

    def _continues_safely(self, data: bytes) -> bool:
        """Whether hiredis may read `data` after what it holds: the bytes of a bulk whose
        header was checked (`_check_unfinished`) are not searched (hiredis reads them as
        that bulk), and the search starts in the last bytes held otherwise (a header split
        between two reads)."""
        held = self._held
        if not self._consumed and self._walk_pos > held:
            start = self._walk_pos - held
            return start >= len(data) or not _holds_big_header(data[start:])
        return not _holds_big_header(self._tail(max(held - HEADER_DIGITS, 0)) + data)

    def buffered(self) -> int:
        """Bytes received and not yet handed out as commands."""
        return self._held - self._consumed + len(self._buf) - self._pos + self._parts_len + self._args_len

    def next_command(self) -> list[bytes] | None:
        while True:
            if self._reader_busy:
                try:
                    command = self._reader.gets()
                except Exception:  # hiredis.ProtocolError, or a value it cannot build
                    self._become_careful()  # the framer finds Valkey's error, or reads on
                    continue
                if command is False:
                    if self._check_unfinished():
                        return NEED_DATA
                    continue
                # a non-empty list of bytes only
                if type(command) is not list or not command or not _all_bytes(command):
                    # `:1` where a request starts (an inline command), `*1\r\n:1\r\n` (an
                    # error), `*0` or `$-1` (skipped, or an inline command): the framer
                    # reads it, and all that follows, from its start
                    self._become_careful()
                    continue
                if len(self._chunks) > 1:
                    self._resync()  # the request in one piece (at most once per read)
                end = _request_end(self._chunks[0], self._consumed, command)
                if end < 0:
                    # Valkey reads it otherwise: an element of another type where a bulk
                    # belongs (`+x`), another aggregate type (`~1`): the framer reads it,
                    # and all that follows, from its start
                    self._become_careful()
                    continue
                limits = self.limits
                held = self._held  # the request came in these bytes: no item or count is larger
                if held > limits.max_bulk_len or held > limits.max_multibulk_len or \
                        not self.authenticated:
                    self._check_limits(command)
                if end == held:  # hiredis holds nothing more: `_rebase([])`, inline
                    self._reader_busy = False
                    self._chunks = []
                    self._held = self._walk_pos = self._consumed = 0
                    self._walk_left = -1
                else:
                    self._consumed = end
                    if held > RESYNC_ABOVE:
                        self._resync()
                checked: list[bytes] = command  # a non-empty list of bytes, as tested above
                return checked
            if self._left < 0 and self._pos >= len(self._buf) and not self._parts_len:
                # between requests, nothing buffered (how most reads end): the parser is
                # as a new connection's, and the next feed is searched as its first would
                # be, so hiredis may read again after whatever made the framer read
                self._careful = False
                return NEED_DATA
            framed = self._next_framed()
            if framed is not _HANDOFF:
                return framed
            rest = self._buf[self._pos:] if self._pos else self._buf
            self._buf, self._pos = b"", 0
            self._reader.feed(rest)
            self._rebase([rest])
            self._reader_busy = True

    # -- hiredis ---------------------------------------------------------------------------

    def _become_careful(self) -> None:
        """From now on the framer reads everything: what hiredis holds and has not
        returned (which starts at a request boundary) goes back to the framer."""
        self._careful = True
        if self._reader_busy:
            self._resync()
            rest = self._chunks[0]
            self._reader = hiredis.Reader()
            self._reader_busy = False
            self._rebase([])
            self._buf, self._pos = rest, 0

    def _rebase(self, chunks: list[bytes]) -> None:
        """`_chunks` start at a request boundary from now on, with nothing returned since."""
        self._chunks = chunks
        self._held = len(chunks[0]) if len(chunks) == 1 else sum(map(len, chunks))
        self._consumed = 0
        self._walk_pos = 0
        self._walk_left = -1

    def _check_limits(self, command: list[bytes]) -> None:
        """Raise for a limit that a complete request breaks, in Valkey's order: the count
        first (its header comes first), then the bulks."""
        limits = self.limits
        self._checked_count(len(command))
        longest = max(map(len, command))
        if longest > limits.max_bulk_len:
            raise ProtocolError("invalid bulk length")
        if longest > limits.unauthenticated_bulk_len and not self.authenticated:
            raise ProtocolError("unauthenticated bulk length")

    def _checked_count(self, count: int | None) -> int:
        """The N of a `*N` header (None: not a number), within Valkey's limits."""
        limits = self.limits
        if count is None or count > limits.max_multibulk_len:
            raise ProtocolError("invalid multibulk length")
        if count > limits.unauthenticated_multibulk_len and not self.authenticated:
            raise ProtocolError("unauthenticated multibulk length")
        return count

    def _bulk_header(self, buf: bytes, at: int, end: int) -> int:
        """The length L of the `$L` header at buf[at:end], within Valkey's limits."""
        if buf[at] != 36:  # b"$"
            raise ProtocolError("expected '$', got '%s'" % chr(buf[at]))
        _check_crlf(buf, end)
        length = _number(buf[at + 1:end])
        limits = self.limits
        if length is None or length < 0 or length > limits.max_bulk_len:
            raise ProtocolError("invalid bulk length")
        if length > limits.unauthenticated_bulk_len and not self.authenticated:
            raise ProtocolError("unauthenticated bulk length")
        if length + 2 > limits.max_query_buffer:  # refused now, not once it has arrived
            raise ProtocolError("query buffer limit exceeded")
        return length

    def _resync(self) -> None:
        """Drop the bytes of the requests already returned: `_chunks` becomes exactly the
        bytes hiredis has not returned yet."""
        data = b"".join(self._chunks)
        self._rebase([data[self._consumed:]])

    def _tail(self, start: int) -> bytes:
        """The held bytes from offset `start` on, joining only the chunks that hold them."""
        chunks = self._chunks
        need = self._held - start
        if len(chunks) == 1:
            return chunks[0][start:]
        parts, got, i = [], 0, len(chunks)
        while got < need:
            i -= 1
            parts.append(chunks[i])
            got += len(chunks[i])
        data = b"".join(reversed(parts))
        return data[got - need:]

    def _check_unfinished(self) -> bool:
        """Apply Valkey's limits to the request hiredis is still waiting for, walking the
        headers that arrived since the last call, with Valkey's checks and words. False
        when it is not a multibulk request: then the framer reads it."""
        if self._consumed:
            self._resync()  # now `_chunks` start where the unfinished request starts
        limits = self.limits
        if self._held > limits.max_query_buffer:
            raise ProtocolError("query buffer limit exceeded")
        pos, left = self._walk_pos, self._walk_left
        if pos > self._held or left == 0 or not self._held:
            return True
        # from the two bytes that end what was walked before: a bulk's CRLF may have come
        # only now (Valkey refuses other bytes there as soon as they arrive)
        base = pos - 2 if pos else 0
        buf = self._tail(base)
        if not pos and buf[0] != 42:  # b"*"
            self._become_careful()
            return False
        at = pos - base
        if at and (buf[0] != 13 or buf[1] != 10):
            raise ProtocolError("invalid CRLF in request")
        if left < 0:  # the count header, `*N\r\n`
            end = _line_end(buf, 0)
            if end < 0:
                if len(buf) > INLINE_MAX_SIZE:
                    raise ProtocolError("too big mbulk count string")
                return True
            _check_crlf(buf, end)
            left, at = self._checked_count(_number(buf[1:end])), end + 2
        while left > 0 and at < len(buf):
            end = _line_end(buf, at)
            if end < 0:
                if len(buf) - at > INLINE_MAX_SIZE:
                    raise ProtocolError("too big bulk count string")
                break
            at = end + 2 + self._bulk_header(buf, at, end) + 2
            if at <= len(buf) and (buf[at - 2] != 13 or buf[at - 1] != 10):
                raise ProtocolError("invalid CRLF in request")
            left -= 1
        self._walk_pos, self._walk_left = base + at, left
        return True

    # -- the framer ------------------------------------------------------------------------

    def _next_framed(self) -> list[bytes] | None | Literal[_Handoff.HANDOFF]:
        """The next command from `_buf`; NEED_DATA; or _HANDOFF at a multibulk request
        that hiredis should read (unless `_careful`)."""
        if self._parts_len and not self._join_bulk():
            return NEED_DATA
        buf, pos = self._buf, self._pos
        while True:
            left = self._left
            if left < 0:  # between requests
                if pos >= len(buf):
                    self._pos = pos
                    return NEED_DATA
                if buf[pos] != 42:  # b"*": anything else starts an inline command
                    end = buf.find(b"\n", pos)
                    if end < 0:
                        self._pos = pos
                        if len(buf) - pos > INLINE_MAX_SIZE:
                            raise ProtocolError("too big inline request")
                        return NEED_DATA
                    argv = split_inline(buf[pos:end])
                    pos = end + 1
                    if argv:
                        self._pos = pos
                        return argv
                    continue
                if not self._careful:
                    self._pos = pos
                    return _HANDOFF
                end = _line_end(buf, pos)
                if end < 0:
                    self._pos = pos
                    if len(buf) - pos > INLINE_MAX_SIZE:
                        raise ProtocolError("too big mbulk count string")
                    return NEED_DATA
                _check_crlf(buf, end)
                count = self._checked_count(_number(buf[pos + 1:end]))
                pos = end + 2
                if count <= 0:  # `*0`, `*-1`, `*-5`: Valkey skips them
                    continue
                self._left = left = count
                self._args = []
                self._args_len = 0
            args = self._args
            while left:
                size = self._bulk
                if size < 0:  # a bulk header, `$L\r\n`
                    end = _line_end(buf, pos)
                    if end < 0:
                        self._pos = pos
                        self._left = left
                        if len(buf) - pos > INLINE_MAX_SIZE:
                            raise ProtocolError("too big bulk count string")
                        self._check_query_buffer()
                        return NEED_DATA
                    size = self._bulk_header(buf, pos, end)
                    pos = end + 2
                if len(buf) - pos < size + 2:  # the bulk is still arriving
                    self._bulk = size
                    self._left = left
                    rest = buf[pos:]
                    self._buf, self._pos = b"", 0
                    if rest:
                        self._parts = [rest]
                        self._parts_len = len(rest)
                    self._check_query_buffer()
                    return NEED_DATA
                if buf[pos + size] != 13 or buf[pos + size + 1] != 10:
                    raise ProtocolError("invalid CRLF in request")
                args.append(buf[pos:pos + size])
                self._args_len += size
                pos += size + 2
                self._bulk = -1
                left -= 1
            self._left = -1
            self._args_len = 0
            self._pos = pos
            return args

    def _join_bulk(self) -> bool:
        """Once the bulk that is arriving is complete, `_buf` starts with it."""
        if self._parts_len < self._bulk + 2:
            self._check_query_buffer()
            return False
        self._buf = b"".join(self._parts)
        self._pos = 0
        self._parts = []
        self._parts_len = 0
        return True

    def _check_query_buffer(self) -> None:
        if self.buffered() > self.limits.max_query_buffer:
            raise ProtocolError("query buffer limit exceeded")


def _line_end(buf: bytes, start: int) -> int:
    """Where the header line that starts at `start` ends, as Valkey finds it: its first
    `\\r`, once the byte after it has come (-1 until then). That byte must be `\\n`
    (_check_crlf), which Valkey checks after a bulk header's `$`, before its number."""
    end = buf.find(b"\r", start)
    return -1 if end < 0 or end + 1 >= len(buf) else end


def _check_crlf(buf: bytes, end: int) -> None:
    if buf[end + 1] != 10:
        raise ProtocolError("invalid CRLF in request")


def _holds_big_header(data: bytes) -> bool:
    """Whether `data` holds what could be an aggregate header of 10,000 elements or more."""
    text = data.decode("latin-1")  # positions in `text` are positions in `data`
    return _big_header(data, text, "*") or (_TILDE in data and _big_header(data, text, "~")) \
        or (_GREATER in data and _big_header(data, text, ">")) \
        or (_BAR in data and _big_header(data, text, "|"))


def _big_header(data: bytes, text: str, mark: str) -> bool:
    """Whether `mark` (an aggregate type) is followed by HEADER_DIGITS digits in `data`,
    whose latin-1 decoding is `text`."""
    last = len(data) - HEADER_DIGITS  # a mark past it has no room for the digits
    at = text.find(mark)
    searched = 0
    while 0 <= at < last:
        for digit_at in range(at + 1, at + 1 + HEADER_DIGITS):
            if not 48 <= data[digit_at] <= 57:  # b"0", b"9"
                break
        else:
            return True
        searched += 1
        if searched == _MARKS_SEARCHED:  # bytes full of marks: classify them all at once
            return _BIG_HEADER_CLASSES in data.translate(_CLASSES).decode("ascii")
        at = text.find(mark, at + 1)
    return False


def _all_bytes(items: list[object]) -> bool:
    """Whether every item is a bytes object (compiled: a loop of pointer compares, cheaper
    than counting the types in C through map and list, which allocate)."""
    for item in items:
        if type(item) is not bytes:
            return False
    return True


def _number(raw: bytes) -> int | None:
    """A count or a length as Valkey's string2ll reads it: an optional `-` and digits,
    without a leading zero, sign, space or underscore; None when it is not one. (Read
    digit by digit: compiled, int() on bytes and bytes.isdigit cost ~1k instructions per
    header, five headers per PUSH on the framer.)"""
    size = len(raw)
    start = 1 if size and raw[0] == 45 else 0  # b"-"
    if start == size or size - start > MAX_DIGITS or (raw[start] == 48 and size > 1):
        return None  # empty, too long, or a leading 0 (only 0 itself: no -0, 01)
    value = digits_value(raw, start)
    if value < 0:
        return None
    return -value if start else value


def digits_value(raw: bytes, start: int) -> int:
    """The value of the ASCII digits raw[start:], -1 if another byte is among them."""
    value = 0
    for at in range(start, len(raw)):
        digit = raw[at] - 48  # b"0"
        if not 0 <= digit <= 9:
            return -1
        value = value * 10 + digit
    return value


def _request_end(data: bytes, start: int, command: list[bytes]) -> int:
    """Where the request hiredis returned as `command` ends in `data`, given that it starts
    at `start`, if Valkey reads the same request there: `*N`, then for each argument `$L`,
    its L bytes and CRLF; -1 if not. hiredis returns the same list for more: an element of
    another type where a bulk belongs (`+x`, `(12`: Valkey says "expected '$', got '+'"),
    another aggregate type where a request starts (`~1`, `|1`: for Valkey, inline
    commands), any two bytes after a bulk (Valkey: "invalid CRLF in request"). The header
    lines of what it returned are canonical (it reads counts and lengths as strictly as
    Valkey), so their sizes follow from the numbers, and only the type bytes and the bulks'
    ends are left to check."""
    count = len(command)
    end = len(data)
    if start >= end or data[start] != 42:  # b"*"
        return -1
    at = start + (4 if count < 10 else 5 if count < 100 else 3 + len(str(count)))
    for arg in command:
        if at >= end or data[at] != 36:  # b"$"
            return -1
        size = len(arg)
        at += size + (6 if size < 10 else 7 if size < 100 else 8 if size < 1000 else
                      5 + len(str(size)))
        if at > end or data[at - 2] != 13 or data[at - 1] != 10:  # hiredis skips them
            return -1
    return at


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"
_BLANKS = b" \n\r\t\v\f"  # skipped between arguments (isspace)
_TOKEN_ENDS = b" \n\r\t"  # end an argument outside quotes (\v and \f are kept in it)


def split_inline(line: bytes) -> list[bytes]:
    """Split one inline request line into arguments as Valkey 9.1's sdssplitargs does: a
    quote anywhere in an argument opens a quoted part, and the argument goes on after the
    closing quote (`a"b c"d` is `ab cd`); double quotes read escapes (\\n, \\xHH, ...),
    single quotes only \\'. An unclosed quote is an error. (Valkey 9.0 and older refused
    text right after a closing quote.)"""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _BLANKS:
            i += 1
        if i >= n:
            return args
        token = bytearray()
        quote = 0
        while i < n:
            c = line[i]
            if quote == 34:  # "
                if c == 92 and i + 3 < n and line[i + 1] == 120 \
                        and line[i + 2] in _HEX and line[i + 3] in _HEX:  # \xHH
                    token.append(int(line[i + 2:i + 4], 16))
                    i += 4
                    continue
                if c == 92 and i + 1 < n:  # backslash escape
                    token.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 2
                    continue
                if c == 34:
                    quote = 0
                else:
                    token.append(c)
            elif quote == 39:  # '
                if c == 92 and i + 1 < n and line[i + 1] == 39:  # \'
                    token.append(39)
                    i += 2
                    continue
                if c == 39:
                    quote = 0
                else:
                    token.append(c)
            elif c in _TOKEN_ENDS:
                break
            elif c == 34 or c == 39:
                quote = c
            else:
                token.append(c)
            i += 1
        if quote:
            raise ProtocolError("unbalanced quotes in request")
        args.append(bytes(token))
