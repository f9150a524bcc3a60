"""The reaper: due events (a lease running out, a delay falling due, a backoff ending, DLQ
retention, a dedup key expiring) are applied on time on queues no client calls.

The library applies a queue's due events whenever a call opens the queue, and keeps, per
slot, the due index `valq:due:{<tag>}` (a zset: queue name -> a lower bound of its next due
time). `valq_reap 1 <index> <queues> <budget>` applies what fell due in up to <queues> of
an index's queues, at most <budget> events, and answers [queues, events, ms until the
index's next due time or -1]. This module calls it from the front ends:

- One front end reaps each primary at a time: the one that holds the primary's lock, the
  key `valq:reaper:{<tag>}` (tag: a slot the primary owns), taken with SET NX PX and
  renewed every round; when that front end dies or stops, the lock runs out after LOCK_MS
  and another takes over within a round. The others only try the lock once a round (one
  SET that fails), so the work is not multiplied.
- The reaping front end knows each due index's next due time: it reads the head of every
  index of the primary's slots, ROUND_PROBES of them a round (16384 slots: a pass of a
  few seconds whatever the number of queues; databases with no keys are skipped), and
  learns the next one from each valq_reap's answer. Every round (ROUND_S) it calls
  valq_reap on each index whose time has come, at most ROUND_CALLS calls of at most
  REAP_BUDGET events each, so a storm of expiries is spread over short calls and rounds
  and never holds a shard for long.

A due time that another front end's call moved earlier on an index already known (a POP
with a short lease) is seen when the index is next read: within a pass. Time is the
library's: the server's TIME, or the test build's manual clock.
"""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from . import slot_tag
from .connection import Reply, ReplyError, StoreUnavailable
from .slots import SLOTS

log = logging.getLogger("valqd")

ROUND_S = 0.25  # a round: the lock tried or renewed, due indexes reaped
LOCK_MS = 2000  # the lock runs out this long after its holder's last round
ROUND_PROBES = 1024  # due indexes read a round (of each database with keys)
ROUND_CALLS = 32  # valq_reap calls a round, at most
REAP_QUEUES = 100  # queues one valq_reap call may open
REAP_BUDGET = 200  # due events one valq_reap call may apply
LOG_EVERY_S = 10.0

Send = Callable[[int, list[bytes], Callable[[Reply], None]], None]  # (db, args, callback)


def index_key(slot: int) -> bytes:
    """The due index of `slot` (valqd.store.valkey.due_index_key names the same key)."""
    return b"valq:due:{" + _tag(slot) + b"}"


_TAGS: dict[int, bytes] = {}


def _tag(slot: int) -> bytes:
    tag = _TAGS.get(slot)
    if tag is None:
        tag = _TAGS[slot] = slot_tag(slot)
    return tag


@dataclass(eq=False)
class Primary:
    """One primary of the deployment: the slots it owns and how to call it."""

    name: str  # for the log
    slots: list[int]
    send: Send  # one command to this primary, in a database of valqd's
    # what the reaper knows of it
    leading: bool = False
    due: dict[tuple[int, bytes], int] = field(default_factory=dict)  # (db, index) -> ms
    probe_at: int = 0  # the next slot to read (an index into `slots`)
    databases: list[int] = field(default_factory=list)  # those with keys, this pass

    @property
    def lock_key(self) -> bytes:
        return b"valq:reaper:{" + _tag(self.slots[0]) + b"}"

    async def call(self, db: int, *args: bytes) -> Reply:
        """One command's reply (StoreUnavailable raised)."""
        return (await self.calls(db, [list(args)]))[0]

    async def calls(self, db: int, commands: list[list[bytes]]) -> list[Reply]:
        """The replies of `commands`, pipelined (StoreUnavailable raised)."""
        future: asyncio.Future[list[Reply]] = asyncio.get_running_loop().create_future()
        replies: list[Reply] = [None] * len(commands)
        left = [len(commands)]

        def answer(i: int) -> Callable[[Reply], None]:
            def done(reply: Reply) -> None:
                replies[i] = reply
                left[0] -= 1
                if left[0] == 0 and not future.done():
                    future.set_result(replies)
            return done

        for i, args in enumerate(commands):
            self.send(db, args, answer(i))
        if not commands:
            return []
        got = await future
        for reply in got:
            if isinstance(reply, StoreUnavailable):
                raise reply
        return got


@dataclass
class ReaperStats:
    """What INFO shows of the reaper."""

    leading: int = 0  # primaries this front end reaps
    calls: int = 0  # valq_reap calls made
    queues: int = 0  # queues they opened
    events: int = 0  # due events they applied


class Reaper:
    """The front end's reaper over `primaries()` (one for a standalone server)."""

    def __init__(self, primaries: Callable[[], list[Primary]], databases: int,
                 clock: Callable[[Primary], Awaitable[int]],
                 reap_args: Callable[[bytes, int, int], list[bytes]],
                 round_s: float = ROUND_S) -> None:
        """`clock(primary)`: the library's time there, in Unix ms (TIME, or the test
        build's clock); `reap_args(index, queues, budget)`: the FCALL of valq_reap."""
        self.primaries = primaries
        self.databases = databases
        self.clock = clock
        self.reap_args = reap_args
        self.round_s = round_s
        self.owner = b"%s:%d:%d" % (os.uname().nodename.encode(), os.getpid(),
                                    time.monotonic_ns())
        self.stats = ReaperStats()
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None
        self._logged_at = -LOG_EVERY_S

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop, and hand the locks this front end holds over at once."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for primary in self.primaries():
            if primary.leading:
                try:
                    if await primary.call(0, b"GET", primary.lock_key) == self.owner:
                        await primary.call(0, b"DEL", primary.lock_key)
                except StoreUnavailable:
                    pass

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            for primary in self.primaries():
                try:
                    await self.round(primary)
                except StoreUnavailable as exc:
                    primary.leading = False
                    self._log_trouble(f"The reaper cannot reach {primary.name}: {exc}")
                except Exception:  # noqa: BLE001 - a bug must not stop the reaper for good
                    log.exception("bug: the reaper's round failed")
            self.stats.leading = sum(p.leading for p in self.primaries())
            self.rounds += 1
            await asyncio.sleep(max(0.0, self.round_s - (time.monotonic() - started)))

    async def round(self, primary: Primary) -> None:
        """One round on one primary: take or renew its lock; if held, read the next due
        indexes and reap those whose time has come."""
        if not await self._lock(primary):
            if primary.leading:
                log.info("Another front end reaps %s now", primary.name)
            primary.leading, primary.due = False, {}
            return
        if not primary.leading:
            log.info("This front end reaps %s", primary.name)
            primary.leading = True
        await self._probe(primary)
        now = await self.clock(primary)
        calls = 0
        for key, at in sorted(primary.due.items(), key=lambda item: item[1]):
            if at > now or calls >= ROUND_CALLS:
                break
            while calls < ROUND_CALLS:
                calls += 1
                db, index = key
                reply = await primary.call(db, *self.reap_args(index, REAP_QUEUES,
                                                               REAP_BUDGET))
                if isinstance(reply, ReplyError) or type(reply) is not list:
                    self._log_trouble(f"valq_reap failed on {primary.name}: {reply}")
                    primary.due.pop(key, None)
                    break
                queues, events, wait = reply
                self.stats.calls += 1
                self.stats.queues += queues
                self.stats.events += events
                if wait < 0:
                    primary.due.pop(key, None)
                    break
                primary.due[key] = now + wait
                if wait > 0:
                    break

    async def _lock(self, primary: Primary) -> bool:
        """Take the primary's lock, or renew it if this front end holds it."""
        key, ttl = primary.lock_key, b"%d" % LOCK_MS
        if await primary.call(0, b"SET", key, self.owner, b"NX", b"PX", ttl) == b"OK":
            return True
        if await primary.call(0, b"GET", key) != self.owner:
            return False
        return bool(await primary.call(0, b"PEXPIRE", key, ttl) == 1)

    async def _probe(self, primary: Primary) -> None:
        """Read the heads of the next ROUND_PROBES due indexes of each database with keys
        (a new pass over the slots asks DBSIZE which databases have any)."""
        slots = primary.slots
        if primary.probe_at == 0:
            sizes = [await primary.call(db, b"DBSIZE") for db in range(self.databases)]
            primary.databases = [db for db, size in enumerate(sizes)
                                 if type(size) is int and size > 0]
        batch = slots[primary.probe_at:primary.probe_at + ROUND_PROBES]
        primary.probe_at += ROUND_PROBES
        if primary.probe_at >= len(slots):
            primary.probe_at = 0
        keys = [index_key(slot) for slot in batch]
        for db in primary.databases:
            heads = await primary.calls(db, [[b"ZRANGE", key, b"0", b"0", b"WITHSCORES"]
                                             for key in keys])
            for key, head in zip(keys, heads):
                if type(head) is list and len(head) == 2:
                    primary.due[db, key] = int(float(head[1]))
                else:
                    primary.due.pop((db, key), None)

    def _log_trouble(self, text: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning("%s", text)


def all_slots() -> list[int]:
    """Every slot: a standalone server owns them all."""
    return list(range(SLOTS))
