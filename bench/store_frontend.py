"""valqd in front of Valkey (`--store`): job cycles through 1, 2 and 3 front ends on one
valkey-server, beside the embedded store, with the CPU each server process spends; and
how soon a POP blocked on one front end is woken by a PUSH through another.

    python -m bench.store_frontend [--cycles 20000] [--fronts 1,2,3] [--body 100]
                                   [--wakes 20]

Every front end gets one client process that runs `--cycles` push+pop+ack cycles on a
queue of its own, pipelined by 100 (PUSH x100, then POP x100, then ACK x100). Reported:
cycles per second over all clients, and server CPU per cycle (/proc: every front end's
process and valkey-server's, networking included). The embedded store runs the same
workload with one client for comparison. On a 2-core machine the clients, the front ends
and Valkey share the cores: the figures are for comparison within one run.

Wake-ups: `--wakes` times, a client's `VALQ POP q BLOCK` waits on one front end (its
watcher in a BLPOP of the queue's wake marker, as Valkey's CLIENT LIST shows), another
client pushes through a second front end, and the time from sending the PUSH to the
blocked client's reply is taken; reported: median and longest.
"""

import argparse
import concurrent.futures
import statistics
import sys
import time

import valkey

from .clients import RespConn, resp
from .targets import BenchError, ValkeyServer, Valqd

PIPELINE = 100


def run_cycles(port: int, queue: str, count: int, body: bytes) -> None:
    c = valkey.Valkey(port=port)
    c.execute_command("VALQ", "CREATE", queue)
    done = 0
    while done < count:
        batch = min(PIPELINE, count - done)
        pipe = c.pipeline(transaction=False)
        for _ in range(batch):
            pipe.execute_command("VALQ", "PUSH", queue, body)
        ids = pipe.execute()
        pipe = c.pipeline(transaction=False)
        for _ in range(batch):
            pipe.execute_command("VALQ", "POP", queue)
        popped = pipe.execute()
        assert [m[3] for m in popped] == ids, "a message came back out of order"
        pipe = c.pipeline(transaction=False)
        for message_id in ids:
            pipe.execute_command("VALQ", "ACK", queue, message_id)
        pipe.execute()
        done += batch
    c.execute_command("VALQ", "DELETE", queue)
    c.close()


def measure(ports: list[int], servers: list, count: int, body: bytes) -> dict[str, float]:
    cpu_before = [sum(s.cpu_times()) for s in servers]
    started = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(len(ports)) as pool:
        futures = [pool.submit(run_cycles, port, f"bench{i}", count, body)
                   for i, port in enumerate(ports)]
        for future in futures:
            future.result()
    elapsed = time.monotonic() - started
    cycles = count * len(ports)
    cpu = [sum(s.cpu_times()) - before for s, before in zip(servers, cpu_before)]
    return {"cycles_per_s": cycles / elapsed,
            "cpu_us_per_cycle": [c * 1e6 / cycles for c in cpu]}


def watchers_in_blpop(admin: RespConn) -> int:
    """How many connections wait in a BLPOP in valkey-server."""
    listing = admin.call("CLIENT", "LIST").decode().splitlines()
    return sum(" cmd=blpop " in line and " flags=b " in line for line in listing)


def wake_times(waiting_port: int, pushing_port: int, admin: RespConn, count: int
               ) -> list[float]:
    """Seconds from a PUSH through one front end to the reply of a POP blocked on the
    other, `count` times."""
    waiter, pusher = RespConn(waiting_port), RespConn(pushing_port)
    pusher.call("VALQ", "CREATE", "wake")
    times = []
    for i in range(count):
        blocked_before = watchers_in_blpop(admin)
        waiter.send(resp("VALQ", "POP", "wake", "BLOCK", 10000))
        deadline = time.monotonic() + 10
        while watchers_in_blpop(admin) <= blocked_before:
            if time.monotonic() > deadline:
                raise BenchError("the blocked POP's watcher never waited in BLPOP")
            time.sleep(0.001)
        pushed_at = time.perf_counter()
        pusher.call("VALQ", "PUSH", "wake", b"%d" % i)
        reply = waiter.read(1)[0]
        times.append(time.perf_counter() - pushed_at)
        if reply[1] != b"%d" % i:
            raise BenchError(f"the blocked POP got {reply!r}")
        waiter.call("VALQ", "ACK", "wake", reply[3])
    pusher.call("VALQ", "DELETE", "wake")
    waiter.close()
    pusher.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20000, help="per client")
    parser.add_argument("--fronts", default="1,2,3", help="numbers of front ends to run")
    parser.add_argument("--body", type=int, default=100)
    parser.add_argument("--wakes", type=int, default=20, help="blocked POPs woken (0: none)")
    args = parser.parse_args(argv)
    body = b"x" * args.body
    print(f"{args.cycles} push+pop+ack cycles per client, {args.body}-byte bodies, "
          f"pipelined by {PIPELINE}, no persistence")
    with Valqd(persistent=False) as embedded:
        result = measure([embedded.port], [embedded], args.cycles, body)
    print(f"  embedded, 1 client: {result['cycles_per_s']:,.0f} cycles/s, valqd "
          f"{result['cpu_us_per_cycle'][0]:.1f} us CPU per cycle")
    with ValkeyServer(persistent=False) as store:
        url = f"valkey://127.0.0.1:{store.port}"
        for fronts in (int(n) for n in args.fronts.split(",")):
            servers = [Valqd(persistent=False, store=url) for _ in range(fronts)]
            try:
                for server in servers:
                    server.start()
                result = measure([s.port for s in servers], [*servers, store], args.cycles,
                                 body)
            finally:
                for server in servers:
                    server.close()
            cpu = result["cpu_us_per_cycle"]
            print(f"  {fronts} front end(s), {fronts} client(s): "
                  f"{result['cycles_per_s']:,.0f} cycles/s; CPU per cycle: front ends "
                  f"{sum(cpu[:-1]):.1f} us, valkey-server {cpu[-1]:.1f} us")
        if args.wakes:
            servers = [Valqd(persistent=False, store=url) for _ in range(2)]
            admin = RespConn(store.port)
            try:
                for server in servers:
                    server.start()
                times = wake_times(servers[0].port, servers[1].port, admin, args.wakes)
            finally:
                admin.close()
                for server in servers:
                    server.close()
            print(f"  a POP blocked on one front end, woken by a PUSH through another "
                  f"({args.wakes} times): median {statistics.median(times) * 1000:.1f} ms, "
                  f"longest {max(times) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
