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
from typing import Callable, Collection, Final

from ..engine import MAX_DELAY, PRIORITY_RANGE, TICK_BUDGET, Engine
from ..errors import CommandError
from ..resp import RequestParser, encode
from ..resp.parser import digits_value
from .args import I64_MAX, I64_MIN, U64_MAX
from .context import CommandStats, ServerState, Session
from .dispatch import Dispatcher, record_slow
from .table import CommandSpec
from .valq import MAX_COUNT, message_map

log = logging.getLogger("valqd")

EXTENDED = encode.bulk(b"extend")
# Final: compiled, constants rather than globals looked up at each use
_U64_MAX: Final = U64_MAX
_I64_MIN: Final = I64_MIN
_I64_MAX: Final = I64_MAX
_MAX_DELAY: Final = MAX_DELAY
_MAX_COUNT: Final = MAX_COUNT
_TICK_BUDGET: Final = TICK_BUDGET
_SHORT_DIGITS: Final = 18  # numbers of at most this many digits fit a machine word
_PRIORITY_LOW: Final = PRIORITY_RANGE[0]
_PRIORITY_HIGH: Final = PRIORITY_RANGE[1]


def number(raw: bytes, low: int, high: int) -> int | None:
    """The integer `raw` spells as Valkey's string2ll reads it (see args.parse_int), if it
    lies in low..high; None otherwise. Up to 18 digits (any id or count in practice) it is
    read digit by digit (compiled, native arithmetic; int() on bytes costs ~0.9k
    instructions)."""
    size = len(raw)
    start = 1 if size and raw[0] == 45 else 0  # b"-"
    if start == size or (raw[start] == 48 and size > 1):  # b"0": only 0 itself (no -0, 01)
        return None
    if size - start > _SHORT_DIGITS:
        if not raw[start:].isdigit():
            return None
        value = int(raw)
    else:
        value = digits_value(raw, start)
        if value < 0:
            return None
        if start:
            value = -value
    return value if low <= value <= high else None


def u64(raw: bytes, low: int) -> int | None:
    """`number(raw, low, U64_MAX)`, without comparing with U64_MAX while `raw` is short
    (compiled, a comparison with a number past 62 bits is one of boxed objects)."""
    size = len(raw)
    if not 0 < size <= _SHORT_DIGITS or (raw[0] == 48 and size > 1):
        return number(raw, low, _U64_MAX)
    value = digits_value(raw, 0)
    return value if value >= low else None  # (-1: not digits)


def lease_number(message_id: int, raw: bytes) -> int | None:
    """The delivery serial of a LEASE receipt (-1 for another message's), None when the
    receipt is malformed (see valq._lease_no)."""
    owner, _, serial = raw.partition(b"-")
    owner_id = u64(owner, 0)
    lease_no = u64(serial, 0)
    if owner_id is None or lease_no is None:
        return None
    return lease_no if owner_id == message_id else -1


# -- the five commands: the reply, or None before anything happened --------------------------

def lean_push(argv: list[bytes], engine: Engine, now: int, max_body: int) -> bytes | None:
    """VALQ PUSH queue body [delay] [PRIORITY p] [DEDUP key]; `max_body` is -1 while the
    server refuses to add data (maxmemory set, an AOF write error)."""
    body = argv[3]
    if len(body) > max_body:
        return None
    count = len(argv)
    if count == 4:
        return encode.bulk_int(engine.push(argv[2], body, now))
    at, delay, priority, dedup = 4, 0, 0, None
    if argv[4].isdigit():
        delay_given = number(argv[4], 0, _MAX_DELAY)
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


def lean_pop(argv: list[bytes], engine: Engine, now: int, proto: int) -> bytes | None:
    """VALQ POP queue [COUNT n] [WITHMETA] [NOACK] (with BLOCK: the general path)."""
    count = len(argv)
    if count == 3:
        delivered = engine.pop(argv[2], now)
        if delivered is None:
            return encode.EMPTY_BULK
        return encode.body_id_map(delivered[1], delivered[0], proto)
    at, many, withmeta, noack = 3, 0, False, False
    while at < count:
        word = argv[at].upper()
        if word == b"WITHMETA":
            withmeta = True
        elif word == b"NOACK":
            noack = True
        elif word == b"COUNT" and not many and at + 1 < count:
            many_given = number(argv[at + 1], 1, _MAX_COUNT)
            if many_given is None:
                return None
            many = many_given
            at += 1
        else:
            return None  # BLOCK, a repeated COUNT, anything else
        at += 1
    maps = [message_map(d, proto, withmeta)
            for d in engine.pop_many(argv[2], now, many or 1, noack)]
    if many:
        return encode.array(maps)
    return maps[0] if maps else encode.EMPTY_BULK


def lean_ack(argv: list[bytes], engine: Engine) -> bytes | None:
    """VALQ ACK queue id [LEASE receipt]."""
    message_id = u64(argv[3], 1)
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
    return encode.bulk_int(message_id, b"ack ")


def lean_extend(argv: list[bytes], engine: Engine, now: int) -> bytes | None:
    """VALQ EXTEND queue id seconds [LEASE receipt]."""
    message_id = u64(argv[3], 1)
    seconds = number(argv[4], _I64_MIN, _I64_MAX)
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


def lean_nack(argv: list[bytes], engine: Engine, now: int) -> bytes | None:
    """VALQ NACK queue id [delay] [LEASE receipt] [REASON text]."""
    message_id = u64(argv[3], 1)
    if message_id is None:
        return None
    count = len(argv)
    at = 4
    delay = lease_no = reason = None
    if count > 4 and argv[4].isdigit():
        delay = number(argv[4], 0, _MAX_DELAY)
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
    return encode.bulk_int(message_id, b"nack ")


# which of the five a LeanCommand is (compiled, serve calls each function directly: a
# function taken as a value would be called the slow way, through its Python wrapper)
PUSH: Final = 0
POP: Final = 1
ACK: Final = 2
EXTEND: Final = 3
NACK: Final = 4
LEAN_KINDS: Final = {"valq|push": PUSH, "valq|pop": POP, "valq|ack": ACK,
                     "valq|extend": EXTEND, "valq|nack": NACK}


class LeanCommand:
    """One of the five commands: what `serve` reads of it per command, in fields of a
    class of this module (compiled, plain loads; a CommandSpec's go through getattr)."""

    __slots__ = ("kind", "name", "fewest_args", "stats")

    def __init__(self, kind: int, spec: CommandSpec, stats: CommandStats) -> None:
        self.kind = kind
        self.name = spec.name
        self.fewest_args = spec.fewest_args
        self.stats = stats  # its commandstats entry


class LeanPath:
    """`serve` runs the commands of one read on the lean path while they can take it, from
    the first one on, and hands the first that cannot back to the caller (the server runs
    it through the dispatcher, then offers the next ones to `serve` again).

    What a run needs is found once per run, not per command: that the session may take the
    lean path (nothing of what the general path ran before may have changed it: a run ends
    at every command the lean path does not serve), whether data may be added (maxmemory,
    the AOF's write error: both change only between runs), the clock (every command of a
    run sees the time the run started at, as the commands of an EXEC do), and the start of
    the first command's timing (each command is timed from the end of the one before: one
    clock read per command). Calls and time are added to commandstats once per stretch of
    one command (a pipeline of PUSHes: once), not once per command."""

    def __init__(self, state: ServerState, dispatcher: Dispatcher,
                 serve_waiters: Callable[[], None], waiters: Collection[object],
                 reply_slice: int) -> None:
        """`serve_waiters` gives what a push made visible to the parked clients, which
        `waiters` holds (while it is empty, there is nobody to give it to); a run stops
        once its replies pass `reply_slice` bytes."""
        self.state = state
        self.serve_waiters = serve_waiters
        self.waiters = waiters
        self.reply_slice = reply_slice
        self.served = 0  # commands served on the lean path, since start-up (tests read it)
        # command name -> subcommand name -> the command, under every spelling the
        # dispatcher's one-lookup table has (renames applied)
        self._commands: dict[bytes, dict[bytes, LeanCommand]] = {}
        for (command, sub), spec in dispatcher.pairs().items():
            kind = LEAN_KINDS.get(spec.name)
            if kind is not None:
                self._commands.setdefault(command, {})[sub] = LeanCommand(
                    kind, spec, state.command_stats[spec.name])
        # the last command found, under the spelling it was found by: a pipeline repeats
        # one (two byte compares instead of two hashes and dict lookups)
        self._last_name = self._last_sub = b""
        self._last: LeanCommand | None = None

    def find(self, argv: list[bytes]) -> LeanCommand | None:
        """The lean command `argv` names, if it has the arguments it needs at least."""
        if len(argv) < 3:
            return None
        name, sub = argv[0], argv[1]
        if name == self._last_name and sub == self._last_sub:
            command = self._last
        else:
            subcommands = self._commands.get(name)
            if subcommands is None:
                return None
            command = subcommands.get(sub)
            if command is None:
                return None
            self._last_name, self._last_sub, self._last = name, sub, command
        return command if command is not None and len(argv) >= command.fewest_args else None

    def serve(self, session: Session, argv: list[bytes], parser: RequestParser,
              replies: list[bytes], turn_left: int, size: int
              ) -> tuple[list[bytes] | None, int, int]:
        """Serve `argv` and the commands `parser` gives after it, appending their replies
        to `replies`, until one cannot take the lean path (returned, not run), none is left
        (None), or the turn's share is used: `turn_left` commands, or replies past
        `reply_slice` bytes in all (`size` so far). Returns (that command or None, the
        commands left, the reply bytes now)."""
        state = self.state
        # not one of the five (found first: any other command pays nothing more), or
        # the dispatcher's checks could refuse it
        command = self.find(argv)
        if command is None or not session.authenticated or session.restricted or \
                session.multi is not None or session.channels or session.patterns or \
                state.loading:
            return argv, turn_left, size
        databases = state.databases
        readied = databases.readied
        waiters = self.waiters
        engine = databases.engines[session.db]
        proto = session.proto
        reply_slice = self.reply_slice
        aof = state.aof
        max_body = -1 if state.maxmemory or (aof is not None and aof.write_error is not None) \
            else state.max_message_size
        now = state.clock()
        clock_ns = perf_counter_ns  # (compiled, a global is a dict lookup at each use)
        timed_to = clock_ns()
        served_before = turn_left
        counted: LeanCommand | None = None  # the command `calls` and `usec_spent` are of
        calls = usec_spent = 0
        try:
            while True:
                if now >= databases.due_at:
                    databases.tick(now, _TICK_BUDGET)
                kind = command.kind
                try:
                    if kind == PUSH:
                        reply = lean_push(argv, engine, now, max_body)
                    elif kind == POP:
                        reply = lean_pop(argv, engine, now, proto)
                    elif kind == ACK:
                        reply = lean_ack(argv, engine)
                    elif kind == EXTEND:
                        reply = lean_extend(argv, engine, now)
                    else:
                        reply = lean_nack(argv, engine, now)
                    if reply is None:
                        return argv, turn_left, size  # the general path answers it
                except CommandError as exc:
                    reply = encode.error(exc.code, exc.message)
                    state.count_error(reply)
                    command.stats.failed += 1
                except Exception:
                    log.exception("bug: unexpected error in %s", command.name)
                    reply = encode.error("ERR", "internal error")
                    state.count_error(reply)
                    command.stats.failed += 1
                ended = clock_ns()
                elapsed_us = (ended - timed_to) // 1000
                timed_to = ended
                if command is not counted:
                    if counted is not None:
                        _count(counted, calls, usec_spent)
                    counted, calls, usec_spent = command, 0, 0
                calls += 1
                usec_spent += elapsed_us
                state.total_commands += 1
                session.last_command = command.name
                if elapsed_us >= state.slowlog_threshold_us >= 0:
                    record_slow(state, session, command.name, argv, elapsed_us)
                replies.append(reply)
                if readied:
                    if waiters:
                        self.serve_waiters()
                    elif len(readied) == 1:  # a push readies its queue every time; nobody
                        readied.pop()  # waits (pop: cheaper than clear for one)
                    else:
                        readied.clear()
                size += len(reply)
                turn_left -= 1
                if size > reply_slice or not turn_left:
                    return None, turn_left, size
                next_argv = parser.next_command()
                if next_argv is None:
                    return None, turn_left, size
                argv = next_argv
                following = self.find(argv)
                if following is None:
                    return argv, turn_left, size
                command = following
        finally:
            self.served += served_before - turn_left
            if counted is not None:
                _count(counted, calls, usec_spent)


def _count(command: LeanCommand, calls: int, usec_spent: int) -> None:
    """Add to the command's commandstats entry."""
    stats = command.stats
    stats.calls += calls
    stats.usec += usec_spent
