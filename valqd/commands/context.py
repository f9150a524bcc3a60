"""The state command handlers see: one `Session` per connection and one shared `ServerState`.

Both are plain data plus hooks. The server module fills in the hooks that need sockets
(closing another client, stopping the server); the command layer never touches I/O.
"""

import collections
import os
import time
from time import time_ns
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

from ..config import Config
from ..engine import Databases, Effect, Engine
from ..resp import encode
from .users import Acl, User

if TYPE_CHECKING:  # the table imports this module
    from .table import CommandSpec


def _internal_user() -> User:
    """The user of a session no connection opened (AOF replay, tests): may do anything.
    Connections get theirs from `acl.open_session`."""
    return User(b"default", enabled=True, nopass=True, all_keys=True, all_channels=True,
                unrestricted=True)


@dataclass(eq=False)
class Blocked:
    """A handler's answer when a blocking pop found nothing: the server parks the client
    until `attempt()` returns a reply (called whenever a message may be visible in one of
    `queues`) or until `timeout_ms` passes (0: forever), then sends `timeout_reply`."""

    queues: list[bytes]
    timeout_ms: int
    attempt: Callable[[], bytes | None]
    timeout_reply: bytes
    database: int = 0  # the number of the database of `queues`


class Pending:
    """A handler's answer when the reply is still on its way from a store: the server keeps
    the connection's later replies behind it and sends it when `resolve` is called. A
    `barrier` is a reply of several steps (a flush, a scan): the connection runs nothing
    else until it is resolved, so no later command of the same client overtakes it."""

    __slots__ = ("reply", "listener", "barrier", "blocked", "cancelled")

    def __init__(self, barrier: bool = False, blocked: bool = False) -> None:
        """`blocked`: a blocking pop waiting in a store's front end (a barrier too)."""
        self.reply: bytes | None = None
        self.listener: Callable[[], None] | None = None
        self.barrier = barrier or blocked
        self.blocked = blocked
        self.cancelled = False  # the client went away: nobody will read the reply

    def cancel(self) -> None:
        self.cancelled = True

    def resolve(self, reply: bytes) -> None:
        if self.reply is None:
            self.reply = reply
            if self.listener is not None:
                self.listener()


# what a handler answers: the reply, a client to park (blocking pop), or a store's reply
# still on its way
HandlerReply = bytes | Blocked | Pending


class CommandStats:
    """One command's line of INFO commandstats. Fields of a compiled class: a count goes up
    by a plain add (the list it replaced took a generic one per count, per command)."""

    __slots__ = ("calls", "usec", "failed", "rejected")

    def __init__(self) -> None:
        self.calls = 0
        self.usec = 0
        self.failed = 0  # ran and replied an error
        self.rejected = 0  # never ran (arity, ACL, MULTI, ...)

    def reset(self) -> None:
        self.calls = self.usec = self.failed = self.rejected = 0


@dataclass(eq=False)
class Session:
    id: int
    addr: str = ""
    laddr: str = ""
    proto: int = 2
    name: bytes = b""
    lib_name: bytes = b""
    lib_ver: bytes = b""
    authenticated: bool = True
    user: User = field(default_factory=_internal_user)
    restricted: bool = False  # its user may not run everything: check each command
    created_at: float = field(default_factory=time.monotonic)
    last_command_at: float = field(default_factory=time.monotonic)
    last_command: str = "NULL"
    close_after_reply: bool = False  # QUIT: send the reply, then close
    closer: Callable[[], None] | None = None  # set by the server: close this connection
    send: Callable[[bytes], None] = lambda data: None  # set by the server: out-of-band data
    fd: int = -1  # the connection's socket descriptor, set by the server
    # set by the server: (request bytes received and not yet run, reply bytes not yet sent,
    # whether the client is parked in a blocking pop)
    io: Callable[[], tuple[int, int, bool]] = lambda: (0, 0, False)
    channels: set[bytes] = field(default_factory=set)  # pub/sub subscriptions
    patterns: set[bytes] = field(default_factory=set)
    db: int = 0  # the selected database
    multi: list[tuple["CommandSpec", list[bytes]]] | None = None  # (spec, argv) queued in MULTI
    multi_failed: bool = False  # a command was refused while queuing: EXEC aborts
    # (db, queue) -> (creation serial, version) when WATCH ran, None for a missing queue
    watched: dict[tuple[int, bytes], tuple[int, int] | None] = field(default_factory=dict)

    def info_line(self, now: float) -> str:
        """One line of CLIENT LIST, in Valkey's field order."""
        qbuf, omem, blocked = self.io()
        multi_mem = sum(len(arg) for _, argv in self.multi for arg in argv) \
            if self.multi is not None else 0
        flags = "".join(flag for flag, on in (
            ("b", blocked), ("P", self.channels or self.patterns),
            ("x", self.multi is not None)) if on) or "N"
        return (f"id={self.id} addr={self.addr} laddr={self.laddr} fd={self.fd} "
                f"name={self.name.decode('utf-8', 'replace')} "
                f"age={int(now - self.created_at)} idle={int(now - self.last_command_at)} "
                f"flags={flags} db={self.db} "
                f"sub={len(self.channels)} psub={len(self.patterns)} ssub=0 "
                f"multi={-1 if self.multi is None else len(self.multi)} "
                f"watch={len(self.watched)} qbuf={qbuf} qbuf-free=0 "
                f"argv-mem=0 multi-mem={multi_mem} rbs=0 rbp=0 obl=0 oll={1 if omem else 0} "
                f"omem={omem} tot-mem={qbuf + omem + multi_mem} "
                f"events={'rw' if omem else 'r'} cmd={self.last_command} "
                f"user={self.user.name.decode('utf-8', 'replace')} "
                f"redir=-1 resp={self.proto} "
                f"lib-name={self.lib_name.decode('utf-8', 'replace')} "
                f"lib-ver={self.lib_ver.decode('utf-8', 'replace')}")


def wall_clock_ms() -> int:
    return time_ns() // 1_000_000  # (compiled, time.time_ns is a getattr at each call)


class Aof(Protocol):
    """What commands see of the append-only file (valqd.persistence.aof.AppendOnlyFile)."""

    rewrite_scheduled: bool
    write_error: str | None

    @property
    def rewriting(self) -> bool: ...

    def start_rewrite(self, snapshot: Callable[[], Iterable[Effect]]) -> bool: ...

    def rewrite_now(self, snapshot: Callable[[], Iterable[Effect]]) -> None: ...

    def info_fields(self) -> list[str]: ...


# (id, unix time, microseconds, arguments as shown, client address, client name)
SlowLogEntry = tuple[int, int, int, list[bytes], bytes, bytes]


# The next two describe classes of modules that import this one (observe, pubsub): as
# Protocols, a compiled ServerState needs neither class to exist when it is defined.
class SlowLogBook(Protocol):
    """The slow log (valqd.commands.observe.SlowLog)."""

    entries: collections.deque[SlowLogEntry]

    def record(self, session: Session, argv: list[bytes], duration_us: int) -> None: ...

    def resize(self, max_len: int) -> None: ...


class Subscriptions(Protocol):
    """Every connection's pub/sub subscriptions (valqd.commands.pubsub.PubSub)."""

    channels: dict[bytes, set[Session]]
    patterns: dict[bytes, set[Session]]
    on_change: Callable[[], None] | None

    def publish(self, channel: bytes, payload: bytes) -> None: ...

    def subscribe(self, session: Session, names: list[bytes], pattern: bool) -> bytes: ...

    def unsubscribe(self, session: Session, names: list[bytes], pattern: bool) -> bytes: ...

    def drop(self, session: Session) -> None: ...


class LoadProgress(Protocol):
    """How far the AOF has loaded (valqd.persistence.loader.LoadResult)."""

    file_size: int
    loaded_size: int


@dataclass(eq=False)
class ServerState:
    engine: Engine  # the selected database's: set before each command
    config: Config
    commands: dict[str, "CommandSpec"]  # name -> spec, see table.py
    clock: Callable[[], int] = wall_clock_ms
    now: int = 0  # Unix ms, read once per command by the dispatcher
    started_at: float = field(default_factory=time.time)
    pid: int = field(default_factory=os.getpid)
    clients: dict[int, Session] = field(default_factory=dict)
    total_connections: int = 0
    total_commands: int = 0
    rejected_connections: int = 0
    command_stats: dict[str, CommandStats] = field(default_factory=dict)  # name -> its stats
    error_stats: dict[str, int] = field(default_factory=dict)  # error code -> replies
    total_error_replies: int = 0
    request_shutdown: Callable[[], None] = lambda: None
    bound_port: int = 0
    event_loop: str = "asyncio"  # the running loop's package, asyncio or uvloop (INFO)
    blocked_consumers: Callable[[bytes], int] = lambda name: 0
    blocked_clients: Callable[[], int] = lambda: 0
    pubsub: Subscriptions = field(init=False)
    slowlog: SlowLogBook = field(init=False)
    slowlog_threshold_us: int = 10000  # negative: log nothing
    maxmemory: int = 0  # bytes; 0: no limit
    max_message_size: int = 1 << 20  # bytes of a message body
    baseline_memory: int = 0  # resident bytes of the process before any data
    aof: Aof | None = None  # when appendonly is on
    loading: bool = False  # the AOF is being replayed: only `loading` commands are served
    loading_progress: LoadProgress | None = None  # while loading
    loading_started_at: int = 0  # Unix seconds
    databases: Databases = field(default_factory=Databases)  # `engine` is one of them
    # set by the dispatcher: run one command (stats, slow log, errors), for EXEC
    call: Callable[[Session, "CommandSpec", list[bytes]], HandlerReply] = \
        lambda session, spec, argv: b""
    in_exec: bool = False
    acl: Acl = field(init=False)
    # set by the server: whole-file reads and atomic replacement (ACL LOAD and SAVE)
    read_file: Callable[[str], bytes] = lambda path: b""
    write_file: Callable[[str, bytes], None] = lambda path, data: None

    def __post_init__(self) -> None:
        from .observe import SlowLog  # (observe and pubsub import this module)
        from .pubsub import PubSub
        self.slowlog = SlowLog()
        self.pubsub = PubSub(self.databases)
        specs = {}
        for spec in self.commands.values():
            specs[spec.name] = spec
            specs.update(spec.subcommands)
        self.acl = Acl(specs, self.config.int("acllog-max-len"))
        self.acl.set_default_password(self.config.str("requirepass"))

    def used_memory(self) -> int:
        """What maxmemory is compared with: the process's baseline plus the queues' data,
        counted as messages are stored and removed (no walk over the messages)."""
        return self.baseline_memory + self.engine.dataset_bytes()

    def count_error(self, reply: bytes) -> None:
        """INFO errorstats: one more error reply with the code `reply` starts with (at most
        MAX_ERROR_CODES different codes are kept, as in Valkey)."""
        self.total_error_replies += 1
        end = reply.find(b" ")
        code = reply[1:end if end > 0 else len(reply) - 2].decode("latin-1")
        if code in self.error_stats:
            self.error_stats[code] += 1
        elif len(self.error_stats) < MAX_ERROR_CODES:
            self.error_stats[code] = 1

    def write_refusal(self) -> bytes | None:
        """The error a command that adds data gets now (MISCONF, OOM), or None."""
        if self.aof is not None and self.aof.write_error is not None:
            return encode.error("MISCONF", "Errors writing to the AOF file: "
                                f"{self.aof.write_error}")
        if self.maxmemory and self.used_memory() > self.maxmemory:
            return OOM
        return None


MAX_ERROR_CODES = 128  # Valkey's ERROR_STATS_NUMBER
OOM = encode.error("OOM", "command not allowed when used memory > 'maxmemory'.")
