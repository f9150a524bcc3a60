"""The network side: listeners, connections, the engine's timer and the process lifecycle.

This module only moves bytes: each connection feeds what it reads to its RESP parser,
hands every complete command to the dispatcher and writes all replies of one read back in
one write. The engine's single timer is re-armed after every batch of commands and every
tick, always for the earliest deadline in the server.
"""

import asyncio
import itertools
import logging
import signal
import time

from .commands.context import ServerState, Session, wall_clock_ms
from .commands.dispatch import Dispatcher
from .commands.table import TABLE
from .config import Config
from .engine import Engine
from .errors import ProtocolError
from .resp import RequestParser, encode

log = logging.getLogger("valqd")

MAX_TIMER_SLEEP_S = 3600.0  # far deadlines are re-checked hourly, which also absorbs clock jumps


class Connection(asyncio.Protocol):
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.parser = RequestParser()
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.session = self.server.register(self, _addr(peer), _addr(local))

    def data_received(self, data: bytes) -> None:
        session, transport = self.session, self.transport
        if session is None or transport is None or transport.is_closing():
            return
        execute = self.server.dispatcher.execute
        parser = self.parser
        parser.feed(data)
        replies = []
        close = False
        try:
            while (argv := parser.next_command()) is not None:
                replies.append(execute(session, argv))
                if session.close_after_reply:
                    close = True
                    break
        except ProtocolError as exc:
            replies.append(encode.error("ERR", f"Protocol error: {exc}"))
            close = True
        session.last_command_at = time.monotonic()
        self.server.after_commands()
        transport.write(b"".join(replies))
        if close:
            transport.close()

    def pause_writing(self) -> None:
        """The client is not reading its replies: stop reading its requests meanwhile."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.server.unregister(self.session)


def _addr(sock_addr: tuple) -> str:
    host, port = sock_addr[0], sock_addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class Server:
    def __init__(self, config: Config, clock=wall_clock_ms) -> None:
        self.config = config
        self.clock = clock
        self.engine = Engine()
        self.state = ServerState(self.engine, config, TABLE, clock,
                                 request_shutdown=self.request_shutdown)
        self.dispatcher = Dispatcher(self.state)
        self._client_ids = itertools.count(1)
        self._connections: dict[int, Connection] = {}
        self._listeners: list[asyncio.AbstractServer] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._stopping = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        port = int(self.config["port"])  # type: ignore[call-overload]
        for host in str(self.config["bind"]).split():
            listener = await loop.create_server(lambda: Connection(self), host, port,
                                                reuse_address=True)
            self._listeners.append(listener)
            port = port or listener.sockets[0].getsockname()[1]
        self.state.bound_port = port
        self.engine.tick(self.clock())
        self.after_commands()

    @property
    def port(self) -> int:
        return self.state.bound_port

    def request_shutdown(self) -> None:
        self._stopping.set()

    async def serve_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        await self._stopping.wait()
        await self.stop()

    def _on_signal(self, signum: int) -> None:
        log.warning("Received %s, shutting down", signal.Signals(signum).name)
        self.request_shutdown()

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        for connection in list(self._connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        for listener in self._listeners:
            await listener.wait_closed()
        if self._timer is not None:
            self._timer.cancel()
        log.warning("valqd is now ready to exit, bye bye...")

    # -- clients ---------------------------------------------------------------------------

    def register(self, connection: Connection, addr: str, laddr: str) -> Session:
        session = Session(next(self._client_ids), addr, laddr)
        transport = connection.transport
        session.closer = transport.close if transport is not None else None
        self._connections[session.id] = connection
        self.state.clients[session.id] = session
        self.state.total_connections += 1
        return session

    def unregister(self, session: Session) -> None:
        self._connections.pop(session.id, None)
        self.state.clients.pop(session.id, None)

    # -- timer -----------------------------------------------------------------------------

    def after_commands(self) -> None:
        """Point the timer at the engine's earliest deadline, if that changed."""
        at = self.engine.next_deadline()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            delay = min(max(at - self.clock(), 0) / 1000, MAX_TIMER_SLEEP_S)
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.tick(self.clock())
        self.after_commands()
