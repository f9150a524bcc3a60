"""The dispatcher: argv in, reply bytes out, for every command in the table.

It finds the command (and subcommand), checks arity, authentication and the user's ACL
permissions (only for a restricted user), reads the clock once, lets the engine
apply whatever fell due by then, runs the handler and turns errors into `-CODE message`
replies. Nothing raised by a handler escapes: an unexpected exception is logged as a bug and
answered with `-ERR internal error`, and the server keeps serving.
"""

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from time import monotonic, perf_counter_ns
from typing import Any

from ..config import BY_NAME
from ..engine import TICK_BUDGET
from ..errors import CommandError
from ..logs import VERBOSE
from ..resp import encode
from . import acl
from .context import Blocked, CommandStats, HandlerReply, ServerState, Session
from .multi import QUEUED, RUN_IN_MULTI, discard_transaction, discarded_because, not_in_multi
from .pubsub import subscribed_mode_refusal
from .table import CommandSpec

log = logging.getLogger("valqd")


def _unknown_command(argv: list[bytes]) -> bytes:
    args = ""
    for arg in argv[1:]:
        if len(args) >= 128:
            break
        args += "'%s' " % arg.decode("utf-8", "replace")[:128 - len(args)]
    name = argv[0].decode("utf-8", "replace")[:128]
    return encode.error("ERR", f"unknown command '{name}', with args beginning with: {args}")


def arity_error(name: str) -> bytes:
    return encode.error("ERR", f"wrong number of arguments for '{name}' command")


def redacted(name: str, argv: list[bytes]) -> list[bytes]:
    """argv as the slow log shows it: passwords replaced, as Valkey redacts them (AUTH's
    arguments, HELLO's AUTH username and password, CONFIG SET of requirepass)."""
    if name == "auth":
        return argv[:1] + [REDACTED] * (len(argv) - 1)
    if name == "hello":
        shown, i = list(argv), 2
        while i < len(argv):
            option = argv[i].upper()
            if option == b"AUTH" and i + 2 < len(argv):
                shown[i + 1] = shown[i + 2] = REDACTED
                i += 3
            elif option == b"SETNAME" and i + 1 < len(argv):
                i += 2
            else:
                break
        return shown
    if name == "config|set":
        shown = list(argv)
        for i in range(2, len(argv) - 1, 2):
            setting = BY_NAME.get(argv[i].decode("latin-1").lower())
            if setting is not None and setting.kind == "secret":
                shown[i + 1] = REDACTED
        return shown
    return argv


# An HTTP request sent to the RESP port (a web page's `fetch()` to 127.0.0.1) reads as
# inline commands: its request line starts with POST, a header line with Host:. As Valkey's
# securityWarningCommand: log (at most once a minute) and close before anything else runs.
CROSS_PROTOCOL_WORDS = (b"post", b"host:")
CROSS_PROTOCOL_WARNING = (
    "Possible SECURITY ATTACK detected. It looks like somebody is sending POST or Host: "
    "commands to valqd. This is likely due to an attacker attempting to use Cross Protocol "
    "Scripting to compromise your valqd instance. Connection aborted.")
CROSS_PROTOCOL_LOG_EVERY_S = 60.0
REDACTED = b"(redacted)"
SHOWN_ARGS = 8  # a slow command's log line shows this many arguments, each cut at 64 bytes


def _shown_argv(argv: list[bytes]) -> str:
    words = [repr(arg[:64])[2:-1] + ("..." if len(arg) > 64 else "")
             for arg in argv[:SHOWN_ARGS]]
    if len(argv) > SHOWN_ARGS:
        words.append(f"... ({len(argv) - SHOWN_ARGS} more arguments)")
    return " ".join(words)
NOAUTH = encode.error("NOAUTH", "Authentication required.")
LOADING = encode.error("LOADING", "valqd is loading the dataset in memory")


def _refused(state: ServerState, session: Session, reply: bytes,
             spec: CommandSpec | None = None) -> bytes:
    """A command refused before it ran (counted as `rejected_calls` of the command when it
    is known, and in errorstats); in MULTI, that makes EXEC abort. A refused EXEC ends the
    transaction at once (and forgets the WATCHes), EXECABORT naming why, as in Valkey."""
    if spec is not None and spec.name == "exec":
        discard_transaction(session)
        reply = encode.error("EXECABORT", discarded_because(reply))
    elif session.multi is not None:
        session.multi_failed = True
    if spec is not None:
        state.command_stats[spec.name].rejected += 1
    state.count_error(reply)
    return reply


def record_slow(state: ServerState, session: Session, name: str, argv: list[bytes],
                elapsed_us: int) -> None:
    """A command that took at least slowlog-log-slower-than: into the slow log, and the
    log at verbose."""
    shown = redacted(name, argv)
    state.slowlog.record(session, shown, elapsed_us)
    if log.isEnabledFor(VERBOSE):
        log.log(VERBOSE, "Slow command (%d us) from client id=%d addr=%s: %s",
                elapsed_us, session.id, session.addr, _shown_argv(shown))


def _with_handlers(commands: dict[str, CommandSpec],
                   handlers: Mapping[str, Callable[..., Any]],
                   no_multi: Collection[str] = ()) -> dict[str, CommandSpec]:
    """A copy of the command table whose specs named in `handlers` run those handlers;
    those named in `no_multi` are refused inside MULTI (flag no_multi, as COMMAND shows)."""
    unknown = set(handlers) - {name for spec in commands.values()
                               for name in (spec.name, *spec.subcommands)}
    if unknown:
        raise ValueError(f"a store serves commands the table does not have: {sorted(unknown)}")
    table = {}
    for key, spec in commands.items():
        if spec.name in no_multi and "no_multi" not in spec.flags:
            spec = replace(spec, flags=(*spec.flags, "no_multi"))
        subcommands = {sub_key: replace(sub, handler=handlers[sub.name])
                       if sub.name in handlers else sub
                       for sub_key, sub in spec.subcommands.items()}
        table[key] = replace(spec, subcommands=subcommands,
                             handler=handlers.get(spec.name, spec.handler))
    return table


class Dispatcher:
    def __init__(self, state: ServerState, renames: dict[str, str] | None = None,
                 handlers: Mapping[str, Callable[..., Any]] | None = None,
                 no_multi: Collection[str] = ()) -> None:
        """`renames` maps a command to the name it answers to ("" disables it); `handlers`
        are a store's, replacing the table's for the commands named (valqd.store), and
        `no_multi` the store's commands a transaction cannot hold."""
        self.state = state
        self._attack_logged_at: float | None = None
        state.call = self.call
        self._commands: dict[bytes, CommandSpec] = {}
        self._subcommands: dict[bytes, dict[bytes, CommandSpec]] = {}
        # (command, subcommand) as clients usually spell them: one lookup on the hot path
        self._pairs: dict[tuple[bytes, bytes], CommandSpec] = {}
        renames = renames or {}
        unknown = set(renames) - set(state.commands)
        if unknown:
            raise ValueError(f"rename-command: unknown command {sorted(unknown)[0]!r}")
        taken = set(state.commands) - set(renames)  # as Valkey: no rename hides a command
        for command, new_name in renames.items():
            if new_name and new_name in taken:
                raise ValueError(f"rename-command: {command!r} to {new_name!r}: target "
                                 "command name already exists")
            taken.add(new_name)
        if handlers:
            state.commands = _with_handlers(state.commands, handlers, no_multi)
        for spec in state.commands.values():
            name = renames.get(spec.name, spec.name).encode()
            if not name:
                continue
            subcommands = {}
            for sub in spec.subcommands.values():
                sub_name = sub.name.split("|")[1].encode()
                subcommands[sub_name] = subcommands[sub_name.upper()] = sub
            # names as clients usually send them, so that most lookups need no lower()
            for variant in (name, name.upper()):
                self._commands[variant] = spec
                self._subcommands[variant] = subcommands
                for sub_name, sub in subcommands.items():
                    self._pairs[variant, sub_name] = sub
            for each in (spec, *spec.subcommands.values()):
                state.command_stats.setdefault(each.name, CommandStats())

    def pairs(self) -> dict[tuple[bytes, bytes], CommandSpec]:
        """(command, subcommand) -> spec, as clients usually spell them (renames applied)."""
        return self._pairs

    def find(self, argv: list[bytes]) -> CommandSpec | bytes:
        """The spec that serves argv (its arity not checked yet), or the error reply when
        there is none."""
        spec = self._pairs.get((argv[0], argv[1])) if len(argv) > 1 else None
        if spec is None:
            name = argv[0]
            spec = self._commands.get(name)
            if spec is None:
                name = name.lower()
                spec = self._commands.get(name)
                if spec is None:
                    return _unknown_command(argv)
            if spec.subcommands and len(argv) > 1:
                subcommands = self._subcommands[name]
                sub = subcommands.get(argv[1]) or subcommands.get(argv[1].lower())
                if sub is None:
                    return encode.error("ERR", "unknown subcommand '%s'. Try %s HELP." % (
                        argv[1].decode("utf-8", "replace")[:128], spec.name.upper()))
                spec = sub
            elif spec.handler is None:
                return arity_error(spec.name)
        return spec

    def execute(self, session: Session, argv: list[bytes]) -> HandlerReply:
        """Run one request: its reply, a `Blocked` when a blocking pop has to wait, or a
        `Pending` when a store's reply is on its way."""
        state = self.state
        state.total_commands += 1
        spec = self.find(argv)
        if isinstance(spec, bytes):
            if argv[0].lower() in CROSS_PROTOCOL_WORDS:
                return self._cross_protocol_attack(session)
            return _refused(state, session, spec)
        if not spec.fewest_args <= len(argv) <= spec.most_args:
            return _refused(state, session, arity_error(spec.name), spec)
        if not session.authenticated and not spec.no_auth:
            return _refused(state, session, NOAUTH, spec)
        if session.restricted and not spec.no_auth:  # the default user is never restricted
            denied = acl.check(state, session, spec, argv)
            if denied is not None:
                return _refused(state, session, denied, spec)
        if state.loading and not spec.loading_ok:
            return _refused(state, session, LOADING, spec)
        if session.proto == 2 and (session.channels or session.patterns):
            refusal = subscribed_mode_refusal(spec.name)
            if refusal is not None:
                return _refused(state, session, refusal, spec)
        queued = session.multi
        if queued is not None and spec.name not in RUN_IN_MULTI:
            return self._queue(session, queued, spec, argv)
        if spec.denyoom:
            refusal = state.write_refusal()
            if refusal is not None:
                return _refused(state, session, refusal, spec)
        now = state.now = state.clock()
        databases = state.databases
        state.engine = databases.engines[session.db]
        if now >= databases.due_at:
            databases.tick(now, TICK_BUDGET)
        return self.call(session, spec, argv)

    def _queue(self, session: Session, queued: list[tuple[CommandSpec, list[bytes]]],
               spec: CommandSpec, argv: list[bytes]) -> bytes:
        """In MULTI: queue the command for EXEC (in `queued`, the session's), or refuse it
        and make EXEC abort."""
        refusal = not_in_multi(spec.name) if spec.no_multi else \
            self.state.write_refusal() if spec.denyoom else None
        if refusal is not None:
            return _refused(self.state, session, refusal, spec)
        queued.append((spec, argv))
        session.last_command = spec.name
        return QUEUED

    def call(self, session: Session, spec: CommandSpec,
             argv: list[bytes]) -> HandlerReply:
        """Run one command whose checks passed, at `state.now`: the handler's reply or an
        error reply, counted in the command statistics and the slow log."""
        state = self.state
        name = session.last_command = spec.name
        started = perf_counter_ns()
        try:
            handler = spec.handler
            assert handler is not None, "find() answers a container without its subcommand"
            reply = handler(state, session, argv)
            failed = 0
        except CommandError as exc:
            reply = encode.error(exc.code, exc.message)
            failed = 1
            state.count_error(reply)
        except Exception:
            log.exception("bug: unexpected error in %s", name)
            reply = encode.error("ERR", "internal error")
            failed = 1
            state.count_error(reply)
        elapsed_us = (perf_counter_ns() - started) // 1000
        stats = state.command_stats[name]
        stats.calls += 1
        stats.usec += elapsed_us
        if failed:
            stats.failed += 1
        if 0 <= state.slowlog_threshold_us <= elapsed_us and name != "exec":
            record_slow(state, session, name, argv, elapsed_us)  # as Valkey: the commands
        return reply  # of an EXEC are logged, not the EXEC

    def _cross_protocol_attack(self, session: Session) -> bytes:
        """POST or Host: as a command: close the connection without a reply."""
        now = monotonic()
        if self._attack_logged_at is None or \
                now - self._attack_logged_at > CROSS_PROTOCOL_LOG_EVERY_S:
            self._attack_logged_at = now
            log.warning("%s (client %s)", CROSS_PROTOCOL_WARNING, session.addr)
        session.close_after_reply = True
        return b""
