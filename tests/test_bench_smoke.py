"""The benchmark runner in its smallest form, so that it cannot rot: `python -m bench --quick`
against valqd alone. Only that it runs and reports is checked, never a timing."""

import json
import subprocess
import sys

from support import CHILD_ENV, ROOT


def test_bench_quick_writes_a_report(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--workdir", str(tmp_path)],
        cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=170,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = (out / "REPORT.md").read_text()
    assert "# valqd benchmark report" in report
    assert "python -m bench --quick" in report
    assert "## Targets (issues 7 and 12)" in report
    for section in ("## Job cycle", "## Latency", "## Scale", "### Timer storm", "## Memory",
                    "## Persistence", "## redis-benchmark", "## Worker library (valqd)",
                    "## Costs that must stay bounded"):
        assert section in report
    assert "| valqd (AOF everysec) |" in report
    assert "| valqd (AOF off) |" in report
    assert "## Errors" not in report

    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["targets"] == ["valqd"]
    rows = results["job_cycle"]
    assert {(r["mode"], r["persistent"]) for r in rows} == {
        ("pipelined", True), ("pipelined", False), ("unpipelined", True), ("unpipelined", False)}
    assert all(r["system"] == "valqd" and r["cycles"] > 0 for r in rows)
    assert results["memory"][0]["messages"] > 0
    worker = results["worker"]["rows"]
    assert [r["kind"] for r in worker] == ["async", "sync", "raw-pop-ack", "raw-cycle"]
    assert all(r["jobs"] == 1000 and r["connections"] > 0 for r in worker)
    # the servers' temporary directories are gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("valq-bench-")]
