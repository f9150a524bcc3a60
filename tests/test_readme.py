"""README.md stays true: its references are generated from the tables, its commands exist."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import CHILD_ENV, as_map, valq, wait_until
from valqd.docs import render

README = Path(__file__).resolve().parent.parent / "README.md"


def test_references_are_current():
    text = README.read_text()
    assert render(text) == text, "run `python -m valqd.docs` to regenerate README.md"


def test_setup_commands_come_first():
    text = README.read_text()
    start = text.index("## Start here")
    assert text.index("pip install . && valqd") > start
    assert text.index("pip install -e '.[test]' && python -m pytest") > start
    assert text.index("## Start here") < text.index("## Using it")


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pip install -q -e '.[test]'" in ci
    assert ci.strip().endswith("python -m pytest")


# -- the README's examples, run ----------------------------------------------------------------

def fenced_blocks(language: str) -> list[str]:
    """The README's code blocks in `language`, in order. A block whose fence also names a
    file (```python tasks.py) is not one of them: a test of its own runs it."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.M | re.S)


def python_example(source: str, port: int, protocol: int) -> str:
    """`source` pointed at a test server: every `Valkey(port=7400` gets that port and the
    protocol (nothing else is changed)."""
    assert "port=7400" in source, "the example no longer names port 7400"
    return source.replace("port=7400", f"port={port}, protocol={protocol}")


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_python_examples_run_as_written_and_again(fresh_valqd, protocol, tmp_path):
    """Every Python block runs against a real valqd under RESP2 and RESP3, ends by itself, and
    runs a second time (no BUSYQUEUE), leaving nothing unacked."""
    blocks = fenced_blocks("python")
    assert blocks, "no Python example in README.md"
    for number, source in enumerate(blocks):
        script = tmp_path / f"example{number}.py"
        script.write_text(python_example(source, fresh_valqd.port, protocol))
        for run in (1, 2):
            result = subprocess.run([sys.executable, str(script)], capture_output=True,
                                    text=True, timeout=60, env=CHILD_ENV, cwd=tmp_path)
            assert result.returncode == 0, f"example {number}, run {run}:\n{result.stderr}"
            if "send(" in source:
                assert result.stdout.count("sending hello") == 1, result.stdout
    c = fresh_valqd.client(protocol=protocol)
    for name in c.keys():
        info = as_map(valq(c, "INFO", name))
        assert info[b"msgs"] == b"0" and info[b"dlq_msgs"] == b"0", (name, info)
    c.flushall()


def cli_transcript() -> list[tuple[list[str], list[str]]]:
    """`$ redis-cli -p 7400 ...` lines of the README's shell blocks, with the output shown
    under each."""
    steps: list[tuple[list[str], list[str]]] = []
    for block in fenced_blocks("sh"):
        if not block.startswith("$ "):
            continue  # commands only, no output shown
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((shlex.split(line[2:]), []))
            elif steps and line:
                steps[-1][1].append(line)
    return [(argv, out) for argv, out in steps if argv[0] == "redis-cli"]


@pytest.mark.skipif(shutil.which("redis-cli") is None,
                    reason="needs redis-cli: apt-get install -y redis-tools")
def test_redis_cli_transcript_is_what_redis_cli_prints(fresh_valqd):
    """The README's redis-cli session, command by command on a fresh server: RESP2 prints
    exactly what the README shows; RESP3 (`-3`) the same values without an error."""
    steps = cli_transcript()
    assert steps, "no redis-cli example in README.md"
    for resp3 in (False, True):
        fresh_valqd.client().flushall()
        for argv, expected in steps:
            assert argv[1:3] == ["-p", "7400"], argv
            command = [argv[0], "-p", str(fresh_valqd.port), "--no-raw",
                       *(["-3"] if resp3 else []), *argv[3:]]
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
            assert result.returncode == 0 and "(error)" not in result.stdout, result
            shown = result.stdout.rstrip("\n").splitlines()
            if not resp3:
                assert shown == expected, (argv, shown)
            else:
                values = [re.findall(r'"[^"]*"', line) for line in expected]
                assert [v for line in values for v in line] == \
                    re.findall(r'"[^"]*"', result.stdout), (argv, shown)


def test_the_worker_quick_start_runs_as_written(tmp_path, valqd):
    """The `tasks.py` block and the shell line after it ("Workers in Python"), against a
    real valqd named by $VALQD_URL (the example leaves the URL to its default): the
    producer pushes, `valqd worker` handles the job, SIGTERM stops it cleanly."""
    text = README.read_text()
    (python,) = re.findall(r"^```python tasks.py\n(.*?)^```", text, re.M | re.S)
    section = text[text.index("```python tasks.py"):]
    shell = re.search(r"^```sh\n(.*?)^```", section, re.M | re.S).group(1)
    assert len(python.splitlines()) + len(shell.splitlines()) <= 10
    (tmp_path / "tasks.py").write_text(python)
    env = {**CHILD_ENV, "VALQD_URL": f"valkey://127.0.0.1:{valqd.port}",
           "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "out.txt"
    with open(out, "w") as sink:
        proc = subprocess.Popen(["bash", "-c", shell], cwd=tmp_path, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "sending to ada@example.com" in out.read_text(), timeout=30,
                   what="the job handled")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "worker stopped: 1 done" in out.read_text()
