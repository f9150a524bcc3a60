"""The floor of an unpipelined job cycle on valqd's stack, beside valqd and Valkey Streams.

    python -m bench.floor [--rounds 5] [--cycles 20000] [--targets valqd-compiled-uvloop]

Issue 16 asks for unpipelined throughput of at least Valkey Streams'. This measures what a
server built on the same parts can reach at all: `serve()` below is a queue that does the
least a job cycle needs on uvloop and hiredis (a deque of ids, a dict of leases, one AOF
record per command written by one group commit per loop turn, replies held until then) and
nothing else a server owes its clients (no limits, checks, stats, timers or checksums). It
answers what the bench's valqd client sends. The stub, the valqd targets and Valkey Streams
then run the bench's unpipelined cycle (8 client processes, depth 1) in interleaved rounds,
and each one's throughput is divided by Streams' of the same round.
"""

import argparse
import asyncio
import collections
import os
import statistics
import sys
import time

from .builds import ensure
from .targets import BUILT, Server, server_for, target
from .workloads import measure_cycles


def serve(port: int, aof_path: str) -> None:
    import hiredis
    import uvloop

    ready: collections.deque[int] = collections.deque()
    bodies: dict[int, bytes] = {}
    leases: dict[int, int] = {}
    last_id = 0
    records: list[bytes] = []
    held: list[tuple[asyncio.Transport, bytes]] = []
    fd = os.open(aof_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC)

    def commit() -> None:
        os.write(fd, b"".join(records))
        records.clear()
        for transport, data in held:
            transport.write(data)
        held.clear()

    def execute(command: list[bytes], now: int) -> bytes:
        nonlocal last_id
        if command[0] != b"VALQ":
            if command[0].upper() == b"PING":
                return b"+PONG\r\n"
            info = b"process_id:%d\r\n" % os.getpid()  # INFO server: the runner checks it
            return b"$%d\r\n%b\r\n" % (len(info), info)
        sub = command[1].upper()
        if sub == b"PUSH":
            last_id += 1
            ready.append(last_id)
            bodies[last_id] = body = command[3]
            records.append(b"*5\r\n$4\r\npush\r\n$1\r\nq\r\n:%d\r\n:%d\r\n$%d\r\n%b\r\n"
                           % (last_id, now, len(body), body))
            text = b"%d" % last_id
            return b"$%d\r\n%b\r\n" % (len(text), text)
        if sub == b"POP":
            if not ready:
                return b"$-1\r\n"
            message_id = ready.popleft()
            leases[message_id] = deadline = now + 300_000
            records.append(b"*4\r\n$5\r\nlease\r\n$1\r\nq\r\n:%d\r\n:%d\r\n"
                           % (message_id, deadline))
            body, text = bodies[message_id], b"%d" % message_id
            return b"*4\r\n$4\r\nbody\r\n$%d\r\n%b\r\n$2\r\nid\r\n$%d\r\n%b\r\n" % (
                len(body), body, len(text), text)
        if sub == b"ACK":
            message_id = int(command[3])
            del leases[message_id], bodies[message_id]
            records.append(b"*3\r\n$6\r\nremove\r\n$1\r\nq\r\n:%d\r\n" % message_id)
            return b"$%d\r\nack %d\r\n" % (len(command[3]) + 4, message_id)
        return b"+OK\r\n"  # CREATE

    class Connection(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.reader = hiredis.Reader()

        def data_received(self, data: bytes) -> None:
            self.reader.feed(data)
            now = time.time_ns() // 1_000_000
            replies = []
            while (command := self.reader.gets()) is not False:
                replies.append(execute(command, now))
            if records:
                if not held:
                    asyncio.get_running_loop().call_soon(commit)
                held.append((self.transport, b"".join(replies)))
            else:
                self.transport.write(b"".join(replies))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Connection, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.install()
    asyncio.run(main())


class FloorStub(Server):
    server_name = "floor"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.floor", "serve", str(self.port),
                os.path.join(self.dir, "stub.aof")]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument("--targets", default="valqd-compiled-uvloop",
                        help="comma-separated valqd targets to measure beside the stub")
    args = parser.parse_args()
    names = ["floor-stub", *args.targets.split(","), "valkey-streams"]
    for name in names[1:]:
        build = target(name).build
        if build and build not in BUILT:
            BUILT[build] = ensure(build, print)
    throughput: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            system = "valqd" if name == "floor-stub" else target(name).system
            server = FloorStub(True) if name == "floor-stub" else server_for(name, True)
            with server:
                measure_cycles(server, system, max(200, args.cycles // 20), 1, 8, 60)
                m = measure_cycles(server, system, args.cycles, 1, 8, 120)
            throughput[name].append(m["throughput"])
            print(f"round {r + 1} {name:24s} {m['throughput']:8,.0f} cycles/s, server CPU "
                  f"{m['cpu_us_per_cycle']:.1f} us/cycle (user {m['user_us_per_cycle']:.1f})",
                  flush=True)
    streams = throughput["valkey-streams"]
    for name in names:
        ratios = [mine / base for mine, base in zip(throughput[name], streams)]
        print(f"{name:24s} median {statistics.median(throughput[name]):8,.0f} cycles/s, "
              f"÷ Streams' median {statistics.median(ratios):.2f}x, rounds "
              + " / ".join(f"{x:.2f}" for x in ratios))


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]), sys.argv[3])
    else:
        main()
