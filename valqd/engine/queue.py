"""One queue: its settings, its messages and the indexes over them.

A message lives in `records` (id -> packed record, see `record.py`) for as long as it exists,
and in exactly one of four states:

    ready     its order key is in `ready`; POP takes the smallest key
    inflight  leased: `lease_order` sorts by (deadline, id) in one int key (`time_key`), and
              `leases[id]` is that key itself, so that an ACK finds it without building it
              again (a big-int shift and or); `lease_deadline` reads the deadline out of it
    delayed   `delayed[id]` is the due time, `delayed_order` sorts by (due, id)
    dlq       `dead[id]` is when it entered the DLQ, `dead_order` sorts by (dead_at, id)

Every method is O(log n) in the number of messages, except the purges, which are linear in
what they remove. Times are integer Unix milliseconds; the queue never reads a clock.
"""

from dataclasses import dataclass, fields
from typing import Any, Iterator

from . import record
from .order import OrderIndex
from .record import ID_BITS, ID_MASK, time_key

# An effect record (engine.py): its kind, then fields whose number and types depend on the
# kind (persistence/format.py's SCHEMAS). The apply functions' signatures type the fields.
Effect = tuple[Any, ...]

COUNTERS = ("pushed", "delivered", "acked", "nacked", "expired", "dead_lettered", "dropped",
            "deduplicated", "redriven", "cancelled")


class Counters:
    """What happened since start-up (not persisted), one attribute per name of COUNTERS:
    compiled, the hot paths bump one in a few instructions (a dict of them cost two lookups
    and a boxed addition per count). Read by name as a dict would be."""

    __slots__ = ("pushed", "delivered", "acked", "nacked", "expired", "dead_lettered",
                 "dropped", "deduplicated", "redriven", "cancelled")

    def __init__(self) -> None:
        self.pushed = 0
        self.delivered = 0
        self.acked = 0
        self.nacked = 0
        self.expired = 0
        self.dead_lettered = 0
        self.dropped = 0
        self.deduplicated = 0
        self.redriven = 0
        self.cancelled = 0

    def __getitem__(self, name: str) -> int:
        if name not in COUNTERS:
            raise KeyError(name)
        value: int = getattr(self, name)
        return value

    def bump(self, name: str) -> None:
        """Count one event by its name (the paths that are not hot)."""
        setattr(self, name, self[name] + 1)

    def as_dict(self) -> dict[str, int]:
        return {name: self[name] for name in COUNTERS}


@dataclass(slots=True)
class QueueSettings:
    visibility_timeout: int = 30  # seconds a delivery stays leased
    max_delivery_attempts: int = 5  # deliveries before a message goes to the DLQ
    retention_period: int = 86400  # seconds a message stays in the DLQ
    backoff: str = "none"  # none | fixed | exponential: wait before a failed message returns
    backoff_base: int = 0  # seconds: the fixed wait, or the first exponential one
    backoff_max: int = 0  # seconds: the exponential ceiling
    dedup_window: int = 300  # seconds a DEDUP key blocks a second push
    maxlen: int = 0  # most messages (ready, in flight, delayed); 0 = no limit

    def copy(self) -> "QueueSettings":
        return QueueSettings(*(getattr(self, f.name) for f in fields(self)))

    def backoff_ms(self, attempts: int) -> int:
        """How long a message waits before it is visible again after its `attempts`-th
        delivery failed (its lease ran out, or NACK without a delay)."""
        if self.backoff == "fixed":
            return self.backoff_base * 1000
        if self.backoff == "exponential":
            exponent = min(max(attempts - 1, 0), 64)
            return min(self.backoff_base << exponent, self.backoff_max) * 1000
        return 0

    def extension(self) -> tuple[str, int, int, int, int]:
        """The settings beyond the module's three, as stored in a `tune` record."""
        return (self.backoff, self.backoff_base, self.backoff_max, self.dedup_window,
                self.maxlen)


DEFAULT_EXTENSION = QueueSettings().extension()


class Totals:
    """Figures over every queue of one engine, kept up to date by the queues as messages
    come, move and go, so that INFO, /metrics, maxmemory and the disk reserve never walk the
    queues. Ready messages are the rest: messages - inflight - delayed - dead."""

    __slots__ = ("messages", "bytes", "inflight", "delayed", "dead")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.messages = 0
        self.bytes = 0  # total size of the records
        self.inflight = 0
        self.delayed = 0
        self.dead = 0

    @property
    def ready(self) -> int:
        return self.messages - self.inflight - self.delayed - self.dead

    def drop(self, q: "Queue") -> None:
        """Forget a queue that is deleted with everything in it."""
        self.messages -= len(q.records)
        self.bytes -= sum(map(len, q.records.values()))
        self.inflight -= len(q.leases)
        self.delayed -= len(q.delayed)
        self.dead -= len(q.dead)


class Queue:
    __slots__ = ("name", "serial", "settings", "id_sequence", "promote_seq", "lease_seq",
                 "records", "ready", "leases", "lease_order", "delayed", "delayed_order",
                 "dead", "dead_order", "dedup", "dedup_order", "reasons", "paused",
                 "counters", "totals", "scheduled_at", "version")

    def __init__(self, name: bytes, settings: QueueSettings, serial: int = 0,
                 totals: Totals | None = None) -> None:
        self.name = name
        self.serial = serial  # creation order, for SCAN cursors
        self.settings = settings
        self.id_sequence = 0  # last id handed out
        self.promote_seq = 0  # last rank given to a delayed message that fell due
        self.lease_seq = 0  # last delivery serial
        self.records: dict[int, bytes] = {}
        self.ready: OrderIndex = OrderIndex()
        self.leases: dict[int, int] = {}  # id -> its key in lease_order
        self.lease_order: OrderIndex = OrderIndex()
        self.delayed: dict[int, int] = {}
        self.delayed_order: OrderIndex = OrderIndex()
        self.dead: dict[int, int] = {}
        self.dead_order: OrderIndex = OrderIndex()
        self.dedup: dict[bytes, tuple[int, int]] = {}  # key -> (message id, expires_at)
        self.dedup_order: OrderIndex = OrderIndex()  # (expires_at, key)
        self.reasons: dict[int, bytes] = {}  # the last NACK reason of a message
        self.paused = False
        self.counters = Counters()
        self.totals = Totals() if totals is None else totals  # shared by the engine's queues
        self.scheduled_at: int | None = None  # the engine's timer entry for this queue
        self.version = 0  # bumped by every change, for WATCH

    # -- state queries -------------------------------------------------------------------

    def main_count(self) -> int:
        """Messages in the main queue: visible plus in flight."""
        return len(self.ready) + len(self.leases)

    def stored_count(self) -> int:
        """Messages that count against maxlen: everything but the DLQ."""
        return len(self.records) - len(self.dead)

    def state_of(self, message_id: int) -> str | None:
        if message_id not in self.records:
            return None
        if message_id in self.leases:
            return "inflight"
        if message_id in self.delayed:
            return "delayed"
        if message_id in self.dead:
            return "dlq"
        return "ready"

    def next_ready_age_ms(self, now: int) -> int:
        """How long ago the next message to be delivered was pushed; 0 with none ready."""
        if not self.ready:
            return 0
        return max(0, now - record.unpack(self.records[self.ready.first() & ID_MASK])[0])

    def next_due(self) -> tuple[int, str] | None:
        """The earliest time at which a lease ("lease"), a delay ("delay"), a DLQ retention
        ("drop") or a dedup key ("dedup") runs out, and which; on a tie, in that order."""
        best = None
        if self.lease_order:
            best = (self.lease_order.first() >> ID_BITS, "lease")
        if self.delayed_order:
            at = self.delayed_order.first() >> ID_BITS
            if best is None or at < best[0]:
                best = (at, "delay")
        if self.dead_order:
            at = (self.dead_order.first() >> ID_BITS) + self.settings.retention_period * 1000
            if best is None or at < best[0]:
                best = (at, "drop")
        if self.dedup_order:
            at = self.dedup_order.first()[0]
            if best is None or at < best[0]:
                best = (at, "dedup")
        return best

    def next_deadline(self) -> int | None:
        due = self.next_due()
        return None if due is None else due[0]

    def lease_deadline(self, message_id: int) -> int | None:
        """When the message's lease runs out; None when it is not in flight."""
        key = self.leases.get(message_id)
        return None if key is None else key >> ID_BITS

    def state_at(self, message_id: int) -> tuple[str, int]:
        """(state, the time that state ends or began): lease deadline, due time or
        dead_at; 0 for a ready message."""
        at = self.lease_deadline(message_id)
        if at is not None:
            return "inflight", at
        at = self.delayed.get(message_id)
        if at is not None:
            return "delayed", at
        at = self.dead.get(message_id)
        if at is not None:
            return "dlq", at
        return "ready", 0

    # -- transitions (each one is a journal record kind, see engine.py) -------------------

    def add(self, message_id: Any, enqueued_at: int, due_at: int, priority: int,
            body: bytes) -> None:
        # `message_id` is Any, the int object the effect record holds: it becomes the
        # record's key and the ready entry, one object for the three. Compiled by mypyc, an
        # `int` parameter is a machine integer, and each use would box it into an object of
        # its own (32 bytes each: one more per message, and one more per record that waits
        # for the AOF's commit).
        rec = self.records[message_id] = record.pack(enqueued_at, 0, 0, 0, priority, body)
        totals = self.totals
        totals.messages += 1
        totals.bytes += len(rec)
        new_id: int = message_id  # compared as a machine integer, not as objects
        if new_id > self.id_sequence:
            self.id_sequence = new_id
        if due_at:
            totals.delayed += 1
            self.delayed[message_id] = due_at
            self.delayed_order.add(time_key(due_at, message_id))
        else:
            self.ready.add(record.order_key(message_id, 0, priority) if priority else message_id)

    def lease(self, message_id: Any, deadline_at: int, attempts: int, lease_no: int) -> None:
        """Make a ready or in-flight message invisible until deadline_at."""
        # `message_id` is Any for the reason given in `add`: it keys three dicts here
        records, leases = self.records, self.leases
        rec = records[message_id]
        old_key = leases.get(message_id)
        if old_key is None:
            # a POP takes the head: the index's cheapest removal
            self.ready.remove(record.ready_key(message_id, rec))
            self.totals.inflight += 1
        else:
            self.lease_order.remove(old_key)
        if attempts != record.attempts_of(rec) or lease_no != record.lease_no_of(rec):
            new = records[message_id] = record.delivered(rec, lease_no, attempts)
            self.totals.bytes += len(new) - len(rec)
        if lease_no > self.lease_seq:
            self.lease_seq = lease_no
        key = leases[message_id] = time_key(deadline_at, message_id)
        self.lease_order.add(key)

    def release(self, message_id: int, due_at: int = 0) -> None:
        """An in-flight message returns: visible at once in its original place, or, with
        `due_at`, delayed until then (backoff)."""
        self.lease_order.remove(self.leases.pop(message_id))
        totals = self.totals
        totals.inflight -= 1
        if due_at:
            totals.delayed += 1
            self.delayed[message_id] = due_at
            self.delayed_order.add(time_key(due_at, message_id))
        else:
            self.ready.add(self._order_key(message_id))

    def defer(self, message_id: int, due_at: int) -> None:
        """A ready or delayed message gets a new due time."""
        self._unlink(message_id)
        self.totals.delayed += 1
        self.delayed[message_id] = due_at
        self.delayed_order.add(time_key(due_at, message_id))

    def promote(self, message_id: int, promote_seq: int) -> None:
        """A delayed message fell due. With a rank (`promote_seq` > 0) it goes ahead of
        every waiting plain message; with 0 (it was delivered before) it takes its place."""
        due_at = self.delayed.pop(message_id)
        self.delayed_order.remove(time_key(due_at, message_id))
        self.totals.delayed -= 1
        if promote_seq:
            self._rewrite(message_id, promote_seq=promote_seq)
            if promote_seq > self.promote_seq:
                self.promote_seq = promote_seq
        self.ready.add(self._order_key(message_id))

    def bury(self, message_id: int, dead_at: int) -> None:
        """Move a message, in whatever state, to the DLQ."""
        self._unlink(message_id)
        self.totals.dead += 1
        self.dead[message_id] = dead_at
        self.dead_order.add(time_key(dead_at, message_id))

    def revive(self, message_id: int) -> None:
        """A DLQ message returns to the main queue with its attempts reset (REDRIVE)."""
        dead_at = self.dead.pop(message_id)
        self.dead_order.remove(time_key(dead_at, message_id))
        self.totals.dead -= 1
        self._rewrite(message_id, attempts=0)
        self.ready.add(self._order_key(message_id))

    def remove(self, message_id: Any) -> None:
        # `message_id` is Any for the reason given in `add`. Compiled, `dict.pop` is a
        # method call through Python; a lookup and a `del` are not.
        self._unlink(message_id)
        records = self.records
        size = len(records[message_id])
        del records[message_id]
        totals = self.totals
        totals.messages -= 1
        totals.bytes -= size
        if self.reasons:
            self.reasons.pop(message_id, None)

    def set_paused(self, paused: int) -> None:
        self.paused = bool(paused)

    def set_reason(self, message_id: int, reason: bytes) -> None:
        self.reasons[message_id] = reason

    def set_sequences(self, id_sequence: int, promote_seq: int, lease_seq: int) -> None:
        self.id_sequence, self.promote_seq, self.lease_seq = id_sequence, promote_seq, lease_seq

    def remember_dedup(self, key: bytes, message_id: int, expires_at: int) -> None:
        old = self.dedup.get(key)
        if old is not None:
            self.dedup_order.remove((old[1], key))
        self.dedup[key] = (message_id, expires_at)
        self.dedup_order.add((expires_at, key))

    def forget_expired_dedup(self, now: int) -> None:
        while self.dedup_order and self.dedup_order.first()[0] <= now:
            _, key = self.dedup_order.pop_first()
            del self.dedup[key]

    def restore(self, message_id: int, state: str, at: int, enqueued_at: int,
                promote_seq: int, lease_no: int, attempts: int, priority: int,
                body: bytes) -> None:
        """Put back one message exactly as a snapshot described it."""
        if state not in ("ready", "inflight", "delayed", "dlq"):
            raise ValueError(f"unknown message state {state!r}")
        rec = self.records[message_id] = record.pack(enqueued_at, promote_seq, lease_no,
                                                     attempts, priority, body)
        totals = self.totals
        if state == "ready":
            self.ready.add(record.order_key(message_id, promote_seq, priority))
        elif state == "inflight":
            key = self.leases[message_id] = time_key(at, message_id)
            self.lease_order.add(key)
            totals.inflight += 1
        elif state == "delayed":
            self.delayed[message_id] = at
            self.delayed_order.add(time_key(at, message_id))
            totals.delayed += 1
        else:
            self.dead[message_id] = at
            self.dead_order.add(time_key(at, message_id))
            totals.dead += 1
        totals.messages += 1
        totals.bytes += len(rec)

    def snapshot(self, with_dedup: bool = True) -> Iterator[Effect]:
        """Effect records that rebuild this queue: settings, counters, then every message."""
        s = self.settings
        yield ("create", self.name, s.visibility_timeout, s.max_delivery_attempts,
               s.retention_period)
        if s.extension() != DEFAULT_EXTENSION:
            yield ("tune", self.name, *s.extension())
        if self.paused:
            yield ("pause", self.name, 1)
        yield ("counters", self.name, self.id_sequence, self.promote_seq, self.lease_seq)
        for message_id, rec in self.records.items():  # insertion order is id order
            enqueued_at, promote_seq, lease_no, attempts, priority = record.unpack(rec)
            state, at = self.state_at(message_id)
            yield ("restore", self.name, message_id, state, at, enqueued_at, promote_seq,
                   lease_no, attempts, priority, record.body_of(rec))
            reason = self.reasons.get(message_id)
            if reason is not None:
                yield ("reason", self.name, message_id, reason)
        if with_dedup:
            for key, (message_id, expires_at) in self.dedup.items():
                yield ("dedup", self.name, key, message_id, expires_at)

    def purge(self, which: str) -> int:
        totals = self.totals
        if which == "main":
            ids = [key & ID_MASK for key in self.ready] + list(self.leases)
            totals.inflight -= len(self.leases)
            self.ready.clear()
            self.leases.clear()
            self.lease_order.clear()
        elif which == "delayed":
            ids = list(self.delayed)
            totals.delayed -= len(ids)
            self.delayed.clear()
            self.delayed_order.clear()
        else:
            ids = list(self.dead)
            totals.dead -= len(ids)
            self.dead.clear()
            self.dead_order.clear()
        records, reasons = self.records, self.reasons
        removed = 0
        for message_id in ids:
            removed += len(records.pop(message_id))
            if reasons:
                reasons.pop(message_id, None)
        totals.messages -= len(ids)
        totals.bytes -= removed
        return len(ids)

    # -- helpers ---------------------------------------------------------------------------

    def _rewrite(self, message_id: int, **changes: int) -> None:
        rec = self.records[message_id]
        enqueued_at, promote_seq, lease_no, attempts, priority = record.unpack(rec)
        new = self.records[message_id] = record.pack(
            enqueued_at, changes.get("promote_seq", promote_seq),
            changes.get("lease_no", lease_no), changes.get("attempts", attempts), priority,
            record.body_of(rec))
        self.totals.bytes += len(new) - len(rec)

    def _order_key(self, message_id: Any) -> Any:
        return record.ready_key(message_id, self.records[message_id])

    def _unlink(self, message_id: Any) -> None:
        """Take a message out of whichever state index holds it (records untouched)."""
        leases = self.leases
        key = leases.get(message_id)
        if key is not None:  # the usual case, an ACK
            del leases[message_id]
            self.lease_order.remove(key)
            self.totals.inflight -= 1
            return
        at = self.delayed.pop(message_id, None)
        if at is not None:
            self.delayed_order.remove(time_key(at, message_id))
            self.totals.delayed -= 1
            return
        at = self.dead.pop(message_id, None)
        if at is not None:
            self.dead_order.remove(time_key(at, message_id))
            self.totals.dead -= 1
            return
        self.ready.remove(self._order_key(message_id))
