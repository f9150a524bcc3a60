"""Persistence commands: BGREWRITEAOF, SAVE and DEBUG (DIGEST)."""

from ..errors import CommandError
from ..resp import encode
from .context import Aof, ServerState, Session


def _aof(state: ServerState) -> Aof:
    if state.aof is None:
        raise CommandError("appendonly is off: there is no AOF to rewrite")
    return state.aof


def bgrewriteaof(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """BGREWRITEAOF -> +Background append only file rewriting started (scheduled inside
    EXEC: the fork commits the AOF, which would split the transaction's batch). ERR if one
    is already running or appendonly is off."""
    aof = _aof(state)
    if state.in_exec and not aof.rewriting:
        aof.rewrite_scheduled = True
        return encode.simple(b"Background append only file rewriting scheduled")
    if not aof.start_rewrite(state.databases.snapshot):
        raise CommandError("Background append only file rewriting already in progress")
    return encode.simple(b"Background append only file rewriting started")


def save(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """SAVE -> +OK once the AOF has been rewritten to a minimal log, synchronously."""
    _aof(state).rewrite_now(state.databases.snapshot)
    return encode.OK


def debug_digest(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """DEBUG DIGEST -> 40 hex digits summarising every database, queue, setting and
    message."""
    return encode.bulk(state.databases.digest().encode())
