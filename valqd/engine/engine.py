"""The engine: every queue of the server, one timer heap over them, and the journal.

Live operations (`push`, `pop`, ...) validate, resolve every choice (the new id, which
message is delivered, absolute deadlines from `now`) and then apply a deterministic effect
through an `_apply_*` method. When a journal is attached, each applied effect is also
appended to it as a tuple, `(kind, queue, ...)`. Replaying those tuples with `apply()` runs
the very same `_apply_*` methods, so a log rebuilds exactly the state the live server had.

Timers: each queue knows its next deadline (lease, delay or DLQ retention). The engine keeps
a heap of `(at, serial, queue)` with one live entry per queue that has a deadline; an entry
is stale when the queue was deleted or rescheduled since. `tick(now)` applies everything due
and returns the earliest deadline left, so the server arms a single timer.
"""

import hashlib
import heapq
import itertools
from typing import Callable

from ..errors import BusyQueueError, CommandError, NoMessageError, NoQueueError
from . import record
from .queue import Queue, QueueSettings
from .record import ID_BITS, ID_MASK

VISIBILITY_RANGE = (1, 43200)
ATTEMPTS_RANGE = (1, 20)
RETENTION_RANGE = (60, 604800)
EXTEND_RANGE = (0, 43200)
MAX_DELAY = 2**64 - 1  # seconds; the module's u64
MAX_DUE_AT = MAX_DELAY * 1000  # due times saturate here, as the module's u64 seconds did

Journal = Callable[[tuple], None]


def check_range(what: str, value: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if not low <= value <= high:
        raise CommandError(f"{what} must be between {low} and {high}")
    return value


def make_settings(visibility_timeout: int | None = None,
                  max_delivery_attempts: int | None = None,
                  retention_period: int | None = None,
                  base: QueueSettings | None = None) -> QueueSettings:
    """New settings from `base` (or the defaults), range-checked."""
    settings = QueueSettings() if base is None else QueueSettings(
        base.visibility_timeout, base.max_delivery_attempts, base.retention_period)
    if visibility_timeout is not None:
        settings.visibility_timeout = check_range("visibility_timeout", visibility_timeout,
                                                  VISIBILITY_RANGE)
    if max_delivery_attempts is not None:
        settings.max_delivery_attempts = check_range(
            "max_delivery_attempts", max_delivery_attempts, ATTEMPTS_RANGE)
    if retention_period is not None:
        settings.retention_period = check_range("retention_period", retention_period,
                                                RETENTION_RANGE)
    return settings


class Engine:
    def __init__(self, journal: Journal | None = None) -> None:
        self.queues: dict[bytes, Queue] = {}
        self.journal = journal
        self._timers: list[tuple[int, int, Queue]] = []
        self._timer_serial = itertools.count()
        self._queue_serial = itertools.count(1)

    # -- lookups -------------------------------------------------------------------------

    def queue(self, name: bytes) -> Queue:
        q = self.queues.get(name)
        if q is None:
            raise NoQueueError(name)
        return q

    def queue_names(self) -> list[bytes]:
        return sorted(self.queues)

    def message_count(self) -> int:
        return sum(len(q.records) for q in self.queues.values())

    # -- live operations -------------------------------------------------------------------

    def create_queue(self, name: bytes, settings: QueueSettings) -> None:
        if name in self.queues:
            raise BusyQueueError(name)
        self._emit(("create", name, settings.visibility_timeout,
                    settings.max_delivery_attempts, settings.retention_period))

    def update_queue(self, name: bytes, settings: QueueSettings) -> None:
        self.queue(name)
        self._emit(("update", name, settings.visibility_timeout,
                    settings.max_delivery_attempts, settings.retention_period))

    def delete_queue(self, name: bytes) -> None:
        self.queue(name)
        self._emit(("delete", name))

    def flush(self) -> None:
        self._emit(("flush",))

    def push(self, name: bytes, body: bytes, now: int, delay: int = 0) -> int:
        """Store a message; visible at once, or after `delay` seconds. Returns its id."""
        q = self.queue(name)
        message_id = q.id_sequence + 1
        due_at = min(now + delay * 1000, MAX_DUE_AT) if delay else 0
        q.add(message_id, now, due_at, 0, body)
        if self.journal is not None:
            self.journal(("push", name, message_id, now, due_at, 0, body))
        if due_at:
            self._schedule(q)
        return message_id

    def pop(self, name: bytes, now: int) -> tuple[int, memoryview] | None:
        """Deliver the head of the queue: (id, body), leased for the visibility timeout."""
        q = self.queue(name)
        if not q.ready:
            return None
        message_id = q.ready[0] & ID_MASK
        attempts = record.unpack(q.records[message_id])[3] + 1
        deadline_at = now + q.settings.visibility_timeout * 1000
        self._emit(("lease", name, message_id, deadline_at, attempts, q.lease_seq + 1))
        self._schedule(q)
        return message_id, record.body_of(q.records[message_id])

    def ack(self, name: bytes, message_id: int) -> None:
        """Remove a message of the main queue, in flight or still visible."""
        q = self.queue(name)
        if q.state_of(message_id) not in ("ready", "inflight"):
            raise NoMessageError(name, message_id)
        self._emit(("remove", name, message_id))

    def extend(self, name: bytes, message_id: int, seconds: int, now: int) -> None:
        """Hide a main-queue message until now + seconds (a new deadline, not an addition)."""
        q = self.queue(name)
        check_range("seconds", seconds, EXTEND_RANGE)
        if q.state_of(message_id) not in ("ready", "inflight"):
            raise NoMessageError(name, message_id)
        _, _, lease_no, attempts, _ = record.unpack(q.records[message_id])
        self._emit(("lease", name, message_id, now + seconds * 1000, attempts, lease_no))
        self._schedule(q)

    def purge(self, name: bytes, which: str) -> int:
        """Remove every message of one part of the queue: main, delayed or dlq."""
        q = self.queue(name)
        count = {"main": q.main_count(), "delayed": len(q.delayed), "dlq": len(q.dead)}[which]
        if count:
            self._emit(("purge", name, which))
        return count

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        """The earliest time at which `tick` has work (possibly a little early, never late)."""
        timers = self._timers
        while timers:
            at, _, q = timers[0]
            if q.scheduled_at == at and self.queues.get(q.name) is q:
                return at
            heapq.heappop(timers)
        return None

    def tick(self, now: int) -> int | None:
        """Apply every lease, delay and retention that ran out by `now`; return the next."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, q = heapq.heappop(timers)
            if q.scheduled_at != at or self.queues.get(q.name) is not q:
                continue
            q.scheduled_at = None
            self._run_due(q, now)
            self._schedule(q)
        return self.next_deadline()

    def _run_due(self, q: Queue, now: int) -> None:
        """Apply the queue's due events one at a time, earliest first."""
        name = q.name
        while True:
            lease_at = q.lease_order[0] >> ID_BITS if q.lease_order else None
            delay_at = q.delayed_order[0] >> ID_BITS if q.delayed_order else None
            drop_at = ((q.dead_order[0] >> ID_BITS) + q.settings.retention_period * 1000
                       if q.dead_order else None)
            candidates = [at for at in (lease_at, delay_at, drop_at) if at is not None]
            if not candidates or min(candidates) > now:
                return
            at = min(candidates)
            if at == lease_at:
                message_id = q.lease_order[0] & ID_MASK
                attempts = record.unpack(q.records[message_id])[3]
                if attempts >= q.settings.max_delivery_attempts:
                    self._emit(("dead", name, message_id, at))
                else:
                    self._emit(("expire", name, message_id))
            elif at == delay_at:
                self._emit(("promote", name, q.delayed_order[0] & ID_MASK, q.promote_seq + 1))
            else:
                self._emit(("drop", name, q.dead_order[0] & ID_MASK))

    def _schedule(self, q: Queue) -> None:
        at = q.next_deadline()
        if at is not None and (q.scheduled_at is None or at < q.scheduled_at):
            q.scheduled_at = at
            heapq.heappush(self._timers, (at, next(self._timer_serial), q))

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self):
        """Effect records that rebuild the whole state, queues in creation order."""
        for q in sorted(self.queues.values(), key=lambda q: q.serial):
            yield from q.snapshot()

    def digest(self) -> str:
        """A hex digest of the whole state, independent of history and creation order."""
        if not self.queues:
            return "0" * 40
        h = hashlib.sha1()
        for name in sorted(self.queues):
            for effect in self.queues[name].snapshot():
                h.update(repr(effect).encode())
        return h.hexdigest()

    # -- effects: the only code that changes state, live or in replay ------------------------

    def apply(self, effect: tuple) -> None:
        """Replay one journal record."""
        kind = effect[0]
        handler = _APPLY.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise ValueError(f"unknown journal record {kind!r}")
        handler(self, *effect[1:])
        if len(effect) > 1:
            q = self.queues.get(effect[1])
            if q is not None:
                self._schedule(q)

    def _emit(self, effect: tuple) -> None:
        _APPLY[effect[0]](self, *effect[1:])
        if self.journal is not None:
            self.journal(effect)

    def _apply_create(self, name: bytes, vt: int, mda: int, rp: int) -> None:
        self.queues[name] = Queue(name, QueueSettings(vt, mda, rp), next(self._queue_serial))

    def _apply_update(self, name: bytes, vt: int, mda: int, rp: int) -> None:
        q = self.queues[name]
        q.settings = QueueSettings(vt, mda, rp)
        self._schedule(q)

    def _apply_delete(self, name: bytes) -> None:
        del self.queues[name]

    def _apply_flush(self) -> None:
        self.queues.clear()
        self._timers.clear()

    def _apply_push(self, name: bytes, message_id: int, enqueued_at: int, due_at: int,
                    priority: int, body: bytes) -> None:
        self.queues[name].add(message_id, enqueued_at, due_at, priority, body)

    def _apply_lease(self, name: bytes, message_id: int, deadline_at: int, attempts: int,
                     lease_no: int) -> None:
        self.queues[name].lease(message_id, deadline_at, attempts, lease_no)

    def _apply_remove(self, name: bytes, message_id: int) -> None:
        self.queues[name].remove(message_id)

    def _apply_expire(self, name: bytes, message_id: int) -> None:
        self.queues[name].release(message_id)

    def _apply_dead(self, name: bytes, message_id: int, dead_at: int) -> None:
        self.queues[name].bury(message_id, dead_at)

    def _apply_promote(self, name: bytes, message_id: int, promote_seq: int) -> None:
        self.queues[name].promote(message_id, promote_seq)

    def _apply_purge(self, name: bytes, which: str) -> None:
        self.queues[name].purge(which)

    def _apply_counters(self, name: bytes, id_sequence: int, promote_seq: int,
                        lease_seq: int) -> None:
        q = self.queues[name]
        q.id_sequence, q.promote_seq, q.lease_seq = id_sequence, promote_seq, lease_seq

    def _apply_restore(self, name: bytes, message_id: int, state: str, at: int,
                       enqueued_at: int, promote_seq: int, lease_no: int, attempts: int,
                       priority: int, body: bytes) -> None:
        self.queues[name].restore(message_id, state, at, enqueued_at, promote_seq, lease_no,
                                  attempts, priority, body)


_APPLY: dict[str, Callable[..., None]] = {
    "create": Engine._apply_create,
    "update": Engine._apply_update,
    "delete": Engine._apply_delete,
    "flush": Engine._apply_flush,
    "push": Engine._apply_push,
    "lease": Engine._apply_lease,
    "remove": Engine._apply_remove,
    "expire": Engine._apply_expire,
    "dead": Engine._apply_dead,
    "promote": Engine._apply_promote,
    "drop": Engine._apply_remove,
    "purge": Engine._apply_purge,
    "counters": Engine._apply_counters,
    "restore": Engine._apply_restore,
}
