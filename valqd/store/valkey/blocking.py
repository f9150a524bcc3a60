"""Blocking pops in front of a store: this front end's clients wait here, first come first
served per queue, and no wake-up is lost.

One watcher task per (database, queue) that has waiting clients. It tries the pop for the
first of them (`valq_pop_woken`, which re-arms the wake marker when the queue is still
ready, for the next waiter of any front end); when nothing came, it asks the library when
the queue's next due event falls (`valq_wake`, which also sets the marker to the queue's
readiness) and waits for whichever comes first:
- a write to the queue through this front end (`readied`): at once;
- the queue's wake marker `valq:{<queue>}:wake`, a list that the library keeps holding one
  element exactly while the queue has a message ready to pop (level-triggered), read with
  BLPOP on a connection of the watcher's own, so that a write through any other front end
  wakes it within a round trip;
- a timeout: the first client's deadline, the queue's next due event (a delay ending, a
  lease running out: the next pop applies it), and at most MAX_WAIT_S. The cap is short
  because the due time the library reported can move earlier through another front end
  (a delayed PUSH, an EXTEND there) without touching the marker: such a message reaches
  this front end's waiters at most MAX_WAIT_S after it fell due. It also keeps a wait from
  outliving a failover or a resharding by long.

On a cluster or behind Sentinel the marker lives on the queue's primary (`locate`): a
BLPOP answered `MOVED` (the slot moved, or its primary became a replica) goes at once to
the new owner; one answered another error (`UNBLOCKED`: the server became a replica;
`READONLY`, `CLUSTERDOWN`, `ASK`, a lost connection) or never answered has the map read
again and the watcher wait one round before it pops again (a failover is under way: a pop
sent to a primary that dies meanwhile answers -INDOUBT), the pops themselves going
through the router's retries.

Across front ends nothing is ordered: each front end serves its own clients in order, and
whichever front end pops first gets the message.
"""

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ...commands.context import Pending
from ...resp import encode
from . import wake_key
from .connection import Client, Reply, ReplyError, StoreUnavailable

log = logging.getLogger("valqd")

MAX_WAIT_S = 1.0  # the longest a watcher waits before it pops again (see above)
LATE_S = 1.0  # a BLPOP not answered this long after its timeout is given up


@dataclass(eq=False)
class Waiter:
    """One blocked client (a POP, or an MPOP waiting on each of its queues): the POP to run
    for a queue, how to answer its reply, and what to answer when time is up."""

    queues: list[bytes]
    pop: Callable[[bytes], list[bytes]]  # queue -> the POP's argv (BLOCK taken out)
    answer: Callable[[bytes, Reply], bytes]  # (queue, the POP's reply) -> the client's reply
    pending: Pending
    deadline: float | None  # event-loop time; None: forever
    empty: bytes
    claimed: bool = False  # a watcher is popping for it (an MPOP's other watchers wait)

    def gone(self) -> bool:
        """Whether the client went away or was answered (by another queue's watcher)."""
        return self.pending.cancelled or self.pending.reply is not None


@dataclass(eq=False)
class Watch:
    waiters: collections.deque[Waiter] = field(default_factory=collections.deque)
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    task: "asyncio.Task[None] | None" = None


Pop = Callable[[int, list[bytes]], Awaitable[Reply]]  # (db, POP argv) -> the store's reply
Wake = Callable[[int, bytes], Awaitable[Reply]]  # (db, queue) -> valq_wake's [ready, wait_ms]
GiveBack = Callable[[int, list[bytes], Reply], None]  # (db, POP argv, what it delivered)
Address = tuple[str, int]
# (db, marker key, the last BLPOP's error reply or None, the address it came from) -> the
# address of the primary to BLPOP the marker on (None: none known right now)
Locate = Callable[[int, bytes, Reply, "Address | None"], "Address | None"]


class Waits:
    """The blocked pops of one front end, by (database, queue)."""

    def __init__(self, connect: Callable[[int, "Address | None"], Client], pop: Pop,
                 wake: Wake, give_back: GiveBack, max_wait_s: float = MAX_WAIT_S,
                 locate: Locate | None = None) -> None:
        """`connect(db, address)`: a new client of the store for a watcher's BLPOP (on the
        server at `address`; None: the store's URL's); `pop` runs a
        POP (woken: it re-arms the marker), `wake` valq_wake; `give_back` returns what a
        POP delivered for a client that went away meanwhile; `max_wait_s` caps a wait
        (a test's manual clock does not move with the wall clock: it polls); `locate`:
        where a marker lives on a deployment of several servers (None: one server)."""
        self._connect = connect
        self._pop = pop
        self._wake = wake
        self._give_back = give_back
        self.max_wait_s = max_wait_s
        self._locate = locate
        self._watches: dict[tuple[int, bytes], Watch] = {}
        self._closing: set[asyncio.Task[None]] = set()  # markers of a queue's old primary

    def add(self, db: int, waiter: Waiter) -> None:
        """Park `waiter` behind the others of each of its queues."""
        for name in waiter.queues:
            key = (db, name)
            watch = self._watches.get(key)
            if watch is None:
                watch = self._watches[key] = Watch()
            watch.waiters.append(waiter)
            if watch.task is None:
                watch.task = asyncio.get_running_loop().create_task(self._serve(key, watch))
            else:
                watch.woken.set()  # its deadline may be the first one now

    def readied(self, db: int, name: bytes) -> None:
        """A write to the queue went through this front end: its waiters try again now."""
        watch = self._watches.get((db, name))
        if watch is not None:
            watch.woken.set()

    def blocked(self, db: int, name: bytes) -> int:
        """How many clients of this front end wait on the queue."""
        watch = self._watches.get((db, name))
        return 0 if watch is None else sum(not w.gone() for w in watch.waiters)

    def total(self) -> int:
        return sum(self.blocked(db, name) for db, name in self._watches)

    async def close(self) -> None:
        for watch in list(self._watches.values()):
            if watch.task is not None:
                watch.task.cancel()

    async def _serve(self, key: tuple[int, bytes], watch: Watch) -> None:
        db, name = key
        loop = asyncio.get_running_loop()
        waiters = watch.waiters
        marker: Client | None = None
        blpop: asyncio.Future[Reply] | None = None
        blpop_late = 0.0  # when the BLPOP in flight should have answered by
        trouble: Reply = None  # the last BLPOP's error reply
        try:
            while waiters:
                soonest = _expire(waiters, loop.time())
                if not waiters:
                    break
                head = waiters[0]
                watch.woken.clear()
                if head.claimed:  # an MPOP's other queue is being popped for it
                    await _wait(watch.woken, self.max_wait_s)
                    continue
                head.claimed = True
                pop = head.pop(name)
                try:
                    reply = await self._pop(db, pop)
                except StoreUnavailable as exc:
                    reply = exc
                finally:
                    head.claimed = False
                if head.gone():  # went away (or was answered) meanwhile
                    self._give_back(db, pop, reply)
                    continue
                if isinstance(reply, StoreUnavailable):
                    waiters.popleft()
                    head.pending.resolve(encode.error(reply.code, str(reply)))
                    self._release(db, head)
                    continue
                if isinstance(reply, ReplyError) or (reply != b"" and reply != []):
                    waiters.popleft()
                    head.pending.resolve(head.answer(name, reply))
                    self._release(db, head)
                    continue
                try:
                    ready, wait_ms = await self._wake(db, name)
                except (StoreUnavailable, ValueError, TypeError):  # an error reply: retry
                    ready, wait_ms = 0, 100
                if ready and not watch.woken.is_set():
                    continue  # ready again already (another waiter's pop re-armed it)
                timeout = self.max_wait_s
                if wait_ms >= 0:
                    timeout = min(timeout, wait_ms / 1000)
                if soonest is not None:
                    timeout = min(timeout, soonest - loop.time())
                timeout = max(timeout, 0.001)
                if blpop is None:
                    marker = self._marker(db, name, marker, trouble)
                if blpop is None and marker is not None:
                    blpop = loop.create_future()
                    blpop_late = loop.time() + timeout + LATE_S
                    marker.send([b"BLPOP", wake_key(name), b"%.3f" % timeout], _set(blpop))
                await _wait(watch.woken, timeout + 0.05, blpop)
                trouble = None
                if blpop is not None and blpop.done():
                    reply, blpop = blpop.result(), None
                    if isinstance(reply, (ReplyError, StoreUnavailable)):
                        trouble = reply
                elif blpop is not None and loop.time() > blpop_late:
                    # its server is gone without a word (a primary killed, its connection
                    # waiting to be made again): look for the queue's primary again
                    blpop, trouble = None, StoreUnavailable("the wake marker's BLPOP is late")
                if trouble is not None and not str(trouble).startswith("MOVED "):
                    # a failover under way: the map is read again, and the watcher waits a
                    # round before it pops (a pop sent to a primary dying may be lost)
                    if self._locate is not None:
                        self._locate(db, wake_key(name), trouble, None)
                    trouble = None
                    await _wait(watch.woken, self.max_wait_s)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug must not leave clients blocked for ever
            log.exception("bug: a blocked pop's watcher failed")
            for waiter in waiters:
                waiter.pending.resolve(encode.error("ERR", "internal error"))
        finally:
            if self._watches.get(key) is watch:
                del self._watches[key]
            if marker is not None:
                await marker.close()  # a BLPOP still waiting ends with its connection

    def _marker(self, db: int, name: bytes, marker: Client | None,
                trouble: Reply) -> Client | None:
        """The connection to BLPOP the queue's marker on: `marker`, or a new one when the
        queue's primary is another (the old one closes; `trouble`, the last BLPOP's MOVED,
        says where it went); None: wait this round without it (no primary is known)."""
        if self._locate is None:
            return marker or self._connect(db, None)
        asked = marker.address if marker is not None else None
        address = self._locate(db, wake_key(name), trouble, asked)
        if address is None:
            return None
        if marker is not None and marker.address == address:
            return marker
        if marker is not None:
            closing = asyncio.get_running_loop().create_task(marker.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return self._connect(db, address)

    def _release(self, db: int, waiter: Waiter) -> None:
        """An MPOP was answered: its other queues' watchers drop it now."""
        for name in waiter.queues:
            self.readied(db, name)


def _expire(waiters: collections.deque[Waiter], now: float) -> float | None:
    """Drop the waiters that went away, answer those whose time is up (wherever they are
    in the line); the soonest deadline of the others."""
    soonest = None
    for waiter in list(waiters):
        if waiter.gone():
            waiters.remove(waiter)
        elif waiter.deadline is not None:
            if now >= waiter.deadline:
                waiters.remove(waiter)
                waiter.pending.resolve(waiter.empty)
            elif soonest is None or waiter.deadline < soonest:
                soonest = waiter.deadline
    return soonest


async def _wait(woken: asyncio.Event, timeout: float,
                also: "asyncio.Future[Reply] | None" = None) -> None:
    """Until `woken` is set, `also` is done, or `timeout` seconds passed."""
    waiting = asyncio.get_running_loop().create_task(woken.wait())
    try:
        await asyncio.wait((waiting,) if also is None else (waiting, also), timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


def _set(future: "asyncio.Future[Reply]") -> Callable[[Reply], None]:
    def done(reply: Reply) -> None:
        if not future.done():
            future.set_result(reply)
    return done
