"""The VALQ subcommands, one function each.

Every handler takes (state, session, argv) with argv the whole command
(`[b"VALQ", b"PUSH", queue, ...]`; arity was checked by the dispatcher) and returns the
encoded reply. Errors are raised as `CommandError` and its subclasses.
"""

from ..engine import MAX_DELAY, make_settings
from ..errors import CommandError
from ..resp import encode
from .args import Args, parse_int
from .context import ServerState, Session

_PURGE_PARTS = {b"main": "main", b"dlq": "dlq", b"delayed": "delayed"}
_ID_MESSAGE = "message id must be a positive integer"


def _message_id(raw: bytes) -> int:
    return parse_int(raw, 1, 2**64 - 1, _ID_MESSAGE)


def valq_help(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ HELP -> array of `valq <sub> - <summary>` lines."""
    container = state.commands["valq"]
    return encode.bulk_array([f"valq {sub.name.split('|')[1]} - {sub.summary}".encode()
                              for sub in container.subcommands.values()])


def valq_create(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ CREATE queue [visibility_timeout [max_delivery_attempts [retention_period]]]
    -> bulk `created <queue>`. ERR on a bad or out-of-range value, BUSYQUEUE if it exists."""
    args = Args(argv, 2)
    name = args.next_bytes()
    if args.remaining() > 3:
        raise CommandError("syntax error")
    numbers = [args.next_int() for _ in range(args.remaining())]
    state.engine.create_queue(name, make_settings(*numbers))
    return encode.bulk(b"created " + name)


def valq_delete(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ DELETE queue -> bulk `deleted <queue>`; NOQUEUE."""
    state.engine.delete_queue(argv[2])
    return encode.bulk(b"deleted " + argv[2])


def valq_update(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ UPDATE queue visibility_timeout max_delivery_attempts retention_period
    -> bulk `updated <queue>`; ERR on a bad value, NOQUEUE."""
    args = Args(argv, 2)
    name = args.next_bytes()
    numbers = [args.next_int() for _ in range(3)]
    args.finish()
    state.engine.update_queue(name, make_settings(*numbers))
    return encode.bulk(b"updated " + name)


def valq_list(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ LIST -> array of queue names, sorted."""
    return encode.bulk_array(state.engine.queue_names())


def valq_info(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ INFO queue -> map of 7 counters and settings, every value a bulk string; NOQUEUE."""
    q = state.engine.queue(argv[2])
    fields = (
        (b"delayed_msgs", len(q.delayed)),
        (b"dlq_msgs", len(q.dead)),
        (b"id_sequence", q.id_sequence),
        (b"max_delivery_attempts", q.settings.max_delivery_attempts),
        (b"msgs", q.main_count()),
        (b"retention_period", q.settings.retention_period),
        (b"visibility_timeout", q.settings.visibility_timeout),
    )
    pairs = []
    for key, value in fields:
        pairs += (encode.bulk(key), encode.bulk_int(value))
    return encode.map_(pairs, session.proto)


def valq_purge(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ PURGE queue [main|dlq|delayed] -> integer removed; ERR on another word, NOQUEUE."""
    if len(argv) > 4:
        raise CommandError("syntax error")
    part = "main"
    if len(argv) > 3:
        part = _PURGE_PARTS.get(argv[3].lower())  # type: ignore[assignment]
        if part is None:
            raise CommandError("purge type must be one of main, dlq, delayed")
    return encode.integer(state.engine.purge(argv[2], part))


def valq_push(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ PUSH queue body [delay] -> bulk id. delay: whole seconds, 0 .. 2^64-1.
    ERR on a bad delay, NOQUEUE."""
    if len(argv) > 5:
        raise CommandError("syntax error")
    delay = parse_int(argv[4], 0, MAX_DELAY, "delay must be an integer between 0 and "
                      "18446744073709551615") if len(argv) == 5 else 0
    return encode.bulk_int(state.engine.push(argv[2], argv[3], state.now, delay))


def valq_pop(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ POP queue -> map {body, id}, or "" when nothing is visible; NOQUEUE."""
    if len(argv) > 3:
        raise CommandError("syntax error")
    delivered = state.engine.pop(argv[2], state.now)
    if delivered is None:
        return encode.EMPTY_BULK
    message_id, body = delivered
    return encode.map_([b"$4\r\nbody\r\n", encode.bulk(body), b"$2\r\nid\r\n",
                        encode.bulk_int(message_id)], session.proto)


def valq_ack(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ ACK queue id -> bulk `ack <id>`. NOMSG unless the message is in the main queue."""
    if len(argv) > 4:
        raise CommandError("syntax error")
    message_id = _message_id(argv[3])
    state.engine.ack(argv[2], message_id)
    return encode.bulk(b"ack %d" % message_id)


def valq_extend(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """VALQ EXTEND queue id seconds -> bulk `extend`. The message stays invisible until
    now + seconds (0 .. 43200). ERR on a bad value, NOQUEUE, NOMSG."""
    if len(argv) > 5:
        raise CommandError("syntax error")
    message_id = _message_id(argv[3])
    seconds = parse_int(argv[4])
    state.engine.extend(argv[2], message_id, seconds, state.now)
    return encode.bulk(b"extend")
