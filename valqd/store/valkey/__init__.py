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
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

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


def fcall_args(subcommand: str, name: bytes, args: Sequence[Arg],
               clock: int | None = None) -> list[Arg]:
    """The FCALL command for `VALQ <subcommand> <name> <args...>`; `clock` only for the
    test build."""
    keys = [queue_key(name)]
    if subcommand.lower() == "redrive":
        upper = [a.upper() if isinstance(a, bytes) else str(a).upper().encode() for a in args]
        if b"TO" in upper[:-1]:
            other = args[upper.index(b"TO") + 1]
            other = other if isinstance(other, bytes) else str(other).encode()
            if other != name:
                keys.append(queue_key(other))
    head: list[Arg] = ["FCALL", f"valq_{subcommand.lower()}", len(keys), *keys]
    return head + ([clock] if clock is not None else []) + list(args)


class Library:
    """Calls into a loaded library: `call("PUSH", b"q", b"body")`."""

    def __init__(self, client: CommandClient, test_clock: bool = False) -> None:
        self.client = client
        self.test_clock = test_clock
        self.clock: int | None = None  # the test build's clock, Unix ms

    def call(self, subcommand: str, name: bytes, *args: Arg) -> Any:
        clock = self.clock if self.test_clock else None
        if self.test_clock and clock is None:
            raise LibraryError("the test build needs a clock: set Library.clock")
        return self.client.execute_command(*fcall_args(subcommand, name, args, clock))

    def dump(self, name: bytes) -> list[bytes]:
        """The queue's canonical dump (valqd/engine/dump.py), due events applied first."""
        lines: list[bytes] = self.call("DUMP", name)
        return lines
