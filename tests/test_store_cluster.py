"""`valqd --store valkey+cluster://...` and `valkey+sentinel://...`: a front end serving
queues from every shard of a real 3-primary Valkey Cluster, transactions in one slot, and
failovers (SIGKILL of a primary the test started; its replica takes over) that clients of
the front end see only as a pause."""

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import valkey
from valkey.exceptions import ResponseError

from support import (CHILD_ENV, Background, Error, ThreadedServer, ValqdProcess, Wire,
                     connection_of, encode_command, pause_writes, stats, wait_until)
from valkey_deployments import ValkeyCluster, wait_settling
from valqd.store.url import parse_store_url
from valqd.store.valkey import VERSION, queue_key, wake_key
from valqd.store.valkey.slots import key_slot
from valqd.store.valkey.store import ValkeyStore

QUEUES = [f"job-{i}" for i in range(60)]


@pytest.fixture(scope="module")
def cluster_valqd(valkey_cluster, tmp_path_factory):
    server = ValqdProcess(tmp_path_factory.mktemp("valqd-cluster"), "--store",
                          f"valkey+cluster://{valkey_cluster.nodes[0].address}").start()
    yield server
    server.stop()


@pytest.fixture
def cc(cluster_valqd):
    c = cluster_valqd.client(protocol=3)
    c.flushall()
    yield c
    c.flushall()
    c.close()


def test_queues_on_every_shard_are_served(cc, valkey_cluster):
    for name in QUEUES:
        assert cc.execute_command("VALQ", "CREATE", name, 30) == b"created " + name.encode()
        assert cc.execute_command("VALQ", "PUSH", name, f"body of {name}") == b"1"
    owners = {valkey_cluster.owner(queue_key(name.encode())).port for name in QUEUES}
    assert len(owners) == 3
    for name in QUEUES:
        message = cc.execute_command("VALQ", "POP", name)
        assert message == {b"body": f"body of {name}".encode(), b"id": b"1"}
        assert cc.execute_command("VALQ", "ACK", name, 1) == b"ack 1"
    assert cc.execute_command("VALQ", "LIST") == sorted(n.encode() for n in QUEUES)
    assert cc.dbsize() == len(QUEUES)
    assert sorted(cc.keys("job-1*")) == sorted(n.encode() for n in QUEUES
                                               if n.startswith("job-1"))
    assert cc.exists(*QUEUES[:5], "nothing") == 5


def test_subscribers_get_the_events_of_queues_on_every_shard(cluster_valqd, cc,
                                                              valkey_cluster):
    """The relay subscribes to each queue's sharded channel on the primary of its slot."""
    names = []  # one queue per shard
    for name in QUEUES:
        if valkey_cluster.owner(queue_key(name.encode())).port not in \
                {valkey_cluster.owner(queue_key(n.encode())).port for n in names}:
            names.append(name)
    assert len(names) == 3
    sub = Wire(cluster_valqd.port)
    for count, name in enumerate(names, 1):
        assert sub.call("SUBSCRIBE", f"valq:{name}") == [b"subscribe", f"valq:{name}".encode(),
                                                          count]
    for name in names:
        cc.execute_command("VALQ", "CREATE", name)
        cc.execute_command("VALQ", "PUSH", name, "x")
        assert sub.reply() == [b"message", f"valq:{name}".encode(), b"pushed 1"]
    sub.sock.close()


def test_scan_walks_every_primary_once(cc):
    for name in QUEUES:
        cc.execute_command("VALQ", "CREATE", name)
    seen: list[bytes] = []
    cursor = 0
    while True:
        cursor, batch = cc.scan(cursor, count=7)
        seen += batch
        if cursor == 0:
            break
    assert sorted(seen) == sorted(n.encode() for n in QUEUES)
    assert cc.flushall()
    assert cc.dbsize() == 0


def test_a_transaction_in_one_slot_runs_and_across_slots_is_crossslot(cc):
    cc.execute_command("VALQ", "CREATE", "{tx}a")
    cc.execute_command("VALQ", "CREATE", "{tx}b")
    pipe = cc.pipeline(transaction=True)
    pipe.execute_command("VALQ", "PUSH", "{tx}a", "x")
    pipe.execute_command("VALQ", "PUSH", "{tx}a", "y")
    assert pipe.execute() == [b"1", b"2"]
    pipe = cc.pipeline(transaction=True)
    pipe.execute_command("VALQ", "PUSH", "{tx}a", "z")
    pipe.execute_command("VALQ", "PUSH", "other", "z")
    with pytest.raises(ResponseError, match="CROSSSLOT Keys in request don't hash"):
        pipe.execute()
    assert cc.execute_command("VALQ", "INFO", "{tx}a")[b"msgs"] == b"2"


def test_numbered_databases_are_the_clusters(cc, cluster_valqd):
    c = cluster_valqd.client(db=3)
    c.execute_command("VALQ", "CREATE", "in-three")
    assert c.execute_command("VALQ", "LIST") == [b"in-three"]
    assert cc.execute_command("VALQ", "LIST") == []
    c.flushall()
    c.close()


class Traffic(threading.Thread):
    """A client of the front end pushing, popping and acking in a loop on `queues`; notes
    the longest wait for one command and every error reply."""

    def __init__(self, port: int, queues: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = valkey.Valkey(port=port, socket_timeout=60)
        self.queues = queues
        self.stopping = threading.Event()
        self.longest = 0.0
        self.errors: list[str] = []
        self.rounds = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            for name in self.queues:
                started = time.monotonic()
                try:
                    self.client.execute_command("VALQ", "PUSH", name, "m")
                    popped = self.client.execute_command("VALQ", "POP", name)
                    if popped:
                        self.client.execute_command("VALQ", "ACK", name, popped[3])
                except ResponseError as exc:
                    self.errors.append(str(exc))
                self.longest = max(self.longest, time.monotonic() - started)
            self.rounds += 1

    def finish(self) -> None:
        self.stopping.set()
        self.join(60)
        self.client.close()


def assert_only_in_doubt(errors: list[str]) -> None:
    """What a failover may show a client of the front end: at most the write it had in
    flight to the primary that died answered -INDOUBT (it may have run: never sent twice);
    nothing else (reads and what was not yet sent go to the new primary)."""
    assert len(errors) <= 1 and all(e.startswith("INDOUBT ") for e in errors), errors


def through_a_failover(server: ValqdProcess, queues: list[str],
                       failover: Callable[[], None]) -> Traffic:
    """Traffic on `queues` (created first) through the front end `server` before, during
    and after `failover()` (which returns once the deployment has a new primary), then
    flushed; the finished Traffic, once the front end's log was checked for tracebacks."""
    setup = server.client()
    for name in queues:
        setup.execute_command("VALQ", "CREATE", name)
    traffic = Traffic(server.port, queues)
    traffic.start()
    try:
        wait_until(lambda: traffic.rounds >= 3, 10, "traffic")
        failover()
        rounds = traffic.rounds
        wait_until(lambda: traffic.rounds >= rounds + 3, 40, "traffic after the failover")
    finally:
        traffic.finish()
        setup.flushall()
        setup.close()
        server.stop()
    assert "Traceback" not in server.log()
    return traffic


def test_a_primary_killed_is_a_pause_for_the_front_ends_clients(valkey_cluster, tmp_path):
    """SIGKILL of a primary: its replica takes over after the node timeout (3 s); the front
    end's clients wait meanwhile (store-timeout 20 s) and see no error."""
    server = ValqdProcess(tmp_path / "valqd", "--store",
                          f"valkey+cluster://{valkey_cluster.seeds()}",
                          "--store-timeout", "20000").start()
    victim = valkey_cluster.owner(queue_key(QUEUES[0].encode()))
    replica = valkey_cluster.replica_of(victim)

    def failover() -> None:
        victim.kill()
        wait_settling(lambda: replica.info("replication")["role"] == "master", 30,
                   "the replica to take over")

    try:
        traffic = through_a_failover(server, QUEUES[:9], failover)
    finally:
        victim.restart()  # it comes back as the new primary's replica
        valkey_cluster.wait_healthy(60)
    assert_only_in_doubt(traffic.errors)
    assert traffic.longest < 20, traffic.longest
    print(f"failover seen by a client: longest command {traffic.longest:.2f} s")


# -- Sentinel ---------------------------------------------------------------------------------

def sentinel_valqd(sentinels, directory) -> ValqdProcess:
    return ValqdProcess(directory, "--store", f"valkey+sentinel://{sentinels.seeds()}/valq",
                        "--store-timeout", "30000").start()


def settled(sentinels) -> None:
    """Until the sentinels know everything and the replica is in sync with the primary
    again (an earlier failover's old primary comes back as a replica)."""
    sentinels.wait_ready(60)
    primary = sentinels.current_primary()

    def in_sync() -> bool:
        replicas = [s for s in sentinels.servers if s.running and s.port != primary.port]
        return bool(replicas) and all(
            r.info("replication").get("master_link_status") == "up" for r in replicas)

    wait_settling(in_sync, 60, "the replica in sync")


def test_a_front_end_follows_sentinel_to_the_new_primary(valkey_sentinels, tmp_path):
    old = valkey_sentinels.current_primary()

    def failover() -> None:
        old.kill()
        wait_until(lambda: valkey_sentinels.primary_port() != old.port, 40,
                   "the sentinels to promote the replica")

    try:
        traffic = through_a_failover(sentinel_valqd(valkey_sentinels, tmp_path), ["q"],
                                     failover)
    finally:
        old.restart()  # the sentinels turn it into the new primary's replica
        valkey_sentinels.wait_ready(60)
    assert_only_in_doubt(traffic.errors)
    assert traffic.longest < 30, traffic.longest


def subscribed_to_a_new_queue(port: int, c: valkey.Valkey, name: str) -> Wire:
    """A subscriber of queue `name`'s events (created and pushed to through `c`), once it
    heard the push."""
    sub = Wire(port)
    assert sub.call("SUBSCRIBE", f"valq:{name}") == [b"subscribe", f"valq:{name}".encode(), 1]
    c.execute_command("VALQ", "CREATE", name)
    c.execute_command("VALQ", "PUSH", name, "x")
    assert sub.reply() == [b"message", f"valq:{name}".encode(), b"pushed 1"]
    return sub


def test_subscribers_behind_sentinel_get_the_primarys_events(valkey_sentinels, tmp_path):
    """The relay subscribes on the primary the sentinels name, not on a sentinel."""
    settled(valkey_sentinels)
    server = sentinel_valqd(valkey_sentinels, tmp_path)
    try:
        c = server.client()
        sub = subscribed_to_a_new_queue(server.port, c, "events-q")
        c.execute_command("VALQ", "DELETE", "events-q")
        c.close()
        sub.sock.close()
    finally:
        server.stop()


def test_events_follow_sentinel_to_the_new_primary(valkey_sentinels):
    """A primary killed: the relay subscribes on the one the sentinels promote (at its next
    refresh), so a subscriber keeps getting the queue's events; those of the switch's
    seconds may be lost, as pub/sub's are."""
    settled(valkey_sentinels)
    old = valkey_sentinels.current_primary()
    store = ValkeyStore(parse_store_url(f"valkey+sentinel://{valkey_sentinels.seeds()}/valq"),
                        timeout_s=30)
    store.relay_refresh_s = 0.2
    try:
        with ThreadedServer(store=store) as front_end:
            c = front_end.client()
            sub = subscribed_to_a_new_queue(front_end.port, c, "moving")
            old.kill()
            wait_until(lambda: valkey_sentinels.primary_port() != old.port, 40,
                       "the sentinels to promote the replica")
            pushed = []

            def pushed_and_heard() -> bool:
                try:
                    pushed.append(c.execute_command("VALQ", "PUSH", "moving", "after"))
                    event = sub.reply(timeout=1)
                except (valkey.ValkeyError, OSError):
                    return False
                return event[:2] == [b"message", b"valq:moving"]

            wait_until(pushed_and_heard, 30, "an event from the new primary")
            c.execute_command("VALQ", "DELETE", "moving")
            c.close()
            sub.sock.close()
    finally:
        old.restart()  # the sentinels turn it into the new primary's replica
        valkey_sentinels.wait_ready(60)


def test_a_primary_switched_by_sentinel_is_followed(valkey_sentinels, tmp_path):
    """SENTINEL FAILOVER: the old primary turns replica with its connections open, so the
    front end's calls there are refused with READONLY; they are sent to the new primary."""
    settled(valkey_sentinels)
    old = valkey_sentinels.primary_port()

    def failover() -> None:
        sentinel = valkey_sentinels.sentinels[0]
        assert sentinel.call("SENTINEL", "FAILOVER", valkey_sentinels.MASTER_NAME) == b"OK"
        wait_until(lambda: valkey_sentinels.primary_port() != old, 40, "the switch")

    traffic = through_a_failover(sentinel_valqd(valkey_sentinels, tmp_path), ["q"], failover)
    assert_only_in_doubt(traffic.errors)


# -- waiting for replicas -----------------------------------------------------------------------

def test_with_store_wait_replicas_no_acknowledged_push_is_lost_in_a_failover(valkey_cluster,
                                                                            tmp_path):
    """store-wait-replicas 1: a PUSH is answered once the primary's replica has it, so a
    primary killed right after loses none of the pushes its clients saw acknowledged."""
    server = ValqdProcess(tmp_path / "valqd", "--store",
                          f"valkey+cluster://{valkey_cluster.seeds()}",
                          "--store-timeout", "20000", "--store-wait-replicas", "1").start()
    c = server.client()
    names = ["w-a", "w-b", "w-c"]
    victim = valkey_cluster.owner(queue_key(names[0].encode()))
    replica = valkey_cluster.replica_of(victim)
    for name in names:
        c.execute_command("VALQ", "CREATE", name)
    acknowledged: list[tuple[str, bytes]] = []
    refused: list[str] = []
    stop = threading.Event()

    def push() -> None:
        pusher = server.client()
        pusher.connection_pool.connection_kwargs["socket_timeout"] = 60
        i = 0
        while not stop.is_set():
            name = names[i % len(names)]
            i += 1
            try:
                acknowledged.append((name, pusher.execute_command("VALQ", "PUSH", name,
                                                                  f"m{i}")))
            except ResponseError as exc:  # not acknowledged: may or may not be there
                refused.append(str(exc))
        pusher.close()

    thread = threading.Thread(target=push, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(acknowledged) >= 50, 20, "pushes")
        victim.kill()
        wait_settling(lambda: replica.info("replication")["role"] == "master", 30,
                   "the replica to take over")
        victim.restart()  # the new primary's replica: pushes are acknowledged again
        valkey_cluster.wait_healthy(60)
        count = len(acknowledged)
        wait_until(lambda: len(acknowledged) >= count + 30, 30, "pushes after the failover")
    finally:
        stop.set()
        thread.join(60)
    try:
        for name, message_id in acknowledged:
            assert c.execute_command("VALQ", "GET", name, message_id)[-1] == b"ready", \
                (name, message_id)
        assert all(r.startswith(("TRYAGAIN", "NOREPLICAS", "INDOUBT")) for r in refused), \
            refused
    finally:
        c.flushall()
        c.close()
        server.stop()
    assert "Traceback" not in server.log()


def test_too_few_replicas_within_the_timeout_is_noreplicas(valkey_cluster, tmp_path):
    server = ValqdProcess(tmp_path / "valqd", "--store",
                          f"valkey+cluster://{valkey_cluster.seeds()}",
                          "--store-wait-replicas", "2", "--store-wait-timeout", "300").start()
    c = server.client()
    try:
        with pytest.raises(ResponseError, match=r"^NOREPLICAS the change was applied, but 1 "
                                                r"of the 2 replicas store-wait-replicas asks "
                                                r"for acknowledged it within 300 ms"):
            c.execute_command("VALQ", "CREATE", "lonely")
        assert c.execute_command("VALQ", "LIST") == [b"lonely"]  # made, not confirmed
        key = queue_key(b"lonely")
        assert valkey_cluster.owner(key).call("FCALL", "valq_delete", 1, key) == \
            b"deleted lonely"
    finally:
        c.close()
        server.stop()


def test_a_shard_gone_for_good_is_a_clear_tryagain_after_the_timeout(tmp_path):
    """A primary without a replica dies: its queues' commands are retried for store-timeout,
    then answered -TRYAGAIN naming the trouble; the other shards' queues keep working until
    the cluster declares itself down."""
    cluster = ValkeyCluster(tmp_path / "cluster", replicas=0, node_timeout_ms=60000).start()
    try:
        server = ValqdProcess(tmp_path / "valqd", "--store",
                              f"valkey+cluster://{cluster.seeds()}",
                              "--store-timeout", "1000").start()
        c = server.client()
        names = [f"gone-{i}" for i in range(12)]
        for name in names:
            c.execute_command("VALQ", "CREATE", name)
        victim = cluster.owner(queue_key(names[0].encode()))
        victim.kill()
        started = time.monotonic()
        with pytest.raises(ResponseError, match=r"^TRYAGAIN the store at .* did not serve the "
                                                r"command within 1 s \(.*\)"):
            c.execute_command("VALQ", "PUSH", names[0], "x")
        assert 0.9 < time.monotonic() - started < 5
        served = [n for n in names if cluster.owner(queue_key(n.encode())).port != victim.port]
        assert served and c.execute_command("VALQ", "PUSH", served[0], "x") == b"1"
        with pytest.raises(ResponseError, match=r"^TRYAGAIN"):
            c.execute_command("VALQ", "LIST")  # a command for every primary
        c.close()
        server.stop()
        assert "Traceback" not in server.log()
    finally:
        cluster.stop()


def test_load_functions_loads_the_library_on_every_primary(valkey_cluster):
    for primary in valkey_cluster.primaries():
        primary.call("FUNCTION", "FLUSH")
    done = subprocess.run([sys.executable, "-m", "valqd", "load-functions",
                           f"valkey+cluster://{valkey_cluster.nodes[0].address}"],
                          capture_output=True, text=True, env=CHILD_ENV, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"valq library version {VERSION} loaded" in done.stdout
    for primary in valkey_cluster.primaries():
        assert primary.call("FCALL", "valq_version", 0) == VERSION


# -- blocking pops on a cluster and behind Sentinel -----------------------------------------------

def marker_waits_on(node, name: str) -> bool:
    """Whether a front end's watcher is in a BLPOP of the queue's wake marker on `node`."""
    return any("name=valqd-wait-db0" in line and "cmd=blpop" in line
               for line in node.call("CLIENT", "LIST").decode().splitlines())


def cluster_front_end(cluster, **options) -> ThreadedServer:
    url = parse_store_url(f"valkey+cluster://{cluster.seeds()}")
    return ThreadedServer(store=ValkeyStore(url, **options))


@pytest.fixture(scope="module")
def front_end(valkey_cluster):
    with cluster_front_end(valkey_cluster) as server:
        yield server


@pytest.fixture
def fc(front_end):
    c = front_end.client()
    c.flushall()
    yield c
    c.flushall()
    c.close()


def blocked_pop(port: int, name: str, check) -> Background:
    waiting = Background(port, 2, "VALQ", "POP", name, "BLOCK", "20000")
    wait_until(lambda: stats(check, name)["blocked"] == 1, what="the pop blocked")
    return waiting


def test_the_store_names_a_connection_per_primary_and_per_key(front_end, valkey_cluster):
    """What other parts of a front end build on (the event relay, the reaper): the
    pipelined connection of every primary, and of the primary of one key's slot."""
    store = front_end.server.store

    async def addresses() -> tuple[list, tuple]:
        clients = store.primary_clients(0)
        await asyncio.gather(*(client.call("PING") for client in clients))
        return [c.address for c in clients], store.key_client(0, queue_key(b"q")).address

    primaries, of_q = asyncio.run_coroutine_threadsafe(addresses(), front_end.loop).result(10)
    assert primaries == [("127.0.0.1", p.port) for p in valkey_cluster.primaries()]
    assert of_q == ("127.0.0.1", valkey_cluster.owner(queue_key(b"q")).port)


def test_a_pop_blocked_on_a_cluster_waits_on_its_queues_primary(valkey_cluster):
    """The watcher BLPOPs the wake marker on the primary of the queue's slot, and a push
    through another front end wakes it."""
    with cluster_front_end(valkey_cluster) as one, cluster_front_end(valkey_cluster) as two:
        a, b = one.client(), two.client()
        for name in QUEUES[:6]:  # queues on every shard
            a.execute_command("VALQ", "CREATE", name)
        for name in QUEUES[:6]:
            waiting = blocked_pop(one.port, name, a)
            owner = valkey_cluster.owner(queue_key(name.encode()))
            wait_until(lambda: marker_waits_on(owner, name), what="BLPOP on the owner")
            assert b.execute_command("VALQ", "PUSH", name, f"to {name}") == b"1"
            assert waiting.get() == [b"body", f"to {name}".encode(), b"id", b"1"]
        a.flushall()
        a.close()
        b.close()


def test_a_marker_follows_its_slot_to_another_primary(valkey_cluster):
    """Resharding the queue's slot while a pop waits: Valkey answers the watcher's BLPOP
    with MOVED, and the watcher waits on the new owner, where a push wakes it."""
    name = "resharded"
    key = queue_key(name.encode())
    slot = key_slot(key)
    source = valkey_cluster.owner(key)
    target = next(p for p in valkey_cluster.primaries() if p.port != source.port)
    with cluster_front_end(valkey_cluster) as one, cluster_front_end(valkey_cluster) as two:
        a, b = one.client(), two.client()
        a.execute_command("VALQ", "CREATE", name)
        try:
            waiting = blocked_pop(one.port, name, a)
            wait_until(lambda: marker_waits_on(source, name), what="BLPOP on the owner")
            valkey_cluster.move_slot(slot, target)
            wait_until(lambda: marker_waits_on(target, name), what="BLPOP on the new owner")
            assert b.execute_command("VALQ", "PUSH", name, "moved") == b"1"
            assert waiting.get()[1] == b"moved"
        finally:
            valkey_cluster.move_slot(slot, source)
            valkey_cluster.wait_healthy(60)
        a.flushall()
        a.close()
        b.close()


def test_a_blocked_pop_outlives_a_failover(valkey_cluster):
    """SIGKILL of the queue's primary while a pop waits: the watcher's BLPOP loses its
    connection, and once the replica took over the watcher waits there; a push through
    another front end then reaches the blocked client."""
    name = QUEUES[1]
    victim = valkey_cluster.owner(queue_key(name.encode()))
    replica = valkey_cluster.replica_of(victim)
    with cluster_front_end(valkey_cluster, timeout_s=20.0) as one, \
            cluster_front_end(valkey_cluster, timeout_s=20.0) as two:
        a, b = one.client(), two.client()
        a.execute_command("VALQ", "CREATE", name)
        try:
            waiting = blocked_pop(one.port, name, a)
            wait_until(lambda: marker_waits_on(victim, name), what="BLPOP on the primary")
            victim.kill()
            wait_settling(lambda: replica.info("replication")["role"] == "master", 30,
                       "the replica to take over")
            wait_settling(lambda: waiting.done() or marker_waits_on(replica, name), 30,
                       "BLPOP on the new primary")
            if waiting.done():  # its pop was on its way to the primary when it died
                with pytest.raises(ResponseError, match="^INDOUBT "):
                    waiting.get()
                waiting = blocked_pop(one.port, name, a)
                wait_settling(lambda: marker_waits_on(replica, name), 30, "BLPOP there")
            assert b.execute_command("VALQ", "PUSH", name, "after") == b"1"
            assert waiting.get(30)[1] == b"after"
        finally:
            victim.restart()
            valkey_cluster.wait_healthy(60)
        a.flushall()
        a.close()
        b.close()


def test_a_blocked_pop_follows_sentinels_switch(valkey_sentinels):
    """SENTINEL FAILOVER while a pop waits: the old primary turns replica and unblocks the
    watcher's BLPOP (-UNBLOCKED); the watcher waits on the new primary, where a push
    through another front end wakes it."""
    settled(valkey_sentinels)
    url = parse_store_url(f"valkey+sentinel://{valkey_sentinels.seeds()}/valq")
    old = valkey_sentinels.current_primary()
    with ThreadedServer(store=ValkeyStore(url, timeout_s=30.0)) as one, \
            ThreadedServer(store=ValkeyStore(url, timeout_s=30.0)) as two:
        a, b = one.client(), two.client()
        a.flushall()
        a.execute_command("VALQ", "CREATE", "q")
        assert old.call("WAIT", 1, 5000) == 1  # the replica that takes over has the queue
        waiting = blocked_pop(one.port, "q", a)
        wait_settling(lambda: marker_waits_on(old, "q"), what="BLPOP on the primary")
        assert valkey_sentinels.sentinels[0].call(
            "SENTINEL", "FAILOVER", valkey_sentinels.MASTER_NAME) == b"OK"
        wait_until(lambda: valkey_sentinels.primary_port() != old.port, 40, "the switch")
        new = valkey_sentinels.current_primary()
        wait_settling(lambda: waiting.done() or marker_waits_on(new, "q"), 30,
                   "BLPOP on the new primary")
        if waiting.done():  # its pop was on its way when the sentinels cut the connections
            with pytest.raises(ResponseError, match="^INDOUBT "):
                waiting.get()
            waiting = blocked_pop(one.port, "q", a)
            wait_settling(lambda: marker_waits_on(new, "q"), 30, "BLPOP there")
        assert b.execute_command("VALQ", "PUSH", "q", "switched") == b"1"
        assert waiting.get(30)[1] == b"switched"
        b.flushall()
        a.close()
        b.close()


# -- store-wait-replicas: one WAIT per primary that got writes ------------------------------------

def on_replica(cluster, key: bytes, *command):
    """`command` on the replica of `key`'s primary (READONLY: a replica serves reads)."""
    wire = Wire(cluster.replica_of(cluster.owner(key)).port)
    try:
        assert wire.call("READONLY") == b"OK"
        return wire.call(*command)
    finally:
        wire.close()


def test_a_turns_writes_wait_for_the_replicas_of_each_primary_they_went_to(valkey_cluster):
    """A pipeline of pushes to queues on three shards: each primary gets WAITs behind its
    writes (fewer than the writes: one a turn), and every replica has every message its
    primary acknowledged once the replies came."""
    names = QUEUES[:12]
    primaries = valkey_cluster.primaries()

    def waits() -> list[int]:
        return [int(p.info("commandstats").get("cmdstat_wait", "calls=0").split(",")[0]
                    .split("=")[1]) for p in primaries]

    with cluster_front_end(valkey_cluster, wait_replicas=1, wait_timeout_ms=5000) as server:
        c = server.client()
        for name in names:
            c.execute_command("VALQ", "CREATE", name)
        before = waits()
        pipe = c.pipeline(transaction=False)
        for round_ in range(5):
            for name in names:
                pipe.execute_command("VALQ", "PUSH", name, f"m{round_}")
        assert pipe.execute() == [b"%d" % (r + 1) for r in range(5) for _ in names]
        sent = [after - first for after, first in zip(waits(), before)]
        assert all(1 <= n < 5 * len(names) // 3 for n in sent), sent
        for name in names:  # acknowledged means on the replica
            key = queue_key(name.encode())
            assert on_replica(valkey_cluster, key, "HLEN", key) == 1 + 5
        c.flushall()
        c.close()


# -- MPOP and REDRIVE ... TO across slots ------------------------------------------------------------

def fcalls(node) -> int:
    """How many FCALLs `node` has run."""
    stat = node.info("commandstats").get("cmdstat_fcall", "calls=0")
    return int(stat.split(",")[0].split("=")[1])


def other_slot(name: str) -> str:
    """A queue name whose slot is not `name`'s."""
    slot = key_slot(queue_key(name.encode()))
    return next(f"other-{i}" for i in range(100)
                if key_slot(queue_key(f"other-{i}".encode())) != slot)


def test_mpop_over_queues_of_one_slot_is_one_call(fc, valkey_cluster):
    for name in ("{t}a", "{t}b"):
        fc.execute_command("VALQ", "CREATE", name)
    fc.execute_command("VALQ", "PUSH", "{t}b", "x")
    owner = valkey_cluster.owner(queue_key(b"{t}a"))
    before = fcalls(owner)
    assert fc.execute_command("VALQ", "MPOP", 2, "{t}a", "{t}b") == [
        b"{t}b", [[b"body", b"x", b"id", b"1"]]]
    assert fcalls(owner) == before + 1


def test_mpop_across_slots_takes_from_the_first_queue_left_to_right(fc):
    """Queues {x}1, y, {x}2: three runs ({x}1 and {x}2 share a slot, y is between them);
    y comes first although {x}2 shares a call's slot with {x}1."""
    y = other_slot("{x}1")
    for name in ("{x}1", y, "{x}2"):
        fc.execute_command("VALQ", "CREATE", name)
    fc.execute_command("VALQ", "PUSH", "{x}2", "later")
    fc.execute_command("VALQ", "PUSH", y, "first")
    assert fc.execute_command("VALQ", "MPOP", 3, "{x}1", y, "{x}2", "COUNT", 5) == [
        y.encode(), [[b"body", b"first", b"id", b"1"]]]
    assert fc.execute_command("VALQ", "MPOP", 3, "{x}1", y, "{x}2")[0] == b"{x}2"
    assert fc.execute_command("VALQ", "MPOP", 3, "{x}1", y, "{x}2") is None


def test_mpop_across_slots_checks_every_queue_before_it_pops(fc):
    missing = other_slot("here")
    fc.execute_command("VALQ", "CREATE", "here")
    fc.execute_command("VALQ", "PUSH", "here", "x")
    with pytest.raises(ResponseError, match=f"^NOQUEUE no such queue '{missing}'"):
        fc.execute_command("VALQ", "MPOP", 2, "here", missing)
    assert stats(fc, "here")["ready"] == 1


def test_mpop_across_slots_in_a_transaction_is_crossslot(fc):
    y = other_slot("{x}1")
    for name in ("{x}1", "{x}2", y):
        fc.execute_command("VALQ", "CREATE", name)
    fc.execute_command("VALQ", "PUSH", "{x}2", "m")
    pipe = fc.pipeline(transaction=True)
    pipe.execute_command("VALQ", "MPOP", 2, "{x}1", "{x}2")
    pipe.execute_command("VALQ", "MPOP", 2, "{x}1", y)
    first, second = pipe.execute(raise_on_error=False)
    assert first == [b"{x}2", [[b"body", b"m", b"id", b"1"]]]
    assert str(second) == "CROSSSLOT Keys in request don't hash to the same slot"


def test_a_blocked_mpop_across_slots_is_woken_by_a_push_on_another_front_end(
        fc, front_end, valkey_cluster):
    y = other_slot("first")
    for name in ("first", y):
        fc.execute_command("VALQ", "CREATE", name)
    waiting = Background(front_end.port, 2, "VALQ", "MPOP", 2, "first", y, "BLOCK", 20000)
    wait_until(lambda: stats(fc, y)["blocked"] == 1 and stats(fc, "first")["blocked"] == 1,
               what="the MPOP blocked on both queues")
    with cluster_front_end(valkey_cluster) as other:
        c = other.client()
        assert c.execute_command("VALQ", "PUSH", y, "woken") == b"1"
        c.close()
    assert waiting.get() == [y.encode(), [[b"body", b"woken", b"id", b"1"]]]


def dead_lettered(c, name: str, bodies: list[str]) -> None:
    """`bodies` in the DLQ of a new queue `name` (one delivery attempt, then NACK)."""
    c.execute_command("VALQ", "CREATE", name, 30, 1)
    for body in bodies:
        c.execute_command("VALQ", "PUSH", name, body)
    for _ in bodies:
        message = c.execute_command("VALQ", "POP", name)
        c.execute_command("VALQ", "NACK", name, message[3])
    assert stats(c, name)["dlq"] == len(bodies)


def test_redrive_to_a_queue_in_another_slot(fc):
    target = other_slot("source")
    dead_lettered(fc, "source", ["a", "b", "c"])
    fc.execute_command("VALQ", "CREATE", target)
    assert fc.execute_command("VALQ", "REDRIVE", "source", "COUNT", 2, "TO", target) == 2
    assert stats(fc, "source")["dlq"] == 1 and stats(fc, target)["ready"] == 2
    assert [fc.execute_command("VALQ", "POP", target)[1] for _ in range(2)] == [b"a", b"b"]
    assert fc.execute_command("VALQ", "REDRIVE", "source", "TO", target) == 1
    assert fc.execute_command("VALQ", "REDRIVE", "source", "TO", target) == 0


@pytest.mark.parametrize("setup, error", [
    (lambda c, t: None, "NOQUEUE no such queue '{t}'"),
    (lambda c, t: (c.execute_command("VALQ", "CREATE", t, "MAXLEN", 1),
                   c.execute_command("VALQ", "PUSH", t, "full")),
     "QUEUEFULL queue '{t}' is full (maxlen 1)"),
])
def test_redrive_to_another_slot_that_cannot_take_them_moves_nothing(fc, setup, error):
    target = other_slot("source")
    dead_lettered(fc, "source", ["a", "b"])
    setup(fc, target)
    with pytest.raises(ResponseError) as refused:
        fc.execute_command("VALQ", "REDRIVE", "source", "TO", target)
    assert str(refused.value) == error.format(t=target)
    assert stats(fc, "source")["dlq"] == 2


def test_redrive_to_another_slot_in_a_transaction_is_crossslot(fc):
    target = other_slot("source")
    dead_lettered(fc, "source", ["a"])
    fc.execute_command("VALQ", "CREATE", target)
    pipe = fc.pipeline(transaction=True)
    pipe.execute_command("VALQ", "REDRIVE", "source", "TO", target)
    (reply,) = pipe.execute(raise_on_error=False)
    assert str(reply) == "CROSSSLOT Keys in request don't hash to the same slot"
    assert stats(fc, "source")["dlq"] == 1


def test_redrive_across_slots_waits_for_both_primaries_replicas(valkey_cluster):
    target = other_slot("source")
    with cluster_front_end(valkey_cluster, wait_replicas=1, wait_timeout_ms=5000) as server:
        c = server.client()
        dead_lettered(c, "source", ["a", "b"])
        c.execute_command("VALQ", "CREATE", target)
        assert c.execute_command("VALQ", "REDRIVE", "source", "TO", target) == 2
        for name, fields in ((target, 1 + 2), ("source", 1)):  # header and messages
            key = queue_key(name.encode())
            assert on_replica(valkey_cluster, key, "HLEN", key) == fields
        c.flushall()
        c.close()


# -- a command in flight when a primary's connection breaks -----------------------------------------

def test_a_write_in_flight_is_indoubt_and_a_read_is_routed_again(fc, front_end,
                                                                 valkey_cluster):
    """The queue's primary holds a PUSH and the INFO behind it (CLIENT PAUSE WRITE) when
    the front end's connection to it breaks: the PUSH, which may have run, is answered
    -INDOUBT and never sent again; the INFO goes again through the router once the
    primary is reachable."""
    fc.execute_command("VALQ", "CREATE", "q")
    owner = valkey_cluster.owner(queue_key(b"q"))
    try:
        arrived = pause_writes(owner.call, os.getpid())  # (the front end is a thread here)
        push, info = Wire(front_end.port), Wire(front_end.port)
        push.send(encode_command(("VALQ", "PUSH", "q", "once")))
        arrived("the push held")
        info.send(encode_command(("VALQ", "INFO", "q")))
        arrived("the read behind it")
        held = connection_of(owner.call("CLIENT", "LIST"), os.getpid(), "valqd-db0")
        owner.call("CLIENT", "KILL", "ID", held["id"])
        reply = push.reply()
        assert isinstance(reply, Error) and str(reply).startswith("INDOUBT "), reply
    finally:
        owner.call("CLIENT", "UNPAUSE")
    assert dict(zip(*[iter(info.reply())] * 2))[b"msgs"] == b"0"
    assert stats(fc, "q")["pushed"] == 0  # killed before it ran, and not sent again
    push.close()
    info.close()


def test_what_asks_every_primary_is_refused_inside_a_transaction(fc, front_end):
    """KEYS and SCAN ask every primary, which no transaction of one slot can hold: refused
    while MULTI queues (EXEC aborts); VALQ LIST is refused inside EXEC, EXISTS over
    several slots is CROSSSLOT there."""
    other = other_slot("q")
    for name in ("q", other):
        fc.execute_command("VALQ", "CREATE", name)
    wire = Wire(front_end.port)
    try:
        for command in (("KEYS", "*"), ("SCAN", 0)):
            assert wire.call("MULTI") == b"OK"
            assert wire.call(*command) == \
                f"ERR Command '{command[0].lower()}' not allowed inside a transaction"
            assert wire.call("EXEC") == \
                "EXECABORT Transaction discarded because of previous errors."
        assert wire.call("MULTI") == b"OK"
        assert wire.call("VALQ", "LIST") == b"QUEUED"
        assert wire.call("EXISTS", "q", other) == b"QUEUED"
        assert wire.call("VALQ", "PUSH", "q", "x") == b"QUEUED"
        listed, exists, pushed = wire.call("EXEC")
        assert str(listed) == ("ERR VALQ LIST asks every primary of a cluster: it cannot run "
                               "inside MULTI")
        assert str(exists) == "CROSSSLOT Keys in request don't hash to the same slot"
        assert pushed == b"1"
    finally:
        wire.close()


def test_the_reaper_reaps_every_primary_of_a_cluster(valkey_cluster):
    """Leases that run out on queues of every shard, with no client calling them: the
    reaper of a front end (this one, or another of the module leading on a primary), on
    each primary for the slots it owns, makes them ready again (each queue's wake marker,
    on its own primary, says so)."""
    url = parse_store_url(f"valkey+cluster://{valkey_cluster.seeds()}")
    made = ValkeyStore(url)  # the library's clock (other front ends of the module may reap)
    made.reaper_round_s = 0.05
    made.relay_refresh_s = 3600
    names = QUEUES[:6]
    with ThreadedServer(store=made) as server:
        c = server.client()
        for name in names:
            c.execute_command("VALQ", "CREATE", name, "VISIBILITY", "1")
            c.execute_command("VALQ", "PUSH", name, "leased")
            c.execute_command("VALQ", "POP", name)
        owners = {name: valkey_cluster.owner(queue_key(name.encode())) for name in names}
        assert len({node.port for node in owners.values()}) == 3
        # every lease runs out within a second: nobody calls the queues
        for name, node in owners.items():
            wait_until(lambda: node.call("LLEN", wake_key(name.encode())) == 1, 30,
                       f"{name} ready again")
        c.flushall()
        c.close()
