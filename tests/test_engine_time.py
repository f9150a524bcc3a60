"""Time at its extremes, with an injected clock: delays up to 2**64-1 seconds, leases of
43200 s, and a wall clock that jumps backwards and forwards. The timer never raises, never
lets a deadline pass without acting on it, and never delivers a message twice within one
lease. First the engine alone (as the dispatcher drives it: `tick(now)` before every
operation at `now`), then the real server's timer on a ManualClock via ThreadedServer.
"""

import asyncio
import logging
import random

import pytest
import valkey

from support import ManualClock, ThreadedServer, block
from valqd.engine import MAX_DELAY, Engine, make_settings
from valqd.engine import record
from valqd.engine.engine import MAX_DUE_AT, due_time
from valqd.errors import CommandError

Q = b"q"
T0 = 1_700_000_000_000
SEC = 1000
HOUR = 3600 * SEC
DAY = 24 * HOUR


def make(vt: int = 30, mda: int = 5, rp: int = 86400) -> Engine:
    engine = Engine()
    engine.create_queue(Q, make_settings(vt, mda, rp))
    return engine


def pop(engine: Engine, now: int):
    engine.tick(now)
    got = engine.pop_many(Q, now, 1)
    return got[0] if got else None


def state(engine: Engine, message_id: int) -> str | None:
    return engine.queue(Q).state_of(message_id)


def attempts(engine: Engine, message_id: int) -> int:
    return record.unpack(engine.queue(Q).records[message_id])[3]


def true_next_deadline(engine: Engine) -> int | None:
    deadlines = [at for q in engine.queues.values() if (at := q.next_deadline()) is not None]
    return min(deadlines) if deadlines else None


def assert_timer_consistent(engine: Engine) -> None:
    """The engine's next deadline is never later than the earliest real one (it may be
    early: a deadline that went away leaves a harmless early wake-up)."""
    wanted = true_next_deadline(engine)
    got = engine.next_deadline()
    assert wanted is None or (got is not None and got <= wanted), (got, wanted)


# -- delays up to 2**64-1 seconds --------------------------------------------------------------

@pytest.mark.parametrize("delay", [MAX_DELAY, MAX_DELAY - 1, 2**63, 2**53 + 1, 10**12])
def test_huge_delay_is_stored_and_falls_due_exactly(delay):
    engine = make()
    assert engine.push(Q, b"far", T0, delay) == 1
    due = due_time(T0, delay)
    assert due == min(T0 + delay * SEC, MAX_DUE_AT)
    assert engine.queue(Q).delayed[1] == due
    assert engine.next_deadline() == due
    for now in sorted({T0, T0 + DAY, T0 + 10**14, due - 1}):
        assert engine.tick(now) == due
        assert state(engine, 1) == "delayed"
        assert pop(engine, now) is None
    assert engine.tick(due) is None
    assert state(engine, 1) == "ready"
    assert pop(engine, due).body == b"far"


def test_max_delay_saturates_at_the_largest_due_time():
    engine = make()
    engine.push(Q, b"a", T0, MAX_DELAY)
    engine.push(Q, b"b", 0, MAX_DELAY)
    engine.push(Q, b"c", 2**62, MAX_DELAY)  # a clock far in the future
    delayed = engine.queue(Q).delayed
    assert delayed == {1: MAX_DUE_AT, 2: MAX_DELAY * SEC, 3: MAX_DUE_AT}
    assert engine.tick(MAX_DUE_AT * 2) is None  # far past the end: no overflow, no error
    assert [pop(engine, MAX_DUE_AT * 2).id for _ in range(3)] == [1, 2, 3]


def test_reschedule_and_nack_with_the_largest_delay():
    engine = make()
    engine.push(Q, b"a", T0)
    engine.push(Q, b"b", T0)
    engine.reschedule(Q, 1, MAX_DELAY, T0)
    assert engine.queue(Q).delayed[1] == MAX_DUE_AT
    delivered = pop(engine, T0)
    assert delivered.id == 2
    engine.nack(Q, 2, T0, delay=MAX_DELAY)
    assert engine.queue(Q).delayed[2] == MAX_DUE_AT
    assert engine.tick(T0 + 100 * 365 * DAY) == MAX_DUE_AT
    assert pop(engine, MAX_DUE_AT - 1) is None
    assert {pop(engine, MAX_DUE_AT).id, pop(engine, MAX_DUE_AT).id} == {1, 2}


# -- leases of 43200 s -----------------------------------------------------------------------------

def test_lease_of_43200_seconds():
    engine = make(vt=43200)
    engine.push(Q, b"long job", T0)
    first = pop(engine, T0)
    assert first.lease_deadline == T0 + 43200 * SEC
    assert engine.next_deadline() == T0 + 43200 * SEC
    for now in (T0 + HOUR, T0 + 11 * HOUR, T0 + 43200 * SEC - 1):
        assert pop(engine, now) is None
        assert state(engine, 1) == "inflight"
    assert pop(engine, T0 + 43200 * SEC).id == 1  # the lease ran out exactly then
    assert attempts(engine, 1) == 2


def test_extend_by_43200_seconds_again_and_again():
    engine = make(vt=60)
    engine.push(Q, b"x", T0)
    pop(engine, T0)
    now = T0
    for _ in range(5):
        now += 40 * SEC
        engine.tick(now)
        engine.extend(Q, 1, 43200, now)
        assert engine.queue(Q).lease_deadline(1) == now + 43200 * SEC
        assert engine.next_deadline() <= now + 43200 * SEC
    assert pop(engine, now + 43200 * SEC - 1) is None
    assert pop(engine, now + 43200 * SEC).id == 1
    with pytest.raises(CommandError, match="between 0 and 43200"):
        engine.extend(Q, 1, 43201, now)


# -- the wall clock jumps -----------------------------------------------------------------------

def test_backwards_jump_after_pop_does_not_deliver_again_within_the_lease():
    engine = make(vt=30)
    engine.push(Q, b"job", T0)
    first = pop(engine, T0)
    deadline = T0 + 30 * SEC
    assert first.lease_deadline == deadline
    for now in (T0 - DAY, T0 - 365 * DAY, 0, T0 - 1, T0 + 29 * SEC):  # back, far back, ...
        assert engine.tick(now) == deadline  # the timer does not move with the clock
        assert pop(engine, now) is None
        assert state(engine, 1) == "inflight"
        assert_timer_consistent(engine)
    again = pop(engine, deadline)
    assert again.id == 1 and again.lease_no != first.lease_no
    assert attempts(engine, 1) == 2


def test_backwards_jump_keeps_delayed_messages_waiting():
    engine = make()
    engine.push(Q, b"later", T0, 60)
    assert pop(engine, T0 - DAY) is None
    assert engine.tick(T0 - DAY) == T0 + 60 * SEC
    assert pop(engine, T0 + 60 * SEC).body == b"later"


def test_forward_jump_expires_exactly_what_is_due():
    engine = make(vt=30, mda=2, rp=60)
    for i in range(1, 6):
        engine.push(Q, b"m%d" % i, T0)
    pop(engine, T0)  # 1: lease until +30 s
    pop(engine, T0 + 10 * SEC)  # 2: until +40 s
    pop(engine, T0 + 20 * SEC)  # 3: until +50 s
    engine.tick(T0 + 20 * SEC)
    engine.reschedule(Q, 4, 25, T0 + 20 * SEC)  # 4: due at +45 s
    engine.reschedule(Q, 5, 40, T0 + 20 * SEC)  # 5: due at +60 s
    assert engine.next_deadline() == T0 + 30 * SEC
    assert engine.tick(T0 + 45 * SEC) == T0 + 50 * SEC  # one jump of 25 s
    q = engine.queue(Q)
    assert [state(engine, i) for i in range(1, 6)] == \
        ["ready", "ready", "inflight", "ready", "delayed"]
    assert (q.counters["expired"], attempts(engine, 1), attempts(engine, 3)) == (2, 1, 1)
    # a big jump: every remaining deadline passes, in order, and nothing is skipped
    pop(engine, T0 + 45 * SEC)  # 4 (promoted, first in line), lease until +75 s
    assert engine.tick(T0 + 10 * DAY) is None
    assert [state(engine, i) for i in range(1, 6)] == ["ready"] * 5
    assert true_next_deadline(engine) is None


def test_forward_jump_past_last_attempt_and_retention():
    engine = make(vt=10, mda=1, rp=60)
    engine.push(Q, b"doomed", T0)
    pop(engine, T0)
    engine.tick(T0 + 10 * SEC - 1)
    assert state(engine, 1) == "inflight"
    engine.tick(T0 + 10 * SEC + 59 * SEC)  # lease ran out at +10 s: DLQ, dropped at +70 s
    assert state(engine, 1) == "dlq"
    assert engine.queue(Q).dead[1] == T0 + 10 * SEC  # entered the DLQ when the lease ended
    assert engine.tick(T0 + 70 * SEC) is None
    assert state(engine, 1) is None
    q = engine.queue(Q)
    assert (q.counters["dead_lettered"], q.counters["dropped"]) == (1, 1)


def test_big_jump_back_then_forward_with_many_queues():
    engine = Engine()
    for n in range(5):
        engine.create_queue(b"q%d" % n, make_settings(1 + n, 3, 60))
        for i in range(20):
            engine.push(b"q%d" % n, b"m", T0, i % 3)
    now = T0
    for jump in (-DAY, 5 * SEC, -HOUR, 2 * DAY, -30 * DAY, 3 * SEC, 400 * DAY):
        now += jump
        engine.tick(now)
        for n in range(5):
            engine.pop_many(b"q%d" % n, now, 4)
        assert_timer_consistent(engine)
        deadline = true_next_deadline(engine)
        assert deadline is None or deadline > now


# -- a random walk of the clock, with a model of leases ------------------------------------------

JUMPS = [0, 1, 999, SEC, 30 * SEC, HOUR, DAY, 400 * DAY, -1, -SEC, -HOUR, -DAY, -400 * DAY]


@pytest.mark.parametrize("seed", range(6))
def test_random_clock_walk(seed):
    """Random operations at a clock that wanders back and forth (and to the end of time).
    Invariants: no unexpected exception; after tick(now) no deadline <= now is left; the
    timer's next deadline is never late; a message is delivered again only after its
    lease ran out (a tick at or past its deadline), a NACK, or its removal."""
    rng = random.Random(seed)
    engine = Engine()
    names = [b"a", b"b", b"c"]
    for name in names:
        engine.create_queue(name, make_settings(rng.choice([1, 5, 30, 43200]),
                                                rng.choice([1, 2, 5]), 60))
    leased: dict[tuple[bytes, int], int] = {}  # live leases of the model: deadline
    now = T0
    for step in range(4000):
        roll = rng.random()
        if roll < 0.02:  # the clock is reset anywhere (the end of time: see the end)
            now = rng.choice([0, 1, T0, 2**62])
        else:
            now = max(0, now + rng.choice(JUMPS) + rng.randrange(-50, 50))
        engine.tick(now)
        for key, deadline in list(leased.items()):
            if deadline <= now:
                del leased[key]  # ran out: may be delivered again
        for q in engine.queues.values():
            at = q.next_deadline()
            assert at is None or at > now, (step, now, at)
        assert_timer_consistent(engine)

        name = rng.choice(names)
        q = engine.queue(name)
        op = rng.random()
        try:
            if op < 0.3:
                delay = rng.choice([0, 0, 0, 1, 30, 3600, MAX_DELAY])
                engine.push(name, b"x", now, delay,
                            dedup_key=b"k" if rng.random() < 0.1 else None)
            elif op < 0.6:
                for d in engine.pop_many(name, now, rng.randrange(1, 4)):
                    assert (name, d.id) not in leased, \
                        f"step {step}: message {d.id} delivered twice within one lease"
                    assert d.lease_deadline == now + q.settings.visibility_timeout * SEC
                    leased[(name, d.id)] = d.lease_deadline
            elif op < 0.7 and q.leases:
                message_id = rng.choice(list(q.leases))
                engine.ack(name, message_id)
                leased.pop((name, message_id), None)
            elif op < 0.78 and q.leases:
                message_id = rng.choice(list(q.leases))
                engine.nack(name, message_id, now, rng.choice([None, 0, 5, MAX_DELAY]))
                leased.pop((name, message_id), None)
            elif op < 0.86 and q.leases:
                message_id = rng.choice(list(q.leases))
                seconds = rng.choice([0, 1, 60, 43200])
                engine.extend(name, message_id, seconds, now)
                leased[(name, message_id)] = now + seconds * SEC
            elif op < 0.9 and q.records:
                message_id = rng.choice(list(q.records))
                engine.cancel(name, message_id)
                leased.pop((name, message_id), None)
            elif op < 0.93:
                engine.redrive(name, now)
            elif op < 0.95:
                engine.purge(name, rng.choice(["main", "delayed", "dlq"]))
                leased = {k: v for k, v in leased.items()
                          if k[0] != name or k[1] in q.leases}
            elif op < 0.97 and q.ready:
                message_id = q.ready[0] & record.ID_MASK
                engine.reschedule(name, message_id, rng.choice([0, 1, MAX_DELAY]), now)
        except CommandError:
            pass  # a refused operation is fine (QUEUEFULL, NOMSG, ...); nothing may break
        # the model's leases are exactly the engine's
        for (lname, message_id), deadline in leased.items():
            assert engine.queue(lname).lease_deadline(message_id) == deadline, (step, message_id)
    engine.tick(MAX_DUE_AT)
    assert true_next_deadline(engine) is None  # past the end of time nothing is left
    assert not any(q.leases or q.delayed for q in engine.queues.values())


# -- the server's timer on a ManualClock -----------------------------------------------------------

def timer_state(server: ThreadedServer) -> tuple:
    async def read():
        return server.server._timer_at, server.server.databases.next_deadline()
    return asyncio.run_coroutine_threadsafe(read(), server.loop).result(10)


def jump(server: ThreadedServer, to_ms: int) -> None:
    """Set the wall clock anywhere, then let the timer run as if it had fired."""
    server.clock.now = to_ms
    server.advance(0)


@pytest.fixture
def clocked(caplog):
    caplog.set_level(logging.WARNING)
    with ThreadedServer(ManualClock(T0)) as server:
        yield server
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems]


def test_server_timer_clock_back_and_forth(clocked):
    client = clocked.client()
    assert client.execute_command("VALQ", "CREATE", "q", "VISIBILITY", 60) == b"created q"
    assert client.execute_command("VALQ", "PUSH", "q", "job") == b"1"
    popped = client.execute_command("VALQ", "POP", "q", "WITHMETA")
    first = dict(zip(popped[::2], popped[1::2]))
    assert timer_state(clocked) == (T0 + 60 * SEC, T0 + 60 * SEC)
    for to in (T0 - DAY, T0 - 400 * DAY, T0 + 59 * SEC, T0 - HOUR, T0 + 60 * SEC - 1):
        jump(clocked, to)
        assert client.execute_command("VALQ", "POP", "q") in (b"", None)
        assert timer_state(clocked) == (T0 + 60 * SEC, T0 + 60 * SEC)
    jump(clocked, T0 + 60 * SEC)
    again = client.execute_command("VALQ", "POP", "q", "WITHMETA")
    meta = dict(zip(again[::2], again[1::2]))
    assert meta[b"id"] == b"1" and meta[b"attempts"] == b"2"
    assert meta[b"lease"] != first[b"lease"]
    client.close()


def test_server_timer_wakes_a_blocked_consumer_after_jumps(clocked):
    client = clocked.client()
    client.execute_command("VALQ", "CREATE", "q")
    assert client.execute_command("VALQ", "PUSH", "q", "soon", 5) == b"1"
    waiter = block(clocked, client, 2, "POP", "q", "BLOCK", 0)
    jump(clocked, T0 - DAY)
    jump(clocked, T0 + 4 * SEC)
    waiter.thread.join(0.3)
    assert not waiter.done()  # not due yet, whatever the clock did meanwhile
    jump(clocked, T0 + 5 * SEC)
    assert waiter.get(10) == [b"body", b"soon", b"id", b"1"]
    client.close()


def test_server_timer_with_the_largest_delay(clocked):
    client = clocked.client()
    client.execute_command("VALQ", "CREATE", "q")
    assert client.execute_command("VALQ", "PUSH", "q", "end of time", 2**64 - 1) == b"1"
    with pytest.raises(valkey.exceptions.ResponseError,
                       match="delay must be an integer between 0 and 18446744073709551615"):
        client.execute_command("VALQ", "PUSH", "q", "too far", 2**64)
    assert timer_state(clocked) == (MAX_DUE_AT, MAX_DUE_AT)
    for to in (T0 + 400 * DAY, T0 - DAY, 2**63, MAX_DUE_AT - 1):
        jump(clocked, to)
        assert client.execute_command("VALQ", "POP", "q") in (b"", None)
    jump(clocked, MAX_DUE_AT)
    assert client.execute_command("VALQ", "POP", "q", "NOACK") == \
        [b"body", b"end of time", b"id", b"1"]
    assert timer_state(clocked) == (None, None)
    client.close()


def test_server_notices_a_forward_jump_without_waiting_for_its_timer(clocked):
    """The timer sleeps on the event loop's monotonic clock (up to an hour for a far
    deadline). When the wall clock jumps past a deadline meanwhile, the server acts within
    about a second, not when that sleep ends: a parked consumer gets the message."""
    client = clocked.client()
    client.execute_command("VALQ", "CREATE", "q")
    assert client.execute_command("VALQ", "PUSH", "q", "in two hours", 7200) == b"1"
    waiter = block(clocked, client, 2, "POP", "q", "BLOCK", 0)
    clocked.clock.now = T0 + 7200 * SEC + 1  # no timer call: only the clock moves
    assert waiter.get(3.0) == [b"body", b"in two hours", b"id", b"1"]
    client.close()


def armed_at(server: ThreadedServer) -> int | None:
    """When the server's timer fires (nothing of the engine is looked at: that would move
    `due_at`, which the server compares to decide whether to look)."""
    async def read():
        return server.server._timer_at
    return asyncio.run_coroutine_threadsafe(read(), server.loop).result(10)


def test_server_timer_follows_earlier_deadlines_and_outlives_a_deleted_one(clocked):
    """After each read the server looks at the timer heap only when `due_at` moved: an
    earlier deadline moves the timer; a deadline that went away (its queue deleted) lets
    the timer fire early once, after which it is armed for the next one."""
    client = clocked.client()
    for name in ("a", "b", "c"):
        client.execute_command("VALQ", "CREATE", name)
    assert client.execute_command("VALQ", "PUSH", "a", "late", 100) == b"1"
    assert armed_at(clocked) == T0 + 100 * SEC
    assert client.execute_command("VALQ", "PUSH", "a", "later", 200) == b"2"
    assert armed_at(clocked) == T0 + 100 * SEC
    assert client.execute_command("VALQ", "PUSH", "b", "early", 10) == b"1"
    assert armed_at(clocked) == T0 + 10 * SEC
    assert client.execute_command("VALQ", "DELETE", "b") == b"deleted b"
    assert client.execute_command("VALQ", "PUSH", "c", "soon", 50) == b"1"
    assert armed_at(clocked) == T0 + 10 * SEC  # early, never late
    jump(clocked, T0 + 10 * SEC)
    assert armed_at(clocked) == T0 + 50 * SEC
    assert client.execute_command("VALQ", "POP", "c") in (b"", None)
    jump(clocked, T0 + 50 * SEC)
    assert client.execute_command("VALQ", "POP", "c", "NOACK") == \
        [b"body", b"soon", b"id", b"1"]
    assert armed_at(clocked) == T0 + 100 * SEC
    jump(clocked, T0 + 100 * SEC)
    assert client.execute_command("VALQ", "POP", "a", "NOACK") == \
        [b"body", b"late", b"id", b"1"]
    assert armed_at(clocked) == T0 + 200 * SEC
    client.close()
