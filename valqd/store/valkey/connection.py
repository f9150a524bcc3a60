"""A small asyncio RESP client for valqd's own use: one pipelined connection to one Valkey
server, replies matched to requests first in, first out.

Callers hand `send()` a command and a callback; the callback gets the decoded reply
(bytes, int, list, None, a `ReplyError` for an error reply) or a `StoreUnavailable` when no
reply will come. Callbacks run inside `data_received`, without a trip through the event
loop, so a front end's reply leaves in the same turn as the store's answer. Commands sent
in one turn of the event loop go out in one write.

The client keeps its connection: when it is lost, it reconnects with backoff, and commands
sent meanwhile wait for the new connection up to `timeout_s`, then fail. What was in flight
on the lost connection is sent again only when that cannot run it twice: a command never
written to the socket (queued for the write at the end of the turn) goes on the new
connection, and so does a `resend` command (a read: it may run twice); every other written
command fails with `ReplyLost` -- it may have run (a PUSH stored), and sending it again
could run it twice (a PUSH stored twice), so the caller says so instead of guessing. A connection that holds requests but receives no
reply for `timeout_s` is considered dead and closed. Every new connection authenticates
(AUTH), selects its database (SELECT) and names itself (CLIENT SETNAME) before anything else.

`cluster` routing (MOVED/ASK) and Sentinel discovery build on `Client.address` and
`Client.connect_to()`: they change where the next connection goes.
"""

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis

from ...resp import encode
from ..url import StoreUrl

log = logging.getLogger("valqd")

Arg = bytes | str | int
Reply = Any  # bytes | int | list | None | ReplyError | StoreUnavailable
Callback = Callable[[Reply], None]
# one request on a connection: its callback and, for a `resend` command, its bytes and when
# it was first sent (a request sent again keeps its timeout)
InFlight = tuple[Callback, bytes | None, float]
# a request waiting for a connection: its bytes, callback, when it was first sent, resend
Waiting = tuple[bytes, Callback, float, bool]
# sends one command on a connection being set up and awaits its reply
SetupCall = Callable[..., Awaitable[Reply]]

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
WATCHDOG_S = 0.25
LOG_EVERY_S = 10.0


class ReplyError(Exception):
    """An error reply; `str()` is its text, code first (`NOSCRIPT No matching script`)."""


class StoreUnavailable(Exception):
    """No reply will come: the store could not be reached (the command did not run)."""

    code = "TRYAGAIN"  # the error code a front end answers


class ReplyLost(StoreUnavailable):
    """The connection was lost after the command was written: it may have run."""

    code = "INDOUBT"


def command_bytes(args: Sequence[Arg]) -> bytes:
    """A command as RESP: an array of bulk strings."""
    return encode.bulk_array([a if isinstance(a, bytes) else
                              (a.encode() if isinstance(a, str) else b"%d" % a)
                              for a in args])


def tls_context(url: StoreUrl) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=url.tls_ca_cert_file or None)
    if not url.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Wire(asyncio.Protocol):
    """One socket: bytes out, replies in, matched to the callbacks in order."""

    def __init__(self, client: "Client") -> None:
        self.client = client
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.transport: asyncio.Transport | None = None
        self.callbacks: collections.deque[InFlight] = collections.deque()
        self.out: list[bytes] = []  # the requests not written yet, the last len(out) ones
        self.flush_scheduled = False
        self.replies = 0  # replies received, for the watchdog
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def write(self, data: bytes, callback: Callback, resend: bool = False,
              since: float = 0.0) -> None:
        """Queue `data` for the write at the end of this turn; `resend`: written and lost,
        it is sent again (`since`: when it was first sent)."""
        self.callbacks.append((callback, data if resend else None, since))
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        transport = self.transport
        if self.out and transport is not None and not self.lost and \
                not transport.is_closing():  # closing: the requests go on the next one
            data = b"".join(self.out)
            self.out.clear()
            transport.write(data)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        callbacks = self.callbacks
        push = self.client.on_push
        try:
            while (reply := reader.gets()) is not False:
                self.replies += 1
                if push is not None and type(reply) is list and push(reply):
                    continue
                callback = callbacks.popleft()[0]
                try:
                    callback(reply)
                except Exception:  # a bug in a callback must not cost the others their replies
                    log.exception("bug: a store reply's callback failed")
        except (hiredis.ProtocolError, IndexError) as exc:
            log.error("Protocol error from the store (%s): closing the connection", exc)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.client.lost(self, exc)

    def take_back(self, lost: ReplyLost) -> list["Waiting"]:
        """The connection is gone: fail its written requests that must not run twice with
        `lost`; the others, to send again, in order."""
        entries, self.callbacks = list(self.callbacks), collections.deque()
        unwritten, self.out = self.out, []
        written = len(entries) - len(unwritten)
        again = []
        now = time.monotonic()
        for i, (callback, data, since) in enumerate(entries):
            if i >= written:
                again.append((unwritten[i - written], callback, since or now, data is not None))
            elif data is not None:
                again.append((data, callback, since, True))
            else:
                _answer(callback, lost)
        return again


def _answer(callback: Callback, reply: Reply) -> None:
    try:
        callback(reply)
    except Exception:
        log.exception("bug: a store reply's callback failed")


class Client:
    """One pipelined connection to `url`'s server (database `db`), kept open."""

    def __init__(self, url: StoreUrl, db: int = 0, timeout_s: float = 5.0,
                 name: str = "valqd",
                 on_connect: Callable[[SetupCall], Awaitable[None]] | None = None,
                 quiet: bool = False,
                 on_push: Callable[[list[Any]], bool] | None = None,
                 requeue: bool = True) -> None:
        """`on_connect` runs on every new connection before it carries any command (the
        store loads its library there, should the server have restarted empty); `quiet`
        logs connecting at debug level (a short-lived connection for one wait); `on_push`
        sees every array reply first and answers True for those that are pushes, not
        replies (a subscriber connection's messages), which then match no command;
        `requeue`: what a lost connection had in flight and may be sent again goes on the
        next connection; False: it fails with StoreUnavailable, for a caller that sends it
        again elsewhere (a cluster's router, to the slot's primary of the moment)."""
        self.on_connect = on_connect
        self.on_push = on_push
        self.quiet = quiet
        self.requeue = requeue
        self.url = url
        self.db = db
        self.timeout_s = timeout_s
        self.name = name
        self.address: tuple[str, int] | None = url.hosts[0] if url.hosts else None
        self._wire: _Wire | None = None  # set once the handshake passed
        self._waiting: collections.deque[Waiting] = collections.deque()
        self._connecting: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()  # a command waits: try to connect without more backoff
        self._watchdog: asyncio.TimerHandle | None = None
        self._seen_replies = 0
        self._stalled_since: float | None = None
        self._closed = False
        self._last_error = "not connected yet"
        self._logged_at = -LOG_EVERY_S

    # -- sending -------------------------------------------------------------------------

    def send(self, args: Sequence[Arg], callback: Callback, resend: bool = False) -> None:
        """Send one command; `callback` gets its reply (see the module's docstring).
        `resend`: running it twice does no harm (a read), so it is sent again when its
        connection is lost before the reply came."""
        self.send_raw(command_bytes(args), callback, resend)

    def send_raw(self, data: bytes, callback: Callback, resend: bool = False,
                 since: float = 0.0) -> None:
        """`since`: when the command was first sent (one sent again keeps its timeout)."""
        wire = self._wire
        if wire is not None:
            wire.write(data, callback, resend, since or (time.monotonic() if resend else 0.0))
            if self._watchdog is None:
                self._arm_watchdog()
            return
        if self._closed:
            callback(StoreUnavailable("the store's client is closed"))
            return
        self._waiting.append((data, callback, since or time.monotonic(), resend))
        self._ensure_connecting()
        self._arm_watchdog()

    async def call(self, *args: Arg, resend: bool = False) -> Reply:
        """One command's reply, awaited; a `ReplyError` is returned, not raised;
        StoreUnavailable is raised. `resend` as for `send`."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def done(reply: Reply) -> None:
            if not future.done():
                future.set_result(reply)

        self.send(args, done, resend)
        reply = await future
        if isinstance(reply, StoreUnavailable):
            raise reply
        return reply

    @property
    def connected(self) -> bool:
        return self._wire is not None

    # -- connecting ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect now (if not connected); StoreUnavailable after `timeout_s`."""
        if self._wire is not None:
            return
        self._ensure_connecting()
        assert self._connecting is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._connecting), self.timeout_s)
        except asyncio.TimeoutError:
            raise StoreUnavailable(self.unreachable_text()) from None

    def connect_to(self, address: tuple[str, int]) -> None:
        """Point the client at another server (a failover, a redirection): the current
        connection closes and the next one goes to `address`."""
        self.address = address
        if self._wire is not None and self._wire.transport is not None:
            self._wire.transport.close()

    def unreachable_text(self) -> str:
        return f"the store at {self.url.address} is unreachable ({self._last_error})"

    def _ensure_connecting(self) -> None:
        if self._connecting is None and not self._closed:
            self._connecting = asyncio.get_running_loop().create_task(self._connect_loop())
        else:
            self._kick.set()

    async def _connect_loop(self) -> None:
        backoff = BACKOFF_FIRST_S
        try:
            while not self._closed:
                try:
                    wire = await self._open()
                except Exception as exc:  # noqa: BLE001 - any failure: log, retry later
                    self._last_error = str(exc) or type(exc).__name__
                    self._log_trouble(f"Cannot connect to the store at {self.url.address}: "
                                      f"{self._last_error}")
                    await self._back_off(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                self._wire = wire
                log.log(logging.DEBUG if self.quiet else logging.INFO,
                        "Connected to the store at %s (database %d)", self.url.address, self.db)
                waiting, self._waiting = self._waiting, collections.deque()
                for data, callback, since, resend in waiting:
                    wire.write(data, callback, resend, since)
                return
        finally:
            self._connecting = None

    async def _back_off(self, backoff: float) -> None:
        """Wait `backoff` seconds before the next attempt, or less when a command arrives
        meanwhile, but at least BACKOFF_FIRST_S: a store that is back is found at the next
        command, and one that is down costs at most 20 attempts a second."""
        self._kick.clear()
        try:
            await asyncio.wait_for(self._kick.wait(), backoff)
        except asyncio.TimeoutError:
            return
        await asyncio.sleep(BACKOFF_FIRST_S)

    async def _open(self) -> _Wire:
        loop = asyncio.get_running_loop()
        url = self.url
        context = tls_context(url) if url.tls else None
        if url.unix_path:
            _, wire = await asyncio.wait_for(loop.create_unix_connection(
                lambda: _Wire(self), url.unix_path, ssl=context), self.timeout_s)
        else:
            assert self.address is not None
            host, port = self.address
            _, wire = await asyncio.wait_for(loop.create_connection(
                lambda: _Wire(self), host, port, ssl=context,
                server_hostname=host if context else None), self.timeout_s)
        try:
            await asyncio.wait_for(self._handshake(wire), self.timeout_s)
        except (Exception, asyncio.CancelledError):  # not GeneratorExit: no loop to abort on
            if wire.transport is not None:
                wire.transport.abort()
            raise
        return wire

    async def _handshake(self, wire: _Wire) -> None:
        loop = asyncio.get_running_loop()

        async def setup_call(*args: Arg) -> Reply:
            future: asyncio.Future[Reply] = loop.create_future()

            def done(reply: Reply) -> None:
                if not future.done():
                    future.set_result(reply)

            wire.write(command_bytes(args), done)
            return await future

        commands: list[list[Arg]] = []
        if self.url.password:
            commands.append(["AUTH", self.url.username, self.url.password]
                            if self.url.username else ["AUTH", self.url.password])
        if self.db:
            commands.append(["SELECT", self.db])
        commands.append(["CLIENT", "SETNAME", self.name])
        for args, reply in zip(commands, await asyncio.gather(
                *(setup_call(*args) for args in commands))):
            if isinstance(reply, (ReplyError, StoreUnavailable)):
                raise ReplyError(f"{str(args[0])} failed: {reply}")
        if self.on_connect is not None:
            await self.on_connect(setup_call)

    def lost(self, wire: _Wire, exc: Exception | None) -> None:
        """The connection `wire` closed: reconnect; what it had in flight is sent again
        or fails (see the module's docstring)."""
        again = wire.take_back(ReplyLost(
            f"the connection to the store at {self.url.address} was lost after the command "
            "was sent: it may have run; check before repeating it"))
        if self._wire is not wire or self._closed:  # a handshake that failed, or closing
            for _, callback, _, _ in again:
                _answer(callback, StoreUnavailable(
                    f"the connection to the store at {self.url.address} was lost"))
            return
        self._wire = None
        self._last_error = f"connection lost: {exc}" if exc else "connection closed"
        self._log_trouble(f"Lost the connection to the store at {self.url.address}")
        if not self.requeue:
            for _, callback, _, _ in again:
                _answer(callback, StoreUnavailable(
                    f"the connection to the store at {self.url.address} was lost"))
            again = []
        self._waiting.extendleft(reversed(again))
        self._ensure_connecting()
        if again:
            self._arm_watchdog()

    def _log_trouble(self, text: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning("%s", text)

    # -- timeouts --------------------------------------------------------------------------

    def _arm_watchdog(self) -> None:
        if self._watchdog is None and not self._closed:
            self._watchdog = asyncio.get_running_loop().call_later(WATCHDOG_S, self._watch)

    def _watch(self) -> None:
        """Fail the commands that waited for a connection longer than timeout_s; close a
        connection that holds requests but answered nothing for timeout_s."""
        self._watchdog = None
        now = time.monotonic()
        waiting = self._waiting
        while waiting and now - waiting[0][2] >= self.timeout_s:
            callback = waiting.popleft()[1]
            callback(StoreUnavailable(self.unreachable_text()))
        wire = self._wire
        if wire is not None and wire.callbacks:
            if wire.replies != self._seen_replies:
                self._seen_replies, self._stalled_since = wire.replies, now
            elif self._stalled_since is None:
                self._stalled_since = now
            elif now - self._stalled_since >= self.timeout_s:
                self._last_error = f"no reply for {self.timeout_s:g} s"
                log.warning("The store at %s sent no reply for %g s: reconnecting",
                            self.url.address, self.timeout_s)
                self._stalled_since = None
                if wire.transport is not None:
                    wire.transport.abort()
        else:
            self._stalled_since = None
        if waiting or (wire is not None and wire.callbacks) or self._connecting is not None:
            self._arm_watchdog()

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._connecting is not None:
            self._connecting.cancel()
            try:
                await self._connecting
            except (asyncio.CancelledError, Exception):
                pass
        wire, self._wire = self._wire, None
        if wire is not None and wire.transport is not None:
            wire.flush()
            wire.transport.close()
        waiting, self._waiting = self._waiting, collections.deque()
        for _, callback, _, _ in waiting:
            callback(StoreUnavailable("the store's client is closed"))
