"""Work that must stay bounded: what one client gets per turn of the event loop, and what
routine commands cost as the number of queues grows. Bounds are checked structurally (how
many commands run between two turns, how large a reply is), never by wall-clock time;
bench/ measures the times."""

import asyncio
import random
import threading

import pytest
import uvloop

from support import ThreadedServer, Wire, encode_command, send_in_thread, valq
from valqd.engine import Engine, make_settings
from valqd.errors import CommandError
from valqd.server import COMMANDS_PER_TURN

T0 = 1_700_000_000_000

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class TurnProbe:
    """Runs once per turn of the server's event loop and keeps the largest number of
    commands the server ran between two of its runs."""

    def __init__(self, server: ThreadedServer) -> None:
        self.server = server
        self.last = 0
        self.most = 0
        self.stopped = threading.Event()
        server.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self.last = self.server.server.state.total_commands
        self.server.loop.call_soon(self._turn)

    def _turn(self) -> None:
        total = self.server.server.state.total_commands
        self.most = max(self.most, total - self.last)
        self.last = total
        if not self.stopped.is_set():
            self.server.loop.call_soon(self._turn)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_long_pipeline_runs_a_bounded_share_per_turn(loop):
    """A client that pipelines 30,000 commands gets at most COMMANDS_PER_TURN of them run
    per turn of the event loop, so every other client is served between two shares.
    (uvloop runs callbacks and reads in two phases of one turn: a continuation and a fresh
    read may both run a share between two runs of the probe.)"""
    count = 30_000
    with ThreadedServer(loop_factory=LOOPS[loop]) as server:
        greedy, other = Wire(server.port), Wire(server.port)
        assert other.call("VALQ", "CREATE", "q") == b"created q"
        probe = TurnProbe(server)
        sender = send_in_thread(greedy, encode_command(["VALQ", "PUSH", "q", "x" * 100]) * count)
        assert other.call("PING") == b"PONG"
        replies = greedy.replies(count)
        sender.join(10)
        probe.stopped.set()
        assert replies[-1] == b"%d" % count
        assert other.call("PING") == b"PONG"
        shares = 1 if loop == "asyncio" else 2
        assert 0 < probe.most <= shares * COMMANDS_PER_TURN + 1  # + the other client's PING


# -- totals the engine keeps instead of walking the queues ---------------------------------

def _recount(engine: Engine) -> tuple:
    queues = list(engine.queues.values())
    return (sum(len(q.records) for q in queues),
            sum(len(r) for q in queues for r in q.records.values()),
            sum(len(q.ready) for q in queues), sum(len(q.leases) for q in queues),
            sum(len(q.delayed) for q in queues), sum(len(q.dead) for q in queues))


def _kept(engine: Engine) -> tuple:
    t = engine.totals
    return t.messages, t.bytes, t.ready, t.inflight, t.delayed, t.dead


def test_totals_follow_every_change_and_replay():
    """maxmemory, INFO and /metrics read totals the engine keeps as messages move; after
    any mix of operations they equal a recount over every queue, live and after a replay
    of the journal or of a snapshot."""
    rng = random.Random(7)
    journal: list = []
    e = Engine(journal=journal.append)
    names = [b"a", b"b", b"c"]
    for name in names:
        e.create_queue(name, make_settings(10, 2, 60))
    now = T0
    for step in range(3000):
        name = rng.choice(names)
        q = e.queues.get(name)
        choice = rng.random()
        try:
            if q is None:
                e.create_queue(name, make_settings(10, 2, 60))
            elif choice < 0.35:
                e.push(name, b"x" * rng.randint(0, 300), now, delay=rng.choice([0, 0, 5]),
                       priority=rng.choice([0, 0, 3]))
            elif choice < 0.55:
                e.pop_many(name, now, rng.randint(1, 3), noack=rng.random() < 0.1)
            elif choice < 0.65 and q.leases:
                e.ack(name, rng.choice(list(q.leases)))
            elif choice < 0.72 and q.leases:
                e.nack(name, rng.choice(list(q.leases)), now, delay=rng.choice([None, 0, 3]))
            elif choice < 0.76 and q.records:
                e.cancel(name, rng.choice(list(q.records)))
            elif choice < 0.79:
                e.redrive(name, now, to=rng.choice([None, rng.choice(names)]))
            elif choice < 0.81:
                e.purge(name, rng.choice(["main", "delayed", "dlq"]))
            elif choice < 0.815:
                e.delete_queue(name)
            elif choice < 0.817:
                e.flush()
            elif choice < 0.85 and q.records:
                e.reschedule(name, rng.choice(list(q.records)), rng.randint(0, 4), now)
            else:
                now += rng.randint(0, 4000)
                e.tick(now)
        except CommandError:
            pass
        assert _kept(e) == _recount(e), step
    replayed = Engine()
    for effect in journal:
        replayed.apply(effect)
    assert _kept(replayed) == _recount(replayed) == _recount(e)
    restored = Engine()
    for effect in e.snapshot():
        restored.apply(effect)
    assert _kept(restored) == _recount(e)
    assert e.message_count() == _recount(e)[0]


# -- SCAN --------------------------------------------------------------------------------------

def test_engine_scan_costs_count_and_keeps_its_promise():
    """Each call hands out at most COUNT queues, found from the cursor without looking at
    the others; every queue present for the whole scan comes back (once), while queues are
    created and deleted between the calls."""
    rng = random.Random(3)
    e = Engine()
    for i in range(500):
        e.create_queue(b"q%d" % i, make_settings())
    stable = {b"q%d" % i for i in range(0, 500, 2)}  # never deleted
    seen: list[bytes] = []
    cursor, created = 0, 0
    while True:
        count = rng.randint(1, 20)
        batch, cursor = e.scan(cursor, count)
        assert len(batch) <= count
        seen += [q.name for q in batch]
        for _ in range(3):
            created += 1
            e.create_queue(b"new%d" % created, make_settings())
            victims = [n for n in e.queues if n not in stable]
            if victims:
                e.delete_queue(rng.choice(victims))
        if cursor == 0:
            break
    assert stable <= set(seen)
    assert len(seen) == len(set(seen))


def test_scan_over_the_wire_returns_every_queue_under_churn(timed_server):
    c = timed_server.client()
    for i in range(300):
        valq(c, "CREATE", f"keep{i}")
    seen, cursor, created = [], 0, 0
    while True:
        cursor, names = c.scan(cursor, count=17)
        seen += names
        created += 1
        valq(c, "CREATE", f"new{created}")
        valq(c, "DELETE", f"new{created - 1}") if created > 1 else None
        if cursor == 0:
            break
    assert {f"keep{i}".encode() for i in range(300)} <= set(seen)
    assert len(seen) == len(set(seen))
    assert c.dbsize() == 301
    assert c.keys("keep1*")[:3] == [b"keep1", b"keep10", b"keep100"]  # name order
    assert c.execute_command("VALQ", "LIST")[:2] == [b"keep0", b"keep1"]


# -- INFO ----------------------------------------------------------------------------------------

def _info_size(wire: Wire, *sections) -> int:
    return len(wire.call("INFO", *sections))


def test_info_does_not_grow_with_the_number_of_queues(timed_server):
    """INFO, INFO all and every default section are as long with 2,000 queues (some with
    messages) as with one, give or take the digits of the figures; a line per queue only in
    INFO queues."""
    c, wire = timed_server.client(), Wire(timed_server.port)
    valq(c, "CREATE", "q0")
    valq(c, "PUSH", "q0", "x")
    small = {s: _info_size(wire, s) for s in ("default", "all", "memory", "messages", "keyspace")}
    pipe = c.pipeline(transaction=False)
    for i in range(1, 2000):
        pipe.execute_command("VALQ", "CREATE", f"q{i}")
        pipe.execute_command("VALQ", "PUSH", f"q{i}", "x")
    pipe.execute()
    for section, size in small.items():
        assert _info_size(wire, section) <= size + 64, section  # longer numbers only
    info = c.info()
    assert (info["queues"], info["messages"], info["messages_ready"]) == (2000, 2000, 2000)
    assert len(c.info("queues")) == 2000
