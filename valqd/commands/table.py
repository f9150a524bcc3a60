"""The command table: every command valqd serves, described once.

Each entry gives the name, Valkey's signed arity (counting the command and subcommand
names; negative means "at least"), flags, a one-line summary and the argument docs. The
same entries drive dispatch and arity checks, `COMMAND INFO/DOCS/LIST/COUNT`, `VALQ HELP`
and the command reference in README.md (`python -m valqd.commands.table` prints it).
"""

from dataclasses import dataclass, field
from typing import Callable

from ..resp import encode
from . import admin, multi, observe, persist, pubsub, valq

Handler = Callable[..., bytes]


@dataclass(frozen=True)
class Arg:
    name: str
    type: str = "string"  # string | integer | key | pattern | pure-token | oneof | block
    token: str | None = None
    optional: bool = False
    multiple: bool = False
    args: tuple["Arg", ...] = ()

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
            pairs += (encode.bulk(b"key_spec_index"), encode.integer(0))
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
    keys: tuple[int, int, int] = (0, 0, 0)  # first key, last key, step (argv positions)
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

    def syntax(self) -> str:
        words = self.name.upper().replace("|", " ")
        return " ".join([words, *(a.syntax() for a in self.args)])

    def info_reply(self, proto: int) -> bytes:
        first, last, step = self.keys
        return encode.array([
            encode.bulk_str(self.name),
            encode.integer(self.arity),
            encode.set_([encode.simple(f.encode()) for f in self.flags], proto),
            encode.integer(first), encode.integer(last), encode.integer(step),
            encode.set_([encode.simple(b"@" + self.group.encode())], proto),
            encode.set_([], proto),
            encode.EMPTY_ARRAY,
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
            sub_pairs = []
            for sub in self.subcommands.values():
                sub_pairs += (encode.bulk_str(sub.name), sub.docs_reply(proto))
            pairs += (encode.bulk(b"subcommands"), encode.map_(sub_pairs, proto))
        return encode.map_(pairs, proto)


def container(name: str, arity: int, summary: str, group: str, subs: list[CommandSpec],
              handler: Handler | None = None, flags: tuple[str, ...] = ()) -> CommandSpec:
    """A command made of subcommands; it gets a HELP subcommand (last, as in Valkey's
    replies) unless it brings its own."""
    spec = CommandSpec(name, arity, flags, summary, group, handler)
    if not any(sub.name == "help" for sub in subs):
        subs = [*subs, CommandSpec("help", 2, ("loading", "stale"), "Returns helpful text "
                                   "about the different subcommands.", group,
                                   lambda state, session, argv: help_reply(spec))]
    for sub in subs:
        sub.name = f"{name}|{sub.name}"
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
Q = (2, 2, 1)  # VALQ subcommands name their queue at argv[2]
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
        Arg("retention_period", "integer", optional=True), *SETTINGS_ARGS), keys=Q),
    CommandSpec("delete", 3, (W,), "delete q", "valq", valq.valq_delete, (QUEUE,),
                "O(N) where N is the number of messages in the queue", keys=Q),
    CommandSpec("update", -4, (W,), "update q", "valq", valq.valq_update, (
        QUEUE, Arg("values", "oneof", args=(
            Arg("positional", "block", args=(
                Arg("visibility_timeout", "integer"), Arg("max_delivery_attempts", "integer"),
                Arg("retention_period", "integer"))),
            Arg("keywords", "block", args=SETTINGS_ARGS)))), keys=Q),
    CommandSpec("list", 2, (R,), "list all queues", "valq", valq.valq_list,
                complexity="O(Q log Q) where Q is the number of queues"),
    CommandSpec("info", 3, (R, F), "info about q", "valq", valq.valq_info, (QUEUE,), keys=Q),
    CommandSpec("purge", -3, (W,), "purge messages in q, dlq or delayed q", "valq",
                valq.valq_purge, (QUEUE, Arg("part", "oneof", optional=True, args=(
                    Arg("main", "pure-token", "MAIN"), Arg("dlq", "pure-token", "DLQ"),
                    Arg("delayed", "pure-token", "DELAYED")))),
                "O(N) where N is the number of messages removed", keys=Q),
    CommandSpec("push", -4, (W, D, F), "push message to q, optionally with delay", "valq",
                valq.valq_push, (QUEUE, Arg("body"), Arg("delay", "integer", optional=True),
                                 Arg("priority", "integer", "PRIORITY", optional=True),
                                 Arg("key", token="DEDUP", optional=True)), LOG, keys=Q),
    CommandSpec("pop", -3, (W, F), "get message from q", "valq", valq.valq_pop,
                (QUEUE, *POP_OPTIONS), LOG, keys=Q),
    CommandSpec("ack", -4, (W, F), "ack message completion", "valq", valq.valq_ack,
                (QUEUE, MESSAGE_ID, LEASE), LOG, keys=Q),
    CommandSpec("extend", -5, (W, F), "extend message to have more time to complete it",
                "valq", valq.valq_extend, (QUEUE, MESSAGE_ID, Arg("seconds", "integer"),
                                           LEASE), LOG, keys=Q),
    CommandSpec("nack", -4, (W, F), "give a message back: visible again after a delay or "
                "the queue's backoff, or to the DLQ after its last attempt", "valq",
                valq.valq_nack, (QUEUE, MESSAGE_ID, Arg("delay", "integer", optional=True),
                                 LEASE, Arg("text", token="REASON", optional=True)),
                LOG, keys=Q),
    CommandSpec("mpush", -4, (W, D, F), "push several messages, all or none", "valq",
                valq.valq_mpush, (QUEUE, Arg("body", multiple=True)),
                "O(M log N) for M messages", keys=Q),
    CommandSpec("mpop", -4, (W, F), "get messages from the first of several queues that "
                "has one", "valq", valq.valq_mpop,
                (Arg("numqueues", "integer"), Arg("queue", "key", multiple=True),
                 *POP_OPTIONS), LOG, keys=(3, 3, 1)),
    CommandSpec("mack", -4, (W, F), "ack several messages", "valq", valq.valq_mack,
                (QUEUE, Arg("id", "integer", multiple=True)), "O(M log N) for M ids", keys=Q),
    CommandSpec("get", 4, (R, F), "show one message, wherever it is", "valq", valq.valq_get,
                (QUEUE, MESSAGE_ID), keys=Q),
    CommandSpec("peek", -3, (R,), "show the next messages of a part of q, changing nothing",
                "valq", valq.valq_peek, (QUEUE, Arg("part", "oneof", optional=True, args=(
                    Arg("ready", "pure-token", "READY"),
                    Arg("inflight", "pure-token", "INFLIGHT"),
                    Arg("delayed", "pure-token", "DELAYED"), Arg("dlq", "pure-token", "DLQ"))),
                    Arg("count", "integer", "COUNT", optional=True)),
                "O(log N + M) for M messages shown", keys=Q),
    CommandSpec("cancel", 4, (W, F), "remove a message in any state", "valq",
                valq.valq_cancel, (QUEUE, MESSAGE_ID), LOG, keys=Q),
    CommandSpec("reschedule", 5, (W, F), "give a ready or delayed message a new due time",
                "valq", valq.valq_reschedule, (QUEUE, MESSAGE_ID, Arg("delay", "integer")),
                LOG, keys=Q),
    CommandSpec("redrive", -3, (W,), "move DLQ messages back to q or another queue", "valq",
                valq.valq_redrive, (QUEUE, Arg("count", "integer", "COUNT", optional=True),
                                    Arg("other", "key", "TO", optional=True)),
                "O(M log N) for M messages moved", keys=Q),
    CommandSpec("pause", 3, (W, F), "stop delivering from q (pushes and acks still work)",
                "valq", valq.valq_pause, (QUEUE,), keys=Q),
    CommandSpec("resume", 3, (W, F), "deliver from a paused q again", "valq",
                valq.valq_resume, (QUEUE,), keys=Q),
    CommandSpec("stats", 3, (R, F), "every count, setting and counter of q", "valq",
                valq.valq_stats, (QUEUE,), keys=Q),
    CommandSpec("help", 2, (R, "loading", "stale"), "display help information", "valq",
                valq.valq_help),
], handler=valq.valq_help)

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
])

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
                admin.command_list, (Arg("pattern", "pattern", "FILTERBY PATTERN",
                                         optional=True),)),
], handler=admin.command_, flags=("loading", "stale"))

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
TRANSACTION = ("noscript", "loading", "stale", F, "allow_busy")

NO_AUTH = ("noscript", "loading", "stale", "fast", "no-auth")
COMMANDS: list[CommandSpec] = [
    VALQ,
    CommandSpec("ping", -1, (F,), "Returns the server's liveliness response.", "connection",
                admin.ping, (Arg("message", optional=True),)),
    CommandSpec("echo", 2, (F,), "Returns the given string.", "connection", admin.echo,
                (Arg("message"),)),
    CommandSpec("auth", -2, NO_AUTH, "Authenticates the connection.", "connection", admin.auth,
                (Arg("username", optional=True), Arg("password"))),
    CommandSpec("hello", -1, NO_AUTH, "Handshakes with the server.", "connection", admin.hello,
                (Arg("arguments", "block", optional=True, args=(
                    Arg("protover", "integer"),
                    Arg("auth", "block", token="AUTH", optional=True,
                        args=(Arg("username"), Arg("password"))),
                    Arg("clientname", token="SETNAME", optional=True))),)),
    CommandSpec("select", 2, ("loading", "stale", F), "Changes the selected database.",
                "connection", admin.select, (Arg("index", "integer"),)),
    CommandSpec("quit", -1, ("noscript", "loading", "stale", F, "no-auth"), "Closes the "
                "connection.", "connection", admin.quit_),
    CommandSpec("reset", 1, ("noscript", "loading", "stale", F, "no-auth"), "Resets the "
                "connection.", "connection", admin.reset),
    CommandSpec("multi", 1, TRANSACTION, "Starts a transaction.", "transactions", multi.multi),
    CommandSpec("exec", 1, ("noscript", "loading", "stale", "skip_slowlog"), "Executes all "
                "commands in a transaction.", "transactions", multi.exec_,
                complexity="Depends on commands in the transaction"),
    CommandSpec("discard", 1, TRANSACTION, "Discards a transaction.", "transactions",
                multi.discard, complexity="O(N), when N is the number of queued commands"),
    CommandSpec("watch", -2, TRANSACTION, "Monitors changes to queues to determine the "
                "execution of a transaction.", "transactions", multi.watch,
                (Arg("key", "key", multiple=True),), keys=(1, -1, 1)),
    CommandSpec("unwatch", 1, TRANSACTION, "Forgets about watched queues of a transaction.",
                "transactions", multi.unwatch,
                complexity="O(N) where N is the number of queues watched"),
    CLIENT,
    COMMAND,
    CommandSpec("info", -1, ("loading", "stale"), "Returns information and statistics about "
                "the server.", "server", admin.info,
                (Arg("section", optional=True, multiple=True),)),
    CONFIG,
    CommandSpec("dbsize", 1, (R, F), "Returns the number of queues.", "server", admin.dbsize),
    CommandSpec("keys", 2, (R,), "Returns the queue names that match a pattern.", "keyspace",
                admin.keys, (Arg("pattern", "pattern"),),
                "O(Q) where Q is the number of queues"),
    CommandSpec("scan", -2, (R,), "Iterates over the queue names.", "keyspace", admin.scan, (
        Arg("cursor", "integer"), Arg("pattern", "pattern", "MATCH", optional=True),
        Arg("count", "integer", "COUNT", optional=True),
        Arg("type", token="TYPE", optional=True)), "O(Q) per call"),
    CommandSpec("type", 2, (R, F), "Returns valq-type for a queue, none otherwise.", "keyspace",
                admin.type_, (Arg("key", "key"),), keys=(1, 1, 1)),
    CommandSpec("exists", -2, (R, F), "Counts how many of the names are queues.", "keyspace",
                admin.exists, (Arg("key", "key", multiple=True),), keys=(1, -1, 1)),
    CommandSpec("del", -2, (W,), "Deletes queues with all their messages.", "keyspace",
                admin.del_, (Arg("key", "key", multiple=True),),
                "O(N) where N is the number of messages removed", keys=(1, -1, 1)),
    CommandSpec("flushall", -1, (W,), "Deletes every queue.", "server", admin.flushall,
                (Arg("flush-type", "oneof", optional=True, args=(
                    Arg("async", "pure-token", "ASYNC"), Arg("sync", "pure-token", "SYNC"))),),
                "O(N) where N is the number of messages"),
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
