"""Pub/sub: SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE and the queue events.

The engine reports each live effect (pushed, delivered, acked, ...) to a listener; this
module publishes it as `<event> <id>` on channel `valq:<queue>` for a queue of database 0,
`valq@<n>:<queue>` for one of database n. The listeners are attached only while somebody
is subscribed, so events cost nothing when nobody listens.
"""

from collections.abc import Callable

from ..engine import Databases, Engine
from ..engine.engine import Listener
from ..resp import encode
from .context import ServerState, Session
from .glob import glob_match

CHANNEL_PREFIX = b"valq:"


def channel_prefix(database: int) -> bytes:
    """Where a queue's events go: `valq:<queue>` in database 0, `valq@<n>:<queue>` in n."""
    return CHANNEL_PREFIX if database == 0 else b"valq@%d:" % database

# Commands a RESP2 connection may send while subscribed (Valkey's rule).
ALLOWED_WHEN_SUBSCRIBED = frozenset(("subscribe", "psubscribe", "unsubscribe",
                                     "punsubscribe", "ping", "quit", "reset"))


class PubSub:
    def __init__(self, databases: Databases) -> None:
        self.databases = databases
        self.channels: dict[bytes, set[Session]] = {}
        self.patterns: dict[bytes, set[Session]] = {}
        # called after every change of the subscriptions: a store that relays its events
        # (valqd.store.valkey.relay) follows them
        self.on_change: Callable[[], None] | None = None

    def _listen_if_needed(self) -> None:
        if self.on_change is not None:
            self.on_change()
        listening = bool(self.channels or self.patterns)
        for engine in self.databases.engines:
            engine.listener = self._listener(engine) if listening else None

    def _listener(self, engine: Engine) -> Listener:
        def on_event(event: str, queue: bytes, message_id: int | None) -> None:
            payload = event.encode() if message_id is None else b"%s %d" % (event.encode(),
                                                                             message_id)
            self.publish(channel_prefix(engine.index) + queue, payload)
        return on_event

    def publish(self, channel: bytes, payload: bytes) -> None:
        for session in self.channels.get(channel, ()):
            session.send(encode.push([encode.bulk(b"message"), encode.bulk(channel),
                                      encode.bulk(payload)], session.proto))
        for pattern, sessions in self.patterns.items():
            if glob_match(pattern, channel):
                for session in sessions:
                    session.send(encode.push([encode.bulk(b"pmessage"), encode.bulk(pattern),
                                              encode.bulk(channel), encode.bulk(payload)],
                                             session.proto))

    def subscribe(self, session: Session, names: list[bytes], pattern: bool) -> bytes:
        registry, mine = self._sides(session, pattern)
        kind = b"psubscribe" if pattern else b"subscribe"
        replies = []
        for name in names:
            registry.setdefault(name, set()).add(session)
            mine.add(name)
            replies.append(self._confirm(session, kind, name))
        self._listen_if_needed()
        return b"".join(replies)

    def unsubscribe(self, session: Session, names: list[bytes], pattern: bool) -> bytes:
        registry, mine = self._sides(session, pattern)
        kind = b"punsubscribe" if pattern else b"unsubscribe"
        targets = names or sorted(mine)
        if not targets:
            return encode.push([encode.bulk(kind), encode.null(session.proto),
                                encode.integer(self._count(session))], session.proto)
        replies = []
        for name in targets:
            if name in mine:
                mine.discard(name)
                subscribers = registry.get(name)
                if subscribers is not None:
                    subscribers.discard(session)
                    if not subscribers:
                        del registry[name]
            replies.append(self._confirm(session, kind, name))
        self._listen_if_needed()
        return b"".join(replies)

    def drop(self, session: Session) -> None:
        """A connection went away, or RESET: forget all its subscriptions."""
        self.unsubscribe(session, [], False)
        self.unsubscribe(session, [], True)

    def _sides(self, session: Session,
               pattern: bool) -> tuple[dict[bytes, set[Session]], set[bytes]]:
        return (self.patterns, session.patterns) if pattern else (self.channels,
                                                                  session.channels)

    @staticmethod
    def _count(session: Session) -> int:
        return len(session.channels) + len(session.patterns)

    def _confirm(self, session: Session, kind: bytes, name: bytes) -> bytes:
        return encode.push([encode.bulk(kind), encode.bulk(name),
                            encode.integer(self._count(session))], session.proto)


def subscribe(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """SUBSCRIBE channel [channel ...] -> one confirmation per channel. Queue events arrive
    on `valq:<queue>` as `<event> <id>`."""
    return state.pubsub.subscribe(session, argv[1:], False)


def psubscribe(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """PSUBSCRIBE pattern [pattern ...] -> one confirmation per pattern."""
    return state.pubsub.subscribe(session, argv[1:], True)


def unsubscribe(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """UNSUBSCRIBE [channel ...] -> one confirmation per channel (all when none given)."""
    return state.pubsub.unsubscribe(session, argv[1:], False)


def punsubscribe(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """PUNSUBSCRIBE [pattern ...] -> one confirmation per pattern (all when none given)."""
    return state.pubsub.unsubscribe(session, argv[1:], True)


def subscribed_mode_refusal(name: str) -> bytes | None:
    """The refusal of command `name` on a RESP2 connection in subscribed mode, which may
    only (un)subscribe, ping, quit or reset; None when it is one of those."""
    if name.split("|")[0] in ALLOWED_WHEN_SUBSCRIBED:
        return None
    return encode.error("ERR", f"Can't execute '{name}': only (P|S)SUBSCRIBE / "
                        "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
