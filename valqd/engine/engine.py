"""The engine: every queue of one database, its timers and its journal.

Live operations (`push`, `pop`, ...) validate, resolve every choice (the new id, which
message is delivered, absolute deadlines from `now`) and then emit deterministic effects,
tuples such as `("lease", queue, id, deadline_at, attempts, lease_no)`. `_emit` applies an
effect through `_KINDS`, and then hands it to the journal (the AOF), counts it in the
queue's counters and tells the listener (live events). Replaying a journal with `apply()`
runs the very same apply functions and nothing else, so a log rebuilds exactly the state
the live server had. PUSH, POP, ACK and EXTEND, the hot path, call their apply functions
(Queue.add, Queue.lease, Queue.remove) directly with the fields they put in the record,
and then `_emitted` does the rest of `_emit`: the generic call through the table cost
more than a push's whole apply function.

Timers: each queue knows its next deadline (lease, delay, DLQ retention, dedup key). The
engines of all databases share (`Shared`) a heap of `(at, serial, queue, engine)` with one
live entry per queue that has a deadline; an entry is stale when the queue was deleted,
moved or rescheduled since. `tick(now)` applies everything due in every database and
returns the earliest deadline left, so the server arms one timer.
"""

import hashlib
import heapq
import itertools
from typing import Any, Callable, Final, Iterator, NamedTuple

from sortedcontainers import SortedDict

from ..errors import (BusyQueueError, CommandError, NoLeaseError, NoMessageError,
                      NoQueueError, QueueFullError)
from . import record
from .queue import DEFAULT_EXTENSION, Counters, Effect, Queue, QueueSettings, Totals
from .record import ID_MASK

VISIBILITY_RANGE = (1, 43200)
ATTEMPTS_RANGE = (1, 20)
RETENTION_RANGE = (60, 604800)
EXTEND_RANGE = (0, 43200)
DEDUP_WINDOW_RANGE = (1, 604800)
BACKOFF_RANGE = (0, 604800)
MAXLEN_RANGE = (0, 2**63 - 1)
PRIORITY_RANGE = (-(2**31), 2**31 - 1)
MAX_DELAY = 2**64 - 1  # seconds; the module's u64
MAX_DUE_AT = MAX_DELAY * 1000  # due times saturate here, as the module's u64 seconds did
TICK_BUDGET = 1000  # due events a server applies at once before it serves clients again
NEVER = MAX_DUE_AT + 1  # later than any deadline
MESSAGE_OVERHEAD = 100  # bytes per stored message beyond its record, measured (README)

Journal = Callable[[Effect], None]
Listener = Callable[[str, bytes, int | None], None]

# Effect kind -> (the live event it publishes, the counter it bumps).
COUNTED = {"push": ("pushed", "pushed"), "lease": ("delivered", "delivered"),
           "take": ("delivered", "delivered"), "remove": ("acked", "acked"),
           "nack": ("nacked", "nacked"), "expire": ("expired", "expired"),
           "dead": ("dead", "dead_lettered"), "drop": ("dropped", "dropped"),
           "redrive": ("redriven", "redriven"), "cancel": ("cancelled", "cancelled")}
# Effects after which a queue may have a message that blocked consumers can take.
READYING = frozenset(("push", "expire", "nack", "promote", "redrive", "pause"))


class Delivery(NamedTuple):
    id: int
    body: bytes
    attempts: int
    lease_no: int  # 0 when delivered with NOACK
    enqueued_at: int
    lease_deadline: int  # 0 when delivered with NOACK
    priority: int


def check_range(what: str, value: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if not low <= value <= high:
        raise CommandError(f"{what} must be between {low} and {high}")
    return value


def due_time(now: int, delay: int) -> int:
    return min(now + delay * 1000, MAX_DUE_AT)


def make_settings(visibility_timeout: int | None = None,
                  max_delivery_attempts: int | None = None,
                  retention_period: int | None = None,
                  base: QueueSettings | None = None, *,
                  backoff: tuple[str, int, int] | None = None,
                  dedup_window: int | None = None,
                  maxlen: int | None = None) -> QueueSettings:
    """New settings from `base` (or the defaults), range-checked."""
    settings = QueueSettings() if base is None else base.copy()
    if visibility_timeout is not None:
        settings.visibility_timeout = check_range("visibility_timeout", visibility_timeout,
                                                  VISIBILITY_RANGE)
    if max_delivery_attempts is not None:
        settings.max_delivery_attempts = check_range(
            "max_delivery_attempts", max_delivery_attempts, ATTEMPTS_RANGE)
    if retention_period is not None:
        settings.retention_period = check_range("retention_period", retention_period,
                                                RETENTION_RANGE)
    if backoff is not None:
        kind, first, ceiling = backoff
        if kind not in ("none", "fixed", "exponential"):
            raise CommandError("backoff must be NONE, FIXED or EXPONENTIAL")
        check_range("backoff seconds", first, BACKOFF_RANGE)
        check_range("backoff seconds", ceiling, BACKOFF_RANGE)
        if kind == "exponential" and ceiling < first:
            raise CommandError("exponential backoff max must not be below its base")
        settings.backoff, settings.backoff_base, settings.backoff_max = kind, first, ceiling
    if dedup_window is not None:
        settings.dedup_window = check_range("dedup_window", dedup_window, DEDUP_WINDOW_RANGE)
    if maxlen is not None:
        settings.maxlen = check_range("maxlen", maxlen, MAXLEN_RANGE)
    return settings


class Shared:
    """What the engines of every database share: one timer heap over all their queues (the
    server arms one timer), the queues that may have new visible messages, creation serials
    (unique across databases, so that WATCH tells two queues of one name apart), and the
    totals and counters over every queue. A lone Engine has one of its own."""

    def __init__(self) -> None:
        self.timers: list[tuple[int, int, Queue, Engine]] = []
        # the head of `timers` (possibly stale), read before every command: a clock at or
        # past it means `tick` may have work
        self.due_at = NEVER
        self.timer_serial = itertools.count()
        self.queue_serial = itertools.count(1)
        self.readied: set[tuple[int, bytes]] = set()  # (database, queue)
        self.totals = Totals()
        self.counters = Counters()  # over every queue, deleted ones too

    def next_deadline(self) -> int | None:
        """The earliest time at which `tick` has work (possibly a little early, never late)."""
        timers = self.timers
        while timers:
            at, _, q, engine = timers[0]
            if q.scheduled_at == at and engine.by_name.get(q.name) is q:
                self.due_at = at
                return at
            heapq.heappop(timers)
        self.due_at = NEVER
        return None

    def tick(self, now: int, budget: int | None = None) -> int | None:
        """Apply every lease, delay and retention that ran out by `now` and return the next
        deadline. With a `budget`, stop after about that many events: the deadline returned
        is then already due, and the caller ticks again after serving its clients."""
        timers = self.timers
        while timers and timers[0][0] <= now:
            at, _, q, engine = heapq.heappop(timers)
            if q.scheduled_at != at or engine.by_name.get(q.name) is not q:
                continue
            q.scheduled_at = None
            budget = engine._run_due(q, now, budget)
            engine._schedule(q)
            if budget is not None and budget <= 0:
                break
        return self.next_deadline()

    def forget(self, engine: "Engine") -> None:
        """Drop the timer entries of one engine's queues (flushed, or about to be rearmed)."""
        self.timers[:] = [entry for entry in self.timers if entry[3] is not engine]
        heapq.heapify(self.timers)


class Engine:
    def __init__(self, journal: Journal | None = None, shared: Shared | None = None,
                 index: int = 0) -> None:
        self.shared = shared = Shared() if shared is None else shared
        self.index = index  # the number of the database this engine holds
        # name -> queue, iterated in name order (VALQ LIST, KEYS, INFO queues need no sort)
        self.queues: SortedDict = SortedDict()
        # the same, in a plain dict, for lookups: compiled, a lookup in it is a C call, one in
        # the SortedDict (a dict subclass) a Python method call, ~450 instructions more on
        # every command
        self.by_name: dict[bytes, Queue] = {}
        # creation serial -> queue: SCAN walks it from a cursor, O(log n + COUNT) per call
        self.by_serial: SortedDict = SortedDict()
        self.totals = shared.totals
        self.counters = shared.counters
        self.journal = journal
        self.listener: Listener | None = None
        self.readied = shared.readied

    # -- lookups -------------------------------------------------------------------------

    def queue(self, name: bytes) -> Queue:
        q = self.by_name.get(name)
        if q is None:
            raise NoQueueError(name)
        return q

    def queue_names(self) -> list[bytes]:
        return list(self.queues)

    def message_count(self) -> int:
        return self.totals.messages

    def dataset_bytes(self) -> int:
        """Memory the messages hold: their records plus the measured cost of indexing one
        (dict entry, id, sorted-list slot). O(1): the totals are kept as messages change."""
        totals = self.totals
        return totals.bytes + totals.messages * MESSAGE_OVERHEAD

    def scan(self, cursor: int, count: int) -> tuple[list[Queue], int]:
        """Up to `count` queues created after the one whose serial is `cursor` (0: from the
        start), in creation order, and the cursor that continues after them (0: done). A
        queue that exists for a whole scan is returned exactly once: serials never change
        and new queues get larger ones."""
        serials = self.by_serial
        start = serials.bisect_right(cursor)
        batch = [serials[serial] for serial in serials.islice(start, start + count)]
        more = start + count < len(serials)
        return batch, batch[-1].serial if more else 0

    # -- queues ----------------------------------------------------------------------------

    def create_queue(self, name: bytes, settings: QueueSettings) -> None:
        if name in self.queues:
            raise BusyQueueError(name)
        self._emit(("create", name, settings.visibility_timeout,
                    settings.max_delivery_attempts, settings.retention_period))
        if settings.extension() != DEFAULT_EXTENSION:
            self._emit(("tune", name, *settings.extension()))

    def update_queue(self, name: bytes, settings: QueueSettings) -> None:
        q = self.queue(name)
        self._emit(("update", name, settings.visibility_timeout,
                    settings.max_delivery_attempts, settings.retention_period))
        if settings.extension() != q.settings.extension():
            self._emit(("tune", name, *settings.extension()))
        self._schedule(q)  # a new retention period moves the DLQ's deadline

    def delete_queue(self, name: bytes) -> None:
        self.queue(name)
        self._emit(("delete", name))

    def flush(self) -> None:
        self._emit(("flush",))

    def pause(self, name: bytes, paused: bool) -> None:
        q = self.queue(name)
        if q.paused != paused:
            self._emit(("pause", name, int(paused)))

    # -- producing -------------------------------------------------------------------------

    def push(self, name: bytes, body: bytes, now: int, delay: int = 0, priority: int = 0,
             dedup_key: bytes | None = None) -> int:
        """Store a message, visible at once or after `delay` seconds; returns its id, or
        the first message's id when `dedup_key` was pushed within the dedup window."""
        q = self.queue(name)
        if dedup_key is not None:
            seen = q.dedup.get(dedup_key)
            if seen is not None and seen[1] > now:
                self._count(q, "deduplicated")
                return seen[0]
        maxlen = q.settings.maxlen
        if maxlen and q.stored_count() >= maxlen:
            raise QueueFullError(name, maxlen)
        message_id = q.id_sequence + 1
        # boxed once, for the record, the queue's dict and its index (see Queue.add)
        boxed_id: Any = message_id
        due_at = due_time(now, delay) if delay else 0
        effect = ("push", name, boxed_id, now, due_at, priority, body)
        q.add(boxed_id, now, due_at, priority, body)  # as replay does (_QUEUE_APPLY)
        q.counters.pushed += 1
        self.counters.pushed += 1
        self._emitted(q, effect, "pushed")
        self.readied.add((self.index, name))
        if dedup_key is not None:
            self._emit(("dedup", name, dedup_key, boxed_id,
                        now + q.settings.dedup_window * 1000))
        if delay or dedup_key is not None:
            self._schedule(q)
        return message_id

    def push_many(self, name: bytes, bodies: list[bytes], now: int) -> list[int]:
        """Push several messages at once: all of them, or none when maxlen forbids."""
        q = self.queue(name)
        maxlen = q.settings.maxlen
        if maxlen and q.stored_count() + len(bodies) > maxlen:
            raise QueueFullError(name, maxlen)
        return [self.push(name, body, now) for body in bodies]

    # -- consuming -------------------------------------------------------------------------

    def pop(self, name: bytes, now: int) -> tuple[int, bytes] | None:
        """Deliver the head of the queue: (id, body), leased for the visibility timeout.
        The module's POP, and the hot path: pop_many() does the same for several."""
        q = self.by_name.get(name)
        if q is None:
            raise NoQueueError(name)
        if q.paused or not q.ready:
            return None
        message_id = record.id_of(q.ready.first())
        rec = q.records[message_id]  # the body stays as it is: this one serves the reply
        deadline_at = now + q.settings.visibility_timeout * 1000
        self._lease(q, message_id, deadline_at, record.attempts_of(rec) + 1)
        self._schedule_by(q, deadline_at)
        return message_id, record.body_of(rec)

    def pop_many(self, name: bytes, now: int, count: int,
                 noack: bool = False) -> list[Delivery]:
        """Deliver up to `count` messages from the head. With `noack` each message is
        removed as it is delivered (at most once); otherwise it is leased."""
        q = self.queue(name)
        if q.paused:
            return []
        deliveries: list[Delivery] = []
        deadline_at = now + q.settings.visibility_timeout * 1000
        while q.ready and len(deliveries) < count:
            message_id = record.id_of(q.ready.first())
            enqueued_at, _, _, attempts, priority = record.unpack(q.records[message_id])
            attempts += 1
            if noack:
                body = record.body_of(q.records[message_id])
                self._emit(("take", name, message_id))
                deliveries.append(Delivery(message_id, body, attempts, 0, enqueued_at, 0,
                                           priority))
                continue
            lease_no = self._lease(q, message_id, deadline_at, attempts)
            deliveries.append(Delivery(message_id, record.body_of(q.records[message_id]),
                                       attempts, lease_no, enqueued_at, deadline_at,
                                       priority))
        if deliveries and not noack:
            self._schedule_by(q, deadline_at)
        return deliveries

    def _lease(self, q: Queue, message_id: int, deadline_at: int, attempts: int) -> int:
        """Deliver one ready message: the `lease` record, applied by a direct call of the
        function replay runs for it; returns the delivery serial."""
        boxed_id: Any = message_id  # boxed once, for the record and the queue's dicts
        lease_no = q.lease_seq + 1
        effect = ("lease", q.name, boxed_id, deadline_at, attempts, lease_no)
        q.lease(boxed_id, deadline_at, attempts, lease_no)  # as replay does (_QUEUE_APPLY)
        q.counters.delivered += 1
        self.counters.delivered += 1
        self._emitted(q, effect, "delivered")
        return lease_no

    def _leased(self, q: Queue, message_id: int, lease_no: int | None) -> str:
        """The state of a main-queue message, "ready" or "inflight", after checking a LEASE
        receipt if one was given; NoMessageError for a message in no other state."""
        if message_id in q.leases:  # the usual case, first
            if lease_no is not None and \
                    record.lease_no_of(q.records[message_id]) != lease_no:
                raise NoLeaseError(q.name, message_id)
            return "inflight"
        if lease_no is not None:
            raise NoLeaseError(q.name, message_id)
        if q.state_of(message_id) != "ready":
            raise NoMessageError(q.name, message_id)
        return "ready"

    def ack(self, name: bytes, message_id: int, lease_no: int | None = None) -> None:
        """Remove a message of the main queue, in flight or still visible."""
        q = self.queue(name)
        self._leased(q, message_id, lease_no)
        self._remove_acked(q, message_id)

    def ack_many(self, name: bytes, message_ids: list[int]) -> int:
        """Ack each message of the main queue among `message_ids`; returns how many."""
        q = self.queue(name)
        acked = 0
        for message_id in message_ids:
            if q.state_of(message_id) in ("ready", "inflight"):
                self._remove_acked(q, message_id)
                acked += 1
        return acked

    def _remove_acked(self, q: Queue, message_id: int) -> None:
        """The `remove` record of an ACK, applied by a direct call of the function replay
        runs for it."""
        boxed_id: Any = message_id  # boxed once, for the record and the queue's dicts
        effect = ("remove", q.name, boxed_id)
        q.remove(boxed_id)  # as replay does (_QUEUE_APPLY)
        q.counters.acked += 1
        self.counters.acked += 1
        self._emitted(q, effect, "acked")

    def extend(self, name: bytes, message_id: int, seconds: int, now: int,
               lease_no: int | None = None) -> None:
        """Hide a main-queue message until now + seconds (a new deadline, not an addition).
        A visible message gets a new delivery serial, so that no earlier receipt matches."""
        q = self.queue(name)
        check_range("seconds", seconds, EXTEND_RANGE)
        state = self._leased(q, message_id, lease_no)
        rec = q.records[message_id]
        current_lease = q.lease_seq + 1 if state == "ready" else record.lease_no_of(rec)
        attempts = record.attempts_of(rec)
        boxed_id: Any = message_id  # boxed once, for the record and the queue's dicts
        deadline_at = now + seconds * 1000
        effect = ("hold", name, boxed_id, deadline_at, attempts, current_lease)
        q.lease(boxed_id, deadline_at, attempts, current_lease)  # as replay does (_QUEUE_APPLY)
        self._emitted(q, effect, None)
        self._schedule(q)

    def nack(self, name: bytes, message_id: int, now: int, delay: int | None = None,
             lease_no: int | None = None, reason: bytes | None = None) -> None:
        """End a delivery now: the message is visible again after `delay` seconds, or the
        queue's backoff; after its last attempt it goes to the DLQ at once."""
        q = self.queue(name)
        state = self._leased(q, message_id, lease_no)
        if state != "inflight":
            raise NoLeaseError(name, message_id, "is not in flight")
        if reason is not None:
            self._emit(("reason", name, message_id, reason))
        attempts = record.attempts_of(q.records[message_id])
        if attempts >= q.settings.max_delivery_attempts:
            self._count(q, "nacked")
            self._notify("nacked", name, message_id)
            self._emit(("dead", name, message_id, now))
        else:
            if delay is not None:
                due_at = due_time(now, delay) if delay else 0
            else:
                wait = q.settings.backoff_ms(attempts)
                due_at = now + wait if wait else 0
            self._emit(("nack", name, message_id, due_at))
        self._schedule(q)

    # -- operating -------------------------------------------------------------------------

    def purge(self, name: bytes, which: str) -> int:
        """Remove every message of one part of the queue: main, delayed or dlq."""
        q = self.queue(name)
        count = {"main": q.main_count(), "delayed": len(q.delayed), "dlq": len(q.dead)}[which]
        if count:
            self._emit(("purge", name, which))
        return count

    def cancel(self, name: bytes, message_id: int) -> None:
        """Remove a message in any state."""
        q = self.queue(name)
        if message_id not in q.records:
            raise NoMessageError(name, message_id)
        self._emit(("cancel", name, message_id))

    def reschedule(self, name: bytes, message_id: int, delay: int, now: int) -> None:
        """Give a ready or delayed message a new due time, now + delay seconds."""
        q = self.queue(name)
        state = q.state_of(message_id)
        if state is None:
            raise NoMessageError(name, message_id)
        if state not in ("ready", "delayed"):
            raise CommandError(f"message {message_id} is {state}: only ready or delayed "
                               "messages can be rescheduled")
        self._emit(("defer", name, message_id, due_time(now, delay)))
        self._schedule(q)

    def redrive(self, name: bytes, now: int, count: int | None = None,
                to: bytes | None = None) -> int:
        """Move the oldest DLQ messages (all by default) to the main queue of `name` or of
        `to`, with attempts reset; in another queue they get new ids, in DLQ order."""
        q = self.queue(name)
        target = q if to is None else self.queue(to)
        moving = len(q.dead) if count is None else min(count, len(q.dead))
        if target is not q and target.settings.maxlen and \
                target.stored_count() + moving > target.settings.maxlen:
            raise QueueFullError(target.name, target.settings.maxlen)
        for key in list(q.dead_order.islice(0, moving)):
            message_id = key & ID_MASK
            new_id = message_id if target is q else target.id_sequence + 1
            self._emit(("redrive", name, message_id, target.name, new_id, now))
        return moving

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        return self.shared.next_deadline()

    def tick(self, now: int, budget: int | None = None) -> int | None:
        """Apply what fell due by `now` in every database (see Shared.tick)."""
        return self.shared.tick(now, budget)

    def _run_due(self, q: Queue, now: int, budget: int | None) -> int | None:
        """Apply the queue's due events one at a time, earliest first, at most `budget` of
        them; returns the budget left."""
        name = q.name
        while budget is None or budget > 0:
            due = q.next_due()
            if due is None or due[0] > now:
                return budget
            at, which = due
            if which == "lease":
                message_id = q.lease_order.first() & ID_MASK
                attempts = record.attempts_of(q.records[message_id])
                if attempts >= q.settings.max_delivery_attempts:
                    self._count(q, "expired")
                    self._notify("expired", name, message_id)
                    self._emit(("dead", name, message_id, at))
                else:
                    wait = q.settings.backoff_ms(attempts)
                    self._emit(("expire", name, message_id, at + wait if wait else 0))
            elif which == "delay":
                message_id = q.delayed_order.first() & ID_MASK
                delivered_before = record.attempts_of(q.records[message_id]) > 0
                self._emit(("promote", name, message_id,
                            0 if delivered_before else q.promote_seq + 1))
            elif which == "drop":
                self._emit(("drop", name, q.dead_order.first() & ID_MASK))
            else:  # dedup keys expire without a record: replay ignores expired keys too
                q.forget_expired_dedup(now)
            if budget is not None:
                budget -= 1
        return budget

    def _schedule_by(self, q: Queue, at: int) -> None:
        """After a change that adds a deadline `at` and removes none: the queue's timer
        entry only needs to move when `at` is earlier."""
        if q.scheduled_at is None or at < q.scheduled_at:
            self._schedule(q)

    def _schedule(self, q: Queue) -> None:
        at = q.next_deadline()
        if at is not None and (q.scheduled_at is None or at < q.scheduled_at):
            q.scheduled_at = at
            shared = self.shared
            heapq.heappush(shared.timers, (at, next(shared.timer_serial), q, self))
            if at < shared.due_at:
                shared.due_at = at

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> Iterator[Effect]:
        """Effect records that rebuild the whole state, queues in creation order."""
        for q in self.by_serial.values():
            yield from q.snapshot()

    def digest(self) -> str:
        """A hex digest of every queue, its settings and every message with its state,
        independent of history and creation order (dedup keys are not part of it)."""
        if not self.queues:
            return "0" * 40
        h = hashlib.sha1()
        for name in self.queues:
            for effect in self.queues[name].snapshot(with_dedup=False):
                h.update(repr(effect).encode())
        return h.hexdigest()

    # -- effects: the only code that changes state, live or in replay ------------------------

    def apply(self, effect: Effect) -> None:
        """Replay one journal record and re-arm its queue's timer."""
        self.replay(effect)
        if len(effect) > 1:
            q = self.by_name.get(effect[1])
            if q is not None:
                self._schedule(q)

    def replay(self, effect: Effect) -> None:
        """Replay one journal record without touching timers: loading a whole log ends with
        `rearm_timers()`."""
        kind = effect[0]
        if not isinstance(kind, str) or kind not in _KINDS:
            raise ValueError(f"unknown journal record {kind!r}")
        apply, on_queue, _, _, _ = _KINDS[kind]
        if kind in _IDENTITY_CHECKED:
            self._check_identity(effect)
        self._apply(effect, apply, on_queue)

    def _check_identity(self, effect: Effect) -> None:
        """Raise ValueError for a record no single server writes: a queue created twice, or
        a message id given out twice (two servers appending to one file: each gives the
        next id to a different message). The live server never writes one, so a log that
        holds one is corrupt, as a log with a bad checksum is."""
        kind = effect[0]
        if kind == "create":
            if effect[1] in self.queues:
                raise ValueError(f"queue {effect[1]!r} created twice")
            return
        if kind == "restore":
            q = self.queues.get(effect[1])
            if q is not None and effect[2] in q.records:
                raise ValueError(f"message {effect[2]} of queue {effect[1]!r} restored twice")
            return
        if kind == "redrive" and effect[3] == effect[1]:
            return  # back into its own queue: the same id, no new one
        name, message_id = (effect[1], effect[2]) if kind == "push" else (effect[3], effect[4])
        q = self.queues.get(name)
        if q is not None and message_id <= q.id_sequence:
            raise ValueError(f"message id {message_id} of queue {name!r} given out again "
                             f"(the last was {q.id_sequence})")

    def rearm_timers(self) -> None:
        self.shared.forget(self)
        for q in self.queues.values():
            q.scheduled_at = None
            self._schedule(q)

    def _emit(self, effect: Effect) -> None:
        kind: str = effect[0]
        apply, on_queue, event, counter, readying = _KINDS[kind]
        if on_queue:  # what `_apply` does, inline: this runs for every record
            q = self.by_name[effect[1]]
            apply(q, *effect[2:])
            q.version += 1
            if counter is not None:
                q.counters.bump(counter)
                self.counters.bump(counter)
        else:
            apply(self, *effect[1:])
            if counter is not None:
                self.by_name[effect[1]].counters.bump(counter)
                self.counters.bump(counter)
        if self.journal is not None:
            self.journal(effect)
        if readying:
            self.readied.add((self.index, effect[3] if kind == "redrive" else effect[1]))
        if self.listener is not None:
            if kind == "pause":
                event = "paused" if effect[2] else "resumed"
            if event is not None:
                self.listener(event, effect[1], effect[2] if kind != "pause" else None)

    def _emitted(self, q: Queue, effect: Effect, event: str | None) -> None:
        """What `_emit` does after it applied a queue record, for a record the caller
        applied by a direct call and counted: the version WATCH reads, the journal, the
        live event (if the record has one)."""
        q.version += 1
        if self.journal is not None:
            self.journal(effect)
        if event is not None and self.listener is not None:
            self.listener(event, effect[1], effect[2])

    def _apply(self, effect: Effect, apply: Callable[..., object], on_queue: bool) -> None:
        """Apply one record: a queue record to the queue named by its first field."""
        if on_queue:
            q = self.by_name[effect[1]]
            apply(q, *effect[2:])
            q.version += 1
        else:
            apply(self, *effect[1:])

    def _count(self, q: Queue, counter: str) -> None:
        """Count an event that has no effect record of its own."""
        q.counters.bump(counter)
        self.counters.bump(counter)

    def _notify(self, event: str, name: bytes, message_id: int) -> None:
        """Tell the listener of an event that has no effect record of its own (a NACK or a
        lease running out on the last attempt: the record is the move to the DLQ)."""
        if self.listener is not None:
            self.listener(event, name, message_id)

    def _adopt(self, q: Queue) -> None:
        """Hold a queue: in `queues`, `by_name` and `by_serial`, which stay in step."""
        self.queues[q.name] = q
        self.by_name[q.name] = q
        self.by_serial[q.serial] = q

    def _detach(self, name: bytes) -> Queue:
        """Let go of a queue (the opposite of `_adopt`) and return it."""
        q = self.by_name.pop(name)
        del self.queues[name]
        del self.by_serial[q.serial]
        return q

    def _apply_create(self, name: bytes, vt: int, mda: int, rp: int) -> None:
        self._adopt(Queue(name, QueueSettings(vt, mda, rp), next(self.shared.queue_serial),
                          self.totals))

    def _apply_update(self, name: bytes, vt: int, mda: int, rp: int) -> None:
        q = self.queues[name]
        q.version += 1
        q.settings.visibility_timeout = vt
        q.settings.max_delivery_attempts = mda
        q.settings.retention_period = rp

    def _apply_tune(self, name: bytes, backoff: str, backoff_base: int, backoff_max: int,
                    dedup_window: int, maxlen: int) -> None:
        q = self.queues[name]
        q.version += 1
        s = q.settings
        s.backoff, s.backoff_base, s.backoff_max = backoff, backoff_base, backoff_max
        s.dedup_window, s.maxlen = dedup_window, maxlen

    def _apply_delete(self, name: bytes) -> None:
        self.totals.drop(self._detach(name))

    def _apply_flush(self) -> None:
        for q in self.queues.values():
            self.totals.drop(q)
        self.queues.clear()
        self.by_name.clear()
        self.by_serial.clear()
        self.shared.forget(self)

    def _apply_redrive(self, name: bytes, message_id: int, target: bytes, new_id: int,
                       enqueued_at: int) -> None:
        q = self.queues[name]
        q.version += 1
        if target == name:
            q.revive(message_id)
            return
        priority = record.unpack(q.records[message_id])[4]
        body = record.body_of(q.records[message_id])
        q.remove(message_id)
        other = self.queues[target]
        other.version += 1
        other.add(new_id, enqueued_at, 0, priority, body)


# Records that create, delete or span queues: applied by the engine, fields as they are.
_ENGINE_APPLY: dict[str, Callable[..., None]] = {
    "create": Engine._apply_create,
    "update": Engine._apply_update,
    "tune": Engine._apply_tune,
    "delete": Engine._apply_delete,
    "flush": Engine._apply_flush,
    "redrive": Engine._apply_redrive,
}
# Records that change one queue, the one named by their first field: applied by a Queue
# method that takes the fields after the name (one call, on the hot path).
_QUEUE_APPLY: dict[str, Callable[..., object]] = {
    "pause": Queue.set_paused,
    "push": Queue.add,
    "dedup": Queue.remember_dedup,
    "lease": Queue.lease,  # a delivery
    "hold": Queue.lease,  # EXTEND: a new deadline for the same delivery
    "remove": Queue.remove,  # ACK
    "take": Queue.remove,  # a NOACK delivery
    "cancel": Queue.remove,
    "drop": Queue.remove,  # DLQ retention ran out
    "expire": Queue.release,  # a lease ran out: back now, or after the backoff
    "nack": Queue.release,
    "defer": Queue.defer,  # RESCHEDULE
    "reason": Queue.set_reason,
    "dead": Queue.bury,
    "promote": Queue.promote,
    "purge": Queue.purge,
    "counters": Queue.set_sequences,
    "restore": Queue.restore,
}
# Records that name a database or span two: applied by Databases (databases.py).
DATABASE_RECORDS = frozenset(("select", "swapdb", "move"))
RECORD_KINDS = frozenset(_ENGINE_APPLY) | frozenset(_QUEUE_APPLY) | DATABASE_RECORDS
_IDENTITY_CHECKED = frozenset(("create", "push", "redrive", "restore"))  # at replay
# kind -> (apply function, whether it applies to a queue, the event it publishes and the
# counter it bumps (or None), whether it can make a message visible)
# (typed: compiled, `_emit` reads the fields unboxed)
_KINDS: Final[dict[str, tuple[Callable[..., object], bool, str | None, str | None, bool]]] = {
    kind: (apply, on_queue, *COUNTED.get(kind, (None, None)), kind in READYING)
    for on_queue, table in ((False, _ENGINE_APPLY), (True, _QUEUE_APPLY))
    for kind, apply in table.items()}
