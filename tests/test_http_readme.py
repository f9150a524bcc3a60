"""README.md's curl examples of the HTTP API run as written, against a real valqd, and print
what the README shows (times aside)."""

import json
import re
import shutil
import subprocess

import pytest

from http_support import http_valqd
from test_readme import fenced_blocks

README_PORT = "127.0.0.1:7480"
TIMES = {"enqueued_at", "lease_deadline", "due_at", "dead_at", "oldest_ready_age_ms"}


def examples() -> list[tuple[str, str]]:
    """(command, expected output) of each `$ curl` line of the README's sh blocks."""
    pairs = []
    for block in fenced_blocks("sh"):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            if command.startswith("curl "):
                pairs.append((command, output.rstrip("\n")))
    return pairs


def normal(output: str):
    """JSON with every time set to 0 (they differ from run to run); other text as it is."""
    try:
        value = json.loads(output)
    except ValueError:
        return output

    def strip(v):
        if isinstance(v, dict):
            return {k: 0 if k in TIMES else strip(x) for k, x in v.items()}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    return strip(value)


def test_the_readme_has_curl_examples():
    assert len(examples()) >= 4


def test_curl_examples_run_as_written(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("no curl: apt-get install -y curl")
    process, port = http_valqd(tmp_path / "readme")
    try:
        for command, expected in examples():
            real = command.replace(README_PORT, f"127.0.0.1:{port}")
            result = subprocess.run(["sh", "-c", real], capture_output=True, text=True,
                                    timeout=30)
            assert result.returncode == 0, (command, result.stderr)
            assert normal(result.stdout.rstrip("\n")) == normal(expected), command
    finally:
        process.stop()
