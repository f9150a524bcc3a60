"""The command table: every command valqd serves, described once.

Each entry gives the name, Valkey's signed arity (counting the command and subcommand
names; negative means "at least"), flags, a one-line summary and the argument docs. The
same entries drive dispatch and arity checks, `COMMAND INFO/DOCS/LIST/COUNT`, `VALQ HELP`
and the command reference in README.md (`python -m valqd.commands.table` prints it).
"""

from dataclasses import dataclass, field
from typing import Callable

from ..resp import encode
from . import acl, admin, multi, observe, persist, pubsub, valq
from .context import HandlerReply, ServerState, Session

# A command's function: its reply, a Blocked when a blocking pop has to wait, or a Pending
# when a store's reply is on its way
Handler = Callable[[ServerState, Session, list[bytes]], HandlerReply]


@dataclass(frozen=True)
class Arg:
    name: str
    type: str = "string"  # string | integer | key | pattern | pure-token | oneof | block
    token: str | None = None
    optional: bool = False
    multiple: bool = False
    args: tuple["Arg", ...] = ()
    key_spec: int = 0  # for a key: the index of its command's key spec

    def syntax(self, placeholders: bool = False) -> str:
        """The argument as the reference shows it; with `placeholders`, values as `<name>`
        (the style of Valkey's HELP replies)."""
        if self.type == "oneof":
            text = " | ".join(a.syntax(placeholders) for a in self.args)
            if self.token:
                text = f"{self.token} {text}"
        elif self.type == "block":
            text = " ".join(([self.token] if self.token else []) +
                            [a.syntax(placeholders) for a in self.args])
        elif self.type == "pure-token":
            text = self.token or self.name
        else:
            value = f"<{self.name}>" if placeholders else self.name
            text = f"{self.token} {value}" if self.token else value
        if self.multiple:
            text = f"{text} [{text} ...]"
        return f"[{text}]" if self.optional else text

    def docs_reply(self, proto: int) -> bytes:
        pairs = [encode.bulk(b"name"), encode.bulk_str(self.name),
                 encode.bulk(b"type"), encode.bulk_str(self.type)]
        if self.type not in ("oneof", "block"):
            pairs += (encode.bulk(b"display_text"), encode.bulk_str(self.name))
        if self.type == "key":
            pairs += (encode.bulk(b"key_spec_index"), encode.integer(self.key_spec))
        if self.token:
            pairs += (encode.bulk(b"token"), encode.bulk_str(self.token))
        flags = [f for f, on in (("optional", self.optional), ("multiple", self.multiple)) if on]
        if flags:
            pairs += (encode.bulk(b"flags"),
                      encode.set_([encode.simple(f.encode()) for f in flags], proto))
        if self.args:
            pairs += (encode.bulk(b"arguments"),
                      encode.array([a.docs_reply(proto) for a in self.args]))
        return encode.map_(pairs, proto)


# Valkey's ACL categories, in Valkey's order (ACL CAT, COMMAND INFO), then valqd's own
CATEGORIES = ("keyspace", "read", "write", "set", "sortedset", "list", "hash", "string",
              "bitmap", "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow",
              "blocking", "dangerous", "connection", "transaction", "scripting", "valq")
# as Valkey derives categories from flags: write -> @write, admin -> @admin @dangerous, ...
_IMPLIED = {"write": ("write",), "readonly": ("read",), "admin": ("admin", "dangerous"),
            "pubsub": ("pubsub",), "fast": ("fast",), "blocking": ("blocking",)}
# Valkey's key-spec flags that need each ACL access (%R~ / %W~ patterns)
READ_ACCESS, WRITE_ACCESS = 1, 2
_WRITE_FLAGS = frozenset(("insert", "update", "delete"))


@dataclass
class KeySpec:
    """Where a command names queues, as a Valkey key spec says it (COMMAND INFO shows it).

    The keys begin at argv[index] or, with `keyword`, just after each occurrence of that
    word at or after argv[index]; then one key, every argument to the end (`lastkey=-1`),
    or with `keynum` argv[begin] counts the keys that follow it. `flags` are Valkey's (RO,
    RW, OW, RM, access, insert, update, delete): `access` needs read permission (`%R~`),
    insert/update/delete need write permission (`%W~`), as Valkey's ACL checks them."""

    flags: tuple[str, ...]
    index: int
    keyword: str = ""
    lastkey: int = 0
    keynum: bool = False

    def __post_init__(self) -> None:
        self.access = (READ_ACCESS if "access" in self.flags else 0) | \
            (WRITE_ACCESS if _WRITE_FLAGS.intersection(self.flags) else 0)
        self.simple = not self.keyword and not self.keynum
        self.single = self.simple and self.lastkey == 0  # one key, at argv[index]

    def find(self, argv: list[bytes]) -> list[bytes]:
        """The keys this spec names in argv (a superset when a keyword repeats: the ACL
        check sees every candidate the handler could take)."""
        if self.keyword:
            word = self.keyword.encode()
            return [argv[i + 1] for i in range(self.index, len(argv) - 1)
                    if argv[i].upper() == word]
        begin = self.index
        if begin >= len(argv):
            return []
        if self.keynum:
            count = argv[begin]
            if not count.isdigit():
                return []  # the handler rejects it before touching a queue
            return argv[begin + 1:begin + 1 + int(count)]
        return argv[begin:] if self.lastkey == -1 else [argv[begin]]

    def info_reply(self, proto: int) -> bytes:
        if self.keyword:
            begin = [encode.bulk(b"keyword"), encode.bulk_str(self.keyword),
                     encode.bulk(b"startfrom"), encode.integer(self.index)]
        else:
            begin = [encode.bulk(b"index"), encode.integer(self.index)]
        if self.keynum:
            find = (b"keynum", [encode.bulk(b"keynumidx"), encode.integer(0),
                                encode.bulk(b"firstkey"), encode.integer(1),
                                encode.bulk(b"keystep"), encode.integer(1)])
        else:
            find = (b"range", [encode.bulk(b"lastkey"), encode.integer(self.lastkey),
                               encode.bulk(b"keystep"), encode.integer(1),
                               encode.bulk(b"limit"), encode.integer(0)])
        return encode.map_([
            encode.bulk(b"flags"), encode.set_([encode.simple(f.encode())
                                                for f in self.flags], proto),
            encode.bulk(b"begin_search"), encode.map_([
                encode.bulk(b"type"), encode.bulk(b"keyword" if self.keyword else b"index"),
                encode.bulk(b"spec"), encode.map_(begin, proto)], proto),
            encode.bulk(b"find_keys"), encode.map_([
                encode.bulk(b"type"), encode.bulk(find[0]),
                encode.bulk(b"spec"), encode.map_(find[1], proto)], proto)], proto)


@dataclass
class CommandSpec:
    name: str  # lower case; subcommands as "container|sub"
    arity: int
    flags: tuple[str, ...]
    summary: str
    group: str
    handler: Handler | None = None
    args: tuple[Arg, ...] = ()
    complexity: str = "O(1)"
    since: str = "1.0.0"
    key_specs: tuple[KeySpec, ...] = ()  # which arguments are queue names
    acl: tuple[str, ...] = ()  # ACL categories beyond those its flags imply
    subcommands: dict[str, "CommandSpec"] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # read on every command: plain attributes rather than a search of `flags`
        self.denyoom = "denyoom" in self.flags
        self.no_auth = "no-auth" in self.flags
        self.loading_ok = "loading" in self.flags  # served while the AOF loads
        self.no_multi = "no_multi" in self.flags  # refused while a transaction is queued
        # arity n > 0: exactly n words, command name included; -n: at least n
        self.fewest_args = abs(self.arity)
        self.most_args = self.arity if self.arity > 0 else 2**62
        self.add_categories(())

    def add_categories(self, declared: tuple[str, ...]) -> None:
        """Its ACL categories: those declared (here or by its container) and those its
        flags imply, in Valkey's order."""
        self.acl = (*declared, *self.acl)
        implied = {"fast" if "fast" in self.flags else "slow", *self.acl}
        for flag in self.flags:
            implied.update(_IMPLIED.get(flag, ()))
        unknown = implied - set(CATEGORIES)
        if unknown:
            raise ValueError(f"{self.name}: unknown ACL category {sorted(unknown)}")
        self.categories = tuple(c for c in CATEGORIES if c in implied)

    def legacy_key_range(self) -> tuple[int, int, int]:
        """COMMAND INFO's first key, last key and step, from the first key spec."""
        if not self.key_specs or not self.key_specs[0].simple:
            return 0, 0, 0
        first = self.key_specs[0]
        return first.index, -1 if first.lastkey == -1 else first.index, 1

    def syntax(self) -> str:
        words = self.name.upper().replace("|", " ")
        return " ".join([words, *(a.syntax() for a in self.args)])

    def info_reply(self, proto: int) -> bytes:
        first, last, step = self.legacy_key_range()
        flags = list(self.flags)
        if any(not key_spec.simple for key_spec in self.key_specs):
            flags.append("movablekeys")  # as Valkey marks commands whose keys move
        return encode.array([
            encode.bulk_str(self.name),
            encode.integer(self.arity),
            encode.set_([encode.simple(f.encode()) for f in flags], proto),
            encode.integer(first), encode.integer(last), encode.integer(step),
            encode.set_([encode.simple(b"@" + c.encode()) for c in self.categories], proto),
            encode.set_([], proto),
            encode.array([key_spec.info_reply(proto) for key_spec in self.key_specs]),
            encode.array([sub.info_reply(proto) for sub in self.subcommands.values()]),
        ])

    def docs_reply(self, proto: int) -> bytes:
        pairs = [encode.bulk(b"summary"), encode.bulk_str(self.summary),
                 encode.bulk(b"since"), encode.bulk_str(self.since),
                 encode.bulk(b"group"), encode.bulk_str(self.group),
                 encode.bulk(b"complexity"), encode.bulk_str(self.complexity)]
        if self.args:
            pairs += (encode.bulk(b"arguments"),
                      encode.array([a.docs_reply(proto) for a in self.args]))
        if self.subcommands:
            sub_pairs: list[bytes] = []
            for sub in self.subcommands.values():
                sub_pairs += (encode.bulk_str(sub.name), sub.docs_reply(proto))
            pairs += (encode.bulk(b"subcommands"), encode.map_(sub_pairs, proto))
        return encode.map_(pairs, proto)


def container(name: str, arity: int, summary: str, group: str, subs: list[CommandSpec],
              handler: Handler | None = None, flags: tuple[str, ...] = (),
              acl: tuple[str, ...] = ()) -> CommandSpec:
    """A command made of subcommands; it gets a HELP subcommand (last, as in Valkey's
    replies) unless it brings its own. Its `acl` categories are every subcommand's too."""
    spec = CommandSpec(name, arity, flags, summary, group, handler, acl=acl)
    if not any(sub.name == "help" for sub in subs):
        subs = [*subs, CommandSpec("help", 2, ("loading", "stale"), "Returns helpful text "
                                   "about the different subcommands.", group,
                                   lambda state, session, argv: help_reply(spec))]
    for sub in subs:
        sub.name = f"{name}|{sub.name}"
        sub.add_categories(acl)
        spec.subcommands[sub.name] = sub
    return spec


def help_reply(spec: CommandSpec) -> bytes:
    """`<CONTAINER> HELP`: Valkey's shape (status lines: a header, then per subcommand its
    syntax and its summary indented), from the table."""
    container = spec.name.upper()
    lines = [f"{container} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"]
    if spec.handler is not None:  # the container alone does something (COMMAND)
        lines += ("(no subcommand)", f"    {spec.summary}")
    for sub in spec.subcommands.values():
        if sub.name.endswith("|help"):
            continue
        words = [sub.name.split("|")[1].upper(), *(a.syntax(True) for a in sub.args)]
        lines += (" ".join(words), f"    {sub.summary}")
    lines += ("HELP", "    Print this help.")
    return encode.array([encode.simple(line.encode()) for line in lines])


QUEUE = Arg("queue", "key")
MESSAGE_ID = Arg("id", "integer")
W, R, F, D, A = "write", "readonly", "fast", "denyoom", "admin"
LOG = "O(log N) where N is the number of messages in the queue"


def queue_at(*flags: str) -> tuple[KeySpec, ...]:
    """The key spec of a VALQ subcommand: its queue is argv[2]."""
    return (KeySpec(flags, 2),)


READS = queue_at("RO", "access")
INSERTS = queue_at("RW", "insert")
UPDATES = queue_at("RW", "update")
REMOVES = queue_at("RW", "delete")
TAKES = queue_at("RW", "access", "delete")
DELETES = queue_at("RM", "delete")
MPOP_KEYS = (KeySpec(("RW", "access", "delete"), 2, keynum=True),)
REDRIVE_KEYS = (*UPDATES, KeySpec(("RW", "insert"), 3, keyword="TO"))
BLOCKS = ("blocking",)  # POP and MPOP may block, as BLPOP does
SETTINGS_ARGS = (
    Arg("visibility", "integer", "VISIBILITY", optional=True),
    Arg("maxattempts", "integer", "MAXATTEMPTS", optional=True),
    Arg("retention", "integer", "RETENTION", optional=True),
    Arg("backoff", "oneof", "BACKOFF", optional=True, args=(
        Arg("none", "pure-token", "NONE"),
        Arg("fixed", "block", "FIXED", args=(Arg("seconds", "integer"),)),
        Arg("exponential", "block", "EXPONENTIAL", args=(
            Arg("base", "integer"), Arg("max", "integer"))))),
    Arg("dedupwindow", "integer", "DEDUPWINDOW", optional=True),
    Arg("maxlen", "integer", "MAXLEN", optional=True),
)
POP_OPTIONS = (
    Arg("count", "integer", "COUNT", optional=True),
    Arg("ms", "integer", "BLOCK", optional=True),
    Arg("withmeta", "pure-token", "WITHMETA", optional=True),
    Arg("noack", "pure-token", "NOACK", optional=True),
)
LEASE = Arg("receipt", token="LEASE", optional=True)

VALQ = container("valq", -1, "job queues with leases, redelivery, DLQ and delays", "valq", [
    CommandSpec("create", -3, (W, D), "create new q", "valq", valq.valq_create, (
        QUEUE, Arg("visibility_timeout", "integer", optional=True),
        Arg("max_delivery_attempts", "integer", optional=True),
        Arg("retention_period", "integer", optional=True), *SETTINGS_ARGS), key_specs=INSERTS),
    CommandSpec("delete", 3, (W,), "delete q", "valq", valq.valq_delete, (QUEUE,),
                "O(N) where N is the number of messages in the queue", key_specs=DELETES),
    CommandSpec("update", -4, (W,), "update q", "valq", valq.valq_update, (
        QUEUE, Arg("values", "oneof", args=(
            Arg("positional", "block", args=(
                Arg("visibility_timeout", "integer"), Arg("max_delivery_attempts", "integer"),
                Arg("retention_period", "integer"))),
            Arg("keywords", "block", args=SETTINGS_ARGS)))), key_specs=UPDATES),
    CommandSpec("list", 2, (R,), "list all queues", "valq", valq.valq_list,
                complexity="O(Q log Q) where Q is the number of queues"),
    CommandSpec("info", 3, (R, F), "info about q", "valq", valq.valq_info, (QUEUE,),
                key_specs=READS),
    CommandSpec("purge", -3, (W,), "purge messages in q, dlq or delayed q", "valq",
                valq.valq_purge, (QUEUE, Arg("part", "oneof", optional=True, args=(
                    Arg("main", "pure-token", "MAIN"), Arg("dlq", "pure-token", "DLQ"),
                    Arg("delayed", "pure-token", "DELAYED")))),
                "O(N) where N is the number of messages removed", key_specs=REMOVES),
    CommandSpec("push", -4, (W, D, F), "push message to q, optionally with delay", "valq",
                valq.valq_push, (QUEUE, Arg("body"), Arg("delay", "integer", optional=True),
                                 Arg("priority", "integer", "PRIORITY", optional=True),
                                 Arg("key", token="DEDUP", optional=True)), LOG, key_specs=INSERTS),
    CommandSpec("pop", -3, (W, F), "get message from q", "valq", valq.valq_pop,
                (QUEUE, *POP_OPTIONS), LOG, key_specs=TAKES,
                acl=BLOCKS),
    CommandSpec("ack", -4, (W, F), "ack message completion", "valq", valq.valq_ack,
                (QUEUE, MESSAGE_ID, LEASE), LOG, key_specs=REMOVES),
    CommandSpec("extend", -5, (W, F), "extend message to have more time to complete it",
                "valq", valq.valq_extend, (QUEUE, MESSAGE_ID, Arg("seconds", "integer"),
                                           LEASE), LOG, key_specs=UPDATES),
    CommandSpec("nack", -4, (W, F), "give a message back: visible again after a delay or "
                "the queue's backoff, or to the DLQ after its last attempt", "valq",
                valq.valq_nack, (QUEUE, MESSAGE_ID, Arg("delay", "integer", optional=True),
                                 LEASE, Arg("text", token="REASON", optional=True)),
                LOG, key_specs=UPDATES),
    CommandSpec("mpush", -4, (W, D, F), "push several messages, all or none", "valq",
                valq.valq_mpush, (QUEUE, Arg("body", multiple=True)),
                "O(M log N) for M messages", key_specs=INSERTS),
    CommandSpec("mpop", -4, (W, F), "get messages from the first of several queues that "
                "has one", "valq", valq.valq_mpop,
                (Arg("numqueues", "integer"), Arg("queue", "key", multiple=True),
                 *POP_OPTIONS), LOG, key_specs=MPOP_KEYS, acl=BLOCKS),
    CommandSpec("mack", -4, (W, F), "ack several messages", "valq", valq.valq_mack,
                (QUEUE, Arg("id", "integer", multiple=True)), "O(M log N) for M ids",
                key_specs=REMOVES),
    CommandSpec("get", 4, (R, F), "show one message, wherever it is", "valq", valq.valq_get,
                (QUEUE, MESSAGE_ID), key_specs=READS),
    CommandSpec("peek", -3, (R,), "show the next messages of a part of q, changing nothing",
                "valq", valq.valq_peek, (QUEUE, Arg("part", "oneof", optional=True, args=(
                    Arg("ready", "pure-token", "READY"),
                    Arg("inflight", "pure-token", "INFLIGHT"),
                    Arg("delayed", "pure-token", "DELAYED"), Arg("dlq", "pure-token", "DLQ"))),
                    Arg("count", "integer", "COUNT", optional=True)),
                "O(log N + M) for M messages shown", key_specs=READS),
    CommandSpec("cancel", 4, (W, F), "remove a message in any state", "valq",
                valq.valq_cancel, (QUEUE, MESSAGE_ID), LOG, key_specs=REMOVES),
    CommandSpec("reschedule", 5, (W, F), "give a ready or delayed message a new due time",
                "valq", valq.valq_reschedule, (QUEUE, MESSAGE_ID, Arg("delay", "integer")),
                LOG, key_specs=UPDATES),
    CommandSpec("redrive", -3, (W,), "move DLQ messages back to q or another queue", "valq",
                valq.valq_redrive, (QUEUE, Arg("count", "integer", "COUNT", optional=True),
                                    Arg("other", "key", "TO", optional=True, key_spec=1)),
                "O(M log N) for M messages moved", key_specs=REDRIVE_KEYS),
    CommandSpec("pause", 3, (W, F), "stop delivering from q (pushes and acks still work)",
                "valq", valq.valq_pause, (QUEUE,), key_specs=UPDATES),
    CommandSpec("resume", 3, (W, F), "deliver from a paused q again", "valq",
                valq.valq_resume, (QUEUE,), key_specs=UPDATES),
    CommandSpec("stats", 3, (R, F), "every count, setting and counter of q", "valq",
                valq.valq_stats, (QUEUE,), key_specs=READS),
    CommandSpec("help", 2, (R, "loading", "stale"), "display help information", "valq",
                valq.valq_help),
], handler=valq.valq_help, acl=("valq",))

CLIENT = container("client", -2, "A container for client connection commands.", "connection", [
    CommandSpec("id", 2, ("noscript", "loading", "stale"), "Returns the unique client ID of "
                "the connection.", "connection", admin.client_id),
    CommandSpec("setname", 3, ("noscript", "loading", "stale"), "Sets the connection name.",
                "connection", admin.client_setname, (Arg("connection-name"),)),
    CommandSpec("getname", 2, ("noscript", "loading", "stale"), "Returns the name of the "
                "connection.", "connection", admin.client_getname),
    CommandSpec("setinfo", 4, ("noscript", "loading", "stale"), "Sets information specific "
                "to the client or connection.", "connection", admin.client_setinfo, (
                    Arg("attr", "oneof", args=(Arg("libname", token="LIB-NAME"),
                                               Arg("libver", token="LIB-VER"))),)),
    CommandSpec("no-evict", 3, (A, "noscript", "loading", "stale"), "Sets the client "
                "eviction mode of the connection (valqd evicts no client: accepted, changes "
                "nothing).", "connection", admin.client_on_off,
                (Arg("enabled", "oneof", args=(Arg("on", "pure-token", "ON"),
                                               Arg("off", "pure-token", "OFF"))),)),
    CommandSpec("no-touch", 3, ("noscript", "loading", "stale"), "Controls whether commands "
                "sent by the client affect the LRU/LFU of accessed keys (valqd keeps none: "
                "accepted, changes nothing).", "connection",
                admin.client_on_off, (Arg("enabled", "oneof", args=(
                    Arg("on", "pure-token", "ON"), Arg("off", "pure-token", "OFF"))),)),
    CommandSpec("list", -2, (A, "noscript", "loading", "stale"), "Lists open connections.",
                "connection", admin.client_list, (
                    Arg("client-type", token="TYPE", optional=True),
                    Arg("client-id", "integer", token="ID", optional=True, multiple=True)),
                "O(N) where N is the number of client connections"),
    CommandSpec("info", 2, ("noscript", "loading", "stale"), "Returns information about the "
                "connection.", "connection", admin.client_info),
    CommandSpec("kill", -3, (A, "noscript", "loading", "stale"), "Terminates open "
                "connections.", "connection", admin.client_kill, (
                    Arg("filter", "oneof", args=(
                        Arg("ip:port"), Arg("client-id", "integer", token="ID"),
                        Arg("ip:port", token="ADDR"), Arg("ip:port", token="LADDR"),
                        Arg("username", token="USER"),
                        Arg("yes/no", token="SKIPME"))),),
                "O(N) where N is the number of client connections"),
], acl=("connection",))

COMMAND = container("command", -1, "Returns detailed information about all commands.",
                    "server", [
    CommandSpec("count", 2, ("loading", "stale"), "Returns a count of commands.", "server",
                admin.command_count),
    CommandSpec("info", -2, ("loading", "stale"), "Returns information about one, multiple "
                "or all commands.", "server", admin.command_info,
                (Arg("command-name", optional=True, multiple=True),)),
    CommandSpec("docs", -2, ("loading", "stale"), "Returns documentary information about one, "
                "multiple or all commands.", "server", admin.command_docs,
                (Arg("command-name", optional=True, multiple=True),)),
    CommandSpec("list", -2, ("loading", "stale"), "Returns a list of command names.", "server",
                admin.command_list, (Arg("filterby", "oneof", "FILTERBY", optional=True, args=(
                    Arg("module-name", token="MODULE"), Arg("category", token="ACLCAT"),
                    Arg("pattern", "pattern", "PATTERN"))),)),
], handler=admin.command_, flags=("loading", "stale"), acl=("connection",))

CONFIG = container("config", -2, "A container for server configuration commands.", "server", [
    CommandSpec("get", -3, (A, "noscript", "loading", "stale"), "Returns the effective values "
                "of configuration parameters.", "server", admin.config_get,
                (Arg("parameter", "pattern", multiple=True),)),
    CommandSpec("set", -4, (A, "noscript", "loading", "stale"), "Sets configuration "
                "parameters in-flight.", "server", admin.config_set,
                (Arg("data", "block", multiple=True, args=(Arg("parameter"), Arg("value"))),)),
    CommandSpec("resetstat", 2, (A, "noscript", "loading", "stale"), "Resets the server's "
                "statistics.", "server", admin.config_resetstat),
    CommandSpec("rewrite", 2, (A, "noscript", "loading", "stale"), "Persists the effective "
                "configuration to file.", "server", admin.config_rewrite),
])

ADMIN = (A, "noscript", "loading", "stale")
ACL = container("acl", -2, "A container for Access List Control commands.", "server", [
    CommandSpec("cat", -2, ADMIN[1:], "Lists the ACL categories, or the commands inside a "
                "category.", "server", acl.acl_cat, (Arg("category", optional=True),),
                "O(1) since the categories and commands are a fixed set."),
    CommandSpec("deluser", -3, ADMIN, "Deletes ACL users, and terminates their connections.",
                "server", acl.acl_deluser, (Arg("username", multiple=True),),
                "O(1) amortized time considering the typical user."),
    CommandSpec("dryrun", -4, ADMIN, "Simulates the execution of a command by a user, "
                "without executing the command.", "server", acl.acl_dryrun, (
                    Arg("username"), Arg("command"),
                    Arg("arg", optional=True, multiple=True))),
    CommandSpec("genpass", -2, ADMIN[1:], "Generates a pseudorandom, secure password that "
                "can be used to identify ACL users.", "server", acl.acl_genpass,
                (Arg("bits", "integer", optional=True),)),
    CommandSpec("getuser", 3, ADMIN, "Lists the ACL rules of a user.", "server",
                acl.acl_getuser, (Arg("username"),),
                "O(N). Where N is the number of password, command and pattern rules that the "
                "user has."),
    CommandSpec("list", 2, ADMIN, "Dumps the effective rules in ACL file format.", "server",
                acl.acl_list, complexity="O(N). Where N is the number of configured users."),
    CommandSpec("load", 2, ADMIN, "Reloads the rules from the configured ACL file.", "server",
                acl.acl_load, complexity="O(N). Where N is the number of configured users."),
    CommandSpec("log", -2, ADMIN, "Lists recent security events generated due to ACL rules.",
                "server", acl.acl_log, (Arg("operation", "oneof", optional=True, args=(
                    Arg("count", "integer"), Arg("reset", "pure-token", "RESET"))),),
                "O(N) with N being the number of entries shown."),
    CommandSpec("save", 2, ADMIN, "Saves the effective ACL rules in the configured ACL file.",
                "server", acl.acl_save,
                complexity="O(N). Where N is the number of configured users."),
    CommandSpec("setuser", -3, ADMIN, "Creates and modifies an ACL user and its rules.",
                "server", acl.acl_setuser, (Arg("username"),
                                            Arg("rule", optional=True, multiple=True)),
                "O(N). Where N is the number of rules provided."),
    CommandSpec("users", 2, ADMIN, "Lists all ACL users.", "server", acl.acl_users,
                complexity="O(N). Where N is the number of configured users."),
    CommandSpec("whoami", 2, ADMIN[1:], "Returns the authenticated username of the current "
                "connection.", "server", acl.acl_whoami),
])

DEBUG = container("debug", -2, "A container for debugging commands.", "server", [
    CommandSpec("digest", 2, (A, "noscript", "loading", "stale"), "Returns a hex digest of "
                "the whole state.", "server", persist.debug_digest,
                complexity="O(N) where N is the number of messages"),
], flags=(A, "noscript", "loading", "stale"))

SLOWLOG = container("slowlog", -2, "A container for slow log commands.", "server", [
    CommandSpec("get", -2, (A, "loading", "stale"), "Returns the slow log's entries.",
                "server", observe.slowlog_get, (Arg("count", "integer", optional=True),),
                "O(N) where N is the number of entries returned"),
    CommandSpec("len", 2, (A, "loading", "stale"), "Returns the number of entries in the "
                "slow log.", "server", observe.slowlog_len),
    CommandSpec("reset", 2, (A, "loading", "stale"), "Clears all entries from the slow log.",
                "server", observe.slowlog_reset),
])
# valqd refuses (un)subscribing inside MULTI: Valkey 7.2 queues it, and its EXEC reply then
# holds one confirmation per channel, more items than commands
PUBSUB = ("pubsub", "noscript", "loading", "stale", "no_multi")
FLUSH_TYPE = Arg("flush-type", "oneof", optional=True, args=(
    Arg("async", "pure-token", "ASYNC"), Arg("sync", "pure-token", "SYNC")))
TRANSACTION = ("noscript", "loading", "stale", F, "allow_busy")
# MULTI and WATCH inside a transaction are refused and abort it, as in Valkey 8+
NESTED = ("noscript", "loading", "stale", F, "no_multi", "allow_busy")

NO_AUTH = ("noscript", "loading", "stale", "fast", "no-auth")
CONNECTION, KEYSPACE, TRANSACTIONS = ("connection",), ("keyspace",), ("transaction",)
COMMANDS: list[CommandSpec] = [
    VALQ,
    CommandSpec("ping", -1, (F,), "Returns the server's liveliness response.", "connection",
                admin.ping, (Arg("message", optional=True),), acl=CONNECTION),
    CommandSpec("echo", 2, (F,), "Returns the given string.", "connection", admin.echo,
                (Arg("message"),), acl=CONNECTION),
    CommandSpec("auth", -2, NO_AUTH, "Authenticates the connection.", "connection", admin.auth,
                (Arg("username", optional=True), Arg("password")), acl=CONNECTION),
    CommandSpec("hello", -1, NO_AUTH, "Handshakes with the server.", "connection", admin.hello,
                (Arg("arguments", "block", optional=True, args=(
                    Arg("protover", "integer"),
                    Arg("auth", "block", token="AUTH", optional=True,
                        args=(Arg("username"), Arg("password"))),
                    Arg("clientname", token="SETNAME", optional=True))),), acl=CONNECTION),
    CommandSpec("select", 2, ("loading", "stale", F), "Changes the selected database.",
                "connection", admin.select, (Arg("index", "integer"),), acl=CONNECTION),
    CommandSpec("quit", -1, ("noscript", "loading", "stale", F, "no-auth"), "Closes the "
                "connection.", "connection", admin.quit_, acl=CONNECTION),
    CommandSpec("reset", 1, ("noscript", "loading", "stale", F, "no-auth"), "Resets the "
                "connection.", "connection", admin.reset, acl=CONNECTION),
    CommandSpec("multi", 1, NESTED, "Starts a transaction.", "transactions", multi.multi,
                acl=TRANSACTIONS),
    CommandSpec("exec", 1, ("noscript", "loading", "stale", "skip_slowlog"), "Executes all "
                "commands in a transaction.", "transactions", multi.exec_,
                complexity="Depends on commands in the transaction", acl=TRANSACTIONS),
    CommandSpec("discard", 1, TRANSACTION, "Discards a transaction.", "transactions",
                multi.discard, complexity="O(N), when N is the number of queued commands",
                acl=TRANSACTIONS),
    CommandSpec("watch", -2, NESTED, "Monitors changes to queues to determine the "
                "execution of a transaction.", "transactions", multi.watch,
                (Arg("key", "key", multiple=True),), key_specs=(KeySpec(("RO",), 1, lastkey=-1),),
                acl=TRANSACTIONS),
    CommandSpec("unwatch", 1, TRANSACTION, "Forgets about watched queues of a transaction.",
                "transactions", multi.unwatch,
                complexity="O(N) where N is the number of queues watched", acl=TRANSACTIONS),
    CLIENT,
    COMMAND,
    CommandSpec("info", -1, ("loading", "stale"), "Returns information and statistics about "
                "the server.", "server", admin.info,
                (Arg("section", optional=True, multiple=True),), acl=("dangerous",)),
    CONFIG,
    ACL,
    CommandSpec("dbsize", 1, (R, F), "Returns the number of queues in the selected database.",
                "server", admin.dbsize, acl=KEYSPACE),
    CommandSpec("keys", 2, (R,), "Returns the queue names that match a pattern.", "keyspace",
                admin.keys, (Arg("pattern", "pattern"),),
                "O(Q) where Q is the number of queues", acl=(*KEYSPACE, "dangerous")),
    CommandSpec("scan", -2, (R,), "Iterates over the queue names.", "keyspace", admin.scan, (
        Arg("cursor", "integer"), Arg("pattern", "pattern", "MATCH", optional=True),
        Arg("count", "integer", "COUNT", optional=True),
        Arg("type", token="TYPE", optional=True)), "O(Q) per call", acl=KEYSPACE),
    CommandSpec("type", 2, (R, F), "Returns valq-type for a queue, none otherwise.", "keyspace",
                admin.type_, (Arg("key", "key"),), key_specs=(KeySpec(("RO",), 1),),
                acl=KEYSPACE),
    CommandSpec("exists", -2, (R, F), "Counts how many of the names are queues.", "keyspace",
                admin.exists, (Arg("key", "key", multiple=True),),
                key_specs=(KeySpec(("RO",), 1, lastkey=-1),), acl=KEYSPACE),
    CommandSpec("del", -2, (W,), "Deletes queues with all their messages.", "keyspace",
                admin.del_, (Arg("key", "key", multiple=True),),
                "O(N) where N is the number of messages removed",
                key_specs=(KeySpec(("RM", "delete"), 1, lastkey=-1),), acl=KEYSPACE),
    CommandSpec("flushall", -1, (W,), "Deletes every queue of every database.", "server",
                admin.flushall, (FLUSH_TYPE,), "O(N) where N is the number of messages",
                acl=(*KEYSPACE, "dangerous")),
    CommandSpec("flushdb", -1, (W,), "Deletes every queue of the selected database.",
                "server", admin.flushdb, (FLUSH_TYPE,),
                "O(N) where N is the number of messages in the database",
                acl=(*KEYSPACE, "dangerous")),
    CommandSpec("swapdb", 3, (W, F), "Swaps two databases.", "server", admin.swapdb,
                (Arg("index1", "integer"), Arg("index2", "integer")),
                "O(N) where N is the number of queues in the two databases",
                acl=(*KEYSPACE, "dangerous")),
    CommandSpec("move", 3, (W, F), "Moves a queue to another database.", "keyspace",
                admin.move, (Arg("key", "key"), Arg("db", "integer")),
                key_specs=(KeySpec(("RW", "access", "delete"), 1),), acl=KEYSPACE),
    SLOWLOG,
    CommandSpec("subscribe", -2, PUBSUB, "Listens for messages published to channels; queue "
                "events arrive on valq:<queue>.", "pubsub", pubsub.subscribe,
                (Arg("channel", multiple=True),), "O(N) where N is the number of channels"),
    CommandSpec("psubscribe", -2, PUBSUB, "Listens for messages published to channels that "
                "match patterns.", "pubsub", pubsub.psubscribe,
                (Arg("pattern", "pattern", multiple=True),),
                "O(N) where N is the number of patterns"),
    CommandSpec("unsubscribe", -1, PUBSUB, "Stops listening to messages posted to channels.",
                "pubsub", pubsub.unsubscribe,
                (Arg("channel", optional=True, multiple=True),),
                "O(N) where N is the number of channels"),
    CommandSpec("punsubscribe", -1, PUBSUB, "Stops listening to messages published to "
                "channels that match patterns.", "pubsub", pubsub.punsubscribe,
                (Arg("pattern", "pattern", optional=True, multiple=True),),
                "O(N) where N is the number of patterns"),
    CommandSpec("bgrewriteaof", 1, (A, "noscript"), "Asynchronously rewrites the "
                "append-only file to a minimal log.", "server", persist.bgrewriteaof),
    CommandSpec("save", 1, (A, "noscript", "no_multi"), "Synchronously rewrites the "
                "append-only file to a minimal log.", "server", persist.save, complexity="O(N)"),
    DEBUG,
    CommandSpec("time", 1, ("loading", "stale", F), "Returns the server time.", "server",
                admin.time_),
    CommandSpec("shutdown", -1, (A, "noscript", "loading", "stale", "no_multi"), "Stops the "
                "server after writing everything to disk.", "server", admin.shutdown, (
                    Arg("save-selector", "oneof", optional=True, args=(
                        Arg("nosave", "pure-token", "NOSAVE"),
                        Arg("save", "pure-token", "SAVE"))),
                    Arg("now", "pure-token", "NOW", optional=True),
                    Arg("force", "pure-token", "FORCE", optional=True))),
]
TABLE: dict[str, CommandSpec] = {spec.name: spec for spec in COMMANDS}


def reference() -> str:
    """The README's command reference, in Markdown."""
    lines = ["| command | arity | summary |", "|---|---|---|"]
    for spec in COMMANDS:
        for entry in list(spec.subcommands.values()) or [spec]:
            syntax = entry.syntax().replace("|", "\\|")
            lines.append(f"| `{syntax}` | {entry.arity} | {entry.summary} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference())
