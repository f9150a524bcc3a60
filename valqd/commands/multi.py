"""Transactions: MULTI, EXEC, DISCARD, WATCH and UNWATCH, as Valkey 9.1 runs them.

While a session is in MULTI the dispatcher queues every command but EXEC, DISCARD, QUIT
and RESET, and answers +QUEUED. A command refused while queuing (unknown command or
subcommand, wrong arity, not allowed in a transaction, MULTI and WATCH among them, NOAUTH,
MISCONF, OOM) makes EXEC answer EXECABORT and apply nothing; so does an EXEC that is
itself refused (wrong arity, NOAUTH, NOPERM, subscribed mode), at once. EXEC runs the
queued commands one after the other in one synchronous call, after the dispatcher read the
clock and applied what fell due once: no other client's command and no timer event comes in
between, so the AOF records of one EXEC are committed in one checksummed batch, which loads
all or nothing. Errors at run time are replies inside EXEC's array; a blocking pop that
finds nothing answers at once. The ACL is checked when a command is queued and again at
EXEC (the user's rules may have changed).

WATCH remembers each queue's creation serial and version (every change to a queue bumps
its version, a change driven by time too); EXEC answers nil when a watched queue was
changed, deleted, flushed or, watched while missing, created. That is O(1) per change and
O(watched queues) per EXEC, with no registry of watchers to update on writes.
"""

from ..errors import CommandError
from ..resp import encode
from .acl import check
from .context import Blocked, Pending, ServerState, Session

QUEUED = encode.simple(b"QUEUED")
# Commands a session in MULTI runs at once instead of queuing, as Valkey does (MULTI and
# WATCH are refused there by their no_multi flag, and abort the transaction, as in Valkey 8+)
RUN_IN_MULTI = frozenset(("exec", "discard", "quit", "reset"))


def not_in_multi(name: str) -> bytes:
    """The refusal of a command flagged no_multi while a transaction is queued."""
    return encode.error("ERR", f"Command '{name}' not allowed inside a transaction")


def discarded_because(refusal: bytes) -> str:
    """EXECABORT's message for a transaction ended by `refusal` (an error reply), as
    Valkey's execCommandAbort words it: the reason without its ERR code, any other code
    kept."""
    reason = refusal[1:].decode("utf-8", "replace").rstrip()
    return "Transaction discarded because of: " + reason.removeprefix("ERR ")


def discard_transaction(session: Session) -> None:
    """Leave MULTI (if in it) and forget every WATCH."""
    session.multi = None
    session.multi_failed = False
    session.watched.clear()


def _watched_unchanged(state: ServerState, session: Session) -> bool:
    for (db, name), seen in session.watched.items():
        q = state.databases[db].queues.get(name)
        if (seen is None) != (q is None) or (q is not None and seen != (q.serial, q.version)):
            return False
    return True


def multi(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """MULTI -> +OK; the commands that follow are queued until EXEC or DISCARD (inside
    MULTI, the dispatcher refuses it: no_multi)."""
    session.multi = []
    session.multi_failed = False
    return encode.OK


def exec_(state: ServerState, session: Session, argv: list[bytes]) -> bytes | Pending:
    """EXEC -> array of the queued commands' replies; nil when a watched queue changed.
    ERR without MULTI; EXECABORT when a command was refused while queuing, or when the
    transaction writes and writes are refused (MISCONF, OOM)."""
    queued = session.multi
    if queued is None:
        raise CommandError("EXEC without MULTI")
    failed, unchanged = session.multi_failed, _watched_unchanged(state, session)
    discard_transaction(session)
    if failed:
        raise CommandError("Transaction discarded because of previous errors.", "EXECABORT")
    if not unchanged:
        return encode.null_array(session.proto)
    if any(spec.denyoom for spec, _ in queued):
        refusal = state.write_refusal()
        if refusal is not None:
            raise CommandError(discarded_because(refusal), "EXECABORT")
    replies: list[bytes | Pending] = []
    state.in_exec = True
    try:
        for spec, queued_argv in queued:
            denied = check(state, session, spec, queued_argv, "multi") \
                if session.restricted else None
            if denied is not None:
                replies.append(denied)
                continue
            reply = state.call(session, spec, queued_argv)
            replies.append(reply.timeout_reply if isinstance(reply, Blocked) else reply)
    finally:
        state.in_exec = False
        session.last_command = "exec"
    return array_when_ready(replies)


def array_when_ready(replies: list[bytes | Pending]) -> bytes | Pending:
    """EXEC's array; a Pending one when some replies are still on their way from a store."""
    waiting = [r for r in replies if type(r) is Pending]
    if not waiting:
        return encode.array(replies)  # type: ignore[arg-type]
    whole = Pending()

    def one_more() -> None:
        ready = [r.reply if type(r) is Pending else r for r in replies]
        if all(r is not None for r in ready):
            whole.resolve(encode.array(ready))  # type: ignore[arg-type]

    for r in waiting:
        r.listener = one_more
    one_more()
    return whole


def discard(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """DISCARD -> +OK; the queued commands are dropped and every WATCH forgotten.
    ERR without MULTI."""
    if session.multi is None:
        raise CommandError("DISCARD without MULTI")
    discard_transaction(session)
    return encode.OK


def watch(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """WATCH queue [queue ...] -> +OK; the next EXEC fails (nil) if one of them changes
    (inside MULTI, the dispatcher refuses it: no_multi)."""
    queues = state.databases[session.db].queues
    for name in argv[1:]:
        key = (session.db, name)
        if key not in session.watched:  # the first WATCH of a queue counts, as in Valkey
            q = queues.get(name)
            session.watched[key] = None if q is None else (q.serial, q.version)
    return encode.OK


def unwatch(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """UNWATCH -> +OK; every WATCH of this connection is forgotten."""
    session.watched.clear()
    return encode.OK
