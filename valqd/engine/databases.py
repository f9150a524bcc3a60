"""The numbered databases: one Engine per database over one Shared timer heap.

Each database is its own set of queues, as each Valkey database is its own keyspace. The
engines share the timer heap (so one server timer and one check before each command cover
them all), creation serials, totals and counters. `SWAPDB` and `MOVE` change which
database holds what; they are records of their own. In a journal every record belongs to
the database last named by a `("select", n)` record, database 0 at the start: a database's
journal frames its records with `("select", n)` ... `("select", 0)` (see
AppendOnlyFile.journal_for), so that a log written before databases existed, which has no
select records, loads into database 0.
"""

import hashlib
from typing import Iterator

from .engine import DATABASE_RECORDS, NEVER, Engine, Journal, Shared
from .queue import Effect


class Databases(Shared):
    def __init__(self, count: int = 1) -> None:
        super().__init__()
        self.engines = [Engine(shared=self, index=i) for i in range(count)]
        self.journal: Journal | None = None  # for swapdb and move records
        self._replaying = 0  # the database that replayed records go to

    def __len__(self) -> int:
        return len(self.engines)

    def __getitem__(self, index: int) -> Engine:
        return self.engines[index]

    def message_count(self) -> int:
        return self.totals.messages

    def dataset_bytes(self) -> int:
        return self.engines[0].dataset_bytes()  # the totals are shared

    # -- SWAPDB, MOVE, FLUSHALL ---------------------------------------------------------------

    def swap(self, a: int, b: int) -> None:
        """Exchange the queues of databases a and b (clients stay on their numbers)."""
        if a != b:
            self._emit(("swapdb", a, b))

    def move(self, name: bytes, source: int, target: int) -> bool:
        """Move a queue to another database; False if it is not in `source` or a queue of
        that name is in `target` (as Valkey's MOVE)."""
        if name not in self.engines[source].queues or name in self.engines[target].queues:
            return False
        self._emit(("move", name, source, target))
        return True

    def flush_all(self) -> None:
        for engine in self.engines:
            if engine.queues:
                engine.flush()

    def _emit(self, effect: Effect) -> None:
        self.replay(effect)
        if self.journal is not None:
            self.journal(effect)

    def _apply_swap(self, a: int, b: int) -> None:
        engines = self.engines
        first, second = engines[a], engines[b]
        engines[a], engines[b] = second, first
        first.index, second.index = b, a
        # a journal and a listener belong to a database number, not to its queues
        first.journal, second.journal = second.journal, first.journal
        for engine in (first, second):  # clients blocked on a number may now be served
            for name, q in engine.queues.items():
                if q.ready and not q.paused:
                    self.readied.add((engine.index, name))

    def _apply_move(self, name: bytes, source: int, target: int) -> None:
        src, dst = self.engines[source], self.engines[target]
        q = src._detach(name)
        q.serial = next(self.queue_serial)  # newer than every queue of the target: SCAN
        q.version += 1
        dst._adopt(q)
        q.scheduled_at = None  # its entry in the heap names the source: stale now
        dst._schedule(q)
        if q.ready and not q.paused:
            self.readied.add((target, name))

    # -- journal replay ---------------------------------------------------------------------

    def replay(self, effect: Effect) -> None:
        """Replay one journal record into the database it belongs to; ValueError for a
        database number out of range."""
        kind = effect[0]
        if kind in DATABASE_RECORDS:
            count = len(self.engines)
            numbers = effect[1:] if kind != "move" else effect[2:]
            for number in numbers:
                if not 0 <= number < count:
                    raise ValueError(f"database {number} out of range (databases is {count})")
            if kind == "select":
                self._replaying = effect[1]
            elif kind == "swapdb":
                self._apply_swap(effect[1], effect[2])
            else:
                self._apply_move(effect[1], effect[2], effect[3])
            return
        self.engines[self._replaying].replay(effect)

    def rearm_timers(self) -> None:
        self.timers.clear()
        self.due_at = NEVER
        for engine in self.engines:
            for q in engine.queues.values():
                q.scheduled_at = None
                engine._schedule(q)

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> Iterator[Effect]:
        """Records that rebuild every database: database 0's as they are, another's framed
        by select records."""
        for index, engine in enumerate(self.engines):
            if not engine.queues:
                continue
            if index:
                yield ("select", index)
            yield from engine.snapshot()
            if index:
                yield ("select", 0)

    def digest(self) -> str:
        """Database 0's digest while the others are empty; else one over every non-empty
        database's number and digest."""
        filled = [(index, engine) for index, engine in enumerate(self.engines) if engine.queues]
        if not filled or filled == [(0, self.engines[0])]:
            return self.engines[0].digest()
        h = hashlib.sha1()
        for index, engine in filled:
            h.update(b"%d:%s;" % (index, engine.digest().encode()))
        return h.hexdigest()
