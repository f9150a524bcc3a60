"""The HTTP listener in front of a store whose replies come later (valqd.store.valkey).

The HTTP application (valqd/http) is sans-IO and synchronous: a route's handler runs its
commands one after the other and reads each reply at once, which the embedded store gives.
A Valkey store answers a `Pending` instead. So with such a store, each request's
`HttpApp.handle` runs in a worker thread (at most HTTP_THREADS requests at once; more wait
their turn), and every command it runs crosses to the event loop, which dispatches it as a
RESP client's and hands the reply back when the store has answered; the thread waits, the
event loop does not. Nothing of the server's state is touched outside the event loop's
thread: sessions, commands and metrics are made there too.
"""

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

from ..commands.context import Blocked, HandlerReply, Pending, Session

HTTP_THREADS = 64
T = TypeVar("T")


class StoreGone(Exception):
    """The server stopped while a request's command waited."""


class ThreadedHttp:
    """Runs `handle(request...)` in threads; `execute`, `new_session` and `metrics` made
    here are what the app must call (they run on the event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 execute: Callable[[Session, list[bytes]], HandlerReply],
                 new_session: Callable[[str, str], Session],
                 metrics: Callable[[], str]) -> None:
        self.loop = loop
        self._execute = execute
        self._new_session = new_session
        self._metrics = metrics
        self.threads = concurrent.futures.ThreadPoolExecutor(
            HTTP_THREADS, thread_name_prefix="valqd-http")
        # the replies commands wait for, by the HTTP client's address (its connection)
        self._waiting: dict[str, set[tuple[Pending, asyncio.Future[bytes]]]] = {}

    def run(self, handle: Callable[..., T], *args: object) -> "asyncio.Future[T]":
        """`handle(*args)` in a worker thread (call on the event loop)."""
        return self.loop.run_in_executor(self.threads, handle, *args)

    def _on_loop(self, work: Callable[[], T]) -> T:
        """`work()` run on the event loop, from a worker thread."""
        return asyncio.run_coroutine_threadsafe(_call(work), self.loop).result()

    def execute(self, session: Session, argv: list[bytes]) -> bytes | Blocked:
        """One command, from a worker thread: its reply once the store has answered."""
        async def run() -> bytes:
            reply = self._execute(session, argv)
            if not isinstance(reply, Pending):
                assert not isinstance(reply, Blocked), "a store's blocking pop is Pending"
                return reply
            if reply.reply is not None:
                return reply.reply
            answered: asyncio.Future[bytes] = self.loop.create_future()

            def resolved() -> None:
                if not answered.done() and reply.reply is not None:
                    answered.set_result(reply.reply)

            reply.listener = resolved
            waiting = self._waiting.setdefault(session.addr, set())
            entry = (reply, answered)
            waiting.add(entry)
            try:
                return await answered
            except asyncio.CancelledError:
                raise StoreGone("the client or the server went away") from None
            finally:
                waiting.discard(entry)
                if not waiting and self._waiting.get(session.addr) is waiting:
                    del self._waiting[session.addr]

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def new_session(self, addr: str, laddr: str) -> Session:
        return self._on_loop(lambda: self._new_session(addr, laddr))

    def metrics(self) -> str:
        return self._on_loop(self._metrics)

    def gone(self, addr: str) -> None:
        """The HTTP client at `addr` went away: what its request waits for is cancelled (a
        blocked pop takes no message for nobody; one on its way is given back)."""
        for pending, answered in list(self._waiting.get(addr, ())):
            pending.cancel()
            answered.cancel()

    def close(self) -> None:
        """Answer the commands still waiting (the server stops), let the threads end."""
        for addr in list(self._waiting):
            self.gone(addr)
        self.threads.shutdown(wait=False, cancel_futures=True)


async def _call(work: Callable[[], T]) -> T:
    return work()
