"""The lean path: VALQ PUSH, POP, ACK, EXTEND and NACK straight from argv to the engine.

The dispatcher (dispatch.py) serves every command the same general way: find the spec,
check arity, authentication, ACL, loading, MULTI, write refusals, subscribed mode, then run
the handler, which parses its options with an `Args` cursor. For the five commands of a job
cycle most of that cannot fail for most clients, so this path checks once per run of
commands in a read, in a few attribute reads, that none of it can (`LeanPath.serve`), and
then parses the usual forms of those commands without building anything but their reply,
one command after the other in one loop.

Whatever it is not sure of goes to the general path, unchanged, before anything happened:

- a session that is not authenticated, has a restricted ACL user, is in MULTI or is
  subscribed (pub/sub); the server while it loads the AOF;
- a PUSH while maxmemory is set or the AOF cannot be written (MISCONF, OOM refusals);
- a POP with BLOCK (it may park the client);
- any argument that is not exactly as the usual forms have it: an unknown or repeated
  option, a number out of range or malformed, a body over max-message-size. The general
  path then answers with its own error, so both paths reply the same bytes.

Commands are found under the names the dispatcher uses (renamed commands included), and
they are counted as the dispatcher counts them: `total_commands`, commandstats (calls,
usec, failed), errorstats, the slow log and CLIENT LIST's `cmd=`. Errors of the engine
(NOQUEUE, NOMSG, NOLEASE, QUEUEFULL) are answered here as the dispatcher answers them.
The engine applies, journals (AOF) and publishes (live events) exactly as for any command.

It serves the embedded engine only: a server backed by another store leaves it off.
"""

import logging
from time import perf_counter_ns
from typing import Callable

from ..engine import MAX_DELAY, PRIORITY_RANGE, TICK_BUDGET, Engine
from ..errors import CommandError
from ..resp import encode
from .args import I64_MAX, I64_MIN, U64_MAX
from .context import ServerState, Session
from .dispatch import Dispatcher, record_slow
from .table import CommandSpec
from .valq import MAX_COUNT, message_map

log = logging.getLogger("valqd")

# (session, argv, engine, now) -> the reply, or None: the general path serves it
LeanHandler = Callable[[ServerState, Session, list[bytes], Engine, int], bytes | None]

EXTENDED = encode.bulk(b"extend")
_PRIORITY_LOW, _PRIORITY_HIGH = PRIORITY_RANGE


def number(raw: bytes, low: int, high: int) -> int | None:
    """The integer `raw` spells as Valkey's string2ll reads it (see args.parse_int), if it
    lies in low..high; None otherwise."""
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or (digits[0] == 48 and (len(digits) > 1 or digits is not raw)):
        return None
    value = int(raw)
    return value if low <= value <= high else None


def lease_number(message_id: int, raw: bytes) -> int | None:
    """The delivery serial of a LEASE receipt (-1 for another message's), None when the
    receipt is malformed (see valq._lease_no)."""
    owner, _, serial = raw.partition(b"-")
    owner_id = number(owner, 0, U64_MAX)
    lease_no = number(serial, 0, U64_MAX)
    if owner_id is None or lease_no is None:
        return None
    return lease_no if owner_id == message_id else -1


# -- the five commands: the reply, or None before anything happened --------------------------

def lean_push(state: ServerState, session: Session, argv: list[bytes], engine: Engine,
              now: int) -> bytes | None:
    """VALQ PUSH queue body [delay] [PRIORITY p] [DEDUP key]."""
    body = argv[3]
    if len(body) > state.max_message_size or state.maxmemory or (
            state.aof is not None and state.aof.write_error is not None):
        return None
    count = len(argv)
    if count == 4:
        return encode.bulk_int(engine.push(argv[2], body, now))
    at, delay, priority, dedup = 4, 0, 0, None
    if argv[4].isdigit():
        delay_given = number(argv[4], 0, MAX_DELAY)
        if delay_given is None:
            return None
        delay, at = delay_given, 5
    while at < count:
        if at + 1 == count:
            return None
        word = argv[at].upper()
        if word == b"PRIORITY":
            priority_given = number(argv[at + 1], _PRIORITY_LOW, _PRIORITY_HIGH)
            if priority_given is None:
                return None
            priority = priority_given
        elif word == b"DEDUP":
            dedup = argv[at + 1]
        else:
            return None
        at += 2
    return encode.bulk_int(engine.push(argv[2], body, now, delay, priority, dedup))


def lean_pop(state: ServerState, session: Session, argv: list[bytes], engine: Engine,
             now: int) -> bytes | None:
    """VALQ POP queue [COUNT n] [WITHMETA] [NOACK] (with BLOCK: the general path)."""
    count = len(argv)
    if count == 3:
        delivered = engine.pop(argv[2], now)
        if delivered is None:
            return encode.EMPTY_BULK
        return encode.body_id_map(delivered[1], delivered[0], session.proto)
    at, many, withmeta, noack = 3, 0, False, False
    while at < count:
        word = argv[at].upper()
        if word == b"WITHMETA":
            withmeta = True
        elif word == b"NOACK":
            noack = True
        elif word == b"COUNT" and not many and at + 1 < count:
            many_given = number(argv[at + 1], 1, MAX_COUNT)
            if many_given is None:
                return None
            many = many_given
            at += 1
        else:
            return None  # BLOCK, a repeated COUNT, anything else
        at += 1
    proto = session.proto
    maps = [message_map(d, proto, withmeta)
            for d in engine.pop_many(argv[2], now, many or 1, noack)]
    if many:
        return encode.array(maps)
    return maps[0] if maps else encode.EMPTY_BULK


def lean_ack(state: ServerState, session: Session, argv: list[bytes], engine: Engine,
             now: int) -> bytes | None:
    """VALQ ACK queue id [LEASE receipt]."""
    message_id = number(argv[3], 1, U64_MAX)
    if message_id is None:
        return None
    count = len(argv)
    if count == 4:
        engine.ack(argv[2], message_id)
    elif count == 6 and argv[4].upper() == b"LEASE":
        lease_no = lease_number(message_id, argv[5])
        if lease_no is None:
            return None
        engine.ack(argv[2], message_id, lease_no)
    else:
        return None
    return encode.bulk(b"ack %d" % message_id)


def lean_extend(state: ServerState, session: Session, argv: list[bytes], engine: Engine,
                now: int) -> bytes | None:
    """VALQ EXTEND queue id seconds [LEASE receipt]."""
    message_id = number(argv[3], 1, U64_MAX)
    seconds = number(argv[4], I64_MIN, I64_MAX)
    if message_id is None or seconds is None:
        return None
    count = len(argv)
    lease_no = None
    if count == 7 and argv[5].upper() == b"LEASE":
        lease_no = lease_number(message_id, argv[6])
        if lease_no is None:
            return None
    elif count != 5:
        return None
    engine.extend(argv[2], message_id, seconds, now, lease_no)
    return EXTENDED


def lean_nack(state: ServerState, session: Session, argv: list[bytes], engine: Engine,
              now: int) -> bytes | None:
    """VALQ NACK queue id [delay] [LEASE receipt] [REASON text]."""
    message_id = number(argv[3], 1, U64_MAX)
    if message_id is None:
        return None
    count = len(argv)
    at = 4
    delay = lease_no = reason = None
    if count > 4 and argv[4].isdigit():
        delay = number(argv[4], 0, MAX_DELAY)
        if delay is None:
            return None
        at = 5
    while at < count:
        if at + 1 == count:
            return None
        word = argv[at].upper()
        if word == b"LEASE" and lease_no is None:
            lease_no = lease_number(message_id, argv[at + 1])
            if lease_no is None:
                return None
        elif word == b"REASON" and reason is None:
            reason = argv[at + 1]
        else:
            return None
        at += 2
    engine.nack(argv[2], message_id, now, delay, lease_no, reason)
    return encode.bulk(b"nack %d" % message_id)


LEAN_HANDLERS: dict[str, LeanHandler] = {
    "valq|push": lean_push, "valq|pop": lean_pop, "valq|ack": lean_ack,
    "valq|extend": lean_extend, "valq|nack": lean_nack,
}


class LeanPath:
    """`serve` runs the commands of one read on the lean path while they can take it, from
    the first one on, and hands the first that cannot back to the caller (the server runs
    it through the dispatcher, then offers the next ones to `serve` again).

    What a run needs is found once per run, not per command: that the session may take the
    lean path (nothing of what the general path ran before may have changed it: a run ends
    at every command the lean path does not serve), the clock (every command of a run sees
    the time the run started at, as the commands of an EXEC do), and the start of the
    first command's timing (each command is timed from the end of the one before: one
    clock read per command)."""

    def __init__(self, state: ServerState, dispatcher: Dispatcher,
                 serve_waiters: Callable[[], None], reply_slice: int) -> None:
        """`serve_waiters` gives what a push made visible to parked clients; a run stops
        once its replies pass `reply_slice` bytes."""
        self.state = state
        self.serve_waiters = serve_waiters
        self.reply_slice = reply_slice
        self.served = 0  # commands served on the lean path, since start-up (tests read it)
        # command name -> subcommand name -> (lean handler, spec, its commandstats entry),
        # under every spelling the dispatcher's one-lookup table has (renames applied)
        self._commands: dict[bytes, dict[bytes, tuple[LeanHandler, CommandSpec,
                                                      list[int]]]] = {}
        for (command, sub), spec in dispatcher.pairs().items():
            handler = LEAN_HANDLERS.get(spec.name)
            if handler is not None:
                self._commands.setdefault(command, {})[sub] = (
                    handler, spec, state.command_stats[spec.name])

    def serve(self, session: Session, argv: list[bytes],
              next_command: Callable[[], list[bytes] | None], replies: list[bytes],
              turn_left: int, size: int) -> tuple[list[bytes] | None, int, int]:
        """Serve `argv` and the commands `next_command` gives after it, appending their
        replies to `replies`, until one cannot take the lean path (returned, not run), none
        is left (None), or the turn's share is used: `turn_left` commands, or replies past
        `reply_slice` bytes in all (`size` so far). Returns (that command or None, the
        commands left, the reply bytes now)."""
        state = self.state
        if not session.authenticated or session.restricted or session.multi is not None \
                or session.channels or session.patterns or state.loading:
            return argv, turn_left, size  # the dispatcher's checks could refuse it
        commands = self._commands
        databases = state.databases
        readied = databases.readied
        engine = databases.engines[session.db]
        reply_slice = self.reply_slice
        now = state.clock()
        timed_to = perf_counter_ns()
        served_before = turn_left
        try:
            while True:
                subcommands = commands.get(argv[0])
                if subcommands is None or len(argv) < 3:
                    return argv, turn_left, size
                entry = subcommands.get(argv[1])
                if entry is None or len(argv) < entry[1].fewest_args:
                    return argv, turn_left, size
                if now >= databases.due_at:
                    databases.tick(now, TICK_BUDGET)
                handler, spec, stats = entry
                try:
                    reply = handler(state, session, argv, engine, now)
                    if reply is None:
                        return argv, turn_left, size  # the general path answers it
                except CommandError as exc:
                    reply = encode.error(exc.code, exc.message)
                    state.count_error(reply)
                    stats[2] += 1
                except Exception:
                    log.exception("bug: unexpected error in %s", spec.name)
                    reply = encode.error("ERR", "internal error")
                    state.count_error(reply)
                    stats[2] += 1
                ended = perf_counter_ns()
                elapsed_us = (ended - timed_to) // 1000
                timed_to = ended
                state.total_commands += 1
                session.last_command = spec.name
                stats[0] += 1
                stats[1] += elapsed_us
                if elapsed_us >= state.slowlog_threshold_us >= 0:
                    record_slow(state, session, spec.name, argv, elapsed_us)
                replies.append(reply)
                if readied:
                    self.serve_waiters()
                size += len(reply)
                turn_left -= 1
                if size > reply_slice or not turn_left:
                    return None, turn_left, size
                next_argv = next_command()
                if next_argv is None:
                    return None, turn_left, size
                argv = next_argv
        finally:
            self.served += served_before - turn_left
