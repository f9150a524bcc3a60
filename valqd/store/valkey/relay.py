"""Live events across front ends: `SUBSCRIBE valq:<queue>` clients of any front end get the
events of a queue whose calls run through any other front end.

The library publishes a queue's events itself, with SPUBLISH on the sharded channel
`valq:{<queue>}:events` (`valq@<n>:{<queue>}:events` for Valkey database n: the URL's
database plus valqd's, as sharded channels are not per database), but only while its
listen gate is open: `valq_listen queue seconds database` opens it for the next seconds.
For every queue channel its clients subscribe to, a front end
- opens the gate (valq_listen, LISTEN_S) and subscribes to the sharded channel (SSUBSCRIBE
  on a connection of its own, to the server that owns the channel's slot), and answers the
  client's SUBSCRIBE only once both are done, so that no event of a call made after the
  confirmation is missed;
- delivers each message to its local subscribers exactly as the embedded store publishes
  it (`message valq:<queue> <event> <id>`, and `pmessage` to matching patterns);
- refreshes the gate every REFRESH_S while it has subscribers, and stops (SUNSUBSCRIBE)
  when the last one has gone. It never closes the gate (another front end may still
  listen): it runs out LISTEN_S after the last refresh, and events cost nothing after that.

Patterns (`PSUBSCRIBE valq:*`) relay the queues that exist: a front end lists the queues of
each database a pattern may match (when the pattern comes, then every REFRESH_S) and relays
those whose channel matches, and a queue created through this front end at once (CREATE is
answered once it is relayed). A queue created through another front end reaches this front
end's patterns at its next listing, within REFRESH_S; its events before that are not seen.

Events are at most once, as Valkey's pub/sub: a message published while the subscriber
connection is being re-established is lost (it subscribes again on the new connection).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ...commands.context import Pending, ServerState, Session, Subscriptions
from ...commands.glob import glob_match
from ...commands.pubsub import channel_prefix
from .. import Handler
from ..url import StoreUrl
from . import events_channel
from .connection import Client, Reply, ReplyError, SetupCall, StoreUnavailable

log = logging.getLogger("valqd")

LISTEN_S = 30  # how long one valq_listen keeps a queue's gate open
REFRESH_S = 10.0  # how often the gates of relayed queues are opened again
TEST_LISTEN_S = 3600  # with the test build's manual clock, which jumps ahead
LOG_EVERY_S = 10.0

Address = tuple[str, int] | None  # a server of the deployment; None: the URL's own
# (db, queue, seconds, callback): valq_listen on the queue's primary
Listen = Callable[[int, bytes, int, Callable[[Reply], None]], None]
QueueNames = Callable[[int], Awaitable[list[bytes]]]  # db -> its queues' names


@dataclass(eq=False)
class Relayed:
    """One queue whose events this front end relays."""

    db: int
    name: bytes
    local: bytes  # the channel its local subscribers use: valq:<queue>, valq@<n>:<queue>
    ready: "asyncio.Future[None]"  # the gate is open and the subscription confirmed
    holds: int = 0  # SUBSCRIBEs and CREATEs waiting for `ready`: kept while > 0
    address: Address = None  # the server it is subscribed on


def queue_of(channel: bytes, databases: int) -> tuple[int, bytes] | None:
    """(database, queue) of a local queue channel, or None for another channel."""
    if channel.startswith(b"valq:"):
        return 0, channel[5:]
    if channel.startswith(b"valq@"):
        number, colon, name = channel[5:].partition(b":")
        if colon and number.isdigit() and number[:1] != b"0" and len(number) < 10 and \
                int(number) < databases:
            return int(number), name
    return None


def moved_to(reply: Reply) -> tuple[str, int] | None:
    """The address of a `MOVED slot host:port` error reply, else None."""
    if not isinstance(reply, ReplyError):
        return None
    words = str(reply).split()
    if len(words) != 3 or words[0] != "MOVED":
        return None
    host, _, port = words[2].rpartition(":")
    return (host, int(port)) if port.isdigit() and host else None


def _literal_head(pattern: bytes) -> bytes:
    """The bytes every channel a glob pattern matches starts with."""
    for i, byte in enumerate(pattern):
        if byte in b"*?[\\":
            return pattern[:i]
    return pattern


def may_match_database(pattern: bytes, db: int) -> bool:
    """Whether `pattern` may match a queue channel of database `db` (cheap, never a false
    no)."""
    head, prefix = _literal_head(pattern), channel_prefix(db)
    return head.startswith(prefix) or prefix.startswith(head)


class Relay:
    """The events of the queues this front end's clients subscribe to (see the module)."""

    def __init__(self, pubsub: Subscriptions, databases: int, url: StoreUrl,
                 timeout_s: float, listen: Listen, queue_names: QueueNames,
                 listen_s: int = LISTEN_S, refresh_s: float = REFRESH_S,
                 node_of: Callable[[bytes], Address] = lambda channel: None) -> None:
        """`listen` calls valq_listen; `node_of(channel)` names the server that owns a
        sharded channel's slot (a cluster's router); None: the URL's server."""
        self.pubsub = pubsub
        self.databases = databases
        self.url = url
        self.timeout_s = timeout_s
        self._listen = listen
        self._queue_names = queue_names
        self.listen_s = listen_s
        self.refresh_s = refresh_s
        self.node_of = node_of
        self.relayed: dict[bytes, Relayed] = {}  # by the store's channel
        self.pattern_queues: set[tuple[int, bytes]] = set()  # found by a listing
        self._pending_patterns: list[bytes] = []  # PSUBSCRIBEs not answered yet
        self._subscribers: dict[Address, Client] = {}
        self._unsubscribing: dict[bytes, int] = {}  # SUNSUBSCRIBEs sent, not confirmed
        self._refresher: asyncio.Task[None] | None = None
        self._logged_at = -LOG_EVERY_S
        self.messages = 0  # events delivered from the store (INFO)
        pubsub.on_change = self.sync

    def channel_of(self, db: int, name: bytes) -> bytes:
        """The sharded channel of queue `name` of valqd database `db`. It is numbered by
        the Valkey database (the URL's plus `db`), as valq_listen is told: sharded pub/sub
        has no databases, so deployments on two databases of one server must not share
        their queues' channels."""
        return events_channel(name, self.url.db + db)

    # -- what the server asks ----------------------------------------------------------------

    def handler(self, pattern: bool) -> Handler:
        """SUBSCRIBE or PSUBSCRIBE, confirmed once the queues named are relayed."""

        def subscribe(state: ServerState, session: Session, argv: list[bytes]
                      ) -> bytes | Pending:
            names = argv[1:]
            waiting = self.prepare(names, pattern)
            if waiting is None:
                try:
                    return state.pubsub.subscribe(session, names, pattern)
                finally:
                    self.release(names, pattern)
            pending = Pending(barrier=True)

            def confirm(done: "asyncio.Future[Any]") -> None:
                if not done.cancelled() and done.exception() is not None:
                    self._log_trouble(f"Cannot relay the events of the queues a pattern "
                                      f"matches ({done.exception()})")
                if not pending.cancelled:
                    pending.resolve(state.pubsub.subscribe(session, names, pattern))
                self.release(names, pattern)

            waiting.add_done_callback(confirm)
            return pending

        subscribe.__doc__ = ("PSUBSCRIBE pattern [pattern ...]" if pattern else
                             "SUBSCRIBE channel [channel ...]") + \
            " -> one confirmation each, once the queues are relayed from the store."
        return subscribe

    def prepare(self, names: list[bytes], pattern: bool) -> "asyncio.Future[Any] | None":
        """Before a SUBSCRIBE or PSUBSCRIBE of `names` is confirmed: relay the queues they
        name (or match). None when nothing is to wait for; else a future done when the
        caller may confirm. Either way the caller calls `release(names, pattern)` after
        the subscription is registered."""
        loop = asyncio.get_running_loop()
        if pattern:
            patterns = [p for p in names if any(may_match_database(p, db)
                                                for db in range(self.databases))]
            self._pending_patterns.extend(names)
            if not patterns:
                return None
            self._start_refresher()
            return loop.create_task(self._list_patterns())
        waits = []
        for channel in names:
            queue = queue_of(channel, self.databases)
            if queue is not None:
                relayed = self._ensure(*queue)
                relayed.holds += 1
                if not relayed.ready.done():
                    waits.append(relayed.ready)
        return asyncio.gather(*waits) if waits else None

    def release(self, names: list[bytes], pattern: bool) -> None:
        """The SUBSCRIBE or PSUBSCRIBE that `prepare` answered has been confirmed (or its
        client went away)."""
        if pattern:
            for name in names:
                if name in self._pending_patterns:
                    self._pending_patterns.remove(name)
        else:
            for channel in names:
                queue = queue_of(channel, self.databases)
                if queue is not None:
                    relayed = self.relayed.get(self.channel_of(*queue))
                    if relayed is not None:
                        relayed.holds -= 1
        self.sync()

    def created(self, db: int, name: bytes) -> "asyncio.Future[None] | None":
        """A queue was created through this front end: relay it at once when a pattern
        matches it; the future (None: nothing to wait for) is done once it is relayed."""
        patterns = [*self.pubsub.patterns, *self._pending_patterns]
        local = channel_prefix(db) + name
        if not any(glob_match(p, local) for p in patterns):
            return None
        self.pattern_queues.add((db, name))
        relayed = self._ensure(db, name)
        return None if relayed.ready.done() else relayed.ready

    def after_events(self, pending: Pending) -> Pending:
        """`pending`'s reply (a call's), given once every subscriber connection answered a
        PING sent after it came: the events the call published are delivered first."""
        outer = Pending()

        def replied() -> None:
            subscribers = list(self._subscribers.values())
            left = [len(subscribers)]

            def pong(reply: Reply) -> None:
                left[0] -= 1
                if left[0] <= 0:
                    outer.resolve(pending.reply or b"")

            for subscriber in subscribers:
                subscriber.send([b"PING"], pong)
            if not subscribers:
                outer.resolve(pending.reply or b"")

        pending.listener = replied
        return outer

    def sync(self) -> None:
        """Follow the subscriptions: relay what they name, stop relaying the rest."""
        databases = self.databases
        wanted: set[tuple[int, bytes]] = set()
        for channel in self.pubsub.channels:
            queue = queue_of(channel, databases)
            if queue is not None:
                wanted.add(queue)
        patterns = [*self.pubsub.patterns, *self._pending_patterns]
        self.pattern_queues = {(db, name) for db, name in self.pattern_queues
                               if any(glob_match(p, channel_prefix(db) + name)
                                      for p in patterns)}
        wanted |= self.pattern_queues
        for key, relayed in list(self.relayed.items()):
            if relayed.holds <= 0 and (relayed.db, relayed.name) not in wanted:
                del self.relayed[key]
                subscriber = self._subscribers.get(relayed.address)
                if subscriber is not None:
                    self._unsubscribing[key] = self._unsubscribing.get(key, 0) + 1
                    subscriber.send([b"SUNSUBSCRIBE", key], self._unsubscribed(key))
        for queue in wanted:
            self._ensure(*queue)
        if self.relayed or patterns:
            self._start_refresher()

    async def close(self) -> None:
        self.pubsub.on_change = None
        if self._refresher is not None:
            self._refresher.cancel()
        for subscriber in self._subscribers.values():
            await subscriber.close()
        self._subscribers.clear()

    # -- relaying ------------------------------------------------------------------------------

    def _ensure(self, db: int, name: bytes) -> Relayed:
        """The queue's relay, started if it was not."""
        key = self.channel_of(db, name)
        relayed = self.relayed.get(key)
        if relayed is None:
            relayed = self.relayed[key] = Relayed(
                db, name, channel_prefix(db) + name,
                asyncio.get_running_loop().create_future())
            self._start(key, relayed)
        return relayed

    def _start(self, key: bytes, relayed: Relayed) -> None:
        """Open the gate and subscribe; `ready` once both have answered (an error is
        logged: the subscription is retried on the next connection, the gate at the next
        refresh, and the client's SUBSCRIBE is answered anyway)."""
        left = [2]

        def done(reply: Reply) -> None:
            moved = moved_to(reply)
            if moved is not None and self.relayed.get(key) is relayed:
                relayed.address = moved  # the slot is served elsewhere now: subscribe there
                self._subscriber(moved).send([b"SSUBSCRIBE", key], done)
                return
            if isinstance(reply, (ReplyError, StoreUnavailable)):
                self._log_trouble(f"Cannot relay the events of a queue ({reply})")
            left[0] -= 1
            if left[0] == 0 and not relayed.ready.done():
                relayed.ready.set_result(None)

        relayed.address = self.node_of(key)
        self._subscriber(relayed.address).send([b"SSUBSCRIBE", key], done)
        self._listen(relayed.db, relayed.name, self.listen_s, done)

    def _move(self, key: bytes, relayed: Relayed, owner: Address) -> None:
        """The channel's slot has another primary now (a failover, a resharding):
        subscribe there, and leave the old server if it still answers."""
        old = self._subscribers.get(relayed.address)
        if old is not None:
            self._unsubscribing[key] = self._unsubscribing.get(key, 0) + 1
            old.send([b"SUNSUBSCRIBE", key], self._unsubscribed(key))
        relayed.address = owner
        self._subscriber(owner).send([b"SSUBSCRIBE", key], _ignore)

    def _subscriber(self, address: Address) -> Client:
        """The connection that receives the sharded channels of `address`."""
        subscriber = self._subscribers.get(address)
        if subscriber is None:
            subscriber = self._subscribers[address] = Client(
                self.url, 0, self.timeout_s, "valqd-events",
                lambda call: self._resubscribe(address, call), on_push=self._on_push)
            if address is not None:
                subscriber.address = address
        return subscriber

    async def _resubscribe(self, address: Address, call: SetupCall) -> None:
        """A new subscriber connection (first, or after one was lost): subscribe to every
        channel relayed through it."""
        keys = [key for key, r in self.relayed.items() if r.address == address]
        for reply in await asyncio.gather(*(call("SSUBSCRIBE", key) for key in keys)):
            if isinstance(reply, ReplyError):
                self._log_trouble(f"Cannot relay the events of a queue ({reply})")

    def _unsubscribed(self, key: bytes) -> Callable[[Reply], None]:
        def done(reply: Reply) -> None:
            left = self._unsubscribing.pop(key, 1) - 1
            if left:
                self._unsubscribing[key] = left
        return done

    def _on_push(self, reply: list[Any]) -> bool:
        """A message of a relayed channel, or Valkey unsubscribing this front end when
        it did not ask (the slot moved): not a command's reply. (The confirmation of a
        SUNSUBSCRIBE this front end sent is its reply.)"""
        kind = reply[0] if reply else None
        if kind == b"smessage" and len(reply) == 3:
            relayed = self.relayed.get(reply[1])
            if relayed is not None:
                self.messages += 1
                self.pubsub.publish(relayed.local, reply[2])
            return True
        if kind == b"sunsubscribe" and len(reply) > 1:
            if self._unsubscribing.get(reply[1]):
                return False
            relayed = self.relayed.get(reply[1])
            if relayed is not None:  # not ours: subscribe again, where the slot is now
                relayed.address = self.node_of(reply[1])
                self._subscriber(relayed.address).send([b"SSUBSCRIBE", reply[1]], _ignore)
            return True
        return False

    # -- refreshing ----------------------------------------------------------------------------

    def _start_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        """Every refresh_s while anything is relayed or a pattern waits: list the queues
        the patterns match, open every relayed queue's gate again, and ping each
        subscriber connection (a connection that does not answer is replaced)."""
        while self.relayed or self.pubsub.patterns or self._pending_patterns:
            await asyncio.sleep(self.refresh_s)
            try:
                if self.pubsub.patterns:
                    await self._list_patterns()
            except Exception as exc:  # noqa: BLE001 - unreachable, an error reply: next time
                self._log_trouble(f"Cannot list the queues for a pattern subscription ({exc})")
            for key, relayed in list(self.relayed.items()):
                self._listen(relayed.db, relayed.name, self.listen_s, _ignore)
                owner = self.node_of(key)
                if owner is not None and owner != relayed.address:
                    self._move(key, relayed, owner)
            for subscriber in self._subscribers.values():
                subscriber.send([b"PING"], _ignore)

    async def _list_patterns(self) -> None:
        """Relay the queues the patterns match, and wait until they are relayed."""
        patterns = [*self.pubsub.patterns, *self._pending_patterns]
        found: set[tuple[int, bytes]] = set()
        for db in range(self.databases):
            mine = [p for p in patterns if may_match_database(p, db)]
            if not mine:
                continue
            prefix = channel_prefix(db)
            found.update((db, name) for name in await self._queue_names(db)
                         if any(glob_match(p, prefix + name) for p in mine))
        self.pattern_queues |= found
        self.sync()
        waits = [self.relayed[self.channel_of(db, name)].ready for db, name in found
                 if self.channel_of(db, name) in self.relayed]
        if waits:
            await asyncio.gather(*waits)

    def _log_trouble(self, text: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning("%s", text)


def _ignore(reply: Reply) -> None:
    return None
