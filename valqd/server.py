"""The network side: listeners, connections, the engine's timer and the process lifecycle.

This module only moves bytes: each connection feeds what it reads to its RESP parser,
hands every complete command to the dispatcher and writes all replies of one read back in
one write. The engine's single timer is re-armed after every batch of commands and every
tick, always for the earliest deadline in the server.

Persist before replying: while the AOF has records that are not written yet, replies are
held, and one commit at the end of the event-loop turn writes the records of every client of
that turn in one batch (and fsyncs it under `appendfsync always`) before releasing them. If
that write fails, the held clients are disconnected instead of being told "done".
"""

import asyncio
import collections
import ipaddress
import itertools
import logging
import os
import resource
import signal
import socket
import ssl
import time
from time import monotonic
from typing import Callable, Final, Sequence, cast

from .commands import acl
from .commands.acl import load_acl_file
from .commands.context import Blocked, Pending, ServerState, Session, wall_clock_ms
from .commands.dispatch import Dispatcher
from .commands.lean import LeanPath
from .commands.observe import render_metrics, rss_bytes
from .commands.table import TABLE
from .config import AUTO_PORT, Config, int_value, output_limits
from .engine import TICK_BUDGET, Databases
from .errors import CommandError, ProtocolError
from .logs import VERBOSE
from .http import HttpApp, HttpError, Waiting
from .http import RequestParser as HttpRequestParser
from .http.parser import MAX_HEAD, Request
from .http.response import Response, error_response
from .persistence.aof import AppendOnlyFile
from .persistence.files import read_file, replace_file
from .persistence.loader import LoadResult, load_steps
from .resp import RequestParser, encode
from .resp.parser import Limits
from .store import Store
from .store.bridge import StoreGone, ThreadedHttp
from .store.embedded import EmbeddedStore

log = logging.getLogger("valqd")

MAX_TIMER_SLEEP_S = 3600.0  # far deadlines are re-checked hourly; housekeeping catches jumps
HOUSEKEEPING_S = 0.1  # polling a rewrite child; fsync, disk and idle checks every 10th time
PROTECTED_MODE_DENIED = (
    b"-DENIED valqd is running in protected mode because protected mode is enabled and no "
    b"password is set for the default user. In this mode connections are only accepted from "
    b"the loopback interface. If you want to connect from external computers to valqd you "
    b"may adopt one of the following solutions: 1) Just disable protected mode sending the "
    b"command 'CONFIG SET protected-mode no' from the loopback interface by connecting to "
    b"valqd from the same host the server is running, however MAKE SURE valqd is not "
    b"publicly accessible from internet if you do so. 2) Alternatively you can just disable "
    b"the protected mode by editing the valqd configuration file, and setting the protected "
    b"mode option to 'no', and then restarting the server. 3) If you started the server "
    b"manually just for testing, restart it with the '--protected-mode no' option. 4) Set up "
    b"an authentication password for the default user. NOTE: You only need to do one of the "
    b"above things in order for the server to start accepting connections from the outside."
    b"\r\n")
MAX_CLIENTS_REACHED = b"-ERR max number of clients reached\r\n"
QUERY_BUFFER_EXCEEDED = b"-ERR Protocol error: query buffer limit exceeded\r\n"
REFUSAL_LOG_EVERY_S = 1.0
RESERVED_FDS = 32  # descriptors kept for files and listeners, as Valkey's CONFIG_MIN_RESERVED_FDS
RESP_REFUSALS = {"maxclients": MAX_CLIENTS_REACHED, "protected": PROTECTED_MODE_DENIED}
REPLY_SLICE: Final = 1 << 20  # replies of one read sent before the rest of the read is executed
# Commands one client may run per turn of the event loop: the rest of a long pipeline waits
# for the next turn, after every other client's turn, so one greedy client delays another's
# PING by about this many commands, not by its whole pipeline. Valkey bounds a turn by one
# 16 KB read, about 128 PUSHes of 100-byte bodies. A turn's fixed costs (a poll, a write, an
# AOF commit) stay small beside them: 500k pipelined pushes took the same server CPU with
# this bound as with none (bench/: `python -m bench --only cost`).
COMMANDS_PER_TURN: Final = 128
REQUESTS_PER_TURN = 100  # the same for HTTP requests, each of which costs several commands
# Replies one client may have waiting on a store (valqd.store.valkey) before the server stops
# running its pipeline: what a client sends beyond it waits in its socket.
MAX_PENDING_REPLIES: Final = 1024


class Waiter:
    """A client parked in a blocking pop."""

    __slots__ = ("connection", "blocked", "keys", "timer", "done")

    def __init__(self, connection: "Connection | HttpConnection", blocked: Blocked) -> None:
        self.connection = connection
        self.blocked = blocked
        self.keys = [(blocked.database, name) for name in blocked.queues]  # waiters' dict
        self.timer: asyncio.TimerHandle | None = None
        self.done = False


class Connection(asyncio.Protocol):
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.parser = RequestParser(server.limits)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.waiter: Waiter | None = None  # set while blocked; input is only buffered then
        self.over_soft_limit_since: float | None = None  # unread replies past the soft limit
        # A pipeline longer than one turn: the rest runs in a later turn (`continue_soon`),
        # and reading stops until it has, so that what a client sends waits in its socket,
        # not in memory (uvloop otherwise reads up to 32 times per turn).
        self.continuation: asyncio.Handle | None = None
        self.reading_paused = False
        # Replies in order while one of them is still on its way from a store (Pending):
        # the ready ones behind it wait here. Empty with the embedded store.
        self.outbox: collections.deque[bytes | Pending] = collections.deque()
        self.close_when_sent = False

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # a stream transport: uvloop's has the methods of asyncio.Transport, not the class
        self.transport = transport = cast(asyncio.Transport, base)
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        refusal = self.server.refusal(peer[0])
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            return
        self.session = self.server.register(self, _addr(peer), _addr(local))
        self.parser.authenticated = self.session.authenticated
        if log.isEnabledFor(VERBOSE):
            log.log(VERBOSE, "Accepted %s (client id=%d)", self.session.addr, self.session.id)

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        if self.waiter is None and not (self.outbox and self._waits_on_barrier()):
            if self.continuation is None:  # else this turn's commands ran already
                self.process()
        elif self.parser.buffered() > self.server.limits.max_query_buffer and \
                self.transport is not None and not self.transport.is_closing():
            # blocked: what it sends waits unparsed, but not beyond the query buffer limit
            self.server.reply(self, QUERY_BUFFER_EXCEEDED, True)

    def process(self) -> None:
        """Execute the complete commands buffered, until one blocks or asks to close, or
        until this turn's share (COMMANDS_PER_TURN, or REPLY_SLICE bytes of replies) is used:
        then the rest runs in a later turn."""
        session, transport = self.session, self.transport
        if session is None or transport is None or transport.is_closing() or \
                self.waiter is not None or self.close_when_sent or \
                (self.outbox and self._held_back()):  # wait for the store's replies
            return
        server = self.server
        # compiled, a method called on its object is a direct call; one taken as a value
        # (a bound method) is called the slow way: the lean path is handed the parser
        dispatcher = server.dispatcher
        lean = server.lean if server.lean_on else None
        readied = server.databases.readied
        parser = self.parser
        replies: list[bytes] = []
        outbox = self.outbox
        size = 0
        turn_left = COMMANDS_PER_TURN
        close = False
        try:
            while (argv := parser.next_command()) is not None:
                if lean is not None:
                    argv, turn_left, size = lean.serve(session, argv, parser, replies,
                                                       turn_left, size)
                    if argv is None:  # the lean path served all there was, or the share
                        if size > REPLY_SLICE or not turn_left:
                            self._end_turn(transport)
                        else:  # the parser has nothing complete left (serve asked it)
                            self._resume_reading(transport)
                        break
                reply = dispatcher.execute(session, argv)
                if readied:
                    server.serve_waiters()
                if parser.authenticated is not session.authenticated:
                    parser.authenticated = session.authenticated
                if isinstance(reply, Pending):  # a store's reply, still on its way: the
                    outbox.extend(replies)  # replies before and after it wait in line
                    replies.clear()
                    outbox.append(reply)
                    turn_left -= 1
                    if reply.barrier:  # reading goes on, to notice a disconnect meanwhile
                        self._resume_reading(transport)
                        break
                    if not turn_left or len(outbox) >= MAX_PENDING_REPLIES:
                        self._end_turn(transport)  # resumed once the replies are in
                        break
                    continue
                if isinstance(reply, Blocked):
                    server.block(self, reply)
                    self._resume_reading(transport)  # to notice a disconnect while blocked
                    break
                replies.append(reply)
                if session.close_after_reply:
                    close = True
                    break
                size += len(reply)
                turn_left -= 1
                if size > REPLY_SLICE or not turn_left:
                    self._end_turn(transport)
                    break
            else:
                self._resume_reading(transport)
        except ProtocolError as exc:
            error = encode.error("ERR", f"Protocol error: {exc}")
            replies.append(error)
            server.state.count_error(error)
            close = True
            if log.isEnabledFor(VERBOSE):
                log.log(VERBOSE, "Protocol error (%s) from client: id=%d addr=%s laddr=%s",
                        exc, session.id, session.addr, session.laddr)
        session.last_command_at = monotonic()
        server.after_commands()
        if outbox:
            outbox.extend(replies)
            if close:
                self.close_when_sent = True
            self._send_ready()
        elif replies or close:
            server.reply(self, b"".join(replies), close)

    def blocked(self) -> bool:
        """Whether the client waits in a blocking pop (here, or in a store's front end)."""
        if self.waiter is not None:
            return True
        last = self.outbox[-1] if self.outbox else None
        return isinstance(last, Pending) and last.blocked and last.reply is None

    def _held_back(self) -> bool:
        """Whether a barrier or too many replies of a store are still on their way."""
        return len(self.outbox) >= MAX_PENDING_REPLIES or self._waits_on_barrier()

    def _waits_on_barrier(self) -> bool:
        """Whether a barrier is on its way (it is always the last reply: nothing runs after
        it until it is resolved). What the client sends meanwhile waits in the parser, up
        to the query buffer limit, as behind a blocked pop."""
        last = self.outbox[-1]
        return isinstance(last, Pending) and last.barrier and last.reply is None

    def _send_ready(self) -> None:
        """Send the replies at the head of the outbox that are ready, in order; wait for the
        first that is not, then go on with the client's pipeline."""
        outbox = self.outbox
        ready = []
        while outbox:
            head = outbox[0]
            if isinstance(head, Pending):
                if head.reply is None:
                    head.listener = self._send_ready
                    break
                head = head.reply
            ready.append(head)
            outbox.popleft()
        close = self.close_when_sent and not outbox
        if ready or close:
            self.server.reply(self, b"".join(ready), close)
        if not close and (self.reading_paused or self.parser.buffered()) and \
                (not outbox or not self._held_back()):
            self.continue_soon()

    def _end_turn(self, transport: asyncio.Transport) -> None:
        """This turn's share is used: send the replies so far first (the output buffer
        limit applies before the rest of a pipeline of large replies is built, and other
        clients get a turn), and run the rest, without reading more, in a later turn."""
        self.continue_soon()
        if not self.reading_paused:
            transport.pause_reading()
            self.reading_paused = True

    def continue_soon(self) -> None:
        """Run the buffered commands in the next turn of the event loop (once)."""
        if self.continuation is None:
            self.continuation = asyncio.get_running_loop().call_soon(self._continue)

    def _continue(self) -> None:
        self.continuation = None
        self.process()

    def _resume_reading(self, transport: asyncio.Transport) -> None:
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()

    def unblocked(self, reply: bytes) -> None:
        """A blocking pop was served (or timed out): send `reply`, then run what the client
        sent meanwhile."""
        if self.outbox:  # behind replies still on their way from a store
            self.outbox.append(reply)
            self._send_ready()
            return
        self.server.reply(self, reply, False)
        self.continue_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None:
            self.server.unblock(self.waiter, None)
        for reply in self.outbox:  # a blocked pop in a store must not take a message now
            if isinstance(reply, Pending):
                reply.cancel()
        if self.session is not None:
            self.server.unregister(self.session)
            if log.isEnabledFor(VERBOSE):
                log.log(VERBOSE, "Client closed connection id=%d addr=%s%s", self.session.id,
                        self.session.addr, f" ({exc})" if exc else "")


class HttpConnection(asyncio.Protocol):
    """One HTTP client (valqd.http parses and answers): requests are answered one at a time,
    in order. The connection counts against maxclients, and a client has http-timeout
    seconds to send each whole request, or to start the next one, before it is closed."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.parser = HttpRequestParser(server.config.int("http-max-request-size"))
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None  # sessions are per request, in the app
        self.waiter: Waiter | None = None  # set while a pop waits
        self.over_soft_limit_since: float | None = None
        self.waiting: tuple[Request, Waiting] | None = None
        self.threaded = False  # a request runs in a thread (valqd.store.bridge)
        self.timer: asyncio.TimerHandle | None = None
        self.addr = self.laddr = ""
        self.counted = False
        self.reading_paused = False

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, base)  # (as Connection's)
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        reason = self.server.refusal_reason(peer[0])
        if reason is not None:
            status, message = HTTP_REFUSALS[reason]
            transport.write(error_response(status, "ERR", message).encode(False))
            transport.close()
            return
        self.server.http_clients += 1
        self.counted = True
        self.addr, self.laddr = _addr(peer), _addr(local)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        if self.waiting is None and not self.threaded:
            self.process()
        elif self.parser.buffered() > MAX_HEAD + self.parser.max_body and \
                self.transport is not None:
            self.transport.abort()  # pipelined behind a waiting pop, beyond any request

    def process(self) -> None:
        """Answer the complete requests buffered, until a pop waits, at most
        REQUESTS_PER_TURN of them per turn of the event loop (reading pauses meanwhile, so
        a long pipeline does not hold up other clients)."""
        server, transport = self.server, self.transport
        turn_left = REQUESTS_PER_TURN
        while self.waiting is None and not self.threaded and transport is not None and \
                not transport.is_closing():
            if not turn_left:
                if not self.reading_paused:
                    transport.pause_reading()
                    self.reading_paused = True
                asyncio.get_running_loop().call_soon(self.process)
                return
            turn_left -= 1
            try:
                request = self.parser.next_request()
            except HttpError as exc:
                server.reply(self, error_response(exc.status, "ERR", exc.message).encode(
                    False), True)
                return
            if request is None:
                if self.reading_paused:
                    self.reading_paused = False
                    transport.resume_reading()
                return
            self._disarm()
            if server.http_bridge is not None and not server.http_app.runs_no_command(request):
                self._handle_in_thread(server.http_bridge, request)  # a store's: in a thread
                return
            outcome = server.http_app.handle(request, self.addr, self.laddr)
            if server.databases.readied:
                server.serve_waiters()
            server.after_commands()
            if isinstance(outcome, Waiting):
                self.waiting = (request, outcome)
                server.block(self, outcome.blocked)
                return
            self._respond(request, outcome)

    def _handle_in_thread(self, bridge: ThreadedHttp, request: Request) -> None:
        """Answer `request` from a worker thread; the next request waits for it."""
        self.threaded = True

        def done(future: "asyncio.Future[Response | Waiting]") -> None:
            self.threaded = False
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            exc = future.exception() if not future.cancelled() else None
            outcome = None if future.cancelled() or exc is not None else future.result()
            if not isinstance(outcome, Response):  # the server stops (or a bug)
                if exc is not None and not isinstance(exc, StoreGone):
                    log.error("bug: an HTTP request failed", exc_info=exc)
                self.server.reply(self, error_response(500, "ERR", "internal error").encode(
                    False), True)
                return
            self._respond(request, outcome)
            asyncio.get_running_loop().call_soon(self.process)

        bridge.run(self.server.http_app.handle, request, self.addr, self.laddr
                   ).add_done_callback(done)

    def _respond(self, request: Request, response: Response) -> None:
        close = not request.keep_alive
        self.server.reply(self, response.encode(request.keep_alive, request.method == "HEAD"),
                          close)
        if not close:
            self._arm()

    def unblocked(self, reply: bytes) -> None:
        assert self.waiting is not None
        (request, waiting), self.waiting = self.waiting, None
        self._respond(request, waiting.finish(reply))
        asyncio.get_running_loop().call_soon(self.process)

    def _arm(self) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(
            self.server.config.int("http-timeout"), self._timed_out)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.parser.buffered():  # half sent: say why before closing
            self.server.reply(self, error_response(
                408, "ERR", "the request took longer than http-timeout").encode(False), True)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.waiter is not None:
            self.server.unblock(self.waiter, None)
        if self.threaded and self.server.http_bridge is not None:
            self.server.http_bridge.gone(self.addr)
        if self.counted:
            self.server.http_clients -= 1
            self.counted = False


HTTP_REFUSALS = {"maxclients": (503, "max number of clients reached"),
                 "protected": (403, "valqd is running in protected mode: with no password "
                               "set, only clients on the loopback interface are served")}


def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names, as asyncio's create_server makes
    them, but resolved here, in this thread: the event loop would resolve on a thread pool
    (uvloop always does), and no thread may be alive when a rewrite forks."""
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                              f"{address!r}: {(exc.strerror or str(exc)).lower()}") from None
            sock.listen(backlog)
            sock.setblocking(False)
            if not port:  # `auto`: the other addresses take the port the first one got
                port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def raise_file_limit(wanted: int) -> tuple[int, int, str]:
    """Raise the soft descriptor limit towards `wanted`: (the limit now, the limit before,
    why it could not reach `wanted`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted, soft, ""
    best = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    problem = f"the hard limit is {hard}"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (best, hard))
    except (OSError, ValueError) as exc:
        problem, best = str(exc), soft
    return best, soft, problem


def check_maxclients(value: object) -> None:
    """CONFIG SET maxclients: refused, in Valkey's words, when the descriptor limit cannot
    be raised to fit it."""
    assert isinstance(value, int)
    best, _, _ = raise_file_limit(value + RESERVED_FDS)
    if best < value + RESERVED_FDS:
        raise ValueError("The operating system is not able to handle the specified number "
                         f"of clients, try with {max(best - RESERVED_FDS, 1)}")


def fit_maxclients(config: Config) -> None:
    """Raise the descriptor limit to what `maxclients` needs, or lower `maxclients` to what
    the limit allows, with Valkey's log lines (adjustOpenFilesLimit): clients past the limit
    would otherwise fail in accept() while they still count as allowed."""
    maxclients = config.int("maxclients")
    wanted = maxclients + RESERVED_FDS
    best, soft, problem = raise_file_limit(wanted)
    if best >= wanted:
        if soft < wanted:
            log.info("Increased maximum number of open files to %d (it was originally set "
                     "to %d).", best, soft)
        return
    if best <= RESERVED_FDS:
        raise ValueError(f"Your current 'ulimit -n' of {best} is not enough for the server to "
                         f"start. Please increase your open file limit to at least "
                         f"{RESERVED_FDS + 1}.")
    config.values["maxclients"] = best - RESERVED_FDS
    log.warning("You requested maxclients of %d requiring at least %d max file descriptors.",
                maxclients, wanted)
    log.warning("Server can't set maximum open files to %d because of OS error: %s.",
                wanted, problem)
    log.warning("Current maximum open files is %d. maxclients has been reduced to %d to "
                "compensate for low ulimit. If you need higher maxclients increase "
                "'ulimit -n'.", best, best - RESERVED_FDS)


def open_store(config: Config) -> Store:
    """The store the `store` setting names: the embedded engine when it is empty."""
    url = config.str("store")
    if not url:
        return EmbeddedStore()
    from .store.url import parse_store_url
    from .store.valkey.store import ValkeyStore
    return ValkeyStore(parse_store_url(url), config.int("store-timeout") / 1000,
                       wait_replicas=config.int("store-wait-replicas"),
                       wait_timeout_ms=config.int("store-wait-timeout"),
                       wait_aof=config["store-wait-aof"] == "yes")


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host in ("", "localhost")  # a Unix socket has no address
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _addr(sock_addr: Sequence[object]) -> str:
    """`host:port` of a socket address (a tuple under both loops; any sequence will do:
    uvloop gives lists where asyncio gives tuples elsewhere, as in Server.sockets)."""
    host, port = sock_addr[0], sock_addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class Server:
    def __init__(self, config: Config, clock: Callable[[], int] = wall_clock_ms,
                 store: Store | None = None) -> None:
        """`store`: where the queues live; default from the `store` setting (empty: the
        embedded engine)."""
        self.config = config
        self.clock = clock
        self.store = store if store is not None else open_store(config)
        self.databases = Databases(config.int("databases"))
        self.state = ServerState(self.databases[0], config, TABLE, clock,
                                 databases=self.databases,
                                 request_shutdown=self.request_shutdown)
        self.limits = Limits(max_bulk_len=config.int("proto-max-bulk-len"),
                             max_query_buffer=config.int("client-query-buffer-limit"))
        self.state.baseline_memory = rss_bytes()
        self._follow_config()
        self.state.read_file = read_file
        self.state.write_file = replace_file
        self.dispatcher = Dispatcher(self.state, config.renames, self.store.handlers(),
                                     self.store.no_multi)
        self._waiters: dict[tuple[int, bytes], collections.deque[Waiter]] = {}  # (db, queue)
        # the lean path of a RESP connection's commands (embedded engine only), while
        # `lean-path` is yes; the dispatcher serves what it does not
        self.lean = LeanPath(self.state, self.dispatcher, self.serve_waiters, self._waiters,
                             REPLY_SLICE)
        self.lean_on = False
        self._choose_path(config["lean-path"])
        config.on_change["lean-path"] = self._choose_path
        self.http_app = HttpApp(self._http_execute, self.new_session, self.metrics,
                                lambda: self.state.loading,
                                lambda: len(self.state.acl.users) > 1)
        self.http_clients = 0  # open HTTP connections, counted against maxclients
        self.http_bridge: ThreadedHttp | None = None  # with a store: HTTP in threads
        self._client_ids = itertools.count(1)
        self._connections: dict[int, Connection] = {}
        self._listeners: list[asyncio.AbstractServer] = []
        self._refusal_logged_at = -REFUSAL_LOG_EVERY_S
        self._refused_unlogged = 0
        self.tls_port = 0  # the TLS port bound (0: none)
        self.http_port = 0  # the HTTP port bound (0: none)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._armed_due = -1  # `databases.due_at` when the timer was last armed (or not)
        self._stopping = asyncio.Event()
        self.aof: AppendOnlyFile | None = None
        self._held: list[tuple[Connection | HttpConnection, bytes, bool]] = []
        self._commit_scheduled = False
        self._commit_soon = self._commit  # bound once: the group commit runs every turn
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it runs in, once known
        self._housekeeping: asyncio.TimerHandle | None = None
        self._housekeeping_round = 0
        self.state.blocked_consumers = self.blocked_consumers
        self.state.blocked_clients = lambda: sum(
            1 for c in self._connections.values() if c.blocked())

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen first (a port that is taken fails at once), then load the AOF a slice at a
        time: meanwhile clients connect and get `-LOADING` for what needs the data, as in
        Valkey. Returns early, without opening the AOF, if a shutdown comes while loading."""
        loop = asyncio.get_running_loop()
        self.state.event_loop = type(loop).__module__.partition(".")[0]
        self._load_users()
        self._capture_signals(loop)
        fit_maxclients(self.config)
        self.config.checks["maxclients"] = check_maxclients
        try:
            await self.store.open(self.state)
        except BaseException:
            await self.store.close()  # no connection left retrying for a server not started
            raise
        if self.store.kind != "embedded" and self.config.int("http-port"):
            self._serve_http_in_threads(loop)
        await self._listen_all(loop)
        self._housekeeping = loop.call_later(HOUSEKEEPING_S, self._housekeep)
        if self.config["appendonly"] == "yes" and self.store.kind == "embedded":
            if not await self._load_aof():
                return
            self._open_aof()
        self.databases.tick(self.clock())  # whatever fell due while the server was down
        self.after_commands()
        self._commit()

    async def _listen_all(self, loop: asyncio.AbstractEventLoop) -> None:
        config = self.config
        port, tls_port = config.int("port"), config.int("tls-port")
        if not port and not tls_port:
            raise ValueError("port 0 turns plain TCP off, and tls-port is 0: no listener left")
        context = self._tls_context() if tls_port else None
        if tls_port and config.str("tls-auth-clients") == "yes":
            # no listener may serve a client without a certificate
            for name, serves, fix in (("port", "plain TCP", "set port 0 to serve TLS only"),
                                      ("http-port", "HTTP", "set http-port 0")):
                if config.int(name):
                    raise ValueError(
                        f"tls-auth-clients yes: every client must show a certificate, but "
                        f"{name} {config.render(name)} would serve {serves} without one; "
                        f"{fix}, or tls-auth-clients optional")
        if port:
            port = config.values["port"] = await self._listen(Connection, port)
        self.state.bound_port = port
        if tls_port:
            self.tls_port = config.values["tls-port"] = await self._listen(
                Connection, tls_port, context)
        http_port = config.int("http-port")
        if http_port:
            self.http_port = config.values["http-port"] = await self._listen(
                HttpConnection, http_port, hosts=config.str("http-bind"))
        log.info("Listening on %s %s", config["bind"], self.ports_text())

    def ports_text(self) -> str:
        """`port 7400, TLS port 7401, HTTP port 7480`: the ports bound, for the log."""
        return ", ".join(([f"port {self.port}"] if self.port else []) +
                         ([f"TLS port {self.tls_port}"] if self.tls_port else []) +
                         ([f"HTTP port {self.http_port}"] if self.http_port else []))

    async def _load_aof(self) -> bool:
        """Replay the AOF through the engine, giving the event loop a turn after every slice
        of records; False if a shutdown was asked for meanwhile."""
        path = os.path.join(str(self.config["dir"]), str(self.config["appendfilename"]))
        state = self.state
        state.loading, state.loading_progress = True, LoadResult()
        state.loading_started_at = int(time.time())
        try:
            for _ in load_steps(path, self.databases, self.config["aof-load-truncated"] == "yes",
                                state.loading_progress):
                await asyncio.sleep(0)
                if self._stopping.is_set():
                    log.warning("Shutdown asked for while loading: the AOF is left as it is")
                    return False
        finally:
            state.loading = False
        return True

    async def _listen(self, protocol: Callable[["Server"], asyncio.BaseProtocol], port: int,
                      context: ssl.SSLContext | None = None, hosts: str | None = None) -> int:
        """Listen on `port` (AUTO_PORT: one the system picks) at every address of `hosts`
        (default: `bind`); the port bound."""
        loop = asyncio.get_running_loop()
        if port == AUTO_PORT:
            port = 0
        backlog = self.config.int("tcp-backlog")
        for host in (hosts or str(self.config["bind"])).split():
            for sock in listening_sockets(host, port, backlog):
                self._listeners.append(await loop.create_server(
                    lambda: protocol(self), sock=sock, ssl=context, backlog=backlog))
                port = port or sock.getsockname()[1]
        return port

    def _load_users(self) -> None:
        """The ACL users of `aclfile`, or of the config file's `user` lines; ValueError (the
        server does not start) on the first bad one, as in Valkey."""
        state = self.state
        try:
            if self.config.str("aclfile"):
                load_acl_file(state, self.config.str("aclfile"), "valqd did not start")
            elif self.config.users:
                acl.replace_users(state, state.acl.parse_users(self.config.users))
        except CommandError as exc:
            raise ValueError(f"ACL error: {exc.message}") from None

    def _tls_context(self) -> ssl.SSLContext:
        config = self.config
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(config.str("tls-cert-file"), config.str("tls-key-file"))
        auth = config.str("tls-auth-clients")
        if config.str("tls-ca-cert-file"):
            context.load_verify_locations(config.str("tls-ca-cert-file"))
        elif auth != "no":
            raise ValueError("tls-auth-clients needs tls-ca-cert-file (or tls-auth-clients no)")
        context.verify_mode = {"yes": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL,
                               "no": ssl.CERT_NONE}[auth]
        return context

    def _open_aof(self) -> None:
        path = os.path.join(str(self.config["dir"]), str(self.config["appendfilename"]))
        self.aof = AppendOnlyFile(path, str(self.config["appendfsync"]))
        self.aof.open()
        self.aof.ensure_reserve(self.databases.message_count())
        for index, engine in enumerate(self.databases.engines):
            engine.journal = self.aof.journal_for(index)
        self.databases.journal = self.aof.append
        self.databases.readied.clear()
        self.state.aof = self.aof
        self.config.on_change["appendfsync"] = self._set_fsync_policy

    def _follow_config(self) -> None:
        """Copy the settings the hot paths read into plain attributes, now and on CONFIG SET."""
        config, state, limits = self.config, self.state, self.limits
        hooks = {
            "proto-max-bulk-len": lambda v: setattr(limits, "max_bulk_len", v),
            "client-query-buffer-limit": lambda v: setattr(limits, "max_query_buffer", v),
            "maxmemory": lambda v: setattr(state, "maxmemory", v),
            "max-message-size": lambda v: setattr(state, "max_message_size", v),
            "slowlog-log-slower-than": lambda v: setattr(state, "slowlog_threshold_us", v),
            "slowlog-max-len": lambda v: state.slowlog.resize(int_value(v)),
            "acllog-max-len": lambda v: state.acl.log.resize(int_value(v)),
            "requirepass": self._set_default_password,
        }
        for name, hook in hooks.items():
            hook(config[name])
            config.on_change[name] = hook

    def _serve_http_in_threads(self, loop: asyncio.AbstractEventLoop) -> None:
        """A store that answers later (Pending): the HTTP app runs in threads, its
        commands on this loop (valqd.store.bridge)."""
        bridge = self.http_bridge = ThreadedHttp(loop, self.dispatcher.execute,
                                                 self.new_session, self.metrics)
        self.http_app = HttpApp(bridge.execute, bridge.new_session, bridge.metrics,
                                lambda: self.state.loading,
                                lambda: len(self.state.acl.users) > 1)

    def _http_execute(self, session: Session, argv: list[bytes]) -> bytes | Blocked:
        reply = self.dispatcher.execute(session, argv)
        assert not isinstance(reply, Pending), "with a store, HTTP runs in threads (start())"
        return reply

    def _choose_path(self, lean: object) -> None:
        """The lean path serves the embedded engine only: with another store, never."""
        self.lean_on = lean == "yes" and self.store.kind == "embedded"

    def _set_default_password(self, password: object) -> None:
        """`requirepass` is the default user's password, as in Valkey."""
        self.state.acl.set_default_password(str(password))
        acl.refresh_sessions(self.state, [self.state.acl.default])

    def _set_fsync_policy(self, policy: object) -> None:
        if self.aof is not None:
            self.aof.fsync_policy = str(policy)

    @property
    def port(self) -> int:
        return self.state.bound_port

    def request_shutdown(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _capture_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (uvloop says so with a ValueError)

    async def serve_until_stopped(self) -> None:
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
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        self._commit()
        if self.aof is not None:
            log.warning("Calling fsync() on the AOF file.")
            self.aof.close()
        if self.http_bridge is not None:
            self.http_bridge.close()
        await self.store.close()
        log.warning("valqd is now ready to exit, bye bye...")

    def metrics(self) -> str:
        self.state.now = self.clock()
        self.state.engine = self.databases[0]  # the per-queue series are database 0's
        extra = {
            "valqd_uptime_seconds": ("gauge", "Seconds since the server started.",
                                     round(time.time() - self.state.started_at, 3)),
            "valqd_connected_clients": ("gauge", "Client connections.",
                                        len(self.state.clients)),
            "valqd_memory_rss_bytes": ("gauge", "Resident memory of the server process.",
                                       rss_bytes()),
            "valqd_aof_size_bytes": ("gauge", "Size of the append-only file.",
                                     self.aof.size if self.aof is not None else 0),
        }
        return render_metrics(self.state, extra, with_queues=self.store.kind == "embedded")

    # -- clients ---------------------------------------------------------------------------

    def refusal(self, peer_host: str) -> bytes | None:
        """The reply that turns a new RESP connection away, or None to accept it."""
        reason = self.refusal_reason(peer_host)
        return None if reason is None else RESP_REFUSALS[reason]

    def refusal_reason(self, peer_host: str) -> str | None:
        """Why a new connection (RESP or HTTP) is turned away: `maxclients`, `protected`,
        or None to accept it."""
        if len(self.state.clients) + self.http_clients >= self.config.int("maxclients"):
            self._refused(peer_host, f"max number of clients reached "
                                     f"(maxclients {self.config.int('maxclients')})")
            return "maxclients"
        if self.config["protected-mode"] == "yes" and self.state.acl.default.nopass \
                and not _is_loopback(peer_host):
            self._refused(peer_host, "protected mode (no password, not from loopback)")
            return "protected"
        return None

    def _refused(self, peer_host: str, reason: str) -> None:
        """Count a refusal and log it: at most one line a second, which says how many more
        there were since the last line (a flood of refusals must not flood the log)."""
        self.state.rejected_connections += 1
        self._refused_unlogged += 1
        now = time.monotonic()
        if log.isEnabledFor(VERBOSE) or now - self._refusal_logged_at >= REFUSAL_LOG_EVERY_S:
            more = self._refused_unlogged - 1
            log.info("Client %s refused: %s%s", peer_host or "?", reason,
                     f" ({more} more refused since the last such line)" if more else "")
            self._refusal_logged_at = now
            self._refused_unlogged = 0

    def new_session(self, addr: str, laddr: str) -> Session:
        """A client's session, not yet registered (an HTTP request gets one of its own): the
        default user, authenticated when that user needs no password."""
        return acl.open_session(self.state, next(self._client_ids), addr, laddr)

    def register(self, connection: Connection, addr: str, laddr: str) -> Session:
        session = self.new_session(addr, laddr)
        transport = connection.transport
        session.closer = transport.close if transport is not None else None
        session.send = lambda data: self.reply(connection, data, False)
        if transport is not None:
            sock = transport.get_extra_info("socket")
            session.fd = sock.fileno() if sock is not None else -1
            session.io = lambda: (connection.parser.buffered(),
                                  transport.get_write_buffer_size(),
                                  connection.blocked())
        self._connections[session.id] = connection
        self.state.clients[session.id] = session
        self.state.total_connections += 1
        return session

    def unregister(self, session: Session) -> None:
        self.state.pubsub.drop(session)
        self._connections.pop(session.id, None)
        self.state.clients.pop(session.id, None)

    # -- blocking pops ------------------------------------------------------------------------

    def block(self, connection: "Connection | HttpConnection", blocked: Blocked) -> None:
        waiter = Waiter(connection, blocked)
        connection.waiter = waiter
        for key in waiter.keys:
            self._waiters.setdefault(key, collections.deque()).append(waiter)
        if blocked.timeout_ms:
            waiter.timer = asyncio.get_running_loop().call_later(
                blocked.timeout_ms / 1000, self.unblock, waiter, blocked.timeout_reply)

    def unblock(self, waiter: Waiter, reply: bytes | None) -> None:
        """Release a parked client with `reply` (None: it went away) and run what it sent
        meanwhile."""
        if waiter.done:
            return
        waiter.done = True
        if waiter.timer is not None:
            waiter.timer.cancel()
        for key in waiter.keys:
            queue_waiters = self._waiters.get(key)
            if queue_waiters is not None:
                try:
                    queue_waiters.remove(waiter)
                except ValueError:
                    pass
                if not queue_waiters:
                    del self._waiters[key]
        connection = waiter.connection
        connection.waiter = None
        if reply is not None:
            connection.unblocked(reply)

    def serve_waiters(self) -> None:
        """Give newly visible messages to parked clients, first come first served."""
        readied = self.databases.readied
        if not self._waiters:  # nobody waits (a push readies its queue every time)
            readied.clear()
            return
        while readied:
            queue_waiters = self._waiters.get(readied.pop())
            while queue_waiters:
                waiter = queue_waiters[0]
                transport = waiter.connection.transport
                if transport is None or transport.is_closing():
                    self.unblock(waiter, None)
                    continue
                reply = self._attempt(waiter)
                if reply is None:
                    break
                self.unblock(waiter, reply)

    def _attempt(self, waiter: Waiter) -> bytes | None:
        state = self.state
        state.now = self.clock()
        state.engine = self.databases[waiter.blocked.database]
        try:
            return waiter.blocked.attempt()
        except CommandError as exc:  # the queue was deleted meanwhile
            reply = encode.error(exc.code, exc.message)
            state.count_error(reply)
            return reply

    def blocked_consumers(self, name: bytes) -> int:
        """Clients blocked on queue `name` of the current command's database."""
        return len(self._waiters.get((self.state.engine.index, name), ()))

    # -- replies and group commit -------------------------------------------------------------

    def reply(self, connection: "Connection | HttpConnection", data: bytes, close: bool) -> None:
        """Send `data` once the records it depends on are written: while records wait,
        replies are held, and one commit at the end of the event-loop turn writes the
        records of every client of the turn (fsynced under `appendfsync always`) before
        releasing them. One write for all is cheaper than one per client (measured: 104 vs
        120-136 us of server CPU per unpipelined job cycle with 8 clients), as Valkey flushes
        its AOF once per event-loop iteration. A client that went away meanwhile (a store's
        reply came after it closed) is sent nothing: uvloop's transport raises on a write
        once it is closed."""
        if self.aof is not None and (self.aof.pending or self._held):
            self._held.append((connection, data, close))
            self._schedule_commit()
            return
        transport = connection.transport
        if transport is not None and not transport.is_closing():
            self._send(connection, transport, data, close)

    def _send(self, connection: "Connection | HttpConnection", transport: asyncio.Transport, data: bytes,
              close: bool) -> None:
        transport.write(data)
        if close:
            transport.close()
        elif size := transport.get_write_buffer_size():
            self._check_output(connection, transport, size)

    def _check_output(self, connection: "Connection | HttpConnection", transport: asyncio.Transport,
                      size: int) -> None:
        """Disconnect a client whose unread replies (`size` bytes) pass its class's output
        buffer limit."""
        session = connection.session
        kind = "pubsub" if session is not None and (session.channels or session.patterns) \
            else "normal"
        hard, soft, seconds = output_limits(self.config["client-output-buffer-limit"])[kind]
        now = time.monotonic()
        if soft and size > soft:
            if connection.over_soft_limit_since is None:
                connection.over_soft_limit_since = now
        else:
            connection.over_soft_limit_since = None
        since = connection.over_soft_limit_since
        if (hard and size > hard) or (since is not None and now - since > seconds):
            log.warning("Client %s closed for overcoming of output buffer limits.",
                        session.addr if session else "?")
            transport.abort()

    def _schedule_commit(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            loop = self._loop  # (asyncio.get_running_loop() costs a lookup and a call)
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._commit_soon)

    def _commit(self) -> None:
        self._commit_scheduled = False
        written = self.aof is None or self.aof.commit()
        held, self._held = self._held, []
        for connection, data, close in held:
            transport = connection.transport
            if transport is None or transport.is_closing():
                continue
            if not written:  # the outcome is unknown to the client, as after a crash
                transport.abort()
                continue
            self._send(connection, transport, data, close)

    def _housekeep(self) -> None:
        """Every 100 ms: finish a rewrite; every second: fsync, disk reserve, auto-rewrite."""
        self._housekeeping_round += 1
        aof = self.aof
        if aof is not None and not aof.fsync_running:
            aof.poll_rewrite()
            if aof.rewrite_scheduled:
                aof.start_rewrite(self.databases.snapshot)
            if self._housekeeping_round % 10 == 0:
                aof.ensure_reserve(self.databases.message_count())
                if aof.needs_fsync():
                    aof.fsync_in_background()
                if aof.should_auto_rewrite(self.config.int("auto-aof-rewrite-percentage"),
                                           self.config.int("auto-aof-rewrite-min-size")):
                    aof.start_rewrite(self.databases.snapshot)
        if self._housekeeping_round % 10 == 0:
            self._close_idle_clients()
            if self._timer_at is not None and self.clock() >= self._timer_at:
                # the wall clock jumped forward past the deadline while the timer sleeps
                # on the loop's monotonic clock: act now, not when that sleep ends
                if self._timer is not None:
                    self._timer.cancel()
                self._on_timer()
        self._housekeeping = asyncio.get_running_loop().call_later(HOUSEKEEPING_S,
                                                                   self._housekeep)

    def _close_idle_clients(self) -> None:
        """`timeout`: close clients idle that long, except blocked and subscribed ones."""
        limit = self.config.int("timeout")
        if not limit:
            return
        now = time.monotonic()
        for connection in list(self._connections.values()):
            session = connection.session
            if session is None or connection.blocked() or session.channels \
                    or session.patterns or connection.transport is None:
                continue
            if now - session.last_command_at > limit:
                connection.transport.close()

    # -- timer -----------------------------------------------------------------------------

    def after_commands(self) -> None:
        """Point the timer at the engine's earliest deadline, if that changed.

        Called after every read, so the timer heap is looked at only when `due_at` moved
        since the timer was armed: it moves earlier whenever an earlier deadline is added,
        and is set from the heap whenever the heap is looked at (a tick). While it stays
        where it was, the timer is not late; at worst early, when the deadline it was armed
        for went away (a deleted queue): it then finds nothing due and is armed again."""
        databases = self.databases
        if databases.due_at == self._armed_due:
            return
        at = databases.next_deadline()
        self._armed_due = databases.due_at
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
        self._armed_due = -1  # no timer: after_commands arms it again whatever `due_at` is
        # A storm of expiries is applied a budget at a time; what is left re-arms the timer
        # at once, after the clients that are waiting have been served.
        self.databases.tick(self.clock(), TICK_BUDGET)
        if self.databases.readied:
            self.serve_waiters()
        self.after_commands()
        if self.aof is not None and self.aof.pending:
            self._schedule_commit()
