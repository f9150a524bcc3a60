"""The measurements. Each function starts the servers it needs, drives them, stops them and
returns plain dicts (the report and results.json are made from those).

Client processes are forked with multiprocessing; each connects and sets up first, then all
start together. Server CPU time is read from /proc before the start signal and after the
last client is done, so connection set-up and the clients' own work are not counted.
Every loop here is bounded by a count and by a time limit.
"""

import math
import multiprocessing
import os
import queue as queue_module
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import traceback
from array import array

from . import rounds
from .clients import BODY, HOST, QUEUE, Pinger, RespConn, make_client, resp
from .targets import (PERSISTENCE_LABELS, VALKEY, BenchError, Server, Target,
                      build_of, free_port, one_per_build, peak_rss_bytes, primary_valqd,
                      server_for, valkey_server_binary, valqd_targets)

CTX = multiprocessing.get_context("fork")
SETUP_TIMEOUT_S = 60.0


def _label(t: Target, persistent: bool) -> str:
    return f"{t.label} ({PERSISTENCE_LABELS[(t.system, persistent)]})"


# -- running client processes ---------------------------------------------------------------

def _worker(body, system, port, index, args, ready, go, results):
    try:
        client = make_client(system, port, index, args.get("visibility", 300))
        client.setup()
    except Exception:
        results.put((index, "error", traceback.format_exc()))
        ready.abort()
        return
    try:
        ready.wait(SETUP_TIMEOUT_S)
        if not go.wait(SETUP_TIMEOUT_S):
            raise BenchError("no start signal")
        results.put((index, "ok", body(client, index, args)))
    except Exception:
        results.put((index, "error", traceback.format_exc()))
    finally:
        try:
            client.close()
        except Exception:
            pass


def run_clients(server: Server, system: str, procs: int, body, args: dict,
                time_limit: float) -> dict:
    """Run `body(client, index, args)` in `procs` processes at once; returns their results
    with the server's CPU seconds and the wall time between the start signal and the end."""
    ready = CTX.Barrier(procs + 1)
    go = CTX.Event()
    results = CTX.Queue()
    workers = [CTX.Process(target=_worker, daemon=True,
                           args=(body, system, server.port, i, args, ready, go, results))
               for i in range(procs)]
    for w in workers:
        w.start()
    out: list = []
    try:
        try:
            ready.wait(SETUP_TIMEOUT_S)
        except threading.BrokenBarrierError:
            pass
        cpu0 = server.cpu_times()
        t0 = time.monotonic()
        go.set()
        deadline = t0 + time_limit + 60.0
        while len(out) < procs:
            try:
                out.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue_module.Empty:
                raise BenchError("client processes did not finish in time") from None
        t1 = time.monotonic()
        cpu1 = server.cpu_times()
    finally:
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
                w.join()
    errors = [r[2] for r in out if r[1] == "error"]
    if errors:
        raise BenchError("client process failed:\n" + errors[0])
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    return {"results": [r[2] for r in sorted(out, key=lambda r: r[0])], "cpu": user + system,
            "cpu_user": user, "cpu_sys": system, "wall": t1 - t0}


# -- job cycle ------------------------------------------------------------------------------

def _cycles_body(client, index, args):
    """push, pop, ack, `depth` at a time, until `cycles` acks or the time limit."""
    cycles, depth = args["cycles"], args["depth"]
    push, pop, ack = client.push, client.pop, client.ack
    start = time.monotonic()
    deadline = start + args["time_limit"]
    done = 0
    while done < cycles and time.monotonic() < deadline:
        k = min(depth, cycles - done)
        push(k)
        ids = pop(k)
        ack(ids)
        done += len(ids)
    return {"cycles": done, "start": start, "end": time.monotonic()}


def measure_cycles(server: Server, system: str, cycles: int, depth: int, procs: int,
                   time_limit: float, visibility: int = 300) -> dict:
    per_proc = math.ceil(cycles / procs)
    args = {"cycles": per_proc, "depth": depth, "time_limit": time_limit,
            "visibility": visibility}
    run = run_clients(server, system, procs, _cycles_body, args, time_limit)
    done = sum(r["cycles"] for r in run["results"])
    start = min(r["start"] for r in run["results"])
    end = max(r["end"] for r in run["results"])
    seconds = max(end - start, 1e-9)
    return {"cycles": done, "seconds": round(seconds, 3),
            "throughput": done / seconds, "cpu_s": run["cpu"],
            "cpu_us_per_cycle": run["cpu"] / done * 1e6 if done else None,
            "user_us_per_cycle": run["cpu_user"] / done * 1e6 if done else None,
            "sys_us_per_cycle": run["cpu_sys"] / done * 1e6 if done else None,
            "truncated": done < per_proc * procs}


# mode, pipeline depth, client processes; the baseline for the mode: (system, figure)
JOB_CYCLE_MODES = (("pipelined", 50, 4, ("valkey-lua", "cpu_us_per_cycle")),
                   ("unpipelined", 1, 8, ("valkey-streams", "throughput")))


def job_cycle(targets: list[Target], opts, log) -> dict:
    """The job cycle in interleaved rounds (see rounds.py), AOF everysec on every server:
    in each round, each mode, every target in the round's order, each on a fresh server
    with a short warm-up first. Per target: cycles/s and server CPU per cycle as min,
    median and max over the rounds, and round by round its ratio to the mode's baseline
    (pipelined: CPU per cycle / Valkey-Lua's; unpipelined: cycles/s / Streams')."""
    runs = {(mode, t.name): [] for mode, *_ in JOB_CYCLE_MODES for t in targets}
    orders = []
    for r in range(opts.rounds):
        order = rounds.rotated(targets, r)
        orders.append([t.name for t in order])
        for mode, depth, procs, _ in JOB_CYCLE_MODES:
            cycles = opts.cycles_pipelined if mode == "pipelined" else opts.cycles_unpipelined
            for t in order:
                with server_for(t, True, opts.workdir) as server:
                    measure_cycles(server, t.system, max(200, cycles // 20), depth, procs,
                                   opts.time_limit)
                    m = measure_cycles(server, t.system, cycles, depth, procs, opts.time_limit)
                runs[(mode, t.name)].append(m)
                log(f"job-cycle round {r + 1}/{opts.rounds} {mode} {t.label}: "
                    f"{m['throughput']:,.0f} cycles/s, {m['cpu_us_per_cycle']:.1f} us CPU/cycle")
    out = {"rounds": opts.rounds, "orders": orders, "modes": []}
    for mode, depth, procs, (baseline, figure) in JOB_CYCLE_MODES:
        base = next((t for t in targets if t.system == baseline), None)
        base_runs = [m[figure] for m in runs[(mode, base.name)]] if base else []
        rows = []
        for t in targets:
            mine = runs[(mode, t.name)]
            row = {"target": t.name, "system": t.system, "label": _label(t, True),
                   "build": build_of(t) if t.system == "valqd" else None, "runs": mine,
                   "throughput": rounds.summary([m["throughput"] for m in mine]),
                   "cpu_us_per_cycle": rounds.summary([m["cpu_us_per_cycle"] for m in mine]),
                   "truncated": any(m["truncated"] for m in mine)}
            if base is not None:
                row["ratio"] = rounds.summary(rounds.ratios([m[figure] for m in mine],
                                                            base_runs))
            rows.append(row)
        out["modes"].append({"mode": mode, "depth": depth, "procs": procs,
                             "cycles": opts.cycles_pipelined if mode == "pipelined"
                             else opts.cycles_unpipelined,
                             "baseline": baseline, "baseline_figure": figure, "rows": rows})
    return out


def _one_valqd(targets: list[Target]) -> list[Target]:
    """The targets without their valqd ones but the first, where it stands."""
    first = primary_valqd(targets)
    return [t for t in targets if t.system != "valqd" or t is first]


# -- latency --------------------------------------------------------------------------------

def _latency_body(client, index, args):
    """Cycles at a fixed rate; times each POP and each ACK (send to reply)."""
    rate, seconds, limit = args["rate_per_proc"], args["seconds"], args["max_samples"]
    pops, acks = array("d"), array("d")
    interval = 1.0 / rate
    clock = time.perf_counter
    start = clock()
    end = start + seconds
    n = 0
    while n < limit:
        due = start + n * interval
        now = clock()
        if now >= end:
            break
        if due > now:
            time.sleep(due - now)
        client.push(1)
        t = clock()
        ids = client.pop(1)
        t2 = clock()
        pops.append(t2 - t)
        if ids:
            client.ack(ids)
            acks.append(clock() - t2)
        n += 1
    return {"pop": pops.tobytes(), "ack": acks.tobytes(), "cycles": n,
            "seconds": clock() - start}


def percentiles(samples: array) -> dict:
    if not samples:
        return {}
    s = sorted(samples)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))] * 1e3

    return {"p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9), "max_ms": s[-1] * 1e3,
            "samples": len(s)}


def latency(targets: list[Target], opts, log) -> list[dict]:
    """POP and ACK latency at a fixed rate; valqd's first target beside the other systems."""
    rows = []
    procs = 4
    for t in _one_valqd(targets):
        persistent = True
        label = _label(t, persistent)
        args = {"rate_per_proc": opts.latency_rate / procs, "seconds": opts.latency_seconds,
                "max_samples": int(opts.latency_rate / procs * opts.latency_seconds) + 10}
        with server_for(t, persistent, opts.workdir) as server:
            measure_cycles(server, t.system, 500, 1, 2, opts.time_limit)  # warm up
            run = run_clients(server, t.system, procs, _latency_body, args,
                              opts.latency_seconds + 30)
        pops, acks = array("d"), array("d")
        cycles = 0
        for r in run["results"]:
            pops.frombytes(r["pop"])
            acks.frombytes(r["ack"])
            cycles += r["cycles"]
        row = {"system": t.system, "target": t.name, "persistent": persistent, "label": label,
               "rate": opts.latency_rate, "achieved_rate": cycles / max(run["wall"], 1e-9),
               "pop": percentiles(pops), "ack": percentiles(acks)}
        log(f"latency {label}: POP p50 {row['pop'].get('p50_ms', 0):.3f} ms p99 "
            f"{row['pop'].get('p99_ms', 0):.3f} ms p99.9 {row['pop'].get('p999_ms', 0):.3f} ms; "
            f"ACK p99 {row['ack'].get('p99_ms', 0):.3f} ms")
        rows.append(row)
    return rows


# -- scale ----------------------------------------------------------------------------------

def scale(targets: list[Target], opts, log) -> list[dict]:
    """The job cycle's server CPU per cycle with a backlog of N ready messages ahead of
    it (each cycle pushes one, pops the oldest and acks it, so the backlog stays at N), and
    with N messages in flight. Persistence off: this measures the data structures. valqd's
    first target beside the other systems."""
    rows = []
    for t in _one_valqd(targets):
        system = t.system
        persistent = False
        label = _label(t, persistent)
        with server_for(t, persistent, opts.workdir) as server:
            filler = make_client(system, server.port, 99, 3600)
            filler.setup()
            have = 0
            for backlog in opts.scale_backlogs:
                filler.fill(backlog - have)
                have = backlog
                measure_cycles(server, system, 1000, 50, 4, opts.time_limit, 3600)
                m = measure_cycles(server, system, opts.scale_cycles, 50, 4, opts.time_limit,
                                   3600)
                rows.append({"system": system, "label": label,
                             "condition": f"{_count(backlog)} queued", "queued": backlog,
                             "inflight": 0, **m})
                log(f"scale {label} {_count(backlog)} queued: "
                    f"{m['cpu_us_per_cycle']:.1f} us CPU/cycle")
            filler.close()
        with server_for(t, persistent, opts.workdir) as server:
            holder = make_client(system, server.port, 98, 3600)  # keeps beanstalkd's jobs
            holder.setup()
            holder.fill(opts.scale_inflight)
            leased = holder.lease_all(opts.scale_inflight)
            measure_cycles(server, system, 1000, 50, 4, opts.time_limit, 3600)
            m = measure_cycles(server, system, opts.scale_cycles, 50, 4, opts.time_limit, 3600)
            holder.close()
        rows.append({"system": system, "label": label,
                     "condition": f"{_count(leased)} in flight", "queued": 0,
                     "inflight": leased, **m})
        log(f"scale {label} {_count(leased)} in flight: {m['cpu_us_per_cycle']:.1f} us CPU/cycle")
    return rows


def _count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def scale_ratios(rows: list[dict]) -> dict:
    out = {}
    for system in dict.fromkeys(r["system"] for r in rows):
        costs = [r["cpu_us_per_cycle"] for r in rows if r["system"] == system
                 and r["cpu_us_per_cycle"]]
        if costs:
            out[system] = max(costs) / min(costs)
    return out


# -- timer storm ----------------------------------------------------------------------------

def _info(conn: RespConn, section: str) -> dict:
    text = conn.call("INFO", section).decode(errors="replace")
    fields = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key] = value
    return fields


def _storm(server: Server, conn: RespConn, name: str, n: int, burst: bool,
           watch_s: float) -> dict:
    """Lease n messages of a new queue at once; ping until every lease has run out.

    The visibility is 1 s when the server can lease n messages in well under a second;
    otherwise it is raised so that every lease is taken before the first one runs out (the
    leases then run out over as long as taking them took). With `burst`, the server is
    stopped (SIGSTOP) right after the pops until every lease is due, then resumed: all of
    them run out in the same instant, and the pinger's wait counts from the resume (the
    visibility is at least 2 s then, so that the pops surely end before the first is due)."""
    # how fast can this server lease? (a queue of its own, 2 x POP COUNT 1000)
    conn.call("VALQ", "CREATE", name + "-calibrate", "VISIBILITY", 3600)
    conn.call("VALQ", "MPUSH", name + "-calibrate", *([BODY] * 2000))
    t = time.monotonic()
    conn.send(resp("VALQ", "POP", name + "-calibrate", "COUNT", 1000) * 2)
    conn.read(2)
    estimate = (time.monotonic() - t) / 2000 * n
    visibility = 1 if estimate < 0.6 else math.ceil(estimate * 1.5) + 1
    if burst:  # every lease must be taken before the pause, whatever the machine's hiccups
        visibility = max(visibility, 2)
    conn.call("VALQ", "CREATE", name, "VISIBILITY", visibility)
    sent = 0
    while sent < n:
        k = min(1000, n - sent)
        conn.call("VALQ", "MPUSH", name, *([BODY] * k))
        sent += k
    pops = math.ceil(n / 1000)
    started = time.monotonic()
    conn.send(b"".join(resp("VALQ", "POP", name, "COUNT", min(1000, n - i * 1000))
                       for i in range(pops)))
    leased = sum(len(r) for r in conn.read(pops))
    pop_seconds = time.monotonic() - started
    first_due = started + visibility
    last_due = started + visibility + pop_seconds
    watch_until = last_due + watch_s
    pinger = Pinger(server.port, limit_s=watch_until - time.monotonic() + 5)
    thread = threading.Thread(target=pinger.run, daemon=True)
    stopped_s = 0.0
    if burst:
        if time.monotonic() >= first_due:
            raise BenchError("the leases began to run out before the server could be paused")
        os.kill(server.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        try:
            thread.start()  # it connects (the kernel queues it) and sends a PING
            time.sleep(max(0.0, last_due + 0.05 - time.monotonic()))
            for _ in range(100):
                if pinger.connected:
                    break
                time.sleep(0.01)
            pinger.not_before = time.monotonic()
        finally:
            os.kill(server.pid, signal.SIGCONT)
        stopped_s = time.monotonic() - paused_at
    else:
        thread.start()
    # wait for the first deadline, then until every lease has run out (or time is up)
    time.sleep(max(0.0, first_due - time.monotonic()))
    expired = 0
    all_back_at = None
    while time.monotonic() < watch_until:
        stats = conn.call("VALQ", "STATS", name)
        fields = dict(zip(stats[0::2], stats[1::2]))
        expired = int(fields.get(b"expired", 0))
        if expired >= leased:
            all_back_at = time.monotonic()
            break
        time.sleep(0.1)
    time.sleep(0.3)
    pinger.stop()
    thread.join(10)
    return {"leases": leased, "visibility_s": visibility, "pop_seconds": round(pop_seconds, 3),
            "burst": burst, "stopped_s": round(stopped_s, 3), "expired": expired,
            "max_gap_ms": pinger.max_gap * 1e3, "pings": pinger.count,
            "all_back_after_s": None if all_back_at is None else round(all_back_at - started, 2),
            "slow_replies": len(pinger.gaps), "error": pinger.error}


def timer_storm(t: Target, opts, log) -> list[dict]:
    """valqd: N leases running out together while a client pings in a loop; once as they
    come due live, once all due in the same instant (see `_storm`)."""
    rows = []
    with server_for(t, True, opts.workdir) as server:
        conn = RespConn(server.port)
        base = Pinger(server.port, limit_s=1.0)  # a baseline: the pinger alone
        base.run()
        for name, burst in (("storm", False), ("burst", True)):
            row = _storm(server, conn, name, opts.storm_leases, burst, opts.storm_watch_s)
            row["baseline_max_gap_ms"] = base.max_gap * 1e3
            rows.append(row)
            log(f"timer storm ({'all due at once' if burst else 'live'}): {row['leases']:,} "
                f"leases (visibility {row['visibility_s']} s, taken in "
                f"{row['pop_seconds']:.2f} s), longest ping wait {row['max_gap_ms']:.1f} ms "
                f"(idle baseline {row['baseline_max_gap_ms']:.1f} ms), "
                f"{row['expired']:,} expired")
        conn.close()
    return rows


# -- memory ---------------------------------------------------------------------------------

def memory(targets: list[Target], opts, log) -> list[dict]:
    """Resident memory per queued message; each valqd build also with its AOF on (a rewrite
    starts during the fill, as with the default settings)."""
    rows = []
    n = opts.memory_messages
    runs = []
    for t in targets:
        if t.system != "valqd":
            runs.append((t, False))
        elif t in one_per_build(targets):
            runs += [(t, False), (t, True)]
    for t, persistent in runs:
        with server_for(t, persistent, opts.workdir) as server:
            client = make_client(t.system, server.port, 0, 300)
            client.setup()
            client.fill(10)  # the structures exist before the "before" reading
            time.sleep(0.2)
            before = server.rss()
            client.fill(n)
            time.sleep(0.5)
            after = server.rss()
            client.close()
        per = (after - before) / n
        name = (f"valqd {build_of(t)}" if t.system == "valqd" else t.label)
        label = name + (" (AOF everysec)" if persistent else "")
        rows.append({"system": t.system, "target": t.name, "build": t.build, "label": label,
                     "messages": n, "aof": persistent, "rss_before": before,
                     "rss_after": after, "bytes_per_message": per})
        log(f"memory {label}: {per:.0f} bytes per queued message")
    return rows


# -- persistence ----------------------------------------------------------------------------

_VALQD_LOADED = re.compile(r"DB loaded from append only file: ([\d.]+) seconds, (\d+) records")
_VALKEY_LOADED = re.compile(r"DB loaded from append only file: ([\d.]+) seconds")


def _valqd_load_log(server: Server, before: int) -> tuple[float | None, int | None]:
    matches = _VALQD_LOADED.findall(server.log()[before:])
    if not matches:
        return None, None
    seconds, records = matches[-1]
    return float(seconds), int(records)


def _rewrite_pause(server: Server, opts) -> dict:
    """BGREWRITEAOF while a pinger measures the longest wait; ends when the new file is in."""
    conn = RespConn(server.port)
    base = Pinger(server.port, limit_s=1.0)
    base.run()
    rewrites = int(_info(conn, "persistence").get("aof_rewrites", 0))
    pinger = Pinger(server.port, limit_s=opts.time_limit + 60)
    thread = threading.Thread(target=pinger.run, daemon=True)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    conn.call("BGREWRITEAOF")
    deadline = started + opts.time_limit
    done = False
    fields: dict = {}
    while time.monotonic() < deadline:
        time.sleep(0.1)
        fields = _info(conn, "persistence")
        if int(fields.get("aof_rewrites", 0)) > rewrites and \
                fields.get("aof_rewrite_in_progress") == "0":
            done = True
            break
    seconds = time.monotonic() - started
    time.sleep(0.3)
    pinger.stop()
    thread.join(10)
    conn.close()
    row = {"done": done, "rewrite_seconds": round(seconds, 3),
           "max_gap_ms": pinger.max_gap * 1e3, "baseline_max_gap_ms": base.max_gap * 1e3,
           "pings": pinger.count, "error": pinger.error}
    if not done:
        row["error"] = (f"the rewrite did not finish in {seconds:.0f} s; INFO persistence: "
                        f"{fields}; server log:\n{server.tail()}")
    return row


def _valkey_rpush_aof(opts, log) -> dict:
    """Valkey loading an AOF of N RPUSH commands (100-byte values)."""
    n = opts.persistence_messages
    server = server_for("valkey", True, opts.workdir, auto_aof_rewrite_percentage=0)
    try:
        server.start()
        conn = RespConn(server.port)
        cmd = resp("RPUSH", "q", BODY)
        sent = 0
        while sent < n:
            k = min(1000, n - sent)
            conn.send(cmd * k)
            conn.read(k)
            sent += k
        conn.close()
        server.stop()
        aof_bytes = server.disk_bytes()
        log_before = len(server.log())
        seconds = server.restart(timeout=opts.time_limit + 600)
        match = _VALKEY_LOADED.findall(server.log()[log_before:])
        rss = server.rss()
    finally:
        server.close()
    row = {"system": "valkey", "what": f"{_count(n)} RPUSH commands", "records": n,
           "aof_bytes": aof_bytes, "seconds_to_ping": seconds,
           "logged_seconds": float(match[-1]) if match else None,
           "records_per_s": n / seconds, "rss_after_load": rss}
    log(f"AOF load Valkey ({row['what']}): {seconds:.2f} s to PING, "
        f"{row['records_per_s']:,.0f} records/s")
    return row


def _push_body(client, index, args):
    """`conns` connections, each with one push in flight (no pipelining on a connection)."""
    others = [make_client(args["system"], args["port"], index * 100 + j, 300)
              for j in range(args["conns"] - 1)]
    clients = [client, *others]
    per = args["pushes"]
    start = time.monotonic()
    deadline = start + args["time_limit"]
    done = 0
    try:
        while done < per and time.monotonic() < deadline:
            for c in clients:  # one request on every connection, then every reply
                c.conn.send(c.PUSH)
            for c in clients:
                c.conn.read(1)
            done += len(clients)
    finally:
        for c in others:
            c.close()
    return {"pushes": done, "start": start, "end": time.monotonic()}


def _fsync_throughput(t: Target, policy: str, opts, log) -> dict:
    procs, conns = 5, 10  # 50 concurrent clients
    with server_for(t, True, opts.workdir, appendfsync=policy) as server:
        args = {"system": t.system, "port": server.port, "conns": conns,
                "pushes": math.ceil(opts.fsync_pushes / procs), "time_limit": opts.time_limit}
        run = run_clients(server, t.system, procs, _push_body, args, opts.time_limit + 30)
    pushes = sum(r["pushes"] for r in run["results"])
    seconds = max(r["end"] for r in run["results"]) - min(r["start"] for r in run["results"])
    row = {"system": t.system, "target": t.name, "label": t.label, "appendfsync": policy,
           "clients": procs * conns, "pushes": pushes, "seconds": round(seconds, 3),
           "throughput": pushes / seconds, "cpu_us_per_push": run["cpu"] / pushes * 1e6}
    log(f"push, appendfsync {policy}, {t.label}, 50 clients: "
        f"{row['throughput']:,.0f} pushes/s")
    return row


def _fill_and_stop(server: Server, n: int) -> None:
    """Start valqd, push n messages through the benchmark client, stop it: its AOF is then
    what a restart loads."""
    server.start()
    client = make_client("valqd", server.port)
    client.setup()
    client.fill(n)
    client.close()
    server.stop()


def persistence(targets: list[Target], opts, log) -> dict:
    """AOF load of every valqd build (as logged, then rewritten) beside Valkey's of as many
    RPUSHes; the rewrite pause and the fsync policies with valqd's first target."""
    n = opts.persistence_messages
    out: dict = {"load": [], "fsync": [], "rewrite": None, "messages": n}
    first = primary_valqd(targets)
    for t in one_per_build(targets):
        server = server_for(t, True, opts.workdir, auto_aof_rewrite_percentage=0)
        try:
            _fill_and_stop(server, n)
            for what in (f"{_count(n)} pushes (as logged)", f"{_count(n)} messages (rewritten)"):
                aof_bytes = server.disk_bytes()
                log_before = len(server.log())
                seconds = server.restart(timeout=opts.time_limit + 600)
                logged, records = _valqd_load_log(server, log_before)
                records = records or n
                out["load"].append({"system": "valqd", "target": t.name,
                                    "label": f"valqd {build_of(t)}", "what": what,
                                    "records": records, "aof_bytes": aof_bytes,
                                    "seconds_to_ping": seconds, "logged_seconds": logged,
                                    "records_per_s": records / seconds,
                                    "rss_after_load": server.rss()})
                log(f"AOF load valqd {build_of(t)} ({what}): {seconds:.2f} s to PING, "
                    f"{records / seconds:,.0f} records/s")
                if "rewritten" in what:
                    continue
                pause = {"messages": n, "target": t.name, **_rewrite_pause(server, opts)}
                log(f"BGREWRITEAOF of {_count(n)} messages, valqd {build_of(t)}: longest "
                    f"ping wait {pause['max_gap_ms']:.1f} ms over "
                    f"{pause['rewrite_seconds']:.1f} s")
                if t is first:
                    out["rewrite"] = pause
        finally:
            server.close()
    if any(t.system in ("valkey-lua", "valkey-streams") for t in targets):
        out["load"].append(_valkey_rpush_aof(opts, log))
    lua = next((t for t in targets if t.system == "valkey-lua"), None)
    for t in [first] + ([lua] if lua else []):
        for policy in ("always", "everysec"):
            out["fsync"].append(_fsync_throughput(t, policy, opts, log))
    return out


# -- redis-benchmark ------------------------------------------------------------------------

_RPS = re.compile(r"([\d.]+) requests per second")


def _redis_benchmark(port: int, n: int, command: list[str]) -> float | None:
    result = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-P", "16", "-n", str(n), "-q",
         *command], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    # -q prints progress lines with \r; the last figure is the final one
    found = _RPS.findall(result.stdout.replace("\r", "\n"))
    if result.returncode != 0 or not found:
        raise BenchError(f"redis-benchmark {' '.join(command)} failed: "
                         f"{(result.stderr or result.stdout)[-500:]}")
    return float(found[-1])


TOOL_COMMANDS = {"valqd": (("push", ["valq", "push", "q1", "m1"]), ("pop", ["valq", "pop", "q1"])),
                 "valkey": (("push", ["lpush", "q1", "m1"]), ("pop", ["rpop", "q1"]))}
# Valkey gets this many times the requests, so that its runs last about as long as valqd's:
# at -P 16 it answers hundreds of thousands a second, and a run of a fraction of a second
# measures the scheduler's moment more than the server
TOOL_REQUESTS_SCALE = {"valqd": 1, "valkey": 4}


def tools(targets: list[Target], opts, log) -> dict:
    """`redis-benchmark -P 16` pushes, then as many pops, against every valqd target and
    plain Valkey, in interleaved rounds, each round on fresh servers (AOF everysec); per
    valqd target and operation its ratio to Valkey's in the same round."""
    if shutil.which("redis-benchmark") is None:
        return {"skipped": "redis-benchmark not found (apt-get install redis-tools)",
                "rows": []}
    n = opts.tool_requests
    servers = valqd_targets(targets) + ([VALKEY] if valkey_server_binary() else [])
    rps: dict[tuple[str, str], list[float | None]] = {}
    orders = []
    for r in range(opts.rounds):
        order = rounds.rotated(servers, r)
        orders.append([t.name for t in order])
        for t in order:
            with server_for(t, True, opts.workdir) as server:
                if t.system == "valqd":
                    conn = RespConn(server.port)
                    conn.call("VALQ", "CREATE", "q1")
                    conn.close()
                for op, command in TOOL_COMMANDS[t.system]:
                    found = _redis_benchmark(server.port, n * TOOL_REQUESTS_SCALE[t.system],
                                             command)
                    rps.setdefault((t.name, op), []).append(found)
                    log(f"redis-benchmark round {r + 1}/{opts.rounds} -P 16 {t.label} "
                        f"{' '.join(command)}: {found:,.0f} requests/s")
    rows = []
    for t in servers:
        for op, command in TOOL_COMMANDS[t.system]:
            row = {"target": t.name, "system": t.system,
                   "requests": n * TOOL_REQUESTS_SCALE[t.system],
                   "server": f"{t.label} (AOF everysec)", "op": op,
                   "command": " ".join(command), "rps": rounds.summary(rps[(t.name, op)])}
            if t.system == "valqd" and (VALKEY.name, op) in rps:
                row["ratio"] = rounds.summary(rounds.ratios(rps[(t.name, op)],
                                                            rps[(VALKEY.name, op)]))
            rows.append(row)
    return {"rows": rows, "requests": n, "rounds": opts.rounds, "orders": orders}


# -- the worker library ---------------------------------------------------------------------

WORKER_CONCURRENCY = 8


def _run_worker(port: int, jobs: int, kind: str, results) -> None:
    """In a child process: valqd.worker with a no-op handler (`async def`, or a plain
    function run in the worker's threads) over the bench queue, until `jobs` were handled."""
    import asyncio

    from valqd.worker import Worker

    try:
        worker = Worker(f"valkey://{HOST}:{port}", concurrency=WORKER_CONCURRENCY)
        lock = threading.Lock()
        handled = 0
        last = 0.0

        def count() -> None:
            nonlocal handled, last
            with lock:
                handled += 1
                if handled == jobs:
                    last = time.monotonic()
                    worker.stop()

        async def noop_async(job) -> None:
            count()

        def noop(job) -> None:
            count()

        worker.add(QUEUE.decode(), noop_async if kind == "async" else noop)
        start = time.monotonic()
        summary = asyncio.run(worker.serve())
        # the last handler's time, not serve()'s end: a stop waits out the MPOP in flight
        results.put(("ok", {"jobs": summary.done, "seconds": last - start}))
    except Exception:
        results.put(("error", traceback.format_exc()))


def _peak_connections(port: int, stop: threading.Event, peak: list[int]) -> None:
    """The most clients connected while the worker runs, this sampler's own left out."""
    conn = RespConn(port)
    try:
        while not stop.is_set():
            peak[0] = max(peak[0], int(_info(conn, "clients")["connected_clients"]) - 1)
            time.sleep(0.05)
    finally:
        conn.close()


def _load(server: Server, jobs: int) -> None:
    filler = make_client("valqd", server.port, 0, 300)
    filler.setup()
    filler.fill(jobs)
    filler.close()


def _through_worker(server: Server, jobs: int, kind: str, time_limit: float) -> dict:
    _load(server, jobs)
    results = CTX.Queue()
    stop = threading.Event()
    peak = [0]
    cpu0 = server.cpu_times()
    proc = CTX.Process(target=_run_worker, args=(server.port, jobs, kind, results),
                       daemon=True)
    proc.start()  # before the sampler thread: fork a process without threads
    sampler = threading.Thread(target=_peak_connections, args=(server.port, stop, peak),
                               daemon=True)
    sampler.start()
    try:
        status, value = results.get(timeout=time_limit + 60)
    except queue_module.Empty:
        raise BenchError("the worker did not finish in time") from None
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        stop.set()
        sampler.join(10)
    cpu1 = server.cpu_times()
    if status != "ok":
        raise BenchError("the worker failed:\n" + value)
    cpu = (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1])
    return {"jobs": value["jobs"], "seconds": round(value["seconds"], 3),
            "throughput": value["jobs"] / value["seconds"], "connections": peak[0],
            "cpu_us_per_job": cpu / value["jobs"] * 1e6}


def _pop_ack_body(client, index, args):
    """pop one, ack it, until `jobs` acks or the queue is empty or the time limit."""
    jobs = args["cycles"]
    pop, ack = client.pop, client.ack
    start = time.monotonic()
    deadline = start + args["time_limit"]
    done = 0
    while done < jobs and time.monotonic() < deadline:
        ids = pop(1)
        if not ids:
            break
        ack(ids)
        done += 1
    return {"cycles": done, "start": start, "end": time.monotonic()}


def _raw(server: Server, jobs: int, connections: int, prefilled: bool,
         time_limit: float) -> dict:
    """`connections` client processes, one request at a time each: PUSH/POP/ACK cycles, or
    (prefilled) POP/ACK of messages loaded first, as the worker gets them."""
    if not prefilled:
        m = measure_cycles(server, "valqd", jobs, 1, connections, time_limit)
        return {"jobs": m["cycles"], "seconds": m["seconds"], "throughput": m["throughput"],
                "connections": connections, "cpu_us_per_job": m["cpu_us_per_cycle"]}
    _load(server, jobs)
    args = {"cycles": math.ceil(jobs / connections), "time_limit": time_limit}
    run = run_clients(server, "valqd", connections, _pop_ack_body, args, time_limit)
    done = sum(r["cycles"] for r in run["results"])
    seconds = max(r["end"] for r in run["results"]) - min(r["start"] for r in run["results"])
    return {"jobs": done, "seconds": round(seconds, 3), "throughput": done / seconds,
            "connections": connections, "cpu_us_per_job": run["cpu"] / done * 1e6}


def worker(t: Target, opts, log) -> dict:
    """Jobs per second through valqd.worker with a no-op handler, and beside it raw POP/ACK
    (of messages loaded first, as the worker's are) and raw PUSH/POP/ACK from as many
    connections as the worker used: the library's overhead. One valqd, AOF everysec."""
    try:
        import valqd.worker  # noqa: F401 -- only to know it can run
    except ImportError as exc:
        return {"skipped": f"{exc}", "rows": []}
    rows = []
    jobs = opts.worker_jobs
    with server_for(t, True, opts.workdir) as server:
        _through_worker(server, max(200, jobs // 20), "async", opts.time_limit)  # warm up
        for kind in ("async", "sync"):
            m = _through_worker(server, jobs, kind, opts.time_limit)
            what = ("valqd.worker, async no-op handler" if kind == "async"
                    else "valqd.worker, plain no-op handler (in threads)")
            rows.append({"what": what, "kind": kind, **m})
            log(f"worker {kind}: {m['throughput']:,.0f} jobs/s over {m['connections']} "
                f"connections, {m['cpu_us_per_job']:.1f} us server CPU/job")
        connections = max(r["connections"] for r in rows) or WORKER_CONCURRENCY + 1
        for prefilled, what in ((True, "raw POP/ACK, messages loaded first"),
                                (False, "raw PUSH/POP/ACK")):
            m = _raw(server, jobs, connections, prefilled, opts.time_limit)
            rows.append({"what": what, "kind": "raw-pop-ack" if prefilled else "raw-cycle",
                         **m})
            log(f"{what}: {m['throughput']:,.0f} jobs/s over {connections} connections, "
                f"{m['cpu_us_per_job']:.1f} us server CPU/job")
    return {"rows": rows, "jobs": jobs, "concurrency": WORKER_CONCURRENCY}
# -- costs that must stay bounded: a greedy client, many queues, loading -------------------------

def _pipeline_beside_pings(t: Target, opts, log) -> dict:
    """One client writes `pipeline_pushes` pushes without reading a reply until all are
    sent, while a pinger measures the longest wait of another client's PING."""
    n = opts.pipeline_pushes
    with server_for(t, False, opts.workdir) as server:
        conn = RespConn(server.port)
        if t.system == "valkey":
            push = resp("RPUSH", "jobs", BODY)
        else:
            conn.call("VALQ", "CREATE", "jobs")
            push = resp("VALQ", "PUSH", "jobs", BODY)
        pinger = Pinger(server.port, limit_s=opts.time_limit + 60)
        thread = threading.Thread(target=pinger.run, daemon=True)
        thread.start()
        time.sleep(0.3)
        replies = {"count": 0}

        def drain() -> None:
            got = 0
            while got < n:
                got += len(conn.read(min(10_000, n - got)))
            replies["count"] = got

        chunk = push * 1000
        reader = threading.Thread(target=drain, daemon=True)
        started = time.monotonic()
        sent = 0
        while sent < n and time.monotonic() - started < opts.time_limit:
            k = min(1000, n - sent)
            conn.send(chunk if k == 1000 else push * k)
            sent += k
        sent_at = time.monotonic()
        n = sent
        reader.start()  # read the replies only once everything is sent
        reader.join(opts.time_limit + 60)
        seconds = time.monotonic() - started
        time.sleep(0.2)
        pinger.stop()
        thread.join(10)
        conn.close()
    label = "Valkey (RPUSH)" if t.system == "valkey" else t.label
    row = {"server": label, "target": t.name, "pushes": n, "seconds": round(seconds, 3),
           "send_seconds": round(sent_at - started, 3), "pushes_per_s": n / seconds,
           "worst_ping_ms": pinger.max_gap * 1e3, "pings": pinger.count,
           "error": pinger.error}
    log(f"pipeline of {_count(n)} pushes, {label}: worst PING {row['worst_ping_ms']:.1f} ms, "
        f"{row['pushes_per_s']:,.0f} pushes/s")
    return row


def _timed(conn: RespConn, *args) -> tuple[object, float]:
    started = time.perf_counter()
    reply = conn.call(*args)
    return reply, time.perf_counter() - started


def _full_scan(conn: RespConn, count: int) -> tuple[int, int, float]:
    """(names returned, calls, seconds) of a SCAN from cursor 0 back to 0."""
    started = time.perf_counter()
    cursor, names, calls = b"0", 0, 0
    while True:
        cursor, batch = conn.call("SCAN", cursor, "COUNT", count)
        names += len(batch)
        calls += 1
        if cursor == b"0":
            return names, calls, time.perf_counter() - started


def _scrape(port: int) -> tuple[int, float]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = bytearray()
        while chunk := s.recv(1 << 20):
            data += chunk
    seconds = time.perf_counter() - started
    return len(data) - data.find(b"\r\n\r\n") - 4, seconds


def _many_queues(t: Target, queues: int, opts, log) -> dict:
    """INFO, /metrics and a full SCAN with `queues` queues (Valkey: as many lists), each
    holding one message."""
    system = t.system
    options = {} if system == "valkey" else {"metrics_port": free_port()}
    with server_for(t, False, opts.workdir, **options) as server:
        conn = RespConn(server.port)
        for start in range(0, queues, 1000):
            names = [f"queue:{i}" for i in range(start, min(start + 1000, queues))]
            if system == "valkey":
                conn.send(b"".join(resp("RPUSH", name, BODY) for name in names))
            else:
                conn.send(b"".join(resp("VALQ", "CREATE", name) + resp("VALQ", "PUSH", name, BODY)
                                   for name in names))
                conn.read(len(names))
            conn.read(len(names))
        info, info_s = _timed(conn, "INFO")
        row = {"server": "Valkey" if system == "valkey" else "valqd", "queues": queues,
               "info_bytes": len(info), "info_ms": info_s * 1e3}
        for count in (10, 1000):
            names, calls, seconds = _full_scan(conn, count)
            row[f"scan{count}_ms"] = seconds * 1e3
            row[f"scan{count}_calls"] = calls
            if names < queues:
                row["error"] = f"SCAN COUNT {count} returned {names} of {queues} names"
        if system != "valkey":
            row["metrics_bytes"], seconds = _scrape(options["metrics_port"])
            row["metrics_ms"] = seconds * 1e3
        conn.close()
    log(f"{row['server']} with {_count(queues)} queues: INFO {row['info_bytes']:,} bytes in "
        f"{row['info_ms']:.1f} ms, full SCAN (COUNT 10) {row['scan10_ms']:.0f} ms"
        + (f", /metrics {row['metrics_bytes']:,} bytes in {row['metrics_ms']:.1f} ms"
           if "metrics_ms" in row else ""))
    return row


def _aof_load_peak(t: Target, opts, log) -> dict:
    """Peak resident memory (VmHWM) of valqd loading an AOF of N pushes at start-up."""
    n = opts.persistence_messages
    server = server_for(t, True, opts.workdir, auto_aof_rewrite_percentage=0)
    try:
        _fill_and_stop(server, n)
        aof_bytes = server.disk_bytes()
        seconds = server.restart(timeout=opts.time_limit + 600)
        row = {"target": t.name, "label": f"valqd {build_of(t)}", "messages": n,
               "aof_bytes": aof_bytes, "seconds_to_ping": seconds,
               "peak_rss": peak_rss_bytes(server.pid), "rss_after_load": server.rss()}
    finally:
        server.close()
    log(f"AOF load of {_count(n)} messages, {row['label']}: peak RSS "
        f"{row['peak_rss'] / 2**20:.0f} MB ({row['aof_bytes'] / 2**20:.0f} MB file), "
        f"{row['rss_after_load'] / 2**20:.0f} MB after")
    return row


def cost(targets: list[Target], opts, log) -> dict:
    """The pipeline beside a pinger for every valqd target and Valkey in interleaved
    rounds; INFO, /metrics and SCAN with many queues for valqd's first target and Valkey;
    the peak memory of an AOF load for every build."""
    out: dict = {"pipeline": [], "queues": [], "aof_loads": []}
    pipelined = valqd_targets(targets) + ([VALKEY] if valkey_server_binary() else [])
    runs: dict[str, list[dict]] = {t.name: [] for t in pipelined}
    for r in range(opts.pipeline_rounds):
        for t in rounds.rotated(pipelined, r):
            runs[t.name].append(_pipeline_beside_pings(t, opts, log))
    for t in pipelined:
        rows = runs[t.name]
        waits = rounds.summary([r["worst_ping_ms"] for r in rows])
        out["pipeline"].append({
            "server": rows[0]["server"], "target": t.name, "pushes": rows[0]["pushes"],
            "rounds": len(rows), "worst_ping_ms": waits["median"],
            "worst_ping_ms_max": waits["max"], "worst_ping_ms_all": waits["rounds"],
            "pushes_per_s": rounds.summary([r["pushes_per_s"] for r in rows])["median"],
            "pings": sum(r["pings"] for r in rows),
            "error": next((r["error"] for r in rows if r["error"]), None)})
    first = primary_valqd(targets)
    for queues in opts.cost_queues:
        for t in [first] + ([VALKEY] if valkey_server_binary() else []):
            out["queues"].append(_many_queues(t, queues, opts, log))
    for t in one_per_build(targets):
        out["aof_loads"].append(_aof_load_peak(t, opts, log))
    return out
