"""Instructions per operation, counted by callgrind: a figure the machine's load does not move.

Every target's server runs under `valgrind --tool=callgrind` (AOF everysec, as in the
timed runs) and the benchmark's own clients drive it: the counters are zeroed
(`callgrind_control -z PID`), one workload runs, the counts are dumped (`-d PID`), and the
dump's total is divided by the operations done. The count is the whole server process in
user space (parsing, dispatch, the engine, the AOF, the event loop; the kernel's part of a
system call is not counted), so valqd and the C servers are counted the same way. What a
server does while idle (timers, Valkey's cron) grows with the wall time, which valgrind
stretches some fifty times: each target's idle rate is measured first and taken off every
window in proportion to its length.

Workloads, in this order, on one server: PUSH of N messages, POP of them, ACK of them
(each `depth` per write), then N job cycles pipelined by `depth` and N/5 unpipelined.
"""

import glob
import os
import shutil
import subprocess
import time
from typing import Any, Callable

from .clients import QueueClient, make_client, ping_once
from .targets import BenchError, Server, Target, build_of, server_for

DEPTH = 50
IDLE_SECONDS = 1.0
START_TIMEOUT_S = 600.0
CONTROL_TIMEOUT_S = 120.0


def available() -> str | None:
    """None when callgrind can run here, otherwise why not."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return "valgrind not found (apt-get install valgrind)"
    return None


class Callgrind:
    """A server running under callgrind, whose counters can be zeroed and read."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.out = os.path.join(server.dir, "callgrind.out")
        server.wrapper = ["valgrind", "--tool=callgrind", "--dump-instr=no",
                          "--dump-line=no", f"--callgrind-out-file={self.out}"]
        self.dumps = 0

    def _control(self, flag: str) -> None:
        """`callgrind_control FLAG PID` (never without a PID: that would reach every
        callgrind process on the machine). The server notices the request only while it
        runs code, so it is pinged until the request is done."""
        server = self.server
        proc = subprocess.Popen(["callgrind_control", flag, str(server.pid)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise BenchError(f"callgrind_control {flag} did not finish")
            ping_once(server.port, server.protocol)
            time.sleep(0.02)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        if proc.returncode != 0 or "OK" not in output:
            raise BenchError(f"callgrind_control {flag} {server.pid} failed: {output}")

    def zero(self) -> None:
        self._control("-z")

    def dump(self) -> int:
        """Instructions since the last zero."""
        self._control("-d")
        self.dumps += 1
        path = f"{self.out}.{self.dumps}"
        if not os.path.exists(path):  # callgrind numbers its dumps itself
            found = sorted(glob.glob(self.out + ".*"),
                           key=lambda p: int(p.rsplit(".", 1)[1]) if p.rsplit(".", 1)[1]
                           .isdigit() else -1)
            path = found[-1] if found else path
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"summary:") or line.startswith(b"totals:"):
                    return int(line.split()[1])
        raise BenchError(f"no totals in {path}")


def _window(cg: Callgrind, work: Callable[[], None]) -> tuple[int, float]:
    """(instructions, seconds) of `work()` between a zero and a dump."""
    cg.zero()
    started = time.monotonic()
    work()
    seconds = time.monotonic() - started
    return cg.dump(), seconds


def _cycles(client: QueueClient, n: int, depth: int) -> None:
    done = 0
    while done < n:
        k = min(depth, n - done)
        client.push(k)
        ids = client.pop(k)
        client.ack(ids)
        done += k


def count(t: Target, ops: int, workdir: str | None,
          log: Callable[[str], None]) -> dict[str, Any]:
    """One target's instructions per operation (see the module docstring)."""
    server = server_for(t, True, workdir)
    cg = Callgrind(server)
    row: dict[str, Any] = {"target": t.name, "system": t.system, "label": t.label,
                 "build": build_of(t) if t.system == "valqd" else None, "ops": {}}
    try:
        server.start(timeout=START_TIMEOUT_S)
        client = make_client(t.system, server.port, 0, 3600)
        client.setup()
        _cycles(client, 200, DEPTH)  # warm: lazy imports, first allocations, caches
        idle, idle_s = _window(cg, lambda: time.sleep(IDLE_SECONDS))
        row["idle_per_s"] = idle / idle_s
        held: list[Any] = []

        def push() -> None:
            for start in range(0, ops, DEPTH):
                client.push(min(DEPTH, ops - start))

        def pop() -> None:
            for start in range(0, ops, DEPTH):
                held.extend(client.pop(min(DEPTH, ops - start)))

        def ack() -> None:
            for start in range(0, len(held), DEPTH):
                client.ack(held[start:start + DEPTH])

        unpipelined = max(1, ops // 5)
        workloads = [("push", ops, push), ("pop", ops, pop)]
        if t.system != "valkey":  # a list has nothing to ack and no lease to cycle
            workloads += [("ack", ops, ack),
                          ("cycle", ops, lambda: _cycles(client, ops, DEPTH)),
                          ("cycle_unpipelined", unpipelined,
                           lambda: _cycles(client, unpipelined, 1))]
        for name, n, work in workloads:
            instructions, seconds = _window(cg, work)
            idle_share = row["idle_per_s"] * seconds
            row["ops"][name] = {"count": n, "instructions": instructions,
                                "seconds": round(seconds, 3), "idle": round(idle_share),
                                "per_op": max(0.0, instructions - idle_share) / n}
            log(f"instructions {t.label} {name}: {row['ops'][name]['per_op']:,.0f} per op "
                f"({n:,} ops, {seconds:.1f} s under callgrind, idle share "
                f"{idle_share / max(instructions, 1):.1%})")
        client.close()
    finally:
        server.close()
    return row


def instructions(targets: list[Target], ops: int, workdir: str | None,
                 log: Callable[[str], None]) -> dict[str, Any]:
    if (why := available()) is not None:
        return {"skipped": why, "rows": []}
    return {"ops": ops, "depth": DEPTH, "rows": [count(t, ops, workdir, log) for t in targets]}
