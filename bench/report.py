"""The Markdown report, the issue's targets with pass/fail marks, and the PNG charts."""

import math
import os

from .targets import LABELS

OTHERS = ("valkey-lua", "valkey-streams", "beanstalkd")
SHORT = {"valkey-lua": "valkey-lua", "valkey-streams": "streams", "beanstalkd": "beanstalkd"}


def _n(value, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}"


def _x(value) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header, rows) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _find(rows, **match):
    for r in rows or ():
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


# -- targets --------------------------------------------------------------------------------

def _spread(summary, fmt=_x) -> str:
    """`median (min–max)` of a rounds.summary."""
    if not summary or summary.get("median") is None:
        return "—"
    if summary["min"] == summary["max"]:
        return fmt(summary["median"])
    return f"{fmt(summary['median'])} ({fmt(summary['min'])}–{fmt(summary['max'])})"


def _each(summary, digits: int = 2) -> str:
    return " / ".join("—" if v is None else f"{v:.{digits}f}" for v in summary["rounds"])


def _mode(results: dict, mode: str) -> dict | None:
    return next((m for m in (results.get("job_cycle") or {}).get("modes", [])
                 if m["mode"] == mode), None)


def targets(results: dict) -> list[dict]:
    """The issues' targets, each {name, figure, threshold, ok}; per valqd target where the
    figure depends on the build or the event loop."""
    out = []
    pipelined, unpipelined = _mode(results, "pipelined"), _mode(results, "unpipelined")
    for row in (pipelined or {}).get("rows", []):
        if row["system"] != "valqd" or "ratio" not in row:
            continue
        each = [v for v in row["ratio"]["rounds"] if v is not None]
        met = sum(v <= 0.6 for v in each)
        out.append({"name": f"Pipelined job cycle, {row['label']}: server CPU per cycle ÷ "
                            "Valkey-Lua's, in each round (issue 16)",
                    "figure": f"{_spread(row['ratio'])}; ≤ 0.6x in {met} of {len(each)} rounds",
                    "threshold": "≤ 0.6x in every round",
                    "ok": bool(each) and met == len(each)})
    for row in (unpipelined or {}).get("rows", []):
        if row["system"] != "valqd" or "ratio" not in row:
            continue
        median = row["ratio"]["median"]
        out.append({"name": f"Unpipelined job cycle, {row['label']}: cycles/s ÷ Valkey "
                            "Streams', median of the rounds (issue 16)",
                    "figure": _spread(row["ratio"]), "threshold": "≥ 1.0x",
                    "ok": None if median is None else median >= 1.0})
    for row in (results.get("tools") or {}).get("rows") or []:
        if "ratio" not in row:
            continue
        theirs, needed = {"push": ("lpush", 0.5), "pop": ("rpop", 0.4)}[row["op"]]
        median = row["ratio"]["median"]
        out.append({"name": f"redis-benchmark -P 16, {row['server']}: `valq {row['op']}` ÷ "
                            f"Valkey `{theirs}`, median of the rounds (issue 16)",
                    "figure": _spread(row["ratio"]), "threshold": f"≥ {needed}x",
                    "ok": None if median is None else median >= needed})
    for mem in results.get("memory") or []:
        if mem["system"] == "valqd":
            out.append({"name": f"Memory per queued 100-byte message, {mem['label']} "
                                "(issues 12, 16)",
                        "figure": f"{mem['bytes_per_message']:.0f} bytes "
                                  f"({mem['messages']:,} messages)",
                        "threshold": "≤ 231 bytes", "ok": mem["bytes_per_message"] <= 231})
    for load in ((results.get("persistence") or {}).get("load") or []):
        if load["system"] == "valqd" and "logged" in load["what"]:
            out.append({"name": f"AOF load, {load['label']}, {load['what']} (issue 16: no "
                                "regression)",
                        "figure": f"{load['records_per_s']:,.0f} records/s",
                        "threshold": "no regression", "ok": None})
    for row in (results.get("cost") or {}).get("pipeline", []):
        if row["target"] != "valkey":
            out.append({"name": f"Worst PING wait (median of {row['rounds']}) beside "
                                f"{row['pushes']:,} pipelined pushes, {row['server']} "
                                "(issues 12, 16)",
                        "figure": f"{row['worst_ping_ms']:.1f} ms", "threshold": "≤ ~100 ms",
                        "ok": row["worst_ping_ms"] <= 100})
    ratio = (results.get("scale_ratios") or {}).get("valqd")
    if ratio is not None:
        out.append({"name": "Flat scaling (valqd): largest/smallest CPU per cycle in the "
                            "scale test (issue 7)",
                    "figure": f"{ratio:.2f}x", "threshold": "≤ 1.5x", "ok": ratio <= 1.5})
    return out


def _mark(ok) -> str:
    return "—" if ok is None else ("**PASS**" if ok else "**FAIL**")


# -- the report -----------------------------------------------------------------------------

def write(results: dict, path: str, charts: bool = True) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    chart_files, chart_note = ([], "charts not requested")
    if charts:
        chart_files, chart_note = make_charts(results, directory)
    text = render(results, chart_files, chart_note)
    with open(path, "w") as f:
        f.write(text)
    return text


def render(results: dict, chart_files: list[str], chart_note: str) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    lines = ["# valqd benchmark report", ""]
    quick = " (quick mode: small counts, figures are only a smoke test)" if meta["quick"] else ""
    lines += [f"Run {meta['started']}, took {meta['seconds'] / 60:.1f} min{quick}.",
              "", "```", meta["command"], "```", ""]
    lines += ["## Machine", ""]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines += [f"- {machine['nproc']} CPUs: {machine['cpu_model']}; "
              f"{machine['memory_bytes'] / 2**30:.1f} GiB; Linux {machine['kernel']}",
              f"- {versions}",
              f"- load average at start: {', '.join(map(str, machine['loadavg_at_start']))}"
              + (f"; at the end: {', '.join(map(str, meta['loadavg_at_end']))}"
                 if meta.get("loadavg_at_end") else ""),
              *(f"- valqd {build} build: {info['python']}, "
                + (f"{info['compiled_modules']} compiled modules" if info["compiled_modules"]
                   else "pure Python") for build, info in meta.get("installed", {}).items()),
              *(f"- left out: {why}" for why in meta.get("left_out", [])),
              "- Clients and servers share this machine; other work running on it makes the "
              "figures noisy. Throughput includes the clients' own cost (they compete with the "
              "server for the same cores); server CPU per cycle does not.", ""]

    lines += ["## Targets (issues 7, 12 and 16)", ""]
    lines += _table(["target", "measured", "needed", "result"],
                    [[t["name"], t["figure"], t["threshold"], _mark(t["ok"])]
                     for t in targets(results)])
    lines.append("")

    lines += _job_cycle(results.get("job_cycle"))
    lines += _latency(results.get("latency"))
    lines += _scale(results.get("scale"), results.get("scale_ratios"), results.get("storm"))
    lines += _memory(results.get("memory"))
    lines += _persistence(results.get("persistence"))
    lines += _tools(results.get("tools"))
    lines += _worker(results.get("worker"))
    lines += _cost(results.get("cost"))
    lines += _instructions(results.get("instructions"))

    lines += ["## Charts", ""]
    if chart_files:
        lines += [f"![{name}]({name})" for name in chart_files]
    else:
        lines.append(f"No charts: {chart_note}.")
    lines.append("")

    if results.get("errors"):
        lines += ["## Errors", ""]
        for e in results["errors"]:
            lines += [f"- {e['section']}:", "", "```", e["message"].rstrip(), "```", ""]

    lines += ["## How it was measured", "",
              "- Every server is started by the runner on a free loopback port in a temporary "
              "directory and stopped afterwards. valqd: `python -m valqd --appendonly yes "
              "--appendfsync everysec` (or `--appendonly no`) with `--event-loop` as the "
              "target names it; a build target (`valqd-pure-*`, `valqd-compiled-*`) runs "
              "the package that `VALQD_BUILD=<build> pip install` put into an environment of "
              "its own (bench/.builds), from the server's directory, without the checkout on "
              "its path; `valqd`, `valqd-asyncio` and `valqd-uvloop` run the checkout. Valkey: `valkey-server --save \"\" "
              "--appendonly yes|no --appendfsync everysec`. beanstalkd: `-b DIR -f 1000` or no "
              "binlog.",
              "- Job cycle: push a 100-byte body, pop it with a lease, ack it. valqd: "
              "`VALQ PUSH` / `VALQ POP` / `VALQ ACK`. Valkey + Lua (EVALSHA of scripts loaded "
              "with SCRIPT LOAD): "
              "push = INCR + HSET + RPUSH; pop = LPOP + ZADD lease deadline + HINCRBY attempts "
              "(+ HGET of the body), returning id and body; ack = ZREM + HDEL. Valkey Streams: "
              "XADD; XREADGROUP GROUP g c COUNT 1 STREAMS s >; XACK + XDEL (sent together). "
              "beanstalkd: put / reserve-with-timeout 0 / delete.",
              "- Pipelined: 4 client processes, each sending 50 pushes, then 50 pops, then the "
              "acks, in one write each. Unpipelined: 8 client processes, one request at a time. "
              "All clients share one queue. Clients use raw sockets and hiredis.Reader. A short "
              "warm-up run precedes each measurement.",
              "- Rounds: the job cycle and redis-benchmark run in interleaved rounds; within a "
              "round every target runs back to back, each on a fresh server, and the order is "
              "rotated by one from round to round. A ratio is taken between two targets of "
              "the same round, so that the machine's load, which comes and goes over minutes, "
              "weighs on both sides alike.",
              "- Server CPU per cycle: utime + stime of the server process from /proc/PID/stat, "
              "read before the clients start and after the last one finishes, divided by the "
              "cycles done (10 ms clock ticks).",
              "- Latency: 4 client processes at a fixed total rate of job cycles; each POP and "
              "ACK is timed from send to reply. Persistence on.",
              "- Scale: the pipelined job cycle with a steady backlog of N ready messages ahead "
              "of it (each cycle pushes one and pops/acks the oldest), and with N messages "
              "leased and never acked. Persistence off, to measure the data structures.",
              "- Memory: resident set (/proc/PID/statm) after loading N messages minus before, "
              "divided by N; persistence off. valqd loads with MPUSH, Valkey + Lua with a script "
              "doing the same INCR + HSET + RPUSH per message, Streams with XADD, beanstalkd "
              "with put.",
              "- Pauses (timer storm, rewrite): a client sends PING, waits for the reply, and "
              "repeats; the longest wait is reported.",
              "- Worker library: `valqd.worker` in a process of its own pops with MPOP COUNT "
              "(free slots) BLOCK WITHMETA and acks each job with its lease receipt; its "
              "connections are the most `INFO clients` counted during its run. Its time runs "
              "from the start of `serve()` to the last handler call.", ""]
    return "\n".join(lines) + "\n"


INSTRUCTION_OPS = (("push", "PUSH"), ("pop", "POP"), ("ack", "ACK"),
                   ("cycle", "cycle, depth 50"), ("cycle_unpipelined", "cycle, depth 1"))


def _instructions(out) -> list[str]:
    if not out:
        return []
    lines = ["## Instructions per operation (callgrind)", ""]
    if out.get("skipped"):
        return lines + [f"Skipped: {out['skipped']}.", ""]
    lines += [f"Each server under `valgrind --tool=callgrind`, AOF everysec; the benchmark's "
              f"clients push {out['ops']:,} messages, pop them, ack them ({out['depth']} per "
              f"write), then run {out['ops']:,} job cycles pipelined by {out['depth']} and "
              f"{max(1, out['ops'] // 5):,} unpipelined. Instructions of the whole server "
              "process in user space per operation (a cycle is one push, pop and ack), its "
              "idle rate taken off. These counts do not move with the machine's load.", ""]
    rows = out["rows"]
    lua = next((r for r in rows if r["system"] == "valkey-lua"), None)
    header = ["server", "build", *(what for _, what in INSTRUCTION_OPS)]
    if lua:
        header.append("cycle ÷ Valkey-Lua's")
    table = []
    for r in rows:
        cells = [r["label"], r.get("build") or "",
                 *(_n(r["ops"][op]["per_op"]) if op in r["ops"] else "—"
                   for op, _ in INSTRUCTION_OPS)]
        if lua:
            mine, theirs = r["ops"].get("cycle"), lua["ops"].get("cycle")
            cells.append(_x(_ratio(mine and mine["per_op"], theirs and theirs["per_op"])))
        table.append(cells)
    lines += _table(header, table)
    lines += ["", "Valkey's row is plain lists (LPUSH, RPOP: what redis-benchmark's `lpush` and "
              "`rpop` run); Streams' ACK is XACK + XDEL.", ""]
    return lines


def _cost(out) -> list[str]:
    if not out:
        return []
    lines = ["## Costs that must stay bounded", ""]
    rows = out["pipeline"]
    if rows:
        lines += [f"One client pipelines {rows[0]['pushes']:,} pushes (100-byte bodies) without "
                  "reading a reply until all are sent; another client sends PING after PING. "
                  f"{rows[0]['rounds']} round(s) per server, interleaved; the median of the "
                  "rounds' longest waits, and the longest of all.", ""]
        lines += _table(["server", "worst PING wait, ms (median)", "longest, ms", "each round, ms",
                         "pushes/s (median)"],
                        [[r["server"], _n(r["worst_ping_ms"], 1), _n(r["worst_ping_ms_max"], 1),
                          " / ".join(f"{w:.0f}" for w in r["worst_ping_ms_all"]),
                          _n(r["pushes_per_s"])] for r in rows])
        lines.append("")
    rows = out["queues"]
    if rows:
        lines += ["INFO (default sections), a full SCAN (COUNT 10 and COUNT 1000) and a "
                  "/metrics scrape with N queues (Valkey: N lists), one message each.", ""]
        lines += _table(["server", "queues", "INFO bytes", "INFO ms", "full SCAN COUNT 10, ms",
                         "full SCAN COUNT 1000, ms", "/metrics bytes", "/metrics ms"],
                        [[r["server"], _n(r["queues"]), _n(r["info_bytes"]), _n(r["info_ms"], 2),
                          _n(r["scan10_ms"]), _n(r["scan1000_ms"]),
                          _n(r.get("metrics_bytes")), _n(r.get("metrics_ms"), 1)]
                         for r in rows])
        lines.append("")
    for load in out.get("aof_loads") or []:
        lines += [f"AOF load at start-up, {load['label']}, {load['messages']:,} messages "
                  f"({_mb(load['aof_bytes'])} file): peak resident memory "
                  f"{_mb(load['peak_rss'])}, {_mb(load['rss_after_load'])} once loaded, "
                  f"{load['seconds_to_ping']:.2f} s to the first PING.", ""]
    return lines


def _job_cycle(jc) -> list[str]:
    if not jc or not jc.get("modes"):
        return []
    out = ["## Job cycle", "",
           f"{jc['rounds']} interleaved rounds, AOF everysec on every server: in each round and "
           "mode every target ran back to back on a fresh server, in an order rotated from "
           "round to round (" + "; ".join(f"round {i + 1}: {', '.join(order)}"
                                          for i, order in enumerate(jc["orders"])) + "). "
           "Figures are the median of the rounds, with the lowest and highest in brackets; "
           "ratios are taken within each round.", ""]
    for m in jc["modes"]:
        what = (f"depth {m['depth']}, {m['procs']} client processes, {m['cycles']:,} cycles "
                "per run")
        base = LABELS.get(m["baseline"], m["baseline"])
        figure = ("server CPU per cycle ÷ " if m["baseline_figure"] == "cpu_us_per_cycle"
                  else "cycles/s ÷ ") + base + ("'" if base.endswith("s") else "'s")
        out += [f"### {m['mode'].capitalize()} ({what})", ""]
        out += _table(["target", "build", "cycles/s", "server CPU µs/cycle", figure,
                       "each round"],
                      [[r["label"], r.get("build") or "",
                        _spread(r["throughput"], _n),
                        _spread(r["cpu_us_per_cycle"], lambda v: _n(v, 1))
                        + (" (time limit hit)" if r.get("truncated") else ""),
                        _spread(r.get("ratio")),
                        _each(r["ratio"]) if r.get("ratio") else ""]
                       for r in m["rows"]])
        out.append("")
    return out


def _latency(rows) -> list[str]:
    if not rows:
        return []
    out = ["## Latency under a steady load", "",
           f"{rows[0]['rate']:,} job cycles per second in total from 4 client processes "
           "(unpipelined), persistence on; milliseconds.", ""]
    table = []
    for r in rows:
        p, a = r["pop"], r["ack"]
        table.append([r["label"], _n(r["achieved_rate"]),
                      *(f"{p.get(k, 0):.3f}" for k in ("p50_ms", "p99_ms", "p999_ms")),
                      *(f"{a.get(k, 0):.3f}" for k in ("p50_ms", "p99_ms", "p999_ms")),
                      _n(p.get("samples"))])
    out += _table(["target", "cycles/s", "POP p50", "POP p99", "POP p99.9", "ACK p50", "ACK p99",
                   "ACK p99.9", "samples"], table)
    out.append("")
    mine = _find(rows, system="valqd")
    ratio_rows = []
    if mine:
        for other in OTHERS:
            theirs = _find(rows, system=other)
            if theirs:
                ratio_rows.append([f"valqd/{SHORT[other]}",
                                   *(_x(_ratio(mine[op].get(k), theirs[op].get(k)))
                                     for op in ("pop", "ack") for k in ("p50_ms", "p99_ms",
                                                                         "p999_ms"))])
    if ratio_rows:
        out += ["Ratios (below 1 is better for valqd):", ""]
        out += _table(["ratio", "POP p50", "POP p99", "POP p99.9", "ACK p50", "ACK p99",
                       "ACK p99.9"], ratio_rows)
        out.append("")
    return out


def _scale(rows, ratios, storm) -> list[str]:
    out = []
    if rows:
        out += ["## Scale", "",
                "Server CPU per job cycle (pipelined) with N messages waiting ahead of it, and "
                "with N messages in flight; persistence off.", ""]
        systems = list(dict.fromkeys(r["system"] for r in rows))
        conditions = list(dict.fromkeys(r["condition"] for r in rows))
        table = []
        for system in systems:
            cells = [LABELS[system]]
            for c in conditions:
                r = _find(rows, system=system, condition=c)
                cells.append(_n(r and r["cpu_us_per_cycle"], 1))
            cells.append(_x((ratios or {}).get(system)))
            table.append(cells)
        out += _table(["target", *[f"µs/cycle, {c}" for c in conditions],
                       "largest/smallest"], table)
        out.append("")
    if storm:
        first = storm[0]
        out += ["### Timer storm (valqd)", "",
                f"{first['leases']:,} messages of a queue leased at once by "
                f"{_n(math.ceil(first['leases'] / 1000))} pipelined `VALQ POP q COUNT 1000`, "
                "AOF everysec; a client pinging in a loop from the end of the pops until every "
                "lease has run out reports its longest wait for PONG. The visibility timeout is "
                "1 s when the server can take the leases in well under a second; otherwise "
                "just long enough that every lease is taken before the first runs out. *Live*: "
                "the leases run out as they come due, spread over as long as taking them took. "
                "*All due at once*: the server is stopped (SIGSTOP) right after the pops until "
                "every lease is due, then resumed, so all of them run out in the same instant "
                "(the wait is counted from the resume; the visibility is at least 2 s in this "
                "case).", ""]
        out += _table(["case", "visibility", "leases taken in", "longest wait for PONG",
                       "idle baseline", "replies > 50 ms", "leases expired", "all back after"],
                      [["all due at once" if r["burst"] else "live", f"{r['visibility_s']} s",
                        f"{r['pop_seconds']:.2f} s", f"{r['max_gap_ms']:.1f} ms",
                        f"{r['baseline_max_gap_ms']:.1f} ms", _n(r["slow_replies"]),
                        _n(r["expired"]),
                        "—" if r["all_back_after_s"] is None
                        else f"{r['all_back_after_s']:.1f} s"] for r in storm])
        out.append("")
    return out


def _memory(rows) -> list[str]:
    if not rows:
        return []
    out = ["## Memory", "",
           "Resident bytes per queued 100-byte message (RSS after loading minus before, divided "
           "by the count); persistence off unless the row says AOF.", ""]
    out += _table(["target", "messages", "RSS before", "RSS after", "bytes/message"],
                  [[r["label"], _n(r["messages"]), _mb(r["rss_before"]), _mb(r["rss_after"]),
                    _n(r["bytes_per_message"])] for r in rows])
    out.append("")
    mine = _find(rows, system="valqd")
    if mine:
        ratio_rows = [[f"valqd/{SHORT[o]}", _x(_ratio(mine["bytes_per_message"],
                                                       t["bytes_per_message"]))]
                      for o in OTHERS if (t := _find(rows, system=o))]
        if ratio_rows:
            out += _table(["ratio", "bytes per message (below 1 is better for valqd)"],
                          ratio_rows)
            out.append("")
    return out


def _mb(n) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _persistence(p) -> list[str]:
    if not p:
        return []
    out = ["## Persistence", ""]
    if p.get("load"):
        out += ["### AOF load", "",
                "Restart with the AOF and time until the server answers PING (valqd listens "
                "once loaded; Valkey answers -LOADING until then). Rate = records / that time.",
                ""]
        out += _table(["server", "AOF holds", "AOF size", "records", "seconds to PING",
                       "load time in its log", "records/s", "RSS after load"],
                      [[r.get("label", "Valkey"), r["what"],
                        _mb(r["aof_bytes"]), _n(r["records"]), f"{r['seconds_to_ping']:.2f}",
                        "—" if r["logged_seconds"] is None else f"{r['logged_seconds']:.2f} s",
                        _n(r["records_per_s"]), _mb(r["rss_after_load"])] for r in p["load"]])
        out.append("")
        mine = [r for r in p["load"] if r["system"] == "valqd"]
        theirs = _find(p["load"], system="valkey")
        if mine and theirs:
            out += _table(["ratio", "load rate (records/s; above 1 is better for valqd)"],
                          [[f"{r['label']} ({r['what']}) / Valkey",
                            _x(_ratio(r["records_per_s"], theirs["records_per_s"]))]
                           for r in mine])
            out.append("")
    if p.get("fsync"):
        out += ["### Push throughput: `appendfsync always` vs `everysec`", "",
                "50 concurrent clients (5 processes × 10 connections), each with one push in "
                "flight.", ""]
        out += _table(["server", "appendfsync", "pushes", "seconds", "pushes/s",
                       "server CPU µs/push"],
                      [[r["label"], r["appendfsync"], _n(r["pushes"]), f"{r['seconds']:.2f}",
                        _n(r["throughput"]), _n(r["cpu_us_per_push"], 1)] for r in p["fsync"]])
        out.append("")
        for system in dict.fromkeys(r["system"] for r in p["fsync"]):
            a = _find(p["fsync"], system=system, appendfsync="always")
            e = _find(p["fsync"], system=system, appendfsync="everysec")
            if a and e:
                out.append(f"- {LABELS[system]}: always/everysec = "
                           f"{_x(_ratio(a['throughput'], e['throughput']))}")
        out.append("")
    rw = p.get("rewrite")
    if rw:
        out += ["### BGREWRITEAOF pause (valqd)", "",
                f"BGREWRITEAOF with {rw['messages']:,} messages stored while a client pings in "
                "a loop; until the new file is swapped in.", ""]
        out += _table(["longest wait for PONG", "idle baseline", "rewrite took", "pings",
                       "finished"],
                      [[f"{rw['max_gap_ms']:.1f} ms", f"{rw['baseline_max_gap_ms']:.1f} ms",
                        f"{rw['rewrite_seconds']:.2f} s", _n(rw["pings"]),
                        "yes" if rw["done"] else "no (time limit)"]])
        out.append("")
    return out


def _tools(t) -> list[str]:
    if not t:
        return []
    out = ["## redis-benchmark", ""]
    if t.get("skipped"):
        return out + [f"Skipped: {t['skipped']}.", ""]
    out += [f"`redis-benchmark -P 16 -n N -q <command>` (50 connections; N in the table: "
            "Valkey gets more, so that its runs last about as long), the "
            f"pushes then as many pops, every server with AOF everysec, {t['rounds']} "
            "interleaved rounds (each on fresh servers, the order rotated); requests/s as "
            "the median of the rounds (lowest–highest), and the ratio to Valkey's in each "
            "round.", ""]
    out += _table(["server", "command", "N", "requests/s", "÷ Valkey", "each round"],
                  [[r["server"], f"`{r['command']}`", _n(r["requests"]), _spread(r["rps"], _n),
                    _spread(r.get("ratio")), _each(r["ratio"]) if r.get("ratio") else ""]
                   for r in t["rows"]])
    out.append("")
    return out


def _worker(w) -> list[str]:
    if not w:
        return []
    out = ["## Worker library (valqd)", ""]
    if w.get("skipped"):
        return out + [f"Skipped: {w['skipped']}.", ""]
    out += [f"{w['jobs']:,} jobs through `valqd.worker` (concurrency {w['concurrency']}, "
            "a no-op handler, `valkey` client library) beside raw commands from as many "
            "connections, one request at a time each (raw sockets, hiredis.Reader). The "
            "worker's and the raw POP/ACK's messages are loaded first; raw PUSH/POP/ACK "
            "pushes its own. One valqd, AOF everysec.", ""]
    out += _table(["what", "connections", "jobs/s", "server CPU µs/job"],
                  [[r["what"], r["connections"], _n(r["throughput"]),
                    _n(r["cpu_us_per_job"], 1)] for r in w["rows"]])
    out.append("")
    raw = _find(w["rows"], kind="raw-pop-ack")
    for kind in ("async", "sync"):
        mine = _find(w["rows"], kind=kind)
        if mine and raw:
            out.append(f"- {mine['what']} / raw POP/ACK: "
                       f"{_x(_ratio(mine['throughput'], raw['throughput']))} the jobs per "
                       "second")
    out.append("")
    return out


# -- charts ---------------------------------------------------------------------------------

def make_charts(results: dict, directory: str) -> tuple[list[str], str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return [], "matplotlib is not installed (pip install -e '.[bench]')"
    files = []
    modes = (results.get("job_cycle") or {}).get("modes") or []
    for key, name, ylabel in (("throughput", "throughput.png", "job cycles per second"),
                              ("cpu_us_per_cycle", "cpu_per_cycle.png",
                               "server CPU µs per job cycle")):
        if not modes:
            continue
        fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
        for ax, m in zip(axes[0], modes):
            rows = m["rows"]
            labels = [r["label"].replace(" (", "\n(") for r in rows]
            values = [r[key]["median"] or 0 for r in rows]
            spread = [[v - (r[key]["min"] or v) for v, r in zip(values, rows)],
                      [(r[key]["max"] or v) - v for v, r in zip(values, rows)]]
            colors = ["tab:blue" if r["system"] == "valqd" else "tab:gray" for r in rows]
            ax.bar(range(len(rows)), values, color=colors, yerr=spread, capsize=3)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{m['mode']} (depth {m['depth']}, {m['procs']} procs; median, "
                         "min-max)", fontsize=9)
            ax.set_ylabel(ylabel)
            for i, v in enumerate(values):
                ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:.1f}", (i, v), ha="center",
                            va="bottom", fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(directory, name), dpi=110)
        plt.close(fig)
        files.append(name)
    mem = results.get("memory") or []
    if mem:
        fig, ax = plt.subplots(figsize=(6, 4))
        values = [r["bytes_per_message"] for r in mem]
        ax.bar([r["label"] for r in mem], values,
               color=["tab:blue" if r["system"] == "valqd" else "tab:gray" for r in mem])
        ax.axhline(250, color="tab:red", linestyle="--", linewidth=1, label="target: 250 bytes")
        ax.set_ylabel("resident bytes per queued 100-byte message")
        ax.set_title(f"memory, {mem[0]['messages']:,} messages")
        for i, v in enumerate(values):
            ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(directory, "memory.png"), dpi=110)
        plt.close(fig)
        files.append("memory.png")
    lat = results.get("latency") or []
    if lat:
        fig, ax = plt.subplots(figsize=(7, 4))
        keys = [("pop", "p50_ms"), ("pop", "p99_ms"), ("pop", "p999_ms"), ("ack", "p50_ms"),
                ("ack", "p99_ms"), ("ack", "p999_ms")]
        width = 0.8 / len(lat)
        for i, r in enumerate(lat):
            ax.bar([k + i * width for k in range(len(keys))],
                   [r[op].get(p, 0) for op, p in keys], width, label=r["label"])
        ax.set_xticks([k + width * (len(lat) - 1) / 2 for k in range(len(keys))])
        ax.set_xticklabels([f"{op.upper()} {p[:-3].replace('p999', 'p99.9')}"
                            for op, p in keys], fontsize=8)
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"latency at {lat[0]['rate']:,} cycles/s")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(directory, "latency.png"), dpi=110)
        plt.close(fig)
        files.append("latency.png")
    return files, ""
