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

from . import report, workloads  # noqa: E402
from .targets import SYSTEMS, available, machine_info  # noqa: E402

SECTIONS = ("job-cycle", "latency", "scale", "memory", "persistence", "tools", "worker",
            "cost")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

FULL = dict(cycles_pipelined=200_000, cycles_unpipelined=50_000, time_limit=120.0,
            latency_rate=1000, latency_seconds=15.0, scale_backlogs=[1000, 100_000, 1_000_000],
            scale_inflight=100_000, scale_cycles=50_000, storm_leases=100_000,
            storm_watch_s=10.0, memory_messages=1_000_000, persistence_messages=1_000_000,
            fsync_pushes=100_000, tool_requests=200_000, worker_jobs=20_000,
            pipeline_pushes=1_000_000, pipeline_rounds=3, cost_queues=[1000, 100_000])
QUICK = dict(cycles_pipelined=3000, cycles_unpipelined=1000, time_limit=20.0,
             latency_rate=400, latency_seconds=1.0, scale_backlogs=[1000, 5000, 20_000],
             scale_inflight=5000, scale_cycles=2000, storm_leases=5000, storm_watch_s=3.0,
             memory_messages=20_000, persistence_messages=20_000, fsync_pushes=2000,
             tool_requests=5000, worker_jobs=1000, pipeline_pushes=20_000, pipeline_rounds=1,
             cost_queues=[200, 2000])


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
                        "valqd only unless --targets is given")
    p.add_argument("--targets", help="comma-separated: " + ",".join(SYSTEMS) + " (default: all "
                   "that are installed; with --quick: valqd)")
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
        opts.systems = [t.strip() for t in opts.targets.split(",") if t.strip()]
        unknown = [t for t in opts.systems if t not in SYSTEMS]
        if unknown:
            p.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
        missing = [f"{t}: {available(t)}" for t in opts.systems if available(t)]
        if missing:
            p.error("; ".join(missing))
    else:
        opts.systems = ["valqd"] if opts.quick else [t for t in SYSTEMS if available(t) is None]
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
        "quick": opts.quick, "targets": opts.systems, "sections": list(opts.sections),
        "machine": machine_info()}, "errors": []}
    log(f"targets: {', '.join(opts.systems)}; sections: {', '.join(opts.sections)}")

    def section(name: str, fn) -> None:
        if name not in opts.sections:
            return
        try:
            fn()
        except Exception:
            results["errors"].append({"section": name, "message": traceback.format_exc()})
            log(f"{name} failed:\n{traceback.format_exc()}")

    def job_cycle():
        results["job_cycle"] = workloads.job_cycle(opts.systems, opts, log)

    def latency():
        results["latency"] = workloads.latency(opts.systems, opts, log)

    def scale():
        results["scale"] = workloads.scale(opts.systems, opts, log)
        results["scale_ratios"] = workloads.scale_ratios(results["scale"])

    def storm():
        if "valqd" in opts.systems:
            results["storm"] = workloads.timer_storm(opts, log)

    def memory():
        results["memory"] = workloads.memory(opts.systems, opts, log)

    def persistence():
        if "valqd" in opts.systems:
            results["persistence"] = workloads.persistence(opts.systems, opts, log)

    def tools():
        if "valqd" in opts.systems:
            results["tools"] = workloads.tools(opts.systems, opts, log)

    def worker():
        if "valqd" in opts.systems:
            results["worker"] = workloads.worker(opts, log)

    section("job-cycle", job_cycle)
    section("latency", latency)
    section("scale", scale)
    section("scale", storm)
    section("memory", memory)
    section("persistence", persistence)
    section("tools", tools)
    section("worker", worker)

    def cost():
        if "valqd" in opts.systems:
            results["cost"] = workloads.cost(opts.systems, opts, log)

    section("cost", cost)

    results["meta"]["seconds"] = time.time() - started
    with open(os.path.join(opts.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    report.write(results, opts.report, charts=not opts.no_charts)
    log(f"report: {opts.report}")
    for t in report.targets(results):
        log(f"target: {t['name']}: {t['figure']} (needed {t['threshold']}) -> "
            f"{'not measured' if t['ok'] is None else 'PASS' if t['ok'] else 'FAIL'}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
