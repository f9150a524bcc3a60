"""The worker runtime: handlers registered per queue run over the messages valqd delivers.

One asyncio loop pops (`VALQ MPOP` over every queue served, with BLOCK and WITHMETA) as many
messages as `concurrency` has free slots; each runs in its queue's handler, an async function
on the loop or a plain function in one of `concurrency` threads. While a handler runs, its
lease is extended every half visibility timeout with the delivery's receipt. A return ACKs
with the receipt; an exception NACKs with the receipt and a REASON, so the queue's backoff
and DLQ apply. A lease found lost (NOLEASE: it ran out and the message went to someone else)
is logged and the handler's result dropped, never acked.

Stopping (SIGTERM or SIGINT under `run()`, or `stop()`): no more pops; running handlers get
`grace` seconds; whatever still runs then, or arrives with the last pop, is NACKed with no
delay, visible again at once. A second signal exits at once. A lost connection is retried
with backoff; every ACK, NACK and EXTEND carries its delivery's receipt, so a retry can never
settle a later delivery of the same message.

Only the VALQ commands INFO, MPOP, EXTEND, ACK and NACK are used.
"""

import asyncio
import importlib
import inspect
import json
import logging
import os
import queue as queue_module
import random
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

try:
    import valkey.asyncio
    from valkey.exceptions import AuthenticationError, AuthorizationError, ResponseError
    from valkey.exceptions import ConnectionError as ValkeyConnectionError
    from valkey.exceptions import TimeoutError as ValkeyTimeoutError
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("valqd.worker needs the valkey client library: "
                      "pip install 'valqd[client]'") from exc

from .client import SOCKET_TIMEOUT_S, Reply, check_url, default_url, error_code, reply_map

log = logging.getLogger("valqd.worker")

BLOCK_MS = 1000            # one MPOP waits this long; a stop waits for it at most that long
RETRY_FIRST_S = 0.05       # backoff after a lost connection: doubles up to RETRY_MAX_S
RETRY_MAX_S = 5.0
SETTINGS_REFRESH_S = 30.0  # how often the queues' visibility timeouts are read again
REASON_LIMIT = 1000        # characters of an exception's text sent as the NACK REASON
STOPPED_REASON = b"worker stopped"
# what a lost or stalled connection raises (valkey-py's own, and the socket's)
CONNECTION_ERRORS = (ValkeyConnectionError, ValkeyTimeoutError, OSError)
# a server that refuses the credentials will not change its mind on a retry
FATAL_ERRORS = (AuthenticationError, AuthorizationError)

Handler = Callable[["Job"], Any] | Callable[["Job"], Awaitable[Any]]


class _AsyncConnection(Protocol):
    """What the worker calls on a valkey.asyncio.Valkey (its execute_command is untyped:
    typed here, at the boundary)."""

    async def execute_command(self, *args: Any, **options: Any) -> Reply: ...

    async def aclose(self) -> None: ...
_UNDECODED = object()


class WorkerError(Exception):
    """The worker cannot run: no handlers, a queue that does not exist, refused credentials."""


class Job:
    """One delivery of a message to this worker: `queue` (as registered), `id`, `body`
    (bytes), `value` (the body decoded as JSON, on first use), `attempts` (deliveries so
    far, this one included), `lease` (the receipt), `priority`, `enqueued_at` (epoch ms)."""

    __slots__ = ("queue", "id", "body", "attempts", "lease", "priority", "enqueued_at",
                 "_value")

    def __init__(self, queue: str | bytes, fields: dict[bytes, Any]) -> None:
        self.queue = queue
        self.id = int(fields[b"id"])
        self.body: bytes = fields[b"body"]
        self.attempts = int(fields[b"attempts"])
        self.lease: bytes = fields[b"lease"]
        self.priority = int(fields[b"priority"])
        self.enqueued_at = int(fields[b"enqueued_at"])
        self._value: Any = _UNDECODED

    @property
    def value(self) -> Any:
        """The body as JSON (ValueError when it is not JSON: read `body` instead)."""
        if self._value is _UNDECODED:
            self._value = json.loads(self.body)
        return self._value

    def __repr__(self) -> str:
        return f"<Job {self.queue!r} id={self.id} attempt={self.attempts}>"


@dataclass
class Summary:
    """What a worker did between start and stop."""

    done: int = 0       # handler returned, acked
    failed: int = 0     # handler raised, nacked with the reason
    lost: int = 0       # the lease was gone: result dropped
    returned: int = 0   # still running or just popped at the stop: nacked without delay
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.done} done, {self.failed} failed, {self.lost} lost leases, "
                f"{self.returned} returned to the queue, in {self.seconds:.1f} s")


def describe(exc: BaseException) -> bytes:
    """A NACK REASON: the exception's type and message, trimmed."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if len(text) > REASON_LIMIT:
        text = text[:REASON_LIMIT - 3] + "..."
    return text.encode("utf-8", "backslashreplace")


def _is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or \
        inspect.iscoroutinefunction(getattr(handler, "__call__", None))


class _Retry:
    """Backoff between attempts at one operation: doubling from RETRY_FIRST_S to
    RETRY_MAX_S, with jitter; the first failure is logged as a warning, the recovery too."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.delay = 0.0
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Counts a failure; returns the seconds to wait before the next attempt."""
        self.failures += 1
        self.delay = min(RETRY_MAX_S, max(RETRY_FIRST_S, self.delay * 2))
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(level, "%s failed (%s: %s); retrying with backoff", self.what,
                type(exc).__name__, exc)
        return self.delay * random.uniform(0.5, 1.0)

    def succeeded(self) -> None:
        if self.failures:
            log.info("%s works again after %d failed attempts", self.what, self.failures)
            self.failures, self.delay = 0, 0.0


class _Threads:
    """`size` daemon threads that run sync handlers and hand results back to the loop.
    Daemon threads, unlike concurrent.futures', so a handler that never returns cannot keep
    a stopped worker from exiting."""

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # (handler, job, its outcome), or None: a thread's signal to end
        self.jobs: queue_module.SimpleQueue[
            tuple[Handler, Job, asyncio.Future[None]] | None] = queue_module.SimpleQueue()
        self.threads = [threading.Thread(target=self._serve, daemon=True,
                                         name=f"valqd-worker-{i}") for i in range(size)]
        for thread in self.threads:
            thread.start()

    def run(self, handler: Handler, job: Job) -> "asyncio.Future[None]":
        done = self.loop.create_future()
        self.jobs.put((handler, job, done))
        return done

    def _serve(self) -> None:
        while (item := self.jobs.get()) is not None:
            handler, job, done = item
            error: BaseException | None = None
            try:
                handler(job)
            except BaseException as exc:  # noqa: BLE001 - the handler's failure, reported
                error = exc
            try:
                self.loop.call_soon_threadsafe(_resolve, done, error)
            except RuntimeError:  # the loop is closed: the worker stopped without it
                return

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)


def _resolve(done: "asyncio.Future[None]", error: BaseException | None) -> None:
    if done.done():  # cancelled: the job was given back at the end of the grace period
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class _Running:
    """A delivery in this worker, from its pop until it is settled."""

    __slots__ = ("job", "visibility", "task", "timer", "in_handler", "finished", "lost",
                 "abandoned", "extending")

    def __init__(self, job: Job, visibility: int) -> None:
        self.job = job
        self.visibility = visibility
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.in_handler = self.finished = self.lost = self.abandoned = self.extending = False


class Worker:
    """Handlers per queue, and the loop that runs them.

    `url`: valkey://[user:password@]host:port/db (valkeys:// for TLS), default $VALQD_URL or
    valkey://127.0.0.1:7400. `concurrency`: messages in flight at once, over every queue.
    `grace`: seconds a stop waits for running handlers before giving their messages back.
    Other keyword arguments go to the valkey connection pool (TLS files, for example)."""

    def __init__(self, url: str | None = None, *, concurrency: int = 8, grace: float = 30.0,
                 **options: Any) -> None:
        self.url = url
        self.concurrency = concurrency
        self.grace = grace
        self.options = options
        self.handlers: dict[str | bytes, Handler] = {}
        self.summary = Summary()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = threading.Event()
        self._forced = False

    # -- registration ------------------------------------------------------------------

    def handler(self, *queues: str | bytes) -> Callable[[Handler], Handler]:
        """Decorator: the function handles the messages of these queues."""
        if not queues:
            raise TypeError("handler() needs at least one queue name")

        def register(function: Handler) -> Handler:
            for name in queues:
                self.add(name, function)
            return function
        return register

    def add(self, queue: str | bytes, handler: Handler) -> None:
        if queue in self.handlers:
            raise ValueError(f"queue {queue!r} already has a handler")
        self.handlers[queue] = handler

    # -- running -----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (a second one exits at once). Returns the exit
        code: 0 after a clean stop, 1 after a forced one."""
        return asyncio.run(self._run_with_signals())

    async def _run_with_signals(self) -> int:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            name = signal.Signals(signum).name
            if signals == 1:
                log.info("%s: stopping (send it again to exit at once)", name)
                self.stop()
            else:
                log.warning("%s again: exiting at once", name)
                self._forced = True
                main.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await self.serve()
        except asyncio.CancelledError:
            if not self._forced:
                raise
            log.warning("stopped at once: %s; messages still leased come back when their "
                        "leases run out", self.summary)
            return 1
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        return 0

    def stop(self) -> None:
        """Stop gracefully (see the module docstring); from any thread."""
        self._stop_requested.set()
        loop = self._loop
        if loop is None:
            return  # serve() sees the request when it starts
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            self._begin_stop()
        else:
            try:
                loop.call_soon_threadsafe(self._begin_stop)
            except RuntimeError:  # the loop already closed: nothing is running
                pass

    def _begin_stop(self) -> None:
        self._stopping.set()
        self._room.set()

    async def serve(self) -> Summary:
        """Serve until `stop()`; returns what was done."""
        if not self.handlers:
            raise WorkerError("no handlers registered")
        if self.concurrency < 1:
            raise WorkerError("concurrency must be at least 1")
        url = check_url(self.url or default_url())
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._room = asyncio.Event()       # set when a slot frees up (or on stop)
        self._running: set[_Running] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._visibility: dict[str | bytes, int] = {}
        self._settings_due = 0.0
        self._by_wire = {name.encode() if isinstance(name, str) else name: name
                         for name in self.handlers}
        self._loop = loop
        self.summary = Summary()
        started = time.monotonic()
        # one connection blocks in MPOP; each in-flight message needs at most one more
        pool = valkey.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=self.concurrency + 1, timeout=None,
            socket_timeout=BLOCK_MS / 1000 + SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S, **self.options)
        self._valkey: _AsyncConnection = valkey.asyncio.Valkey(connection_pool=pool)
        self._in_thread = {name for name, h in self.handlers.items() if not _is_async(h)}
        self._threads = _Threads(self.concurrency, loop) if self._in_thread else None
        if self._stop_requested.is_set():
            self._begin_stop()
        try:
            await self._read_settings(at_start=True)
            log.info("worker serving %s with concurrency %d at %s",
                     ", ".join(map(repr, self.handlers)), self.concurrency, _safe(url))
            try:
                await self._pop_loop()
            finally:
                self._begin_stop()
                task = asyncio.current_task()
                if task is None or not task.cancelling():  # cancelled: stop now, no grace
                    await self._drain()
        finally:
            for task in self._background:
                task.cancel()
            if self._threads is not None:
                self._threads.close()
            await self._valkey.aclose()
            await pool.disconnect()
            self.summary.seconds = time.monotonic() - started
            self._loop = None
            self._stop_requested.clear()
        log.info("worker stopped: %s", self.summary)
        return self.summary

    # -- settings ----------------------------------------------------------------------

    async def _read_settings(self, at_start: bool = False) -> None:
        """Every queue's visibility timeout (VALQ INFO), which paces the lease extensions.
        At start a queue that does not exist is an error; a server that cannot be reached
        yet is retried until it can (or until a stop)."""
        retry = _Retry("connecting to the server")
        for name in self.handlers:
            while True:
                try:
                    info = reply_map(await self._valkey.execute_command("VALQ", "INFO", name))
                except FATAL_ERRORS as exc:
                    raise WorkerError(f"the server refused the credentials: {exc}") from exc
                except CONNECTION_ERRORS as exc:
                    if not at_start:
                        raise
                    await self._sleep_unless_stopping(retry.failed(exc))
                    if self._stopping.is_set():
                        return
                    continue
                except ResponseError as exc:
                    if not at_start:
                        raise
                    if error_code(exc) == "NOQUEUE":
                        raise WorkerError(f"queue {name!r} does not exist: create it first "
                                          f"(VALQ CREATE, or Client.create)") from exc
                    raise WorkerError(f"VALQ INFO {name!r} failed: {exc}") from exc
                break
            retry.succeeded()
            self._visibility[name] = int(info[b"visibility_timeout"])
        self._settings_due = time.monotonic() + SETTINGS_REFRESH_S

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    # -- popping -----------------------------------------------------------------------

    async def _pop_loop(self) -> None:
        names = list(self.handlers)
        retry = _Retry("popping")
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                if time.monotonic() >= self._settings_due:
                    await self._read_settings()
                reply = await self._valkey.execute_command(
                    "VALQ", "MPOP", len(names), *names, "COUNT", free, "BLOCK", BLOCK_MS,
                    "WITHMETA")
            except FATAL_ERRORS as exc:
                raise WorkerError(f"the server refused the credentials: {exc}") from exc
            except (*CONNECTION_ERRORS, ResponseError) as exc:
                # ResponseError: a queue deleted (NOQUEUE) or a server refusing for now
                await self._sleep_unless_stopping(retry.failed(exc))
                continue
            retry.succeeded()
            if reply:
                self._start(self._by_wire[reply[0]], reply[1])

    def _start(self, queue: str | bytes, messages: list[Reply]) -> None:
        handler = self.handlers[queue]
        in_thread = queue in self._in_thread
        visibility = self._visibility[queue]
        for fields in messages:
            running = _Running(Job(queue, reply_map(fields)), visibility)
            if self._stopping.is_set():  # popped as the stop began: give it back at once
                running.abandoned = True
                running.task = asyncio.create_task(self._give_back(running))
            else:
                running.task = asyncio.create_task(self._work(running, handler, in_thread))
            self._running.add(running)

    # -- one delivery ------------------------------------------------------------------

    async def _work(self, running: _Running, handler: Handler, in_thread: bool) -> None:
        job = running.job
        loop = asyncio.get_running_loop()
        running.timer = loop.call_later(running.visibility / 2, self._extend_due, running)
        running.in_handler = True
        failure: BaseException | None = None
        try:
            if in_thread:
                assert self._threads is not None
                await self._threads.run(handler, job)
            else:
                await handler(job)
        except asyncio.CancelledError:
            if not running.abandoned:
                raise
        except Exception as exc:  # noqa: BLE001 - the handler's failure: NACKed
            failure = exc
        finally:
            running.in_handler = False
            running.finished = True
            running.timer.cancel()
        try:
            if running.lost:
                self.summary.lost += 1
                log.warning("lease lost: queue %r id %d attempt %d: the handler's result is "
                            "dropped", job.queue, job.id, job.attempts)
            elif running.abandoned:
                await self._give_back(running)
            elif failure is None:
                if await self._settle(job, "ACK", job.queue, job.id, "LEASE", job.lease):
                    self.summary.done += 1
            else:
                reason = describe(failure)
                log.warning("job failed: queue %r id %d attempt %d: %s", job.queue, job.id,
                            job.attempts, reason.decode(), exc_info=failure)
                if await self._settle(job, "NACK", job.queue, job.id, "LEASE", job.lease,
                                      "REASON", reason):
                    self.summary.failed += 1
        finally:
            self._done(running)

    async def _give_back(self, running: _Running) -> None:
        """NACK with no delay: the message is visible again at once."""
        job = running.job
        try:
            if await self._settle(job, "NACK", job.queue, job.id, 0, "LEASE", job.lease,
                                  "REASON", STOPPED_REASON):
                self.summary.returned += 1
        finally:
            self._done(running)

    def _done(self, running: _Running) -> None:
        if running in self._running:
            self._running.remove(running)
            self._room.set()

    async def _settle(self, job: Job, *command: Any) -> bool:
        """ACK or NACK with the receipt, retried over lost connections; True when it took
        effect. A retry that finds the message gone (NOMSG) means the first attempt took
        effect before the connection broke. NOLEASE: the lease ran out and the message is
        someone else's now."""
        retry = _Retry(f"{command[0]} of {job.queue!r} id {job.id}")
        while True:
            try:
                await self._valkey.execute_command("VALQ", *command)
            except CONNECTION_ERRORS as exc:
                await asyncio.sleep(retry.failed(exc))
                continue
            except ResponseError as exc:
                if retry.failures and error_code(exc) == "NOMSG":
                    return True
                self.summary.lost += 1
                log.warning("%s of queue %r id %d attempt %d refused (%s): the handler's "
                            "result is dropped", command[0], job.queue, job.id, job.attempts,
                            exc)
                return False
            retry.succeeded()
            return True

    def _extend_due(self, running: _Running) -> None:
        if running.finished or running.lost:
            return
        loop = asyncio.get_running_loop()
        running.timer = loop.call_later(running.visibility / 2, self._extend_due, running)
        if not running.extending:
            running.extending = True
            task = asyncio.create_task(self._extend(running))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _extend(self, running: _Running) -> None:
        """EXTEND the lease by the visibility timeout, with the receipt; a refusal means the
        lease is lost. Lost connections are retried with backoff while the handler runs."""
        job = running.job
        retry = _Retry(f"extending the lease of {job.queue!r} id {job.id}")
        try:
            while not running.finished:
                try:
                    await self._valkey.execute_command(
                        "VALQ", "EXTEND", job.queue, job.id, running.visibility, "LEASE",
                        job.lease)
                except CONNECTION_ERRORS as exc:
                    await asyncio.sleep(retry.failed(exc))
                    continue
                except ResponseError as exc:
                    if not running.finished:
                        running.lost = True
                        log.warning("lease lost: queue %r id %d attempt %d (%s)", job.queue,
                                    job.id, job.attempts, exc)
                    return
                retry.succeeded()
                return
        finally:
            running.extending = False

    # -- stopping ----------------------------------------------------------------------

    async def _drain(self) -> None:
        """Wait up to `grace` for running handlers, then give back what still runs."""
        tasks = {r.task for r in self._running if r.task is not None}
        if not tasks:
            return
        log.info("stopping: waiting up to %g s for %d running jobs", self.grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=self.grace)
        if not pending:
            return
        for running in list(self._running):
            if running.in_handler and running.task is not None:
                running.abandoned = True
                running.task.cancel()
        log.info("grace period over: giving %d jobs back to their queues", len(pending))
        await asyncio.wait(pending)


def _safe(url: str) -> str:
    """A URL without its password, for the log."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user + ':' if user else ':'}***@{host}"


# -- the command line: valqd worker MODULE:NAME ... -----------------------------------------

def load_worker(target: str, queues: list[str], *, url: str | None, concurrency: int | None,
                grace: float | None) -> Worker:
    """The worker `valqd worker` runs: MODULE:NAME names a handler function (which then
    handles every --queue) or a Worker (whose handlers run, only those of --queue when
    given). Options given override the Worker's own. Raises WorkerError on a bad target."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise WorkerError(f"{target!r} is not MODULE:NAME (a handler function or a Worker)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkerError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise WorkerError(f"module {module_name!r} has no {attribute!r}") from None
    if isinstance(found, Worker):
        worker = found
        unknown = [q for q in queues if q not in worker.handlers]
        if unknown:
            raise WorkerError(f"{target} has no handler for {', '.join(map(repr, unknown))}")
        if queues:
            worker.handlers = {q: worker.handlers[q] for q in queues}
    elif callable(found):
        if not queues:
            raise WorkerError(f"{target} is a function: name its queues with --queue")
        worker = Worker()
        for name in queues:
            worker.add(name, found)
    else:
        raise WorkerError(f"{target} is neither a handler function nor a Worker")
    if url is not None:
        worker.url = url
    if concurrency is not None:
        worker.concurrency = concurrency
    if grace is not None:
        worker.grace = grace
    check_url(worker.url or default_url())
    return worker
