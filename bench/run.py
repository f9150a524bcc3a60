"""The runner: `python -m bench [options]` or `python bench/run.py [options]`."""

import argparse
import json
import os
import shlex
import sys
import time
import traceback

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"

from . import instructions, report, workloads  # noqa: E402
from .targets import (BUILT, DEFAULT_TARGETS, QUICK_TARGETS, TARGETS, VALKEY,  # noqa: E402
                      available, machine_info, prepare, primary_valqd, valkey_server_binary)

SECTIONS = ("job-cycle", "latency", "scale", "memory", "persistence", "tools", "worker",
            "cost", "instructions")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

FULL = dict(cycles_pipelined=100_000, cycles_unpipelined=20_000, time_limit=120.0,
            latency_rate=1000, latency_seconds=15.0, scale_backlogs=[1000, 100_000, 1_000_000],
            scale_inflight=100_000, scale_cycles=50_000, storm_leases=100_000,
            storm_watch_s=10.0, memory_messages=1_000_000, persistence_messages=1_000_000,
            fsync_pushes=100_000, tool_requests=100_000, worker_jobs=20_000,
            pipeline_pushes=1_000_000, pipeline_rounds=3, cost_queues=[1000, 100_000],
            rounds=5, callgrind_ops=2000)
QUICK = dict(cycles_pipelined=3000, cycles_unpipelined=1000, time_limit=20.0,
             latency_rate=400, latency_seconds=1.0, scale_backlogs=[1000, 5000, 20_000],
             scale_inflight=5000, scale_cycles=2000, storm_leases=5000, storm_watch_s=3.0,
             memory_messages=20_000, persistence_messages=20_000, fsync_pushes=2000,
             tool_requests=5000, worker_jobs=1000, pipeline_pushes=20_000, pipeline_rounds=1,
             cost_queues=[200, 2000], rounds=2, callgrind_ops=100)


# the sizes a run can be given on the command line: option -> what it sets
SIZE_OPTIONS = {
    "cycles_pipelined": "job cycles per pipelined run",
    "cycles_unpipelined": "job cycles per unpipelined run",
    "time_limit": "seconds any one measurement may take",
    "latency_rate": "job cycles per second, in total, during the latency test",
    "latency_seconds": "length of the latency test per target",
    "scale_backlogs": "comma-separated backlogs of the scale test",
    "scale_inflight": "messages in flight in the scale test",
    "scale_cycles": "job cycles per scale measurement",
    "storm_leases": "leases expiring together in the timer storm",
    "memory_messages": "messages loaded for the memory test",
    "persistence_messages": "messages in the AOF load and rewrite tests",
    "fsync_pushes": "pushes per appendfsync run",
    "tool_requests": "redis-benchmark -n",
    "worker_jobs": "jobs per worker-library measurement",
    "pipeline_pushes": "pushes one client pipelines beside a pinging client",
    "pipeline_rounds": "rounds of that pipeline per target (the median worst wait is shown)",
    "cost_queues": "comma-separated numbers of queues for INFO, /metrics and SCAN",
    "rounds": "interleaved rounds of the job cycle and redis-benchmark",
    "callgrind_ops": "operations per workload counted under callgrind",
}


def _shown(value: int | float | list[int]) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else f"{value:,}"


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark valqd against Valkey (Lua scripts and Streams) and beanstalkd, "
                    "in one run, and write a Markdown report with PNG charts.")
    p.add_argument("--quick", action="store_true",
                   help="a few thousand cycles and small message counts (a smoke test); "
                        "the checkout's valqd under both event loops unless --targets is given")
    p.add_argument("--targets", help="comma-separated: " + ",".join(TARGETS) + " (default: "
                   + ",".join(DEFAULT_TARGETS) + ", those that can run here; with --quick: "
                   + ",".join(QUICK_TARGETS) + "). valqd-BUILD-LOOP runs a build installed in "
                   "an environment of its own; valqd, valqd-LOOP run the checkout")
    p.add_argument("--builds-dir", help="where the builds' environments go "
                   "(default: bench/.builds)")
    p.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS)
                   + " (default: all)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="directory for the report, charts and results.json "
                        "(default: bench/results)")
    p.add_argument("--report", help="path of the Markdown report (default: OUT/REPORT.md)")
    p.add_argument("--workdir", help="where the servers' temporary directories go "
                   "(default: the system's temp dir)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    g = p.add_argument_group("sizes (defaults: full run / --quick)")
    for key, what in SIZE_OPTIONS.items():
        g.add_argument("--" + key.replace("_", "-"),
                       type=_int_list if isinstance(FULL[key], list) else type(FULL[key]),
                       help=f"{what} ({_shown(FULL[key])} / {_shown(QUICK[key])})")
    opts = p.parse_args(argv)
    for key, value in (QUICK if opts.quick else FULL).items():
        if getattr(opts, key, None) is None:
            setattr(opts, key, value)
    if opts.targets:
        names = [t.strip() for t in opts.targets.split(",") if t.strip()]
        unknown = [t for t in names if t not in TARGETS]
        if unknown:
            p.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
        missing = [f"{t}: {available(t)}" for t in names if available(t)]
        if missing:
            p.error("; ".join(missing))
    else:
        names = [t for t in (QUICK_TARGETS if opts.quick else DEFAULT_TARGETS)
                 if available(t) is None]
    opts.targets = [TARGETS[name] for name in names]
    opts.sections = SECTIONS
    if opts.only:
        opts.sections = [s.strip() for s in opts.only.split(",") if s.strip()]
        unknown = [s for s in opts.sections if s not in SECTIONS]
        if unknown:
            p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    opts.report = opts.report or os.path.join(opts.out, "REPORT.md")
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    os.makedirs(opts.out, exist_ok=True)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {message}", flush=True)

    results: dict = {"meta": {
        "command": " ".join(["python -m bench", *(shlex.quote(a) for a in argv)]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "quick": opts.quick, "targets": [t.name for t in opts.targets],
        "sections": list(opts.sections), "rounds": opts.rounds,
        "machine": machine_info()}, "errors": []}
    log(f"targets: {', '.join(t.name for t in opts.targets)}; "
        f"sections: {', '.join(opts.sections)}")
    left_out = prepare(opts.targets, log, opts.builds_dir)
    for why in left_out:
        log(f"left out: {why}")
    results["meta"]["left_out"] = left_out
    targets = [t for t in opts.targets if not any(w.startswith(t.name + ":") for w in left_out)]
    results["meta"]["targets"] = [t.name for t in targets]
    results["meta"]["builds"] = {t.name: t.build for t in targets if t.system == "valqd"}
    results["meta"]["installed"] = {build: {"python": info["python"],
                                            "compiled_modules": len(info["compiled"])}
                                    for build, info in BUILT.items()}
    first = primary_valqd(targets)

    def section(name: str, fn, needs_valqd: bool = False) -> None:
        if name not in opts.sections or (needs_valqd and first is None):
            return
        try:
            fn()
        except Exception:
            results["errors"].append({"section": name, "message": traceback.format_exc()})
            log(f"{name} failed:\n{traceback.format_exc()}")

    def job_cycle():
        results["job_cycle"] = workloads.job_cycle(targets, opts, log)

    def latency():
        results["latency"] = workloads.latency(targets, opts, log)

    def scale():
        results["scale"] = workloads.scale(targets, opts, log)
        results["scale_ratios"] = workloads.scale_ratios(results["scale"])

    def storm():
        results["storm"] = workloads.timer_storm(first, opts, log)

    def memory():
        results["memory"] = workloads.memory(targets, opts, log)

    def persistence():
        results["persistence"] = workloads.persistence(targets, opts, log)

    def tools():
        results["tools"] = workloads.tools(targets, opts, log)

    def worker():
        results["worker"] = workloads.worker(first, opts, log)

    def cost():
        results["cost"] = workloads.cost(targets, opts, log)

    def counted():
        extra = [VALKEY] if valkey_server_binary() else []
        results["instructions"] = instructions.instructions(targets + extra, opts.callgrind_ops,
                                                            opts.workdir, log)

    section("job-cycle", job_cycle)
    section("latency", latency)
    section("scale", scale)
    section("scale", storm, needs_valqd=True)
    section("memory", memory)
    section("persistence", persistence, needs_valqd=True)
    section("tools", tools, needs_valqd=True)
    section("worker", worker, needs_valqd=True)
    section("cost", cost, needs_valqd=True)
    section("instructions", counted)

    results["meta"]["seconds"] = time.time() - started
    results["meta"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    with open(os.path.join(opts.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    report.write(results, opts.report, charts=not opts.no_charts)
    log(f"report: {opts.report}")
    for t in report.targets(results):
        log(f"target: {t['name']}: {t['figure']} (needed {t['threshold']}) -> "
            f"{'—' if t['ok'] is None else 'PASS' if t['ok'] else 'FAIL'}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
