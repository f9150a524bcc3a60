"""The embedded store: the in-process engine (valqd/engine) with its append-only file
(valqd/persistence). It is valqd's default. Its handlers are the command table's own, so
choosing it costs nothing per command; the engine, the AOF, the timer and group commit
are wired by the server (valqd/server.py), which owns the event loop they run on."""

from collections.abc import Mapping

from ...commands.context import ServerState
from .. import Handler


class EmbeddedStore:
    kind = "embedded"
    no_multi: frozenset[str] = frozenset()

    def handlers(self) -> Mapping[str, Handler]:
        return {}

    async def open(self, state: ServerState) -> None:
        return None

    async def close(self) -> None:
        return None
