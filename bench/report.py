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

def targets(results: dict) -> list[dict]:
    """The targets of issue 7, each {name, figure, threshold, status}."""
    out = []
    jc = results.get("job_cycle") or []

    v = _find(jc, system="valqd", persistent=True, mode="pipelined")
    lua = _find(jc, system="valkey-lua", persistent=True, mode="pipelined")
    r = _ratio(v and v["cpu_us_per_cycle"], lua and lua["cpu_us_per_cycle"])
    out.append({"name": "Pipelined job cycle (AOF everysec on both): valqd server CPU per "
                        "cycle vs Valkey-Lua's",
                "figure": "—" if r is None else f"{r:.2f}x ({v['cpu_us_per_cycle']:.1f} vs "
                                                f"{lua['cpu_us_per_cycle']:.1f} µs)",
                "threshold": "≤ 0.75x", "ok": None if r is None else r <= 0.75})

    v = _find(jc, system="valqd", persistent=True, mode="unpipelined")
    st = _find(jc, system="valkey-streams", persistent=True, mode="unpipelined")
    r = _ratio(v and v["throughput"], st and st["throughput"])
    out.append({"name": "Unpipelined job cycle (AOF everysec on both): valqd throughput vs "
                        "Valkey Streams'",
                "figure": "—" if r is None else f"{r:.2f}x ({v['throughput']:,.0f} vs "
                                                f"{st['throughput']:,.0f} cycles/s)",
                "threshold": "≥ 1.0x", "ok": None if r is None else r >= 1.0})

    tool_rows = (results.get("tools") or {}).get("rows") or []
    for op, theirs in (("push", "lpush"), ("pop", "rpop")):
        mine = _find(tool_rows, server="valqd (AOF everysec)", op=op)
        other = _find(tool_rows, server="Valkey (AOF everysec)", op=op)
        r = _ratio(mine and mine["rps"], other and other["rps"])
        out.append({"name": f"redis-benchmark -P 16: `valq {op}` vs Valkey `{theirs}`",
                    "figure": "—" if r is None else f"{r:.2f}x ({mine['rps']:,.0f} vs "
                                                    f"{other['rps']:,.0f} requests/s)",
                    "threshold": "≥ 0.5x", "ok": None if r is None else r >= 0.5})

    mem = _find(results.get("memory"), system="valqd")
    out.append({"name": "Memory per queued 100-byte message (valqd)",
                "figure": "—" if mem is None else
                f"{mem['bytes_per_message']:.0f} bytes ({mem['messages']:,} messages)",
                "threshold": "≤ 250 bytes",
                "ok": None if mem is None else mem["bytes_per_message"] <= 250})

    for aof in (False, True):
        mem = _find(results.get("memory"), system="valqd", aof=aof)
        out.append({"name": "Memory per queued 100-byte message (valqd"
                            + (", AOF everysec)" if aof else ", no AOF)") + " (issue 12)",
                    "figure": "—" if mem is None else
                    f"{mem['bytes_per_message']:.0f} bytes ({mem['messages']:,} messages)",
                    "threshold": "≤ 231 bytes",
                    "ok": None if mem is None else mem["bytes_per_message"] <= 231})
    for row in (results.get("cost") or {}).get("pipeline", []):
        if row["server"].startswith("valqd"):
            out.append({"name": f"Worst PING wait (median of {row['rounds']}) beside {row['pushes']:,} "
                                f"pipelined pushes, {row['server']} (issue 12)",
                        "figure": f"{row['worst_ping_ms']:.1f} ms", "threshold": "≤ ~100 ms",
                        "ok": row["worst_ping_ms"] <= 100})

    ratio = (results.get("scale_ratios") or {}).get("valqd")
    out.append({"name": "Flat scaling (valqd): largest/smallest CPU per cycle in the scale test",
                "figure": "—" if ratio is None else f"{ratio:.2f}x", "threshold": "≤ 1.5x",
                "ok": None if ratio is None else ratio <= 1.5})
    return out


def _mark(ok) -> str:
    return "not measured" if ok is None else ("**PASS**" if ok else "**FAIL**")


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
              f"- load average at start: {', '.join(map(str, machine['loadavg_at_start']))}",
              "- Clients and servers share this machine; other work running on it makes the "
              "figures noisy. Throughput includes the clients' own cost (they compete with the "
              "server for the same cores); server CPU per cycle does not.", ""]

    lines += ["## Targets (issues 7 and 12)", ""]
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
              "--appendfsync everysec` (or `--appendonly no`). Valkey: `valkey-server --save \"\" "
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
    load = out.get("aof_load")
    if load:
        lines += [f"AOF load at start-up, {load['messages']:,} messages "
                  f"({_mb(load['aof_bytes'])} file): peak resident memory "
                  f"{_mb(load['peak_rss'])}, {_mb(load['rss_after_load'])} once loaded, "
                  f"{load['seconds_to_ping']:.2f} s to the first PING.", ""]
    return lines


def _job_cycle(rows) -> list[str]:
    if not rows:
        return []
    out = ["## Job cycle", ""]
    for mode, what in (("pipelined", "depth 50, 4 client processes"),
                       ("unpipelined", "depth 1, 8 client processes")):
        mode_rows = [r for r in rows if r["mode"] == mode]
        if not mode_rows:
            continue
        out += [f"### {mode.capitalize()} ({what})", ""]
        out += _table(["target", "cycles", "seconds", "cycles/s", "server CPU µs/cycle",
                       "of which user / sys"],
                      [[r["label"], _n(r["cycles"]), f"{r['seconds']:.2f}", _n(r["throughput"]),
                        _n(r["cpu_us_per_cycle"], 1) + (" (time limit hit)" if r.get("truncated")
                                                        else ""),
                        f"{_n(r.get('user_us_per_cycle'), 1)} / "
                        f"{_n(r.get('sys_us_per_cycle'), 1)}"]
                       for r in mode_rows])
        out.append("")
        ratio_rows = []
        for persistent in (True, False):
            mine = _find(mode_rows, system="valqd", persistent=persistent)
            if mine is None:
                continue
            for other in OTHERS:
                theirs = _find(mode_rows, system=other, persistent=persistent)
                if theirs is None:
                    continue
                ratio_rows.append([
                    f"valqd/{SHORT[other]} ({'persistence on' if persistent else 'off'})",
                    _x(_ratio(mine["throughput"], theirs["throughput"])),
                    _x(_ratio(mine["cpu_us_per_cycle"], theirs["cpu_us_per_cycle"]))])
        if ratio_rows:
            out += ["Ratios (throughput: above 1 is better for valqd; CPU: below 1 is better "
                    "for valqd):", ""]
            out += _table(["ratio", "throughput", "server CPU per cycle"], ratio_rows)
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
                      [[("valqd" if r["system"] == "valqd" else "Valkey"), r["what"],
                        _mb(r["aof_bytes"]), _n(r["records"]), f"{r['seconds_to_ping']:.2f}",
                        "—" if r["logged_seconds"] is None else f"{r['logged_seconds']:.2f} s",
                        _n(r["records_per_s"]), _mb(r["rss_after_load"])] for r in p["load"]])
        out.append("")
        mine = [r for r in p["load"] if r["system"] == "valqd"]
        theirs = _find(p["load"], system="valkey")
        if mine and theirs:
            out += _table(["ratio", "load rate (records/s; above 1 is better for valqd)"],
                          [[f"valqd ({r['what']}) / Valkey",
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
    out += [f"`redis-benchmark -P 16 -n {t['requests']} -q <command>` (50 connections), "
            "both servers with AOF everysec, in the same run.", ""]
    out += _table(["server", "command", "requests/s"],
                  [[r["server"], f"`{r['command']}`", _n(r["rps"])] for r in t["rows"]])
    out.append("")
    for op in ("push", "pop"):
        mine = _find(t["rows"], server="valqd (AOF everysec)", op=op)
        theirs = _find(t["rows"], server="Valkey (AOF everysec)", op=op)
        if mine and theirs:
            out.append(f"- `{mine['command']}` / `{theirs['command']}`: "
                       f"{_x(_ratio(mine['rps'], theirs['rps']))}")
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
    jc = results.get("job_cycle") or []
    for key, name, ylabel in (("throughput", "throughput.png", "job cycles per second"),
                              ("cpu_us_per_cycle", "cpu_per_cycle.png",
                               "server CPU µs per job cycle")):
        modes = [m for m in ("pipelined", "unpipelined") if any(r["mode"] == m for r in jc)]
        if not modes:
            continue
        fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            rows = [r for r in jc if r["mode"] == mode]
            labels = [r["label"].replace(" (", "\n(") for r in rows]
            values = [r[key] or 0 for r in rows]
            colors = ["tab:blue" if r["system"] == "valqd" else "tab:gray" for r in rows]
            ax.bar(range(len(rows)), values, color=colors)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
            shape = "depth 50, 4 procs" if mode == "pipelined" else "depth 1, 8 procs"
            ax.set_title(f"{mode} ({shape})")
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
