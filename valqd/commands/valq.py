"""The VALQ subcommands, one function each.

Every handler takes (state, session, argv) with argv the whole command
(`[b"VALQ", b"PUSH", queue, ...]`; arity was checked by the dispatcher) and returns the
encoded reply, or a `Blocked` request when a blocking pop has to wait. Errors are raised as
`CommandError` and its subclasses. valqd's additions to the module's syntax are optional
keywords after the module's own arguments.
"""

from typing import Iterable

from ..engine import (MAX_DELAY, PRIORITY_RANGE, Delivery, Queue, QueueSettings,
                      make_settings)
from ..engine.record import ID_MASK, body_of, unpack
from ..errors import CommandError, NoMessageError
from ..resp import encode
from .args import U64_MAX, Args, parse_int
from .context import Blocked, ServerState, Session

_PARTS = {b"main": "main", b"dlq": "dlq", b"delayed": "delayed"}
_ID_MESSAGE = "message id must be a positive integer"
_DELAY_MESSAGE = "delay must be an integer between 0 and 18446744073709551615"
MAX_COUNT = 1000
UPDATED = encode.bulk(b"updated q")  # the module's reply, naming no queue
MAX_BLOCK_MS = 2**63 - 1


_RECEIPT_MESSAGE = "invalid lease receipt"


def _message_id(raw: bytes) -> int:
    return parse_int(raw, 1, U64_MAX, _ID_MESSAGE)


def _delay(raw: bytes) -> int:
    return parse_int(raw, 0, MAX_DELAY, _DELAY_MESSAGE)


def receipt(message_id: int, lease_no: int) -> bytes:
    """The opaque LEASE receipt of one delivery."""
    return b"%d-%d" % (message_id, lease_no)


def _lease_no(message_id: int, raw: bytes) -> int:
    """The delivery serial inside a receipt; a receipt for another message never matches."""
    owner, _, lease_no = raw.partition(b"-")
    owner_id = parse_int(owner, 0, U64_MAX, _RECEIPT_MESSAGE)
    number = parse_int(lease_no, 0, U64_MAX, _RECEIPT_MESSAGE)
    return number if owner_id == message_id else -1


def _b(key: str) -> bytes:
    return encode.bulk(key.encode())


# -- queues ------------------------------------------------------------------------------

SETTING_KEYWORDS = {b"VISIBILITY", b"MAXATTEMPTS", b"RETENTION", b"BACKOFF", b"DEDUPWINDOW",
                    b"MAXLEN"}


def _settings_keywords(args: Args, settings: QueueSettings) -> QueueSettings:
    """VISIBILITY s, MAXATTEMPTS n, RETENTION s, BACKOFF NONE|FIXED s|EXPONENTIAL b m,
    DEDUPWINDOW s, MAXLEN n, in any order, each at most once."""
    seen = set()
    while args.remaining():
        word = args.next_keyword()
        if word in seen:
            raise CommandError(f"{word} given twice")
        seen.add(word)
        if word == "VISIBILITY":
            settings = make_settings(args.next_int(), base=settings)
        elif word == "MAXATTEMPTS":
            settings = make_settings(None, args.next_int(), base=settings)
        elif word == "RETENTION":
            settings = make_settings(None, None, args.next_int(), base=settings)
        elif word == "BACKOFF":
            kind = args.next_keyword().lower()
            first = ceiling = 0
            if kind == "fixed":
                first = ceiling = args.next_int()
            elif kind == "exponential":
                first, ceiling = args.next_int(), args.next_int()
            elif kind != "none":
                raise CommandError("backoff must be NONE, FIXED or EXPONENTIAL")
            settings = make_settings(base=settings, backoff=(kind, first, ceiling))
        elif word == "DEDUPWINDOW":
            settings = make_settings(base=settings, dedup_window=args.next_int())
        elif word == "MAXLEN":
            settings = make_settings(base=settings, maxlen=args.next_int())
        else:
            raise CommandError("syntax error")
    return settings


def valq_help(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ HELP -> array of `valq <sub> - <summary>` lines."""
    container = state.commands["valq"]
    return encode.bulk_array([f"valq {sub.name.split('|')[1]} - {sub.summary}".encode()
                              for sub in container.subcommands.values()])


def valq_create(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ CREATE queue [visibility_timeout [max_delivery_attempts [retention_period]]]
    [VISIBILITY s] [MAXATTEMPTS n] [RETENTION s] [BACKOFF ...] [DEDUPWINDOW s] [MAXLEN n]
    -> bulk `created <queue>`. ERR on a bad or out-of-range value, BUSYQUEUE if it exists."""
    args = Args(argv, 2)
    name = args.next_bytes()
    numbers: list[int | None] = []
    while args.remaining() and len(numbers) < 3 and \
            argv[args.pos].upper() not in SETTING_KEYWORDS:
        numbers.append(args.next_int())
    numbers += [None] * (3 - len(numbers))
    settings = _settings_keywords(args, make_settings(numbers[0], numbers[1], numbers[2]))
    state.engine.create_queue(name, settings)
    return encode.bulk(b"created " + name)


def valq_update(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ UPDATE queue visibility_timeout max_delivery_attempts retention_period
    | VALQ UPDATE queue [VISIBILITY s] [MAXATTEMPTS n] ... (any subset)
    -> bulk `updated q`: the literal letter q whatever the queue is called, as the module
    replies; ERR on a bad value, NOQUEUE."""
    args = Args(argv, 2)
    name = args.next_bytes()
    if not args.remaining() or argv[3].upper() not in SETTING_KEYWORDS:
        if len(argv) != 6:
            raise CommandError("wrong number of arguments for 'valq|update' command")
        settings = make_settings(args.next_int(), args.next_int(), args.next_int(),
                                 base=state.engine.queue(name).settings)
    else:
        settings = _settings_keywords(args, state.engine.queue(name).settings)
    state.engine.update_queue(name, settings)
    return UPDATED


def valq_delete(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ DELETE queue -> bulk `deleted <queue>`, also when there is no such queue (as in
    the module: deleting a missing key is not an error)."""
    if argv[2] in state.engine.queues:
        state.engine.delete_queue(argv[2])
    return encode.bulk(b"deleted " + argv[2])


def valq_list(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ LIST -> array of queue names, sorted."""
    return encode.bulk_array(state.engine.queue_names())


def valq_info(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ INFO queue -> map of 7 counters and settings, every value a bulk string; NOQUEUE."""
    q = state.engine.queue(argv[2])
    fields = (
        ("delayed_msgs", len(q.delayed)),
        ("dlq_msgs", len(q.dead)),
        ("id_sequence", q.id_sequence),
        ("max_delivery_attempts", q.settings.max_delivery_attempts),
        ("msgs", q.main_count()),
        ("retention_period", q.settings.retention_period),
        ("visibility_timeout", q.settings.visibility_timeout),
    )
    return _int_map(fields, session.proto)


def _int_map(fields: Iterable[tuple[str, int | str]], proto: int) -> bytes:
    pairs: list[bytes] = []
    for key, value in fields:
        pairs += (_b(key), encode.bulk_str(value) if isinstance(value, str)
                  else encode.bulk_int(value))
    return encode.map_(pairs, proto)


def valq_stats(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ STATS queue -> map of counts, every setting, the lifetime counters (since
    start-up), oldest_ready_age_ms (age of the next message to be delivered) and blocked
    consumers; keys in ascending order, values bulk strings. NOQUEUE."""
    q = state.engine.queue(argv[2])
    s = q.settings
    backoff = {"none": "none", "fixed": f"fixed {s.backoff_base}",
               "exponential": f"exponential {s.backoff_base} {s.backoff_max}"}[s.backoff]
    fields: dict[str, int | str] = dict(q.counters.as_dict())
    fields.update(
        backoff=backoff, blocked=state.blocked_consumers(q.name), dedup_window=s.dedup_window,
        delayed=len(q.delayed), dlq=len(q.dead), id_sequence=q.id_sequence,
        inflight=len(q.leases), max_delivery_attempts=s.max_delivery_attempts,
        maxlen=s.maxlen, oldest_ready_age_ms=q.next_ready_age_ms(state.now), paused=int(q.paused),
        ready=len(q.ready), retention_period=s.retention_period,
        visibility_timeout=s.visibility_timeout)
    return _int_map(sorted(fields.items()), session.proto)


def valq_purge(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ PURGE queue [main|dlq|delayed] -> integer removed; ERR on another word, NOQUEUE."""
    if len(argv) > 4:
        raise CommandError("syntax error")
    part = _PARTS.get(argv[3].lower()) if len(argv) == 4 else "main"
    if part is None:
        raise CommandError("purge type must be one of main, dlq, delayed")
    return encode.integer(state.engine.purge(argv[2], part))


def valq_pause(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ PAUSE queue -> bulk `paused <queue>`: POP delivers nothing until RESUME."""
    state.engine.pause(argv[2], True)
    return encode.bulk(b"paused " + argv[2])


def valq_resume(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ RESUME queue -> bulk `resumed <queue>`."""
    state.engine.pause(argv[2], False)
    return encode.bulk(b"resumed " + argv[2])


# -- producing -----------------------------------------------------------------------------

def valq_push(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ PUSH queue body [delay] [PRIORITY p] [DEDUP key] -> bulk id (the first
    message's id for a duplicate DEDUP key). delay: whole seconds, 0 .. 2^64-1; priority:
    -2147483648 .. 2147483647, higher first. ERR on a bad value, NOQUEUE, QUEUEFULL."""
    if len(argv[3]) > state.max_message_size:
        raise CommandError(f"message body is {len(argv[3])} bytes, more than "
                           f"max-message-size ({state.max_message_size})")
    if len(argv) == 4:  # the module's form, the hot path
        return encode.bulk_int(state.engine.push(argv[2], argv[3], state.now))
    args = Args(argv, 4)
    delay = 0
    if args.remaining() and argv[4].upper() not in (b"PRIORITY", b"DEDUP"):
        delay = _delay(args.next_bytes())
    priority, dedup = 0, None
    while args.remaining():
        word = args.next_keyword()
        if word == "PRIORITY":
            priority = args.next_int(*PRIORITY_RANGE, message="priority must be an integer "
                                     "between -2147483648 and 2147483647")
        elif word == "DEDUP":
            dedup = args.next_bytes()
        else:
            raise CommandError("syntax error")
    return encode.bulk_int(state.engine.push(argv[2], argv[3], state.now, delay, priority,
                                             dedup))


def valq_mpush(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ MPUSH queue body [body ...] -> array of ids; all or nothing. NOQUEUE, QUEUEFULL,
    ERR for a body over max-message-size."""
    largest = max(map(len, argv[3:]))
    if largest > state.max_message_size:
        raise CommandError(f"message body is {largest} bytes, more than "
                           f"max-message-size ({state.max_message_size})")
    ids = state.engine.push_many(argv[2], argv[3:], state.now)
    return encode.array([encode.bulk_int(i) for i in ids])


# -- consuming -----------------------------------------------------------------------------

def message_map(d: Delivery, proto: int, withmeta: bool) -> bytes:
    if not withmeta:
        return encode.body_id_map(d.body, d.id, proto)
    return encode.map_([
        _b("attempts"), encode.bulk_int(d.attempts),
        _b("body"), encode.bulk(d.body),
        _b("enqueued_at"), encode.bulk_int(d.enqueued_at),
        _b("id"), encode.bulk_int(d.id),
        _b("lease"), encode.bulk(receipt(d.id, d.lease_no) if d.lease_no else b""),
        _b("lease_deadline"), encode.bulk_int(d.lease_deadline),
        _b("priority"), encode.bulk_int(d.priority),
    ], proto)


class PopOptions:
    """POP's and MPOP's options, checked (a store's front end checks them the same way)."""

    __slots__ = ("count", "block_ms", "withmeta", "noack")

    def __init__(self, args: Args) -> None:
        self.count: int | None = None
        self.block_ms: int | None = None
        self.withmeta = self.noack = False
        while args.remaining():
            word = args.next_keyword()
            if word == "COUNT" and self.count is None:
                self.count = args.next_int(1, MAX_COUNT, f"COUNT must be between 1 and "
                                                         f"{MAX_COUNT}")
            elif word == "BLOCK" and self.block_ms is None:
                self.block_ms = args.next_int(0, MAX_BLOCK_MS, "timeout is not an integer "
                                                               "or out of range")
            elif word == "WITHMETA":
                self.withmeta = True
            elif word == "NOACK":
                self.noack = True
            else:
                raise CommandError("syntax error")


def _deliver(state: ServerState, name: bytes, opts: PopOptions,
             proto: int) -> list[bytes]:
    count = opts.count or 1
    return [message_map(d, proto, opts.withmeta)
            for d in state.engine.pop_many(name, state.now, count, opts.noack)]


def valq_pop(state: ServerState, session: Session, argv: list[bytes]) -> bytes | Blocked:
    """VALQ POP queue [COUNT n] [BLOCK ms] [WITHMETA] [NOACK] -> one message map {body, id}
    or "" when none; with COUNT (1..1000) an array of maps, empty when none. BLOCK waits up
    to ms (0: forever). WITHMETA adds attempts, lease, enqueued_at, lease_deadline and
    priority; NOACK removes each message as it is delivered. NOQUEUE."""
    name = argv[2]
    if len(argv) == 3:  # the module's form, the hot path
        delivered = state.engine.pop(name, state.now)
        if delivered is None:
            return encode.EMPTY_BULK
        message_id, body = delivered
        return encode.body_id_map(body, message_id, session.proto)
    opts = PopOptions(Args(argv, 3))
    proto = session.proto

    def attempt() -> bytes | None:
        maps = _deliver(state, name, opts, proto)
        if not maps:
            return None
        return encode.array(maps) if opts.count is not None else maps[0]

    empty = encode.EMPTY_ARRAY if opts.count is not None else encode.EMPTY_BULK
    reply = attempt()
    if reply is not None:
        return reply
    if opts.block_ms is None:
        return empty
    return Blocked([name], opts.block_ms, attempt, empty, session.db)


def mpop_queues(argv: list[bytes]) -> list[bytes]:
    """MPOP's queues (numqueues of them, named as often as given), checked."""
    numqueues = parse_int(argv[2], message="numqueues should be greater than 0")
    if numqueues < 1:
        raise CommandError("numqueues should be greater than 0")
    if numqueues > len(argv) - 3:
        raise CommandError("Number of queues can't be greater than number of args")
    return argv[3:3 + numqueues]


def valq_mpop(state: ServerState, session: Session, argv: list[bytes]) -> bytes | Blocked:
    """VALQ MPOP numqueues queue [queue ...] [COUNT n] [BLOCK ms] [WITHMETA] [NOACK]
    -> [queue, [message maps]] from the first queue, left to right, that has a visible
    message; nil when nothing came. NOQUEUE."""
    names = mpop_queues(argv)
    for name in names:
        state.engine.queue(name)
    opts = PopOptions(Args(argv, 3 + len(names)))
    proto = session.proto

    def attempt() -> bytes | None:
        for name in names:
            maps = _deliver(state, name, opts, proto)
            if maps:
                return encode.array([encode.bulk(name), encode.array(maps)])
        return None

    reply = attempt()
    if reply is not None:
        return reply
    empty = encode.null_array(proto)
    if opts.block_ms is None:
        return empty
    # a queue named twice is waited on once: one blocked consumer, served once
    return Blocked(list(dict.fromkeys(names)), opts.block_ms, attempt, empty, session.db)


def _lease_option(args: Args, message_id: int,
                  with_reason: bool = False) -> tuple[int | None, bytes | None]:
    """[LEASE receipt] (and with `with_reason`, [REASON text]) -> (lease_no or None, reason
    or None)."""
    lease_no = reason = None
    while args.remaining():
        word = args.next_keyword()
        if word == "LEASE" and lease_no is None:
            lease_no = _lease_no(message_id, args.next_bytes())
        elif word == "REASON" and reason is None and with_reason:
            reason = args.next_bytes()
        else:
            raise CommandError("syntax error")
    return lease_no, reason


def valq_ack(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ ACK queue id [LEASE receipt] -> bulk `ack <id>`. NOMSG unless the message is in
    the main queue; NOLEASE when the receipt is not its current delivery."""
    message_id = _message_id(argv[3])
    lease_no = _lease_option(Args(argv, 4), message_id)[0] if len(argv) > 4 else None
    state.engine.ack(argv[2], message_id, lease_no)
    return encode.bulk(b"ack %d" % message_id)


def valq_mack(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ MACK queue id [id ...] -> integer: how many were in the main queue and acked."""
    ids = [_message_id(raw) for raw in argv[3:]]
    return encode.integer(state.engine.ack_many(argv[2], ids))


def valq_extend(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ EXTEND queue id seconds [LEASE receipt] -> bulk `extend`. The message stays
    invisible until now + seconds (0 .. 43200). ERR on a bad value, NOQUEUE, NOMSG,
    NOLEASE."""
    message_id = _message_id(argv[3])
    seconds = parse_int(argv[4])
    lease_no, _ = _lease_option(Args(argv, 5), message_id)
    state.engine.extend(argv[2], message_id, seconds, state.now, lease_no)
    return encode.bulk(b"extend")


def valq_nack(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ NACK queue id [delay] [LEASE receipt] [REASON text] -> bulk `nack <id>`. Ends
    the delivery now: visible again after delay seconds, or the queue's backoff; to the DLQ
    at once after the last attempt. NOMSG, NOLEASE (also when the message is not in flight)."""
    message_id = _message_id(argv[3])
    args = Args(argv, 4)
    delay = None
    if args.remaining() and argv[4].upper() not in (b"LEASE", b"REASON"):
        delay = _delay(args.next_bytes())
    lease_no, reason = _lease_option(args, message_id, with_reason=True)
    state.engine.nack(argv[2], message_id, state.now, delay, lease_no, reason)
    return encode.bulk(b"nack %d" % message_id)


# -- operating -----------------------------------------------------------------------------

_TIME_FIELDS = {"inflight": "lease_deadline", "delayed": "due_at", "dlq": "dead_at"}


def _message_info(q: Queue, message_id: int, proto: int) -> bytes:
    """GET's map: attempts, body, dead_at|due_at|lease_deadline (whichever applies),
    enqueued_at, id, last_reason (nil when none), priority, state; keys ascending."""
    rec = q.records[message_id]
    enqueued_at, _, _, attempts, priority = unpack(rec)
    state, at = q.state_at(message_id)
    time_field = _TIME_FIELDS.get(state)
    fields: list[tuple[str, bytes]] = [
        ("attempts", encode.bulk_int(attempts)), ("body", encode.bulk(body_of(rec))),
        ("enqueued_at", encode.bulk_int(enqueued_at)), ("id", encode.bulk_int(message_id)),
        ("priority", encode.bulk_int(priority)), ("state", encode.bulk_str(state)),
    ]
    reason = q.reasons.get(message_id)
    fields.append(("last_reason", encode.bulk(reason) if reason is not None
                   else encode.null(proto)))
    if time_field is not None:
        fields.append((time_field, encode.bulk_int(at)))
    pairs: list[bytes] = []
    for key, value in sorted(fields):
        pairs += (_b(key), value)
    return encode.map_(pairs, proto)


def valq_get(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ GET queue id -> the message's map wherever it is (see PEEK); NOQUEUE, NOMSG."""
    q = state.engine.queue(argv[2])
    message_id = _message_id(argv[3])
    if message_id not in q.records:
        raise NoMessageError(q.name, message_id)
    return _message_info(q, message_id, session.proto)


def valq_peek(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ PEEK queue [READY|INFLIGHT|DELAYED|DLQ] [COUNT n] -> array of GET maps, in the
    order they will be delivered, expire, fall due or be dropped; changes nothing. COUNT
    defaults to 10, at most 1000."""
    q = state.engine.queue(argv[2])
    args = Args(argv, 3)
    index, count = q.ready, 10
    indexes = {"READY": q.ready, "INFLIGHT": q.lease_order, "DELAYED": q.delayed_order,
               "DLQ": q.dead_order}
    if args.remaining() and argv[3].upper() in (b"READY", b"INFLIGHT", b"DELAYED", b"DLQ"):
        index = indexes[args.next_keyword()]
    if args.remaining():
        if args.next_keyword() != "COUNT":
            raise CommandError("syntax error")
        count = args.next_int(1, MAX_COUNT, f"COUNT must be between 1 and {MAX_COUNT}")
    args.finish()
    return encode.array([_message_info(q, key & ID_MASK, session.proto)
                         for key in index.islice(0, count)])


def valq_cancel(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ CANCEL queue id -> integer 1: the message is gone, whatever its state. NOMSG."""
    state.engine.cancel(argv[2], _message_id(argv[3]))
    return encode.integer(1)


def valq_reschedule(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ RESCHEDULE queue id delay -> bulk `rescheduled <id>`: a ready or delayed message
    falls due delay seconds from now. NOMSG; ERR for one in flight or in the DLQ."""
    message_id = _message_id(argv[3])
    state.engine.reschedule(argv[2], message_id, _delay(argv[4]), state.now)
    return encode.bulk(b"rescheduled %d" % message_id)


def valq_redrive(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ REDRIVE queue [COUNT n] [TO other] -> integer moved: the oldest DLQ messages
    (all by default) back to the main queue of queue or other, attempts reset."""
    args = Args(argv, 3)
    count = target = None
    while args.remaining():
        word = args.next_keyword()
        if word == "COUNT" and count is None:
            count = args.next_int(1, message="COUNT must be a positive integer")
        elif word == "TO" and target is None:
            target = args.next_bytes()
        else:
            raise CommandError("syntax error")
    return encode.integer(state.engine.redrive(argv[2], state.now, count, target))

