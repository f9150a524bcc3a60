"""What the front ends' reaper (valqd/store/valkey/reaper.py) costs, on one valkey-server:

    python -m bench.reaper [--passes 3] [--storm 20000]

- a pass over the 16,384 slots' due indexes (16 rounds of 1,024 reads, database 0): the
  reaping front end's CPU (process time of this process, which runs the reaper's code) and
  the wall time, per pass (the first also computes the slots' tags);
- a storm: `--storm` leases of one queue run out at once and nobody calls the queue; the
  reaper's rounds (back to back here; every 250 ms in a front end) clear it: how many
  valq_reap calls, and how long each held Valkey (its SLOWLOG: median and longest).
"""

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from valqd.store.url import parse_store_url
from valqd.store.valkey.connection import Client, Reply
from valqd.store.valkey.reaper import ROUND_PROBES, Primary, Reaper, all_slots
from valqd.store.valkey.store import load_library

from .targets import ValkeyServer


async def measure(port: int, passes: int, storm: int) -> None:
    client = Client(parse_store_url(f"valkey://127.0.0.1:{port}"), 0, 30.0)
    await client.connect()
    await load_library(client.call)

    async def clock(primary: Primary) -> int:
        seconds, micros = await client.call("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    def reap_args(index: bytes, queues: int, budget: int) -> list[bytes]:
        return [b"FCALL", b"valq_reap", b"1", index, b"%d" % queues, b"%d" % budget]

    def send(db: int, args: list[bytes], callback: Callable[[Reply], None]) -> None:
        client.send(args, callback, resend=True)

    primary = Primary("bench", all_slots(), send)
    reaper = Reaper(lambda: [primary], 1, clock, reap_args)  # database 0 only
    await client.call("SET", "bench:key", "1")  # a database with keys is read
    for number in range(passes):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(len(primary.slots) // ROUND_PROBES):
            await reaper._probe(primary)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"pass {number}: {cpu * 1000:.1f} ms CPU, {wall * 1000:.1f} ms wall "
              f"(16384 due indexes read)")
    if not storm:
        await client.close()
        return
    queue = b"valq:{storm}"
    await client.call("FCALL", "valq_create", "1", queue, "VISIBILITY", "1")
    for start in range(0, storm, 1000):
        count = min(1000, storm - start)
        await client.call("FCALL", "valq_mpush", "1", queue, *[b"m"] * count)
        await client.call("FCALL", "valq_pop", "1", queue, "COUNT", str(count))
    await asyncio.sleep(1.1)  # the leases run out
    await client.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
    await client.call("CONFIG", "SET", "slowlog-max-len", "1000000")
    await client.call("SLOWLOG", "RESET")
    rounds, wall = 0, time.perf_counter()
    while reaper.stats.events < storm:
        await reaper.round(primary)
        rounds += 1
    wall = time.perf_counter() - wall
    log = await client.call("SLOWLOG", "GET", "-1")
    micros = sorted(entry[2] for entry in log if entry[3][:2] == [b"FCALL", b"valq_reap"])
    print(f"storm of {storm} leases: {reaper.stats.calls} valq_reap calls in {rounds} rounds "
          f"({wall:.2f} s back to back); per call in Valkey: median "
          f"{statistics.median(micros) / 1000:.1f} ms, longest {micros[-1] / 1000:.1f} ms")
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--storm", type=int, default=20000)
    options = parser.parse_args()
    with ValkeyServer(persistent=False) as server:
        asyncio.run(measure(server.port, options.passes, options.storm))


if __name__ == "__main__":
    main()
