"""Connection, introspection and keyspace commands, answered as Valkey answers them.

Queues are the keys of valqd's numbered databases: SELECT, DEL, EXISTS, TYPE, KEYS, SCAN,
DBSIZE, FLUSHDB, FLUSHALL, SWAPDB and MOVE work on them as they did when queues were keys
inside Valkey.
"""

import os
import resource
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable

from .. import BUILD, __version__
from ..errors import CommandError
from ..resp import encode
from .acl import authenticate, bind
from .args import NOT_AN_INTEGER, U64_MAX, Args, parse_int
from .context import ServerState, Session
from .glob import glob_match
from .multi import discard_transaction
from .observe import rss_bytes

if TYPE_CHECKING:  # the table imports this module
    from .table import CommandSpec

VALKEY_COMPAT_VERSION = "7.2.4"  # the Valkey whose replies valqd follows, for client checks
QUEUE_TYPE = b"valq-type"
_NAME_FORBIDDEN = set(range(0, 33)) | set(range(127, 256))  # Valkey: only '!' to '~'
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


# -- connection --------------------------------------------------------------------------

def ping(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """PING [message] -> +PONG, or the message as a bulk string; a subscribed RESP2
    connection gets ["pong", message]."""
    if len(argv) > 2:
        raise CommandError("wrong number of arguments for 'ping' command")
    if session.proto == 2 and (session.channels or session.patterns):
        return encode.array([encode.bulk(b"pong"),
                             encode.bulk(argv[1] if len(argv) == 2 else b"")])
    return encode.PONG if len(argv) == 1 else encode.bulk(argv[1])


def echo(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ECHO message -> the message."""
    return encode.bulk(argv[1])


def auth(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """AUTH [username] password -> +OK; the connection runs as that user from now on.
    WRONGPASS for no such user, a user that is off or a wrong password; with no password
    set for the default user, the one-argument form gets Valkey's error."""
    if len(argv) > 3:
        raise CommandError("syntax error")
    if len(argv) == 2 and state.acl.default.nopass:
        raise CommandError("AUTH <password> called without any password configured for the "
                           "default user. Are you sure your configuration is correct?")
    username, password = ([b"default"] + argv[1:])[-2:]
    authenticate(state, session, username, password)
    return encode.OK


def _check_client_name(name: bytes, what: str = "Client names") -> bytes:
    if any(b in _NAME_FORBIDDEN for b in name):
        raise CommandError(f"{what} cannot contain spaces, newlines or special characters.")
    return name


def hello(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """HELLO [protover [AUTH username password] [SETNAME name]] -> map of server facts.
    NOPROTO for a version other than 2 or 3."""
    args = Args(argv, 1)
    proto = session.proto
    if args.remaining():
        proto = args.next_int(message="Protocol version is not an integer or out of range")
        if proto not in (2, 3):
            raise CommandError("unsupported protocol version", "NOPROTO")
    credentials = name = None
    while args.remaining():  # as Valkey: every option is parsed first, then AUTH, then SETNAME
        raw_option = args.next_bytes()
        option = raw_option.upper()
        if option == b"AUTH" and args.remaining() >= 2:
            credentials = (args.next_bytes(), args.next_bytes())
        elif option == b"SETNAME" and args.remaining() >= 1:
            name = args.next_bytes()
        else:
            raise CommandError("Syntax error in HELLO option "
                               f"'{raw_option.decode('utf-8', 'replace')}'")
    if credentials is not None:
        authenticate(state, session, *credentials, via="HELLO")
    if not session.authenticated:  # as Valkey: before the name or the protocol changes
        raise CommandError("HELLO must be called with the client already authenticated, "
                           "otherwise the HELLO <proto> AUTH <user> <pass> option can be used "
                           "to authenticate the client and select the RESP protocol version at "
                           "the same time", "NOAUTH")
    if name is not None:
        session.name = _check_client_name(name)
    session.proto = proto
    # `version` is the Valkey release whose behaviour valqd follows, as INFO's redis_version:
    # clients choose features by it. valqd's own version is INFO's valqd_version.
    return encode.map_([
        encode.bulk(b"server"), encode.bulk(b"valqd"),
        encode.bulk(b"version"), encode.bulk_str(VALKEY_COMPAT_VERSION),
        encode.bulk(b"proto"), encode.integer(proto),
        encode.bulk(b"id"), encode.integer(session.id),
        encode.bulk(b"mode"), encode.bulk(b"standalone"),
        encode.bulk(b"role"), encode.bulk(b"master"),
        encode.bulk(b"modules"), encode.EMPTY_ARRAY,
    ], proto)


def _database(state: ServerState, raw: bytes, message: str = NOT_AN_INTEGER) -> int:
    """A database number: ERR `message` if it is no int, ERR out of range if no database."""
    index = parse_int(raw, message=message)
    if not INT_MIN <= index <= INT_MAX:  # as Valkey's getIntFromObjectOrReply
        raise CommandError(message if message != NOT_AN_INTEGER else "value is out of range, "
                           f"value must between {INT_MIN} and {INT_MAX}")
    if not 0 <= index < len(state.databases):
        raise CommandError("DB index is out of range")
    return index


def select(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """SELECT index -> +OK; the connection's commands act on that database from now on.
    ERR when there is no such database (`databases`)."""
    session.db = _database(state, argv[1])
    state.engine = state.databases[session.db]  # inside EXEC, for the commands after it
    return encode.OK


def quit_(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """QUIT -> +OK, then the server closes the connection."""
    session.close_after_reply = True
    return encode.OK


def reset(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """RESET -> +RESET: back to RESP2 and database 0, no name, no subscriptions, no
    transaction or WATCH, and the default user again (not authenticated when it has a
    password)."""
    discard_transaction(session)
    session.db = 0
    session.proto = 2
    session.name = b""
    state.pubsub.drop(session)
    default = state.acl.default
    bind(session, default)
    session.authenticated = default.nopass and default.enabled
    return encode.simple(b"RESET")


# -- CLIENT ------------------------------------------------------------------------------

def client_id(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CLIENT ID -> this connection's id."""
    return encode.integer(session.id)


def client_setname(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CLIENT SETNAME name -> +OK; an empty name clears it."""
    session.name = _check_client_name(argv[2])
    return encode.OK


def client_getname(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CLIENT GETNAME -> the name, or null."""
    return encode.bulk(session.name) if session.name else encode.null(session.proto)


def client_setinfo(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CLIENT SETINFO LIB-NAME|LIB-VER value -> +OK."""
    attribute = argv[2].upper()
    if attribute not in (b"LIB-NAME", b"LIB-VER"):
        raise CommandError(f"Unrecognized option '{argv[2].decode('utf-8', 'replace')}'")
    value = _check_client_name(argv[3], argv[2].decode("utf-8", "replace"))
    if attribute == b"LIB-NAME":
        session.lib_name = value
    else:
        session.lib_ver = value
    return encode.OK


def client_on_off(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CLIENT NO-EVICT ON|OFF, CLIENT NO-TOUCH ON|OFF -> +OK, changing nothing: valqd
    evicts no clients and keeps no LRU/LFU of queues, so both modes are what it does
    anyway; clients that set them (valkey-py's client_no_evict) work unchanged."""
    if argv[2].upper() not in (b"ON", b"OFF"):
        raise CommandError("syntax error")
    return encode.OK


_CLIENT_TYPES = (b"normal", b"master", b"replica", b"slave", b"pubsub")


def _client_type(raw: bytes) -> bytes:
    """A client type name of CLIENT LIST/KILL TYPE, lower case; every valqd client is normal."""
    if raw.lower() not in _CLIENT_TYPES:
        raise CommandError(f"Unknown client type '{raw.decode('utf-8', 'replace')}'")
    return raw.lower()


def client_list(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CLIENT LIST [TYPE type | ID id [id ...]] -> one line per client (for ID, in the
    order given)."""
    option = argv[2].upper() if len(argv) > 2 else None
    if option is None:
        chosen = list(state.clients.values())
    elif option == b"TYPE" and len(argv) == 4:
        normal = _client_type(argv[3]) == b"normal"
        chosen = list(state.clients.values()) if normal else []
    elif option == b"ID" and len(argv) > 3:
        ids = [parse_int(raw, message="Invalid client ID") for raw in argv[3:]]
        chosen = [state.clients[i] for i in ids if i in state.clients]
    else:
        raise CommandError("syntax error")
    now = time.monotonic()
    lines = [c.info_line(now) + "\n" for c in chosen]
    return encode.verbatim("".join(lines).encode(), session.proto)


def client_info(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CLIENT INFO -> this connection's CLIENT LIST line."""
    return encode.verbatim((session.info_line(time.monotonic()) + "\n").encode(), session.proto)


def client_kill(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CLIENT KILL addr  -> +OK (may kill the caller), or CLIENT KILL [ID id] [TYPE type]
    [ADDR a] [LADDR a] [USER u] [SKIPME yes|no] -> number killed. A caller that kills
    itself gets the reply first."""
    if len(argv) == 3:
        victims = [c for c in state.clients.values() if c.addr == argv[2].decode("latin-1")]
        if not victims:
            raise CommandError("No such client")
        _kill(session, victims)
        return encode.OK
    if len(argv) % 2:  # option value pairs
        raise CommandError("syntax error")
    filters: list[Callable[..., bool]] = []  # of a Session (values bound as defaults)
    skip_me = True
    for i in range(2, len(argv), 2):
        option, raw = argv[i].upper(), argv[i + 1]
        value = raw.decode("latin-1")
        if option == b"ID":
            client = parse_int(raw, 1, message="client-id should be greater than 0")
            filters.append(lambda c, client=client: c.id == client)
        elif option == b"TYPE":
            normal = _client_type(raw) == b"normal"
            filters.append(lambda c, normal=normal: normal)
        elif option == b"ADDR":
            filters.append(lambda c, value=value: c.addr == value)
        elif option == b"LADDR":
            filters.append(lambda c, value=value: c.laddr == value)
        elif option == b"USER":
            if state.acl.get(raw) is None:
                raise CommandError(f"No such user '{raw.decode('utf-8', 'replace')}'")
            filters.append(lambda c, raw=raw: c.user.name == raw)
        elif option == b"SKIPME" and value.lower() in ("yes", "no"):
            skip_me = value.lower() == "yes"
        else:
            raise CommandError("syntax error")
    victims = [c for c in state.clients.values()
               if all(f(c) for f in filters) and not (skip_me and c is session)]
    _kill(session, victims)
    return encode.integer(len(victims))


def _kill(session: Session, victims: list[Session]) -> None:
    for victim in victims:
        if victim is session:  # reply first, as Valkey does
            session.close_after_reply = True
        elif victim.closer is not None:
            victim.closer()


# -- COMMAND ---------------------------------------------------------------------------

def _all_specs(state: ServerState) -> list["CommandSpec"]:
    return list(state.commands.values())


def _lookup(state: ServerState, name: bytes) -> "CommandSpec | None":
    spec = state.commands.get(name.decode("latin-1").lower())
    if spec is None and b"|" in name:
        container, _, sub = name.decode("latin-1").lower().partition("|")
        parent = state.commands.get(container)
        spec = parent.subcommands.get(f"{container}|{sub}") if parent else None
    return spec


def command_(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """COMMAND -> COMMAND INFO of every command."""
    return encode.array([spec.info_reply(session.proto) for spec in _all_specs(state)])


def command_count(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """COMMAND COUNT -> number of top-level commands."""
    return encode.integer(len(state.commands))


def command_list(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN pattern] -> command
    names, subcommands as `valq|push`; valqd loads no modules, so MODULE lists none, and an
    unknown category none, as in Valkey."""
    args = Args(argv, 2)
    keep: Callable[["CommandSpec"], bool] = lambda spec: True
    if args.remaining():
        if args.next_keyword() != "FILTERBY":
            raise CommandError("syntax error")
        kind, value = args.next_keyword(), args.next_bytes()
        args.finish()
        if kind == "PATTERN":
            keep = lambda spec: glob_match(value, spec.name.encode(), True)
        elif kind == "ACLCAT":
            category = value.decode("latin-1").lower()
            keep = lambda spec: category in spec.categories
        elif kind == "MODULE":
            keep = lambda spec: False
        else:
            raise CommandError("syntax error")
    specs = []
    for spec in _all_specs(state):
        specs.append(spec)
        specs.extend(spec.subcommands.values())
    return encode.bulk_array([spec.name.encode() for spec in specs if keep(spec)])


def command_info(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """COMMAND INFO [name ...] -> per name its description array, or null if unknown."""
    if len(argv) == 2:
        return command_(state, session, argv)
    replies = []
    for name in argv[2:]:
        spec = _lookup(state, name)
        replies.append(spec.info_reply(session.proto) if spec else encode.null(session.proto))
    return encode.array(replies)


def command_docs(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """COMMAND DOCS [name ...] -> map of name to its documentation (unknown names skipped)."""
    specs = _all_specs(state) if len(argv) == 2 else [
        s for s in (_lookup(state, name) for name in argv[2:]) if s is not None]
    pairs: list[bytes] = []
    for spec in specs:
        pairs += (encode.bulk_str(spec.name), spec.docs_reply(session.proto))
    return encode.map_(pairs, session.proto)


# -- INFO ------------------------------------------------------------------------------

def _human(n: int) -> str:
    size: float = n  # (compiled, an int variable given a float raised TypeError)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{size:.2f}{unit}"
        size /= 1024
    return str(size)



def _escape_name(name: bytes) -> str:
    return "".join(chr(b) if 33 <= b < 127 and b not in b",=" else f"\\x{b:02x}" for b in name)


def _server_info(state: ServerState) -> list[str]:
    uptime = int(time.time() - state.started_at)
    system = os.uname()
    return [f"redis_version:{VALKEY_COMPAT_VERSION}", f"valqd_version:{__version__}",
            f"valqd_build:{BUILD.name}", f"event_loop:{state.event_loop}",
            "redis_mode:standalone", f"os:{system.sysname} {system.release} {system.machine}",
            "arch_bits:64", f"python_version:{sys.version.split()[0]}",
            f"process_id:{state.pid}", f"tcp_port:{state.bound_port}",
            f"uptime_in_seconds:{uptime}", f"uptime_in_days:{uptime // 86400}"]


def _clients_info(state: ServerState) -> list[str]:
    pubsub = sum(1 for c in state.clients.values() if c.channels or c.patterns)
    return [f"connected_clients:{len(state.clients)}",
            f"blocked_clients:{state.blocked_clients()}", f"pubsub_clients:{pubsub}",
            f"maxclients:{state.config['maxclients']}"]


def _memory_info(state: ServerState) -> list[str]:
    rss, used = rss_bytes(), state.used_memory()
    return [f"used_memory:{used}", f"used_memory_human:{_human(used)}",
            f"used_memory_rss:{rss}", f"used_memory_rss_human:{_human(rss)}",
            f"used_memory_dataset:{state.engine.dataset_bytes()}",
            f"maxmemory:{state.maxmemory}", f"maxmemory_human:{_human(state.maxmemory)}",
            "maxmemory_policy:noeviction", "mem_allocator:pymalloc"]


def _cpu_info(state: ServerState) -> list[str]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return [f"used_cpu_sys:{usage.ru_stime:.6f}", f"used_cpu_user:{usage.ru_utime:.6f}"]


def _messages_info(state: ServerState) -> list[str]:
    """Totals over every queue, kept by the engine: O(1) however many queues there are."""
    totals = state.engine.totals  # shared by every database's engine
    queues = sum(len(engine.queues) for engine in state.databases.engines)
    return messages_info_lines(queues, totals.ready, totals.inflight, totals.delayed,
                               totals.dead)


def _queues_info(state: ServerState) -> list[str]:
    """A line per queue of the selected database, in name order: only when the `queues`
    section is asked for by name (or `everything`), as it grows with the number of queues."""
    return [queue_info_line(i, name, len(q.ready), len(q.leases), len(q.delayed), len(q.dead))
            for i, (name, q) in enumerate(state.engine.queues.items())]


def queue_info_line(i: int, name: bytes, ready: int, inflight: int, delayed: int,
                    dlq: int) -> str:
    """The `queues` section's line of one queue (`msgs`: ready and in flight)."""
    return (f"queue{i}:name={_escape_name(name)},msgs={ready + inflight},ready={ready},"
            f"inflight={inflight},delayed={delayed},dlq={dlq}")


def messages_info_lines(queues: int, ready: int, inflight: int, delayed: int,
                        dlq: int) -> list[str]:
    """The `messages` section: totals over every queue."""
    return [f"queues:{queues}", f"messages:{ready + inflight + delayed + dlq}",
            f"messages_ready:{ready}", f"messages_inflight:{inflight}",
            f"messages_delayed:{delayed}", f"messages_dlq:{dlq}"]


def keyspace_info_line(db: int, queues: int) -> str:
    return f"db{db}:keys={queues},expires=0,avg_ttl=0"


def _loading_info(state: ServerState) -> list[str]:
    """Valkey's loading fields; the progress ones only while the AOF loads."""
    progress = state.loading_progress
    if not state.loading or progress is None:
        return ["loading:0", "async_loading:0"]
    total, done = progress.file_size, progress.loaded_size
    return ["loading:1", "async_loading:0", f"loading_start_time:{state.loading_started_at}",
            f"loading_total_bytes:{total}", f"loading_loaded_bytes:{done}",
            f"loading_loaded_perc:{100 * done / total if total else 0:.2f}"]


# INFO's sections, in order: each built only when asked for
_INFO_SECTIONS: dict[str, Callable[[ServerState], list[str]]] = {
    "server": _server_info,
    "clients": _clients_info,
    "memory": _memory_info,
    "persistence": lambda state: [*_loading_info(state), *(
        state.aof.info_fields() if state.aof is not None else ["aof_enabled:0"])],
    "stats": lambda state: [f"total_connections_received:{state.total_connections}",
                            f"total_commands_processed:{state.total_commands}",
                            f"rejected_connections:{state.rejected_connections}",
                            f"total_error_replies:{state.total_error_replies}"],
    "replication": lambda state: ["role:master", "connected_slaves:0"],
    "cpu": _cpu_info,
    "commandstats": lambda state: [
        f"cmdstat_{name}:calls={s.calls},usec={s.usec},"
        f"usec_per_call={s.usec / s.calls if s.calls else 0:.2f},"
        f"rejected_calls={s.rejected},failed_calls={s.failed}"
        for name, s in sorted(state.command_stats.items()) if s.calls or s.rejected],
    "errorstats": lambda state: [f"errorstat_{code}:count={count}"
                                 for code, count in sorted(state.error_stats.items())],
    "messages": _messages_info,
    "keyspace": lambda state: [keyspace_info_line(index, len(engine.queues))
                               for index, engine in enumerate(state.databases.engines)
                               if engine.queues],
    "store": lambda state: ["store:embedded"],  # a store's INFO tells more (valqd.store)
    "queues": _queues_info,
}

# Every section but `queues` costs the same with 10 queues or 100,000.
_DEFAULT_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication",
                     "cpu", "messages", "errorstats", "keyspace")
_ALL_SECTIONS = tuple(name for name in _INFO_SECTIONS if name != "queues")


def info_sections(argv: list[bytes],
                  default: tuple[str, ...] = _DEFAULT_SECTIONS) -> list[str]:
    """The sections `INFO [section ...]` asks for, in order; `default` is what INFO alone
    and INFO default show (a store may show fewer)."""
    sections = _INFO_SECTIONS
    wanted = [a.decode("latin-1").lower() for a in argv[1:]] or ["default"]
    chosen: list[str] = []
    for word in wanted:
        if word == "default":
            chosen += default
        elif word == "all":
            chosen += _ALL_SECTIONS if default is _DEFAULT_SECTIONS else \
                [*default, "commandstats"]
        elif word == "everything":
            chosen += sections
        elif word in sections:
            chosen.append(word)
    return list(dict.fromkeys(chosen))


def render_info(state: ServerState, session: Session, names: list[str],
                given: Mapping[str, list[str]] | None = None) -> bytes:
    """INFO's reply: the sections `names`, their lines from `given` (a store's) or made
    here."""
    blocks = []
    for name in names:
        title = "CPU" if name == "cpu" else name.capitalize()
        lines = given[name] if given is not None and name in given else \
            _INFO_SECTIONS[name](state)
        blocks.append("".join(f"{line}\r\n" for line in [f"# {title}", *lines]))
    return encode.verbatim("\r\n".join(blocks).encode(), session.proto)


def info(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """INFO [section ...] -> text, `# Section` headers and `field:value` lines. Sections:
    server, clients, memory, persistence, stats, replication, cpu, commandstats, errorstats,
    messages, keyspace, queues; `default` (without commandstats and queues), `all` (without queues),
    `everything`."""
    return render_info(state, session, info_sections(argv))


# -- CONFIG ----------------------------------------------------------------------------

def config_get(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CONFIG GET pattern [pattern ...] -> map of matching settings to their values."""
    found: dict[str, str] = {}
    for pattern in argv[2:]:
        for name in state.config.values:
            if glob_match(pattern.lower(), name.encode(), True):
                found[name] = state.config.render(name)
    pairs: list[bytes] = []
    for name, value in found.items():
        pairs += (encode.bulk_str(name), encode.bulk_str(value))
    return encode.map_(pairs, session.proto)


def config_set(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CONFIG SET name value [name value ...] -> +OK; nothing changes if any pair is bad."""
    if len(argv) % 2:
        raise CommandError("wrong number of arguments for 'config|set' command")
    pairs = [(argv[i].decode("latin-1"), argv[i + 1].decode("utf-8", "replace"))
             for i in range(2, len(argv), 2)]
    state.config.set_many(pairs)
    return encode.OK


def config_rewrite(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CONFIG REWRITE -> +OK once the config file the server started with holds the current
    settings (comments and other lines kept). ERR when it started without one, or the file
    cannot be written."""
    state.config.rewrite()
    return encode.OK


def config_resetstat(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """CONFIG RESETSTAT -> +OK; command statistics and counters start again from zero."""
    for stats in state.command_stats.values():
        stats.reset()
    state.error_stats.clear()
    state.total_error_replies = 0
    state.total_commands = 0
    state.total_connections = 0
    state.rejected_connections = 0
    return encode.OK


# -- keyspace --------------------------------------------------------------------------

def dbsize(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """DBSIZE -> number of queues."""
    return encode.integer(len(state.engine.queues))


def keys(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """KEYS pattern -> queue names matching the glob pattern."""
    pattern = argv[1]
    names = state.engine.queues  # in name order already
    if pattern == b"*":
        return encode.bulk_array(list(names))
    return encode.bulk_array([n for n in names if glob_match(pattern, n)])


_OTHER_SCANS = {"NOVALUES": "HSCAN", "NOSCORES": "ZSCAN"}


def scan_options(argv: list[bytes]) -> tuple[int, bytes | None, int, bytes | None]:
    """SCAN's arguments, checked: (cursor, MATCH pattern or None, COUNT, TYPE or None)."""
    cursor = parse_int(argv[1], 0, U64_MAX, "invalid cursor")
    args = Args(argv, 2)
    pattern: bytes | None = None
    kind: bytes | None = None
    count = 10
    while args.remaining():
        option = args.next_keyword()
        if option == "MATCH":
            pattern = args.next_bytes()
        elif option == "COUNT":
            count = args.next_int()
            if count < 1:
                raise CommandError("syntax error")
        elif option == "TYPE":
            kind = args.next_bytes()
        elif option in _OTHER_SCANS:  # options of HSCAN and ZSCAN, as Valkey names them
            raise CommandError(f"{option} option can only be used in {_OTHER_SCANS[option]}")
        else:
            raise CommandError("syntax error")
    return cursor, pattern, count, kind


def scan(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """SCAN cursor [MATCH pattern] [COUNT n] [TYPE type] -> [next cursor, [names]].
    The cursor is the creation serial of the last queue returned: a queue that exists for the
    whole scan is returned exactly once, and a call costs O(log n + COUNT)."""
    cursor, pattern, count, kind = scan_options(argv)
    batch, next_cursor = state.engine.scan(cursor, count)
    names = [q.name for q in batch
             if (pattern is None or glob_match(pattern, q.name))
             and (kind is None or kind.lower() == QUEUE_TYPE)]
    return encode.array([encode.bulk_int(next_cursor), encode.bulk_array(names)])


def type_(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """TYPE key -> valq-type for a queue, none otherwise."""
    return encode.simple(QUEUE_TYPE if argv[1] in state.engine.queues else b"none")


def exists(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """EXISTS key [key ...] -> how many of the names are queues (repeats count again)."""
    return encode.integer(sum(1 for name in argv[1:] if name in state.engine.queues))


def del_(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """DEL key [key ...] -> how many queues were deleted, with all their messages."""
    deleted = 0
    for name in argv[1:]:
        if name in state.engine.queues:
            state.engine.delete_queue(name)
            deleted += 1
    return encode.integer(deleted)


def _flush_type(argv: list[bytes]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError("syntax error")


def flushall(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """FLUSHALL [ASYNC|SYNC] -> +OK; every queue of every database is dropped."""
    _flush_type(argv)
    state.databases.flush_all()
    return encode.OK


def flushdb(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """FLUSHDB [ASYNC|SYNC] -> +OK; every queue of the selected database is dropped."""
    _flush_type(argv)
    if state.engine.queues:
        state.engine.flush()
    return encode.OK


def swapdb(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """SWAPDB index1 index2 -> +OK; the two databases exchange their queues (clients stay
    on their numbers). ERR for an index that is no integer or no database."""
    first = _database(state, argv[1], "invalid first DB index")
    second = _database(state, argv[2], "invalid second DB index")
    state.databases.swap(first, second)
    return encode.OK


def move(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """MOVE queue db -> 1 if the queue moved to database db with all its messages, 0 if it
    is not in the selected database or db has a queue of that name. ERR for the same
    database or no such database."""
    target = _database(state, argv[2])
    if target == session.db:
        raise CommandError("source and destination objects are the same")
    return encode.integer(int(state.databases.move(argv[1], session.db, target)))


def time_(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """TIME -> [unix seconds, microseconds]."""
    now_us = time.time_ns() // 1000
    return encode.array([encode.bulk_int(now_us // 1_000_000),
                         encode.bulk_int(now_us % 1_000_000)])


def shutdown(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """SHUTDOWN [NOSAVE|SAVE] [NOW] [FORCE] -> no reply: the server exits cleanly."""
    words = {option.upper() for option in argv[1:]}
    if not words <= {b"NOSAVE", b"SAVE", b"NOW", b"FORCE", b"ABORT"} or \
            (b"ABORT" in words and len(words) > 1) or {b"NOSAVE", b"SAVE"} <= words:
        raise CommandError("syntax error")
    if b"ABORT" in words:
        raise CommandError("No shutdown in progress.")
    state.request_shutdown()
    session.close_after_reply = True
    return b""
