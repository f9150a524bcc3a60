"""The VALQ semantics as a Valkey Functions library (valq.lua, shipped in the package), and
the few calls that load it and run it with FCALL.

`client` is any object with `execute_command(*args)` (a valkey-py or redis-py client); this
module imports no client library. Every function of the library is called as

    FCALL valq_<subcommand> 1 valq:{<queue>} <the VALQ arguments after the queue>

(REDRIVE ... TO other declares valq:{<other>} as a second key). The test build of the
library takes the clock, in Unix ms, as the first argument after the keys; the production
build has no such argument (see valq.lua).
"""

import re
from collections.abc import Callable, Generator, Sequence
from importlib import resources
from typing import Any, Protocol

from .slots import key_slot

LIBRARY_NAME = "valq"
_VERSION_LINE = re.compile(r"^local VERSION = (\d+)$", re.M)
_TEST_CLOCK_LINE = "local TEST_CLOCK = false"
TEST_SUFFIX = "-testclock"


Arg = bytes | str | int  # a command argument, as valkey-py and redis-py take them


class CommandClient(Protocol):
    """What this module calls on a client (valkey-py's and redis-py's are untyped)."""

    def execute_command(self, *args: Any, **options: Any) -> Any: ...


class LibraryError(Exception):
    """The library cannot be loaded as asked (a newer version is there already)."""


def library_source(test_clock: bool = False) -> str:
    """The library's Lua source; with `test_clock`, the test build (the caller's clock)."""
    source = resources.files(__package__).joinpath("valq.lua").read_text(encoding="utf-8")
    if test_clock:
        assert source.count(_TEST_CLOCK_LINE) == 1
        source = source.replace(_TEST_CLOCK_LINE, "local TEST_CLOCK = true")
    return source


def source_version(source: str) -> int:
    match = _VERSION_LINE.search(source)
    if match is None:
        raise LibraryError("the library source has no VERSION line")
    return int(match.group(1))


VERSION = source_version(library_source())


def loaded_version(client: CommandClient) -> int | None:
    """The version of the valq library loaded in the server, or None."""
    listing = client.execute_command("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME,
                                     "WITHCODE")
    for entry in listing:
        fields = entry if isinstance(entry, dict) else dict(zip(entry[0::2], entry[1::2]))
        name = fields.get(b"library_name", fields.get("library_name"))
        if name in (LIBRARY_NAME, LIBRARY_NAME.encode()):
            code = fields.get(b"library_code", fields.get("library_code"))
            if not isinstance(code, (bytes, str)):
                raise LibraryError("FUNCTION LIST ... WITHCODE answered no library_code")
            return source_version(code.decode() if isinstance(code, bytes) else code)
    return None


def load(client: CommandClient, test_clock: bool = False) -> int:
    """Load (or upgrade) the library with FUNCTION LOAD REPLACE; refuse to replace a newer
    version. Returns the version now loaded."""
    current = loaded_version(client)
    if current is not None and current > VERSION:
        raise LibraryError(f"the server has valq library version {current}, newer than "
                           f"this valqd's {VERSION}: upgrade valqd instead")
    client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source(test_clock))
    return VERSION


def queue_key(name: bytes) -> bytes:
    """The key every call of one queue declares: valq:{<queue>}."""
    return b"valq:{" + name + b"}"


def _crc_tables() -> tuple[list[int], dict[int, int]]:
    table = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021 if c & 0x8000 else c << 1) & 0xFFFF
        table.append(c)
    low14 = {}
    for j in range(255, -1, -1):
        low14[table[j] & 16383] = j
    return table, low14


_CRC, _LOW14 = _crc_tables()


def slot_tag(slot: int) -> bytes:
    """The two-byte hash tag (no '}') the library gives the due index of `slot`: solved
    from the CRC table as valq.lua's slot_tag does, so both name the same key."""
    for b1 in range(256):
        c = _CRC[b1]
        j = _LOW14.get((slot ^ (c << 8)) & 16383)
        if j is not None and b1 != 125:
            b2 = j ^ (c >> 8)
            if b2 != 125:
                return bytes((b1, b2))
    raise LibraryError(f"no tag for slot {slot}")


def wake_key(name: bytes) -> bytes:
    """The wake marker of a queue: one element while a message is ready (BLPOP it)."""
    return queue_key(name) + b":wake"


def events_channel(name: bytes, database: int = 0) -> bytes:
    """The sharded channel a queue's events go to (valq_listen answers the same)."""
    if database == 0:
        return queue_key(name) + b":events"
    return b"valq@%d:{%b}:events" % (database, name)


def due_index_key(key: bytes) -> bytes:
    """The due index (valq_reap's key) of the slot of a queue's key valq:{<queue>}."""
    return b"valq:due:{" + slot_tag(key_slot(key)) + b"}"


def _text(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _count(value: Any) -> int | None:
    """A canonical positive decimal, as the library reads numqueues; else None."""
    text = _text(value)
    return int(text) if text.isdigit() and text[:1] != b"0" and len(text) < 19 else None


def fcall(function: str, keys: Sequence[bytes], args: Sequence[Any],
          clock: int | None = None) -> list[Any]:
    """FCALL valq_<function> with `keys` and `args`; `clock` only for the test build."""
    return (["FCALL", f"valq_{function}", len(keys), *keys]
            + ([clock] if clock is not None else []) + list(args))


def redrive_target(name: bytes, args: Sequence[Any]) -> bytes | None:
    """The other queue of `REDRIVE name ... TO other`, or None."""
    upper = [_text(a).upper() for a in args]
    if b"TO" in upper[:-1]:
        other = _text(args[upper.index(b"TO") + 1])
        if other != name:
            return other
    return None


def fcall_args(subcommand: str, name: bytes, args: Sequence[Any],
               clock: int | None = None) -> list[Any]:
    """The FCALL command for `VALQ <subcommand> <name> <args...>` (for MPOP, `name` is
    numqueues and the queues come first in `args`); `clock` only for the test build."""
    sub = subcommand.lower()
    if sub == "mpop":
        n = _count(name)
        queues = args[:n] if n is not None and n <= len(args) else []
        return fcall(sub, [queue_key(_text(q)) for q in queues], [name, *args], clock)
    keys = [queue_key(name)]
    if sub == "redrive":
        other = redrive_target(name, args)
        if other is not None:
            keys.append(queue_key(other))
    return fcall(sub, keys, args, clock)


def redrive_steps(is_error: Callable[[Any], bool], name: bytes, args: Sequence[Any],
                  clock: int | None = None) -> Generator[list[Any], Any, Any]:
    """`VALQ REDRIVE name ... TO other` when other lives in another slot of a cluster: the
    library's three calls (valq_redrive_out, _in, _done; see valq.lua) as a generator that
    yields each command and is sent its reply; it returns REDRIVE's reply, or the first
    error reply. Not atomic: a message may be redriven twice if this stops between the
    second and third call."""
    other = redrive_target(name, args)
    if other is None:
        return (yield fcall_args("REDRIVE", name, args, clock))
    moving = yield fcall("redrive_out", [queue_key(name)], args, clock)
    if is_error(moving):
        return moving
    ids = moving[0::3]
    pairs = [value for i in range(0, len(moving), 3) for value in moving[i + 1:i + 3]]
    moved = yield fcall("redrive_in", [queue_key(other)], pairs, clock)
    if is_error(moved) or not ids:
        return moved
    done = yield fcall("redrive_done", [queue_key(name)], ids, clock)
    return done if is_error(done) else moved


def redrive_across(call: Callable[..., Any], is_error: Callable[[Any], bool], name: bytes,
                   args: Sequence[Any], clock: int | None = None) -> Any:
    """`redrive_steps`, each command sent with `call(*command)`."""
    steps = redrive_steps(is_error, name, args, clock)
    try:
        command = next(steps)
        while True:
            command = steps.send(call(*command))
    except StopIteration as finished:
        return finished.value


class Library:
    """Calls into a loaded library: `call("PUSH", b"q", b"body")`."""

    def __init__(self, client: CommandClient, test_clock: bool = False) -> None:
        self.client = client
        self.test_clock = test_clock
        self.clock: int | None = None  # the test build's clock, Unix ms

    def call(self, subcommand: str, name: bytes, *args: Any) -> Any:
        clock = self.clock if self.test_clock else None
        if self.test_clock and clock is None:
            raise LibraryError("the test build needs a clock: set Library.clock")
        return self.client.execute_command(*fcall_args(subcommand, name, args, clock))

    def dump(self, name: bytes) -> list[bytes]:
        """The queue's canonical dump (valqd/engine/dump.py), due events applied first."""
        lines: list[bytes] = self.call("DUMP", name)
        return lines
