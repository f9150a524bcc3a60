"""The reaper of the front ends (valqd/store/valkey/reaper.py): due events are applied on
time on queues no client calls (leases, delays, DLQ retention), by one front end at a
time, and another takes over when it dies. Nothing here calls the queues whose events are
reaped: what the tests read is Valkey's own keys (the wake marker) and the events relayed
to a subscriber."""

import time

import pytest

from support import (ManualClock, ThreadedServer, ValkeyServerProcess, ValqdProcess, Wire,
                     wait_until)
from valqd.store.url import parse_store_url
from valqd.store.valkey import due_index_key, queue_key, slot_tag, wake_key
from valqd.store.valkey.reaper import LOCK_MS, index_key
from valqd.store.valkey.slots import key_slot
from valqd.store.valkey.store import ValkeyStore

QUICK_ROUND_S = 0.05


def store(url: str, test_clock: bool = True) -> ValkeyStore:
    made = ValkeyStore(parse_store_url(url), test_clock=test_clock)
    made.reaper_round_s = QUICK_ROUND_S
    made.relay_refresh_s = 3600  # its valq_listen would apply the due events too
    return made


def reaper(server: ThreadedServer):
    return server.server.store.reaper


def test_the_due_index_names_agree_with_the_library():
    for slot in (0, 1, 866, 16383):
        assert index_key(slot) == b"valq:due:{" + slot_tag(slot) + b"}"
    assert due_index_key(queue_key(b"jobs")) == index_key(key_slot(b"valq:{jobs}"))


def test_due_events_are_applied_on_time_with_no_client_calling(valkey_server):
    with ThreadedServer(store=store(valkey_server.url)) as server:
        c = server.client()
        c.flushall()
        raw = valkey_server.client()
        sub = Wire(server.port)
        sub.call("SUBSCRIBE", "valq:q")
        sub.call("SUBSCRIBE", "valq:d")
        c.execute_command("VALQ", "CREATE", "q", "VISIBILITY", "5")
        c.execute_command("VALQ", "CREATE", "d", "MAXATTEMPTS", "1", "RETENTION", "60")
        c.execute_command("VALQ", "PUSH", "q", "leased")
        c.execute_command("VALQ", "POP", "q")
        c.execute_command("VALQ", "PUSH", "q", "later", "8")
        c.execute_command("VALQ", "PUSH", "d", "doomed")
        c.execute_command("VALQ", "POP", "d")
        c.execute_command("VALQ", "NACK", "d", "1")
        for event in (b"pushed 1", b"delivered 1", b"pushed 2"):
            assert sub.reply() == [b"message", b"valq:q", event]
        for event in (b"pushed 1", b"delivered 1", b"nacked 1", b"dead 1"):
            assert sub.reply() == [b"message", b"valq:d", event]
        assert raw.llen(wake_key(b"q")) == 0  # nothing ready: the lease runs, 2 waits
        server.advance(5)  # the lease runs out: nobody calls q
        assert sub.reply() == [b"message", b"valq:q", b"expired 1"]
        wait_until(lambda: raw.llen(wake_key(b"q")) == 1, what="message 1 ready again")
        c.execute_command("VALQ", "POP", "q")  # 1 again, so that only 2 can ready q
        assert sub.reply() == [b"message", b"valq:q", b"delivered 1"]
        wait_until(lambda: raw.llen(wake_key(b"q")) == 0, what="nothing ready")
        server.advance(3)  # message 2 falls due: no event, but q has a ready message
        wait_until(lambda: raw.llen(wake_key(b"q")) == 1, what="the delayed message ready")
        server.advance(52)  # d's DLQ retention ends (and q's lease of 1 runs out again)
        assert sub.reply() == [b"message", b"valq:q", b"expired 1"]
        assert sub.reply() == [b"message", b"valq:d", b"dropped 1"]
        assert raw.hlen(queue_key(b"d")) == 1  # the header alone: the message is gone
        stats = reaper(server).stats  # (its reply may come after the events it published)
        wait_until(lambda: stats.events >= 4 and stats.calls >= 3, what="the reaper's count")
        assert stats.leading == 1
        raw.close()
        c.close()
        sub.sock.close()


def test_two_front_ends_do_not_both_reap_and_a_storm_is_spread_over_calls(valkey_server):
    clock = ManualClock()
    servers = [ThreadedServer(clock, store=store(valkey_server.url)) for _ in range(2)]
    running = []
    try:
        for server in servers:
            running.append(server.__enter__())
        one, two = servers
        c = one.client()
        c.flushall()
        c.execute_command("VALQ", "CREATE", "storm", "VISIBILITY", "1")
        c.execute_command("VALQ", "MPUSH", "storm", *["m"] * 500)
        assert len(c.execute_command("VALQ", "POP", "storm", "COUNT", "500")) == 500
        wait_until(lambda: reaper(one).stats.leading + reaper(two).stats.leading == 1,
                   what="one front end reaps")
        leader, other = (one, two) if reaper(one).stats.leading else (two, one)
        raw = valkey_server.client()
        clock.advance(1)  # 500 leases run out at once
        wait_until(lambda: raw.llen(wake_key(b"storm")) == 1, what="the storm reaped")
        wait_until(lambda: reaper(leader).stats.events == 500, what="all 500 by the leader")
        assert reaper(leader).stats.calls >= 3  # at most REAP_BUDGET (200) per call
        assert reaper(other).stats.calls == 0 and reaper(other).stats.events == 0
        assert raw.get(b"valq:reaper:{" + slot_tag(0) + b"}") == reaper(leader).owner
        c.execute_command("VALQ", "DELETE", "storm")
        raw.close()
        c.close()
        # the leader stops: it hands the lock over, and the other takes over at once
        running.remove(leader)
        leader.__exit__(None, None, None)
        wait_until(lambda: reaper(other).stats.leading == 1, timeout=LOCK_MS / 1000 / 2,
                   what="the other front end reaps")
    finally:
        for server in running:
            server.__exit__(None, None, None)


def test_another_front_end_takes_over_when_the_reaping_one_dies(tmp_path):
    """A killed front end leaves its lock behind: it runs out after LOCK_MS."""
    valkey_ = ValkeyServerProcess(tmp_path / "v", True).start()
    first = ValqdProcess(tmp_path / "first", "--store", valkey_.url).start()
    try:
        raw = valkey_.client()
        lock = b"valq:reaper:{" + slot_tag(0) + b"}"
        wait_until(lambda: b":%d:" % first.proc.pid in (raw.get(lock) or b""),
                   what="the first front end holds the lock")
        with ThreadedServer(store=store(valkey_.url, test_clock=False)) as second:
            rounds = reaper(second).rounds
            wait_until(lambda: reaper(second).rounds >= rounds + 3, what="rounds")
            assert reaper(second).stats.leading == 0
            first.kill()
            killed_at = time.monotonic()
            wait_until(lambda: reaper(second).stats.leading == 1,
                       what="the second front end took over")
            assert time.monotonic() - killed_at < LOCK_MS / 1000 + 1.5
            assert raw.get(lock) == reaper(second).owner
        raw.close()
    finally:
        first.kill()
        valkey_.stop()


def test_the_reaper_survives_the_store_going_away_and_a_failing_index(tmp_path):
    valkey_ = ValkeyServerProcess(tmp_path / "v", True).start()
    try:
        with ThreadedServer(store=store(valkey_.url)) as server:
            c = server.client()
            raw = valkey_.client()
            # a member that is not of its index: valq_reap refuses that index (logged)
            wrong = next(name for name in (b"a%d" % i for i in range(100))
                         if due_index_key(queue_key(name)) != index_key(0))
            raw.zadd(index_key(0), {wrong: 0})
            c.execute_command("VALQ", "CREATE", "q", "VISIBILITY", "1")
            c.execute_command("VALQ", "PUSH", "q", "x")
            c.execute_command("VALQ", "POP", "q")
            server.advance(1)
            wait_until(lambda: raw.llen(wake_key(b"q")) == 1, what="q reaped all the same")
            valkey_.stop()
            wait_until(lambda: reaper(server).stats.leading == 0, what="no longer reaping")
            valkey_.start()  # empty again
            c.execute_command("VALQ", "CREATE", "q", "VISIBILITY", "1")
            c.execute_command("VALQ", "PUSH", "q", "x")
            c.execute_command("VALQ", "POP", "q")
            server.advance(1)
            raw = valkey_.client()
            wait_until(lambda: raw.llen(wake_key(b"q")) == 1, what="reaping again")
            raw.close()
            c.close()
    finally:
        valkey_.stop()
