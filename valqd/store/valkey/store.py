"""The Valkey store: a front end's queues live in a Valkey deployment, in the valq Functions
library (valq.lua). Each VALQ command becomes one FCALL on the pipelined connection of the
client's database, and its reply is re-encoded for the client (RESP2 maps are flat arrays;
a RESP3 client gets maps). Keyspace commands work on the library's keys: the main key of
queue q is the hash `valq:{q}`, and only main keys end with `}` (every other key of q is
`valq:{q}:<part>`), so `valq:{<pattern>}` matches exactly the queues a pattern names.

Every reply reaches the client in order (see `Pending`); commands of several steps (SCAN,
FLUSHDB, FLUSHALL) are barriers: the client's later commands wait for them. The store
being unreachable answers `-TRYAGAIN` after `timeout_s`, never a traceback.

A Valkey Cluster or a primary found through Sentinel is served through a `Router`
(router.py): each call goes to its queue's primary, and what spans every queue (LIST, KEYS,
SCAN, DBSIZE, the flushes) asks every primary.
"""

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from ...commands.args import Args
from ...commands import multi
from ...commands.context import Blocked, Pending, ServerState, Session
from ...commands.admin import (info_sections, keyspace_info_line, messages_info_lines,
                               queue_info_line, render_info, scan_options)
from ...commands.valq import PopOptions, mpop_queues
from ...errors import CommandError
from ...resp import encode
from .. import STORE_COMMANDS, Handler, refuse
from ..url import StoreUrl
from . import (LIBRARY_NAME, VERSION, LibraryError, library_source, redrive_steps,
               source_version)
from .blocking import MAX_WAIT_S, Waiter, Waits
from .connection import Arg, Client, Reply, ReplyError, SetupCall, StoreUnavailable
from .reaper import ROUND_S, Primary, Reaper, all_slots
from .relay import LISTEN_S, REFRESH_S, TEST_LISTEN_S, Relay
from .replicas import ReplicaWait
from .router import (SCAN_NODE_BITS, Address, ClusterTopology, Router, SentinelTopology,
                     command_key)
from .slots import key_slot

log = logging.getLogger("valqd")

NodeCall = Callable[..., Coroutine[Any, Any, Reply]]  # call(*args) on one primary

QUEUE_TYPE = b"valq-type"
SCAN_KEYS_PER_QUEUE = 9  # a queue has up to 9 keys: SCAN's COUNT is scaled by it
SCAN_WALK_COUNT = 1000  # keys looked at per SCAN call when valqd lists the queues itself
POLL_S = 0.1  # with the test build's manual clock, a blocked pop polls this often
# subcommands after which a queue may have a message to deliver: this front end's blocked
# pops of that queue try again at once
READ_ONLY = frozenset((b"info", b"stats", b"get", b"peek"))  # no WAIT after these
READYING = frozenset((b"push", b"mpush", b"nack", b"extend", b"reschedule", b"redrive",
                      b"resume", b"create", b"update"))
# subcommands whose reply is a map, and those whose reply is an array of maps
MAP_REPLIES = frozenset((b"info", b"stats", b"get"))
MAPS_REPLIES = frozenset((b"peek",))
# INFO: the default sections with this store (each costs the same however many queues there
# are), and those it answers itself; `messages`, `keyspace` and `queues` walk the queues, so
# they are shown only when asked for by name (or INFO everything)
DEFAULT_INFO = ("server", "clients", "memory", "persistence", "stats", "replication", "cpu",
                "errorstats", "store")
WALKING_INFO = frozenset(("messages", "keyspace", "queues"))
REFUSED = {
    "swapdb": "the store's databases are Valkey's",
    "move": "the store's databases are Valkey's",
    "watch": "a front end shares its connection to the store between clients",
    "bgrewriteaof": "Valkey persists the queues (its own BGREWRITEAOF, appendfsync)",
    "save": "Valkey persists the queues (its own SAVE, BGSAVE, appendfsync)",
    "debug|digest": "the digest is of the embedded engine's state",
}


def queue_key(name: bytes) -> bytes:
    return b"valq:{" + name + b"}"


def to_resp(value: Reply, proto: int) -> bytes:
    """A decoded RESP2 reply, encoded again for a client of `proto`."""
    kind = type(value)
    if kind is bytes:
        return encode.bulk(value)
    if kind is int:
        return encode.integer(value)
    if kind is list:
        return encode.array([to_resp(v, proto) for v in value])
    if value is None:
        return encode.null(proto)
    if isinstance(value, ReplyError):
        return b"-%b\r\n" % str(value).replace("\r", " ").replace("\n", " ").encode()
    if isinstance(value, StoreUnavailable):  # TRYAGAIN, or INDOUBT when it may have run
        return encode.error(value.code, str(value))
    raise TypeError(f"unexpected store reply {value!r}")


def map_resp(value: Reply, proto: int) -> bytes:
    """A flat [key, value, ...] array as a map (RESP3) or as it is (RESP2)."""
    if proto == 2 or type(value) is not list:
        return to_resp(value, proto)
    return encode.map_([to_resp(v, proto) for v in value], proto)


def reply_for(subcommand: bytes, value: Reply, proto: int) -> bytes:
    if proto == 2 or type(value) is not list:
        return to_resp(value, proto)
    if subcommand in MAP_REPLIES or (subcommand == b"pop" and value and
                                     type(value[0]) is bytes):
        return map_resp(value, proto)
    if subcommand in MAPS_REPLIES or subcommand == b"pop":
        return encode.array([map_resp(v, proto) for v in value])
    return to_resp(value, proto)


class ValkeyStore:
    """Queues in Valkey. `test_clock`: the library's test build, sent the server's clock
    (state.clock, a test's manual clock) with every call; never in production."""

    kind = "valkey"
    # a walk over the keyspace: no Valkey transaction can hold one (DEL and MPOP can: one
    # call per queue, and valq_mpop); on a cluster KEYS and SCAN too (every primary)
    no_multi = frozenset(("dbsize", "flushdb", "flushall"))

    def __init__(self, url: StoreUrl, timeout_s: float = 5.0, test_clock: bool = False,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000,
                 wait_aof: bool = False) -> None:
        """`wait_replicas`: a write's reply waits until that many replicas have it (WAIT),
        at most `wait_timeout_ms`; `wait_aof`: until the primary's AOF and theirs have it
        fsynced (WAITAOF)."""
        self.url = url
        self.timeout_s = timeout_s
        self.test_clock = test_clock
        self.wait = ReplicaWait(wait_replicas, wait_aof, wait_timeout_ms) \
            if wait_replicas or wait_aof else None
        # a cluster or Sentinel: commands go through a Router (router.py); on a cluster,
        # what spans every queue asks every primary
        self.routed = url.kind != "standalone"
        self.sharded = url.kind == "cluster"
        if self.sharded:
            self.no_multi = self.no_multi | {"keys", "scan"}
        self.state: ServerState | None = None
        self.relay: Relay | None = None  # events for SUBSCRIBE clients, from open()
        self.relay_refresh_s = REFRESH_S
        self.reaper: Reaper | None = None  # due events of queues nobody calls, from open()
        self.reaper_round_s = ROUND_S
        self._reaped: dict[Address | None, Primary] = {}  # the reaper's view of each primary
        self._clients: dict[int, Client | Router] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._library_loaded = False
        self.waits = Waits(self._waiting_client, self._pop_woken, self._wake,
                           self.give_back, POLL_S if test_clock else MAX_WAIT_S,
                           self._marker_primary if self.routed else None)
        # while EXEC runs its queued commands: the calls they make, sent afterwards as one
        # Valkey MULTI/EXEC per database: (db, command, finish, pending)
        self._transaction: list[tuple[int, list[bytes], Callable[[Reply], bytes],
                                      Pending]] | None = None
        # and EXEC's own reply, once it is made (a POP in it gives back what it took when
        # the client went away before that reply)
        self._exec_reply: list[bytes | Pending] = []

    # -- lifecycle -------------------------------------------------------------------------

    def client(self, db: int) -> Client | Router:
        """The pipelined connection of valqd database `db` (Valkey's url.db + db); on a
        cluster or behind Sentinel, the router over one such connection per primary."""
        client = self._clients.get(db)
        if client is None:
            client = self._clients[db] = deployment_client(
                self.url, self.url.db + db, self.timeout_s, f"valqd-db{db}",
                self._ensure_library)
        return client

    def node_calls(self, db: int) -> list[NodeCall]:
        """One `call(*args)` per primary of database `db`, in slot order."""
        return node_calls(self.client(db))

    def primary_clients(self, db: int) -> list[Client]:
        """The pipelined connection to each primary (database `db`), in slot order: one for
        a standalone server; on a cluster, those the slot map names now."""
        client = self.client(db)
        if isinstance(client, Router):
            return [client.client(address) for address in client.primaries]
        return [client]

    def key_client(self, db: int, key: bytes) -> Client | None:
        """The pipelined connection to the primary of `key`'s slot (database `db`); None
        while the deployment has no primary for it (the map is being read again)."""
        client = self.client(db)
        if isinstance(client, Router):
            address = client.owner(key_slot(key))
            return None if address is None else client.client(address)
        return client

    async def open(self, state: ServerState) -> None:
        self.state = state
        client = self.client(0)
        try:
            await client.connect()
            for call in self.node_calls(0):  # every primary of a cluster has the library
                await load_library(call, self.test_clock)
            self._library_loaded = True
        except StoreUnavailable as exc:
            raise OSError(str(exc)) from None
        except LibraryError as exc:
            raise ValueError(str(exc)) from None
        log.info("Serving queues from the store at %s (valq library version %d)",
                 self.url.text, VERSION)
        self.relay = Relay(state.pubsub, len(state.databases), self.url, self.timeout_s,
                           self._listen, self._queue_names,
                           TEST_LISTEN_S if self.test_clock else LISTEN_S,
                           self.relay_refresh_s,
                           self._channel_primary if self.routed else lambda channel: None)
        self.reaper = Reaper(self._reaper_primaries, len(state.databases),
                             self._library_clock, self._reap_args, self.reaper_round_s)
        self.reaper.start()

    def _channel_primary(self, channel: bytes) -> Address | None:
        """The primary that serves a queue's sharded event channel: on a cluster its
        slot's, behind Sentinel the one the sentinels name (never the URL's first host,
        which is a seed node or a sentinel)."""
        router = self.client(0)
        assert isinstance(router, Router)
        return router.owner(key_slot(channel))

    def _reaper_primaries(self) -> list[Primary]:
        """Each primary with the slots it owns now (one for a standalone server or behind
        Sentinel), the same object while it owns the same slots (it keeps the reaper's
        view of it); each is called on its first slot."""
        client = self.client(0)
        owned: Sequence[tuple[Address | None, list[int]]] = [(None, all_slots())]
        if isinstance(client, Router):
            owned = list(client.slots_by_primary().items())
        primaries = []
        for address, slots in owned:
            primary = self._reaped.get(address)
            if primary is None or primary.slots != slots:
                name = self.url.address if address is None else f"{address[0]}:{address[1]}"
                primary = self._reaped[address] = Primary(
                    name, slots, functools.partial(self._send_to_slot, slots[0]))
            primaries.append(primary)
        for gone in set(self._reaped) - {address for address, _ in owned}:
            del self._reaped[gone]
        return primaries

    def _send_to_slot(self, slot: int, db: int, args: list[bytes],
                      callback: Callable[[Reply], None]) -> None:
        """A read (or a call that may run twice) to the primary of `slot`."""
        client = self.client(db)
        if isinstance(client, Router):
            client.send_to_slot(slot, args, callback, resend=True)
        else:
            client.send(args, callback, resend=True)

    async def _library_clock(self, primary: Primary) -> int:
        """The library's time on `primary`, Unix ms: its TIME (the test build: ours)."""
        if self.test_clock:
            assert self.state is not None
            return self.state.clock()
        reply = await primary.call(0, b"TIME")
        if type(reply) is not list:
            raise StoreUnavailable(f"TIME failed: {reply}")
        return int(reply[0]) * 1000 + int(reply[1]) // 1000

    def _reap_args(self, index: bytes, queues: int, budget: int) -> list[bytes]:
        """FCALL valq_reap 1 <index> <queues> <budget> (the test build: the clock first)."""
        clock = [b"%d" % self.state.clock()] if self.test_clock and self.state else []
        return [b"FCALL", b"valq_reap", b"1", index, *clock, b"%d" % queues, b"%d" % budget]

    def _listen(self, db: int, name: bytes, seconds: int,
                callback: Callable[[Reply], None]) -> None:
        """valq_listen: the queue's events are published for the next `seconds`, on the
        channel of its Valkey database (Relay.channel_of)."""
        self._send(db, self._fcall_args(
            [b"VALQ", b"LISTEN", name, b"%d" % seconds, b"%d" % (self.url.db + db)]),
            callback, resend=True)

    async def _ensure_library(self, call: SetupCall) -> None:
        """On every new connection: load the library if the server lost it (a restart
        without persistence), so that calls do not fail with `Function not found`."""
        if self._library_loaded:  # open() loads it the first time, refusing a newer one
            await load_library(call, self.test_clock, only_if_missing=True)

    def _waiting_client(self, db: int, address: Address | None) -> Client:
        """A connection of its own for a watcher's BLPOP (a blocking call would hold up the
        pipelined connection), to the primary at `address` (None: the URL's server); its
        silence is allowed for the length of a wait."""
        url = self.url if address is None else dataclasses.replace(self.url, hosts=(address,))
        return Client(url, self.url.db + db, self.timeout_s + self.waits.max_wait_s,
                      f"valqd-wait-db{db}", self._ensure_library, quiet=True)

    def _marker_primary(self, db: int, key: bytes, trouble: Reply,
                        asked: tuple[str, int] | None) -> Address | None:
        """Where a watcher BLPOPs the wake marker `key`: its slot's primary. `trouble`: the
        last BLPOP's error reply (MOVED teaches the map; anything else has it read again)."""
        router = self.client(db)
        assert isinstance(router, Router)
        if isinstance(trouble, ReplyError) and str(trouble).startswith("MOVED ") and \
                asked is not None:
            router.redirected(str(trouble), asked)
        elif trouble is not None:
            router.refresh()
        return router.owner(key_slot(key))

    async def _pop_woken(self, db: int, argv: list[bytes]) -> Reply:
        """A waiter's POP: valq_pop_woken, which re-arms the wake marker it may have taken."""
        args = self._fcall_args(argv)
        args[1] = b"valq_pop_woken"
        return await self._await(db, args, write=True)

    async def _wake(self, db: int, name: bytes) -> Reply:
        """valq_wake: [1 if a message is ready, ms to the queue's next due event or -1]."""
        reply = await self._await(db, self._fcall_args([b"VALQ", b"WAKE", name]), resend=True)
        if isinstance(reply, ReplyError):
            raise ValueError(str(reply))
        return reply

    async def close(self) -> None:
        if self.reaper is not None:
            await self.reaper.close()
        if self.relay is not None:
            await self.relay.close()
        await self.waits.close()
        for task in list(self._tasks):
            task.cancel()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    def handlers(self) -> Mapping[str, Handler]:
        handlers: dict[str, Handler] = {}
        for name in STORE_COMMANDS:
            if name.startswith("valq|"):
                handlers[name] = self._forward
        handlers.update({
            "valq|pop": self._pop, "valq|push": self._push, "valq|mpush": self._push,
            "valq|list": self._list, "valq|mpop": self._mpop,
            "dbsize": self._dbsize, "keys": self._keys, "scan": self._scan,
            "type": self._type, "exists": self._exists, "del": self._del,
            "flushdb": self._flushdb, "flushall": self._flushall, "exec": self._exec,
            "subscribe": self._subscribe(False), "psubscribe": self._subscribe(True),
            "info": self._info,
        })
        for name, why in REFUSED.items():
            handlers[name] = refuse(name, why)
        return handlers

    def _subscribe(self, pattern: bool) -> Handler:
        """SUBSCRIBE, PSUBSCRIBE: the relay's (which exists once the store is open)."""

        def subscribe(state: ServerState, session: Session, argv: list[bytes]
                      ) -> bytes | Blocked | Pending:
            assert self.relay is not None, "commands run once the store is open"
            return self.relay.handler(pattern)(state, session, argv)

        subscribe.__doc__ = "(P)SUBSCRIBE name [name ...] -> a confirmation each, once " \
            "the queues are relayed from the store (valqd.store.valkey.relay)."
        return subscribe

    # -- calls -----------------------------------------------------------------------------

    def _fcall(self, session: Session, argv: list[bytes],
               finish: Callable[[Reply], bytes]) -> Pending:
        """FCALL of argv (`[VALQ, SUB, queue, args...]`): a Pending that `finish` resolves
        from the decoded reply. A subscribed client's reply waits until the relay's
        connections have answered a PING sent after the call: the events the call
        published, relayed on those connections, arrive before it, as with the embedded
        store. An error reply counts as a failed call of the subcommand (commandstats), as
        an error the handler raised does."""
        stats = self.state.command_stats.get("valq|" + argv[1].lower().decode("latin-1")) \
            if self.state is not None else None

        def counted(reply: Reply) -> bytes:
            data = finish(reply)
            if data[:1] == b"-" and stats is not None:
                stats.failed += 1
            return data

        pending = self.send(session.db, self._fcall_args(argv), counted,
                            write=argv[1].lower() not in READ_ONLY)
        if (session.channels or session.patterns) and self.relay is not None:
            return self.relay.after_events(pending)
        return pending

    def send(self, db: int, args: list[bytes], finish: Callable[[Reply], bytes],
             barrier: bool = False, write: bool = False) -> Pending:
        """Send one command; the Pending gets `finish(reply)`. A `write` waits for
        store-wait-replicas replicas first, when that is set; any other command is sent
        again when the connection to the store is lost before its reply came (a write is
        not: it may have run, and the client is answered INDOUBT)."""
        pending = Pending(barrier)
        if self._transaction is not None:
            self._transaction.append((db, args, finish, pending))
            return pending
        self._send(db, args, lambda reply: pending.resolve(self._encoded(finish, reply)),
                   write, resend=not write)
        return pending

    def _send(self, db: int, args: Sequence[Arg], callback: Callable[[Reply], None],
              write: bool = False, resend: bool = False) -> None:
        """Send one command to its primary; a `write`'s reply waits for the replicas (or
        the AOFs) that the store-wait settings ask for (replicas.py): one WAIT per primary
        that got writes in this turn of the event loop. `resend`: a read, sent again when
        its connection is lost (on a cluster, to the slot's primary of the moment)."""
        client = self.client(db)
        wait = self.wait if write else None
        if isinstance(client, Router):
            client.send(args, callback, wait, resend)
        elif wait is not None:
            wait.send(client, args, callback)
        else:
            client.send(args, callback, resend)

    def _encoded(self, finish: Callable[[Reply], bytes], reply: Reply) -> bytes:
        """The client's reply of a store's reply (errors counted in errorstats)."""
        try:
            data = finish(reply) if not isinstance(reply, StoreUnavailable) else \
                to_resp(reply, 2)
        except Exception:
            log.exception("bug: a store reply could not be encoded")
            data = encode.error("ERR", "internal error")
        if data[:1] == b"-" and self.state is not None:
            self.state.count_error(data)
        return data

    def _forward(self, state: ServerState, session: Session,
                 argv: list[bytes]) -> Pending | bytes:
        """Every VALQ subcommand the library serves as it is: one FCALL (REDRIVE ... TO a
        queue of another slot of a cluster: three, `_redrive_across`). After a write that
        may make a message deliverable, this front end's blocked pops of the queue try
        again; STATS counts them as `blocked`."""
        subcommand = argv[1].lower()
        proto = session.proto
        if subcommand in READYING:
            db, names = session.db, [argv[2], *_redrive_target(argv)]
            if len(names) == 2 and self.url.kind == "cluster" and \
                    key_slot(queue_key(names[0])) != key_slot(queue_key(names[1])):
                if self._transaction is not None:
                    raise CommandError("Keys in request don't hash to the same slot",
                                       "CROSSSLOT")
                return self._spawn(self._redrive_across(session, argv))

            def finish(reply: Reply) -> bytes:
                for name in names:
                    self.waits.readied(db, name)
                return reply_for(subcommand, reply, proto)

            pending = self._fcall(session, argv, finish)
            relayed = self.relay.created(db, argv[2]) if subcommand == b"create" and \
                self.relay is not None else None
            return pending if relayed is None else _after(pending, relayed)
        if subcommand == b"stats":
            key = (session.db, argv[2])
            return self._fcall(session, argv, lambda reply: reply_for(
                subcommand, _with_blocked(reply, self.waits.blocked(*key)), proto))
        return self._fcall(session, argv, lambda reply: reply_for(subcommand, reply, proto))

    async def _redrive_across(self, session: Session, argv: list[bytes]) -> bytes:
        """REDRIVE source ... TO target in another slot: the library's three calls (copy to
        the target, then remove from the source: a message may be redriven twice, never
        lost, should this stop in between; see valq.lua). With store-wait-replicas, the
        reply waits for the replicas of both primaries once the three calls are done."""
        db, source, target = session.db, argv[2], _redrive_target(argv)[0]
        clock = self.state.clock() if self.test_clock and self.state is not None else None
        steps = redrive_steps(lambda reply: isinstance(reply, ReplyError), source, argv[3:],
                              clock)
        reply: Reply = None
        try:
            command = next(steps)
            while True:
                command = steps.send(await self._await(db, command))
        except StopIteration as finished:
            reply = finished.value
        for name in (source, target):
            self.waits.readied(db, name)
        if self.wait is not None and not isinstance(reply, ReplyError):
            for name in (target, source):  # a WAIT behind each primary's writes
                confirmed = await self._await(db, [b"EXISTS", queue_key(name)], write=True)
                if isinstance(confirmed, ReplyError):
                    reply = confirmed
        return reply_for(b"redrive", reply, session.proto)

    def _push(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """PUSH and MPUSH: max-message-size is the front end's setting, checked here."""
        bodies = argv[3:4] if argv[1].lower() == b"push" else argv[3:]
        largest = max(map(len, bodies))
        if largest > state.max_message_size:
            raise CommandError(f"message body is {largest} bytes, more than "
                               f"max-message-size ({state.max_message_size})")
        return self._forward(state, session, argv)

    def _pop(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """POP; with BLOCK the client waits in this front end (`Waits`), as the library
        never waits: a barrier, so that what the client sends after it runs after it."""
        block_at = _block_index(argv, 3)
        if block_at is None:
            return self._pop_now(session, argv)
        opts = PopOptions(Args(argv, 3))  # the embedded store's checks and errors
        assert opts.block_ms is not None
        if self._transaction is not None:  # in EXEC: answers at once, as in the embedded
            return self._pop_now(session, argv[:block_at] + argv[block_at + 2:])
        pending = Pending(blocked=True)
        deadline = asyncio.get_running_loop().time() + opts.block_ms / 1000 \
            if opts.block_ms else None
        empty = encode.EMPTY_ARRAY if opts.count is not None else encode.EMPTY_BULK
        pop = argv[:block_at] + argv[block_at + 2:]
        proto = session.proto
        self.waits.add(session.db, Waiter(
            [argv[2]], lambda name: pop, lambda name, reply: reply_for(b"pop", reply, proto),
            pending, deadline, empty))
        return pending

    def _pop_now(self, session: Session, argv: list[bytes]) -> Pending:
        """POP without BLOCK: one FCALL. When the client went away before the reply came,
        what it popped is given back at once (`give_back`)."""
        db, proto = session.db, session.proto
        pending: Pending | None = None
        in_exec = self._exec_reply if self._transaction is not None else []

        def finish(reply: Reply) -> bytes:
            if (pending is not None and pending.cancelled) or \
                    any(type(r) is Pending and r.cancelled for r in in_exec):
                self.give_back(db, argv, reply)
            return reply_for(b"pop", reply, proto)

        pending = self._fcall(session, argv, finish)
        return pending

    def give_back(self, db: int, argv: list[bytes], reply: Reply) -> None:
        """The messages `reply` delivered for `VALQ POP ...` (`argv`) to a client that
        went away before it came: NACKed with no delay (and the lease receipt, when the
        reply has it), so they are ready again now instead of when their leases run out.
        The attempt counts, as when a lease runs out (at max-attempts the message goes to
        the DLQ). A POP ... NOACK removed them already: nothing to give back."""
        if b"NOACK" in (a.upper() for a in argv[3:]):
            return
        name = argv[2]
        for message in _popped(reply):
            fields = dict(zip(message[0::2], message[1::2]))
            receipt = fields.get(b"lease")
            nack = [b"VALQ", b"NACK", name, fields[b"id"], b"0",
                    *([b"LEASE", receipt] if receipt else [])]
            self._send(db, self._fcall_args(nack), lambda reply: self.waits.readied(db, name))

    def _fcall_args(self, argv: list[bytes]) -> list[bytes]:
        """`FCALL valq_<sub> 1 valq:{queue} args...`; REDRIVE ... TO other names the other
        queue's key too, MPOP each queue's key (`FCALL valq_mpop n keys... n queues...`);
        the test build gets the clock first."""
        subcommand = argv[1].lower()
        if subcommand == b"mpop":
            keys = [queue_key(name) for name in argv[3:3 + int(argv[2])]]
            rest = argv[2:]
        else:
            keys = [queue_key(argv[2])]
            rest = argv[3:]
            other = _redrive_target(argv)
            if other and other[0] != argv[2]:
                keys.append(queue_key(other[0]))
        head = [b"FCALL", b"valq_" + subcommand, b"%d" % len(keys), *keys]
        if self.test_clock:
            assert self.state is not None
            head.append(b"%d" % self.state.clock())
        return head + rest

    def _slot_runs(self, names: list[bytes]) -> list[list[bytes]]:
        """`names` cut into runs of consecutive queues in one slot: one run but on a
        cluster, where one call can declare only the keys of one slot."""
        if self.url.kind != "cluster":
            return [names]
        runs: list[list[bytes]] = []
        slot = -1
        for name in names:
            name_slot = key_slot(queue_key(name))
            if name_slot != slot:
                runs.append([])
                slot = name_slot
            runs[-1].append(name)
        return runs

    def _mpop(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """MPOP numqueues queue... [COUNT n] [BLOCK ms] [WITHMETA] [NOACK]: the library's
        valq_mpop, one atomic call over queues of one slot (every queue of one server). On
        a cluster, queues of several slots take one call per run of consecutive queues in
        one slot, left to right, after a check that every queue exists: not atomic (a
        message pushed meanwhile to a run already tried is passed over)."""
        names = mpop_queues(argv)
        opts = PopOptions(Args(argv, 3 + len(names)))  # the embedded store's checks
        block_at = _block_index(argv, 3 + len(names))
        options = argv[3 + len(names):] if block_at is None else \
            argv[3 + len(names):block_at] + argv[block_at + 2:]
        runs = self._slot_runs(names)
        if self._transaction is not None or opts.block_ms is None:
            if len(runs) == 1:  # one call (in EXEC, answered at once as in the embedded)
                db, proto = session.db, session.proto
                pending: Pending | None = None

                def finish(reply: Reply) -> bytes:
                    if pending is not None and pending.cancelled:
                        self._give_back_mpop(db, options, reply)
                    return _mpop_reply(reply, proto)

                pending = self._fcall(session, [b"VALQ", b"MPOP", b"%d" % len(names), *names,
                                                *options], finish)
                return pending
            if self._transaction is not None:
                raise CommandError("Keys in request don't hash to the same slot", "CROSSSLOT")
        waiting = Pending(barrier=True, blocked=opts.block_ms is not None)
        return self._spawn(self._mpop_run(session, list(dict.fromkeys(names)), runs, options,
                                          opts.block_ms, opts.count is not None, waiting),
                           waiting)

    async def _mpop_run(self, session: Session, names: list[bytes], runs: list[list[bytes]],
                        options: list[bytes], block_ms: int | None, with_count: bool,
                        pending: Pending) -> bytes | None:
        """The reply, or None once the MPOP waits in `Waits` to resolve `pending`."""
        proto = session.proto
        loop = asyncio.get_running_loop()
        deadline = None if not block_ms else loop.time() + block_ms / 1000
        if len(runs) > 1:  # every queue must exist, as in the embedded store
            for name in names:
                exists = await self._await(session.db, [b"EXISTS", queue_key(name)],
                                           resend=True)
                if exists == 0:
                    return encode.error("NOQUEUE", f"no such queue '{_shown(name)}'")
        for run in runs:
            reply = await self._await(session.db, self._fcall_args(
                [b"VALQ", b"MPOP", b"%d" % len(run), *run, *options]), write=True)
            if reply is not None and pending.cancelled:
                self._give_back_mpop(session.db, options, reply)
                return None
            if reply is not None:
                return _mpop_reply(reply, proto)
        if block_ms is None:
            return encode.null_array(proto)
        count = [] if with_count else [b"COUNT", b"1"]

        def answer(name: bytes, popped: Reply) -> bytes:
            if isinstance(popped, ReplyError):
                return to_resp(popped, proto)
            return _mpop_reply([name, popped], proto)

        self.waits.add(session.db, Waiter(
            names, lambda name: [b"VALQ", b"POP", name, *options, *count], answer, pending,
            deadline, encode.null_array(proto)))
        return None

    def _give_back_mpop(self, db: int, options: list[bytes], reply: Reply) -> None:
        """What valq_mpop's `reply` ([queue, [messages]]) delivered to a client that went
        away: given back as a POP's (`give_back`)."""
        if type(reply) is list and len(reply) == 2:
            self.give_back(db, [b"VALQ", b"POP", reply[0], *options], reply[1])

    # -- several steps -----------------------------------------------------------------------

    async def _await(self, db: int, args: Sequence[Arg], write: bool = False,
                     resend: bool = False) -> Reply:
        """One command's reply (as `_send` gets it, a `write` once the replicas have it,
        a `resend` sent again should its connection be lost): StoreUnavailable is
        raised."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def done(reply: Reply) -> None:
            if not future.done():
                future.set_result(reply)

        self._send(db, args, done, write, resend)
        reply = await future
        if isinstance(reply, StoreUnavailable):
            raise reply
        return reply

    def _spawn(self, work: Coroutine[Any, Any, bytes | None],
               pending: Pending | None = None) -> Pending:
        """Run `work` (several calls) as a barrier: the client's next commands wait. Its
        result resolves `pending` (made here unless given); None: `work` handed `pending`
        on (to `Waits`)."""
        assert self._transaction is None, "several steps inside EXEC: list it in no_multi"
        if pending is None:
            pending = Pending(barrier=True)
        state = self.state

        async def run() -> None:
            try:
                data = await work
            except StoreUnavailable as exc:
                data = encode.error(exc.code, str(exc))
            except CommandError as exc:
                data = encode.error(exc.code, exc.message)
            except Exception:
                log.exception("bug: a store command failed")
                data = encode.error("ERR", "internal error")
            if data is None:
                return
            if data[:1] == b"-" and state is not None:
                state.count_error(data)
            pending.resolve(data)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pending

    async def _queue_names(self, db: int, pattern: bytes = b"*") -> list[bytes]:
        """The names of the queues `pattern` matches, on every primary, sorted. A SCAN
        walk, not KEYS: the relay lists the queues every few seconds for its patterns,
        and KEYS would hold each primary for the whole keyspace at once."""
        names: set[bytes] = set()  # SCAN may return a key twice
        scan = queue_scan_options(pattern, SCAN_WALK_COUNT)
        for call in self.node_calls(db):
            cursor = b"0"
            while True:
                reply = await call(b"SCAN", cursor, *scan)
                if isinstance(reply, ReplyError):
                    code, _, text = str(reply).partition(" ")
                    raise CommandError(text, code)
                cursor, keys = reply
                names.update(key[6:-1] for key in keys)
                if cursor == b"0":
                    break
        return sorted(names)

    async def _names_reply(self, db: int, pattern: bytes) -> bytes:
        return encode.bulk_array(await self._queue_names(db, pattern))

    # -- INFO --------------------------------------------------------------------------------

    def _info(self, state: ServerState, session: Session, argv: list[bytes]) -> bytes | Pending:
        """INFO [section ...] -> text. With this store, `store` (among the default
        sections: the store, the relay, the reaper, as this front end knows them) and, by
        name only, `messages`, `keyspace` and `queues`, which walk the queues in Valkey (a
        valq_stats per queue); those cannot run inside MULTI (ERR)."""
        names = info_sections(argv, DEFAULT_INFO)
        given = {"store": self._store_info()}
        if not WALKING_INFO & set(names):
            return render_info(state, session, names, given)
        if self._transaction is not None:
            raise CommandError("INFO messages, keyspace and queues walk the queues in "
                               "several calls, which a transaction cannot hold with this store")

        async def walk() -> bytes:
            if "messages" in names or "keyspace" in names:
                counts = [await self._queue_counts(db) for db in range(len(state.databases))]
                totals = [sum(c[i] for db in counts for c in db.values()) for i in range(4)]
                given["messages"] = messages_info_lines(sum(map(len, counts)), *totals)
                given["keyspace"] = [keyspace_info_line(db, len(c))
                                     for db, c in enumerate(counts) if c]
            if "queues" in names:
                given["queues"] = [queue_info_line(i, name, *c) for i, (name, c) in enumerate(
                    (await self._queue_counts(session.db)).items())]
            return render_info(state, session, names, given)

        return self._spawn(walk())

    def _store_info(self) -> list[str]:
        """INFO's `store` section: what this front end knows, without a call."""
        relay, reaper = self.relay, self.reaper
        lines = [f"store:{self.kind}", f"store_url:{self.url.text}",
                 f"store_library_version:{VERSION}"]
        if relay is not None:
            lines += [f"relay_queues:{len(relay.relayed)}",
                      f"relay_messages:{relay.messages}"]
        if reaper is not None:
            stats = reaper.stats
            lines += [f"reaper_primaries:{stats.leading}", f"reaper_calls:{stats.calls}",
                      f"reaper_queues:{stats.queues}", f"reaper_events:{stats.events}"]
        return lines

    async def _queue_counts(self, db: int) -> dict[bytes, tuple[int, int, int, int]]:
        """(ready, inflight, delayed, dlq) of every queue of a database, by name in order."""
        names = await self._queue_names(db)
        replies = await asyncio.gather(*(self._await(db, self._fcall_args(
            [b"VALQ", b"STATS", name]), resend=True) for name in names))
        counts = {}
        for name, reply in zip(names, replies):
            if type(reply) is list:  # (a queue deleted meanwhile answers NOQUEUE)
                fields = dict(zip(reply[0::2], reply[1::2]))
                counts[name] = (int(fields[b"ready"]), int(fields[b"inflight"]),
                                int(fields[b"delayed"]), int(fields[b"dlq"]))
        return counts

    # -- transactions ----------------------------------------------------------------------

    def _exec(self, state: ServerState, session: Session, argv: list[bytes]) -> bytes | Pending:
        """EXEC: the queued commands' calls run as one Valkey MULTI/EXEC (per database),
        so no other client's call comes in between."""
        self._transaction, self._exec_reply = [], []
        try:
            reply = multi.exec_(state, session, argv)
            self._exec_reply.append(reply)
        finally:
            calls, self._transaction = self._transaction, None
        by_db: dict[int, list[tuple[list[bytes], Callable[[Reply], bytes], Pending]]] = {}
        for db, args, finish, pending in calls:
            by_db.setdefault(db, []).append((args, finish, pending))
        keys = {command_key(args) for _, args, _, _ in calls}
        if self.url.kind == "cluster" and len({key_slot(k) for k in keys if k}) > 1:
            # a cluster runs a transaction in one slot: Valkey's own refusal, for all of it
            return encode.error("CROSSSLOT", "Keys in request don't hash to the same slot")
        for db, group in by_db.items():
            self._send_transaction(db, group)
        return reply

    def _send_transaction(self, db: int, group: list[tuple[list[bytes],
                                                          Callable[[Reply], bytes], Pending]]
                          ) -> None:
        def done(reply: Reply) -> None:
            for i, (_, finish, pending) in enumerate(group):
                value = reply[i] if type(reply) is list else reply
                pending.resolve(self._encoded(finish, value))

        client = self.client(db)
        if isinstance(client, Router):
            client.transaction([args for args, _, _ in group], done, self.wait)
            return
        client.send([b"MULTI"], _ignore)
        for args, _, _ in group:
            client.send(args, _ignore)  # +QUEUED; an FCALL is never refused while queued
        if self.wait is not None:
            self.wait.send(client, [b"EXEC"], done)
        else:
            client.send([b"EXEC"], done)

    # -- keyspace ------------------------------------------------------------------------------

    def _list(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """VALQ LIST -> the queue names, sorted."""
        if self.sharded:
            if self._transaction is not None:
                raise CommandError("VALQ LIST asks every primary of a cluster: it cannot run "
                                   "inside MULTI")
            return self._spawn(self._names_reply(session.db, b"*"))
        return self.send(session.db, [b"KEYS", queue_key(b"*")],
                         lambda reply: encode.bulk_array(sorted(k[6:-1] for k in reply))
                         if type(reply) is list else to_resp(reply, 2))

    def _keys(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """KEYS pattern -> the queue names the pattern matches."""
        if self.sharded:
            return self._spawn(self._names_reply(session.db, argv[1]))
        return self.send(session.db, [b"KEYS", queue_key(argv[1])],
                         lambda reply: encode.bulk_array(sorted(k[6:-1] for k in reply))
                         if type(reply) is list else to_resp(reply, 2))

    def _dbsize(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """DBSIZE -> the number of queues (a walk over the database's keys)."""
        return self._spawn(self._count(session.db))

    async def _count(self, db: int) -> bytes:
        return encode.integer(len(await self._queue_names(db)))

    def _scan(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]: Valkey's cursor over the
        queues' main keys."""
        cursor, pattern, count, kind = scan_options(argv)
        wanted = kind is None or kind.lower() == QUEUE_TYPE

        def finish(reply: Reply) -> bytes:
            if type(reply) is not list:
                return to_resp(reply, 2)
            next_cursor, batch = reply
            names = [k[6:-1] for k in batch] if wanted else []
            return encode.array([encode.bulk(next_cursor), encode.bulk_array(names)])

        scan = queue_scan_options(b"*" if pattern is None else pattern,
                                  count * SCAN_KEYS_PER_QUEUE)
        if self.sharded:
            return self._spawn(self._scan_nodes(session.db, cursor, scan, finish))
        return self.send(session.db, [b"SCAN", b"%d" % cursor, *scan], finish)

    async def _scan_nodes(self, db: int, cursor: int, scan: list[bytes],
                          finish: Callable[[Reply], bytes]) -> bytes:
        """SCAN over every primary in turn: valqd's cursor is the primary's cursor shifted
        left by SCAN_NODE_BITS, plus the primary's index in slot order. (A failover or a
        resharding between two calls may repeat or miss queues, as Valkey's cursor of one
        node may across a resize.)"""
        calls = self.node_calls(db)
        index, node_cursor = cursor & ((1 << SCAN_NODE_BITS) - 1), cursor >> SCAN_NODE_BITS
        if index >= len(calls):
            return finish([b"0", []])
        reply = await calls[index](b"SCAN", b"%d" % node_cursor, *scan)
        if type(reply) is not list:
            return finish(reply)
        next_cursor = int(reply[0])
        if next_cursor == 0:
            index, next_cursor = index + 1, 0
            if index == len(calls):
                return finish([b"0", reply[1]])
        if next_cursor >= 1 << (64 - SCAN_NODE_BITS):
            raise CommandError("the store's cursor does not fit valqd's")
        return finish([b"%d" % (next_cursor << SCAN_NODE_BITS | index), reply[1]])

    def _type(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending:
        """TYPE key -> valq-type for a queue, none otherwise."""
        return self.send(session.db, [b"EXISTS", queue_key(argv[1])],
                         lambda reply: encode.simple(QUEUE_TYPE if reply == 1 else b"none")
                         if type(reply) is int else to_resp(reply, 2))

    def _exists(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """EXISTS key [key ...] -> how many of the names are queues (repeats count)."""
        if self.sharded and len({key_slot(queue_key(name)) for name in argv[1:]}) > 1:
            if self._transaction is not None:
                raise CommandError("Keys in request don't hash to the same slot", "CROSSSLOT")
            return self._spawn(self._exists_each(session.db, argv[1:]))
        return self.send(session.db, [b"EXISTS", *map(queue_key, argv[1:])],
                         lambda reply: to_resp(reply, 2))

    async def _exists_each(self, db: int, names: list[bytes]) -> bytes:
        """EXISTS of names in several slots: one EXISTS per name, summed."""
        replies = await asyncio.gather(*(self._await(db, [b"EXISTS", queue_key(name)],
                                                     resend=True)
                                         for name in names))
        errors = [r for r in replies if type(r) is not int]
        return to_resp(errors[0], 2) if errors else encode.integer(sum(replies))

    def _del(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """DEL key [key ...] -> how many queues were deleted."""
        if self._transaction is not None:
            return self._delete_in_transaction(session.db, argv[1:])
        return self._spawn(self._delete(session.db, argv[1:]))

    def _delete_in_transaction(self, db: int, names: list[bytes]) -> Pending:
        """DEL inside EXEC: EXISTS and valq_delete of each queue, in the one Valkey
        transaction; the reply counts the queues that existed (a name given twice counts
        once, as the second EXISTS finds it gone)."""
        whole = Pending()
        existed = 0

        def exists(reply: Reply) -> bytes:
            nonlocal existed
            existed += reply == 1
            return to_resp(reply, 2)

        parts = [part for name in names for part in (
            self.send(db, [b"EXISTS", queue_key(name)], exists),
            self.send(db, self._fcall_args([b"VALQ", b"DELETE", name]),
                      lambda reply: to_resp(reply, 2), write=True))]

        def one_more() -> None:
            replies = [part.reply for part in parts]
            if all(reply is not None for reply in replies):
                error = next((r for r in replies if r is not None and r[:1] == b"-"), None)
                whole.resolve(error or encode.integer(existed))

        for part in parts:
            part.listener = one_more
        return whole

    async def _delete(self, db: int, names: list[bytes]) -> bytes:
        """Delete the queues of `names` that exist: how many, or the first error. A queue
        deleted but not acknowledged by enough replicas (NOREPLICAS) does not stop the
        others from going: the reply is that error once they went."""
        deleted = 0
        short: bytes | None = None
        for name in names:
            if await self._await(db, [b"EXISTS", queue_key(name)], resend=True) == 1:
                reply = await self._await(db, self._fcall_args([b"VALQ", b"DELETE", name]),
                                          write=True)
                if isinstance(reply, ReplyError):
                    if not str(reply).startswith("NOREPLICAS "):
                        return to_resp(reply, 2)
                    short = short or to_resp(reply, 2)
                deleted += 1
        return short or encode.integer(deleted)

    def _flushdb(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """FLUSHDB [ASYNC|SYNC] -> +OK: every queue of the database is deleted (other keys
        of the Valkey database stay)."""
        _flush_type(argv)
        return self._spawn(self._flush([session.db]))

    def _flushall(self, state: ServerState, session: Session, argv: list[bytes]) -> Pending | bytes:
        """FLUSHALL [ASYNC|SYNC] -> +OK: every queue of every database is deleted."""
        _flush_type(argv)
        return self._spawn(self._flush(list(range(len(state.databases)))))

    async def _flush(self, dbs: list[int]) -> bytes:
        short: bytes | None = None
        for db in dbs:
            names = await self._queue_names(db)
            reply = await self._delete(db, names)
            if reply.startswith(b"-NOREPLICAS "):
                short = short or reply
            elif reply[:1] == b"-":
                return reply
        return short or encode.OK


def _ignore(reply: Reply) -> None:
    return None


def deployment_client(url: StoreUrl, db: int, timeout_s: float, name: str,
                      on_connect: Callable[[SetupCall], Awaitable[None]] | None = None
                      ) -> Client | Router:
    """The pipelined connection to `url`'s server; for a cluster or Sentinel URL, the
    router over one such connection per primary."""
    if url.kind == "standalone":
        return Client(url, db, timeout_s, name, on_connect)
    topology = (ClusterTopology if url.kind == "cluster" else SentinelTopology)(url, timeout_s)
    return Router(topology, db, timeout_s, name, on_connect)


def queue_scan_options(pattern: bytes, count: int) -> list[bytes]:
    """SCAN's options that walk the main keys of the queues `pattern` matches (a queue's
    only key that is a hash ending in its tag's `}`), `count` keys a call."""
    return [b"MATCH", queue_key(pattern), b"COUNT", b"%d" % count, b"TYPE", b"hash"]


def node_calls(client: Client | Router) -> list[NodeCall]:
    """One `call(*args)` per primary of the deployment (one for a standalone server), in
    slot order: for reads (and FUNCTION LOAD), sent again should a connection be lost."""
    if isinstance(client, Router):
        return [functools.partial(client.call_on_slot, slot, resend=True)
                for slot in client.primary_slots()]
    return [functools.partial(client.call, resend=True)]


def _mpop_reply(reply: Reply, proto: int) -> bytes:
    """valq_mpop's [queue, [message maps]] (nil: nothing came) for a client of `proto`."""
    if reply is None:
        return encode.null_array(proto)
    if type(reply) is not list:
        return to_resp(reply, proto)
    name, popped = reply
    return encode.array([encode.bulk(name), encode.array([map_resp(m, proto)
                                                          for m in popped])])


def _after(pending: Pending, also: "asyncio.Future[None]") -> Pending:
    """`pending`'s reply, given once `also` is done too."""
    outer = Pending()

    def both(*_: object) -> None:
        if pending.reply is not None and also.done():
            outer.resolve(pending.reply)

    pending.listener = both
    also.add_done_callback(both)
    return outer


def _popped(reply: Reply) -> list[list[bytes]]:
    """The messages (flat maps) of a POP's reply: one map, an array of them, or none."""
    if type(reply) is not list or not reply:
        return []
    return [reply] if type(reply[0]) is bytes else [m for m in reply if type(m) is list]


def _redrive_target(argv: list[bytes]) -> list[bytes]:
    """REDRIVE ... TO other: [other]; else []."""
    if argv[1].lower() != b"redrive":
        return []
    upper = [a.upper() for a in argv[3:]]
    return [argv[3 + upper.index(b"TO") + 1]] if b"TO" in upper[:-1] else []


def _with_blocked(reply: Reply, blocked: int) -> Reply:
    """STATS' reply with `blocked` counting this front end's blocked clients (the library
    has none to count)."""
    if type(reply) is list and b"blocked" in reply[0::2]:
        reply = list(reply)
        reply[reply.index(b"blocked") + 1] = b"%d" % blocked
    return reply


def _flush_type(argv: list[bytes]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError("syntax error")


def _block_index(argv: list[bytes], start: int) -> int | None:
    """Where BLOCK ms is among the options (None without it)."""
    for i in range(start, len(argv) - 1):
        if argv[i].upper() == b"BLOCK":
            return i
    return None


def _shown(name: bytes) -> str:
    return name.decode("utf-8", "replace")


async def load_library(call: SetupCall, test_clock: bool = False,
                       only_if_missing: bool = False) -> int:
    """Load (or upgrade) the library with FUNCTION LOAD REPLACE; LibraryError when the
    server has a newer version (this front end is older than another one). With
    `only_if_missing`, an equal version stays as it is."""
    listing = await call("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME, "WITHCODE")
    if isinstance(listing, ReplyError):
        raise LibraryError(f"FUNCTION LIST failed: {listing} (valqd needs Valkey 7 or newer)")
    for entry in listing:
        fields = dict(zip(entry[0::2], entry[1::2]))
        if fields.get(b"library_name") == LIBRARY_NAME.encode():
            current = source_version(fields[b"library_code"].decode())
            if current > VERSION:
                raise LibraryError(f"the store has valq library version {current}, newer "
                                   f"than this valqd's {VERSION}: upgrade valqd instead")
            if current == VERSION and only_if_missing:
                return VERSION
    reply = await call("FUNCTION", "LOAD", "REPLACE", library_source(test_clock))
    if isinstance(reply, ReplyError):
        raise LibraryError(f"FUNCTION LOAD failed: {reply}")
    return VERSION
