"""The Valkey Functions library (valqd/store/valkey/valq.lua) inside valkey-server: server
CPU per push+pop+ack cycle and memory per queued message.

    python -m bench.valkey_library [--cycles 20000] [--messages 100000] [--body 100]

CPU: Valkey's own account of the FCALLs (INFO commandstats, cmdstat_fcall usec) per cycle
of three calls, and the server process's CPU time (/proc, networking included) per cycle;
the clients pipeline 100 calls at a time. Memory: used_memory grown by queueing
`--messages` ready messages of `--body` bytes, per message.
"""

import argparse
import sys

import valkey

from valqd.store import valkey as store

from .targets import ValkeyServer

PIPELINE = 100


def commandstats(c: valkey.Valkey) -> tuple[int, int]:
    """(calls, usec) of FCALL so far."""
    stats = c.info("commandstats").get("cmdstat_fcall", {"calls": 0, "usec": 0})
    return int(stats["calls"]), int(stats["usec"])


def cycles(c: valkey.Valkey, server: ValkeyServer, count: int, body: bytes) -> dict:
    key = store.queue_key(b"bench")
    c.delete(key)
    c.fcall("valq_create", 1, key)
    c.config_resetstat()
    cpu_before = sum(server.cpu_times())
    calls_before, usec_before = commandstats(c)
    done = 0
    while done < count:
        batch = min(PIPELINE, count - done)
        pipe = c.pipeline(transaction=False)
        for _ in range(batch):
            pipe.fcall("valq_push", 1, key, body)
        ids = pipe.execute()
        pipe = c.pipeline(transaction=False)
        for _ in range(batch):
            pipe.fcall("valq_pop", 1, key)
        popped = pipe.execute()
        assert [m[3] for m in popped] == ids
        pipe = c.pipeline(transaction=False)
        for message_id in ids:
            pipe.fcall("valq_ack", 1, key, message_id)
        pipe.execute()
        done += batch
    calls, usec = commandstats(c)
    cpu = sum(server.cpu_times()) - cpu_before
    c.fcall("valq_delete", 1, key)
    return {"fcalls": calls - calls_before,
            "fcall_us_per_cycle": (usec - usec_before) / count,
            "process_cpu_us_per_cycle": cpu * 1e6 / count}


def memory(c: valkey.Valkey, count: int, body: bytes) -> float:
    key = store.queue_key(b"memory")
    c.delete(key)
    c.fcall("valq_create", 1, key)
    before = c.info("memory")["used_memory"]
    for start in range(0, count, 1000):
        c.fcall("valq_mpush", 1, key, *[body] * min(1000, count - start))
    after = c.info("memory")["used_memory"]
    c.fcall("valq_delete", 1, key)
    return (after - before) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20000)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--body", type=int, default=100)
    args = parser.parse_args(argv)
    body = b"x" * args.body
    with ValkeyServer(persistent=False) as server:
        c = valkey.Valkey(port=server.port)
        store.load(c)
        result = cycles(c, server, args.cycles, body)
        per_message = memory(c, args.messages, body)
        c.close()
    print(f"library version {store.VERSION}, {args.cycles} push+pop+ack cycles of "
          f"{args.body}-byte bodies, pipelined by {PIPELINE}:")
    print(f"  FCALL time inside Valkey (INFO commandstats): "
          f"{result['fcall_us_per_cycle']:.1f} us per cycle")
    print(f"  valkey-server process CPU (with networking):  "
          f"{result['process_cpu_us_per_cycle']:.1f} us per cycle")
    print(f"memory: {per_message:.0f} B per queued {args.body}-byte message "
          f"({args.messages} messages, used_memory)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
