"""valqd front ends on a Valkey Cluster (`--store valkey+cluster://`): throughput with 1, 2
and 3 front ends when the queues live on one shard and on three, and the failover time a
client of a front end sees.

    python -m bench.store_cluster [--seconds 5] [--clients 6] [--pipeline 50]

The cluster is 3 primaries with a replica each, formed as the tests form it
(tests/valkey_deployments.py). Throughput: `--clients` client processes (spread over the
front ends) each run push+pop+ack cycles on a queue of their own, `--pipeline` commands per
write, for `--seconds`; reported as cycles per second; last, one front end that waits for
a replica of every write (store-wait-replicas 1). Every process (6 valkey-servers,
the front ends, the clients) shares this machine's cores: the figures say how the layers
scale on one machine, not what separate machines would give. Failover: a client runs one
cycle at a time on queues of every shard while the primary of one of them is SIGKILLed;
reported: the longest wait for one command and the time from the kill to the first cycle
done on that shard again.
"""

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from valqd.store.valkey import queue_key

from .clients import BODY, RespConn, resp
from .targets import ROOT, Valqd

sys.path.insert(0, str(ROOT / "tests"))  # the cluster the tests form, formed the same way
from valkey_deployments import ValkeyCluster  # noqa: E402


def cycles(port: int, queue: bytes, pipeline: int, seconds: float, counter) -> None:
    """push+pop+ack cycles on `queue` through the front end at `port` until time is up."""
    conn = RespConn(port)
    conn.call("VALQ", "CREATE", queue, "VISIBILITY", 300)
    push = resp("VALQ", "PUSH", queue, BODY) * pipeline
    pop = resp("VALQ", "POP", queue) * pipeline
    head = b"*4\r\n$4\r\nVALQ\r\n$3\r\nACK\r\n$%d\r\n%b\r\n" % (len(queue), queue)
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.send(push)
        conn.read(pipeline)
        conn.send(pop)
        ids = [m[3] for m in conn.read(pipeline) if m]
        conn.send(b"".join(head + b"$%d\r\n%b\r\n" % (len(i), i) for i in ids))
        conn.read(len(ids))
        done += len(ids)
    conn.call("VALQ", "DELETE", queue)
    conn.close()
    with counter.get_lock():
        counter.value += done


def queue_names(cluster: ValkeyCluster, shards: int, count: int) -> list[bytes]:
    """`count` queue names whose primaries are the first `shards` primaries, in turn."""
    primaries = [p.port for p in cluster.primaries()][:shards]
    names: list[bytes] = []
    wanted = 0
    i = 0
    while len(names) < count:
        name = b"bench-%d" % i
        i += 1
        if cluster.owner(queue_key(name)).port == primaries[wanted % shards]:
            names.append(name)
            wanted += 1
    return names


def throughput(front_ends: list[Valqd], names: list[bytes], pipeline: int,
               seconds: float) -> float:
    counter = multiprocessing.Value("q", 0)
    workers = [multiprocessing.Process(target=cycles, args=(
        front_ends[i % len(front_ends)].port, name, pipeline, seconds, counter))
        for i, name in enumerate(names)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return counter.value / seconds


def failover(cluster: ValkeyCluster, front_end: Valqd) -> dict:
    names = queue_names(cluster, 3, 3)
    conn = RespConn(front_end.port, timeout=120)
    for name in names:
        conn.call("VALQ", "CREATE", name)
    victim = cluster.owner(queue_key(names[0]))
    longest, killed_at, back_at = 0.0, 0.0, 0.0
    rounds = 0
    in_doubt: list[str] = []  # a write in flight to the killed primary: -INDOUBT
    while not back_at or rounds < 20:
        for name in names:
            started = time.monotonic()
            replies = [conn.call_lenient("VALQ", "PUSH", name, BODY)]
            message = conn.call_lenient("VALQ", "POP", name)
            replies.append(message)
            if isinstance(message, list):
                replies.append(conn.call_lenient("VALQ", "ACK", name, message[3]))
            in_doubt += [r for r in replies if isinstance(r, str)]
            now = time.monotonic()
            longest = max(longest, now - started)
            if killed_at and not back_at and name == names[0]:
                back_at = now
        rounds += 1
        if rounds == 20 and not killed_at:
            victim.kill()
            killed_at = time.monotonic()
    for name in names:
        conn.call("VALQ", "DELETE", name)
    conn.close()
    victim.restart()
    cluster.wait_healthy(60)
    return {"longest_command_s": longest, "kill_to_served_s": back_at - killed_at,
            "errors": in_doubt}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--pipeline", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="valq-bench-cluster-") as directory:
        cluster = ValkeyCluster(Path(directory)).start()
        front_ends: list[Valqd] = []
        try:
            url = f"valkey+cluster://{cluster.seeds()}"
            for _ in range(3):
                front_end = Valqd(False, store=url, store_timeout=30000)
                front_end.start()
                front_ends.append(front_end)
            print(f"throughput, push+pop+ack cycles/s ({args.clients} clients, pipeline "
                  f"{args.pipeline}, {args.seconds:g} s each; load average "
                  f"{open('/proc/loadavg').read().split()[0]})")
            for shards in (1, 3):
                names = queue_names(cluster, shards, args.clients)
                for count in (1, 2, 3):
                    rate = throughput(front_ends[:count], names, args.pipeline, args.seconds)
                    print(f"  queues on {shards} shard{'s' if shards > 1 else ''}, "
                          f"{count} front end{'s' if count > 1 else ''}: {rate:9,.0f}")
            waiting = Valqd(False, store=url, store_timeout=30000, store_wait_replicas=1)
            waiting.start()
            front_ends.append(waiting)
            rate = throughput([waiting], queue_names(cluster, 3, args.clients), args.pipeline,
                              args.seconds)
            print(f"  queues on 3 shards, 1 front end with store-wait-replicas 1: {rate:9,.0f}")
            result = failover(cluster, front_ends[0])
            print(f"failover (SIGKILL of a primary, cluster-node-timeout 3000 ms): longest "
                  f"command {result['longest_command_s']:.2f} s, kill to served again "
                  f"{result['kill_to_served_s']:.2f} s, error replies {result['errors']}")
        finally:
            for front_end in front_ends:
                front_end.close()
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
