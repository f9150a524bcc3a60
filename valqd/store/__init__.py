"""Stores: where the queues live. The command layer does not know which one it talks to.

A store serves the commands whose state is the queues' (`STORE_COMMANDS`): the server
builds its dispatcher with the store's handlers for them, so a handler of the command
table never checks which store runs. The embedded store (valqd/store/embedded: the
in-process engine with its AOF) serves them with the table's own handlers, at no cost per
command; the Valkey store (valqd/store/valkey) turns them into FCALLs of the valq library
and answers with a `Pending` reply that the server sends when Valkey has answered. A
command a store cannot serve gets a handler that says so (`refuse`).

Why commands and not typed operations (push(queue, body, ...)): the library validates
every argument itself, with the engine's exact error texts (the differential test checks
that), so a Valkey front end forwards the arguments as they came and parses nothing twice;
the embedded hot path stays the handler it is, untouched by a layer of indirection.
"""

from collections.abc import Callable, Mapping
from typing import Protocol

from ..commands.context import Blocked, Pending, ServerState, Session
from ..errors import CommandError

Handler = Callable[[ServerState, Session, list[bytes]], "bytes | Blocked | Pending"]

# Every command whose state is the store's, by the command table's name: a store serves or
# refuses each (tests/test_store_frontend.py checks both stores against this list).
STORE_COMMANDS = frozenset((
    "valq|create", "valq|update", "valq|delete", "valq|list", "valq|info", "valq|stats",
    "valq|purge", "valq|pause", "valq|resume", "valq|push", "valq|mpush", "valq|pop",
    "valq|mpop", "valq|ack", "valq|mack", "valq|extend", "valq|nack", "valq|get",
    "valq|peek", "valq|cancel", "valq|reschedule", "valq|redrive",
    "dbsize", "keys", "scan", "type", "exists", "del", "flushall", "flushdb", "swapdb",
    "move", "exec", "watch", "bgrewriteaof", "save", "debug|digest",
    # a store whose events come from elsewhere confirms a subscription once it relays them
    "subscribe", "psubscribe",
    "info",  # its messages, keyspace and queues sections are the store's
))


class Store(Protocol):
    """What the server needs of a store."""

    kind: str  # "embedded", "valkey": for INFO and the log
    # commands (names from STORE_COMMANDS) that take several calls to the store, so that
    # a transaction cannot hold them: refused while MULTI queues (EXEC then aborts)
    no_multi: frozenset[str]

    def handlers(self) -> Mapping[str, Handler]:
        """Handlers that replace the command table's for these commands (names from
        STORE_COMMANDS); the table's own handlers serve the rest."""
        ...

    async def open(self, state: ServerState) -> None:
        """Connect, load what the store needs; raise ValueError or OSError to stop the
        server from starting."""
        ...

    async def close(self) -> None: ...


def refuse(name: str, why: str) -> Handler:
    """A handler for a command this store does not have: `-ERR <NAME> ...: why`."""
    shown = name.replace("|", " ").upper()

    def refused(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
        raise CommandError(f"{shown} is not available with this store: {why}")

    refused.__doc__ = f"{shown} -> ERR: {why}"
    return refused
