"""The Dockerfile: it can't be built here (no Docker engine), so check what it says, run its
HEALTHCHECK command, and run its entrypoint from a fresh virtual environment."""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support import READY, ROOT

DOCKERFILE = ROOT / "Dockerfile"
PIP_TIMEOUT_S = 90


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)], with `\\` continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue  # comment lines (also inside a continuation) and blank continuation lines
        if not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        logical = pending + stripped
        pending = ""
        keyword, _, rest = logical.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def words(arguments: str) -> list[str]:
    """Exec form (a JSON array) or shell form of an instruction's arguments."""
    if arguments.startswith("["):
        value = json.loads(arguments)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
        return value
    return shlex.split(arguments)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def all_of(dockerfile, keyword: str) -> list[str]:
    return [rest for kw, rest in dockerfile if kw == keyword]


def last(dockerfile, keyword: str) -> str:
    found = all_of(dockerfile, keyword)
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]


def healthcheck_command(dockerfile) -> list[str]:
    """The HEALTHCHECK's CMD as an argv (shell form runs through /bin/sh -c, as Docker does)."""
    rest = last(dockerfile, "HEALTHCHECK")
    match = re.match(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.*)$", rest, re.DOTALL)
    assert match, f"HEALTHCHECK has no CMD: {rest}"
    command = match.group(2)
    return words(command) if command.startswith("[") else ["/bin/sh", "-c", command]


def entrypoint_command(dockerfile) -> list[str]:
    entrypoint = all_of(dockerfile, "ENTRYPOINT")
    cmd = all_of(dockerfile, "CMD")
    argv = (words(entrypoint[-1]) if entrypoint else []) + (words(cmd[-1]) if cmd else [])
    assert argv, "neither ENTRYPOINT nor CMD"
    return argv


# -- what the Dockerfile says ----------------------------------------------------------------

def test_parser_joins_continuations_and_drops_comments():
    text = ("# comment\nFROM python:3.11-slim AS base\n\nRUN a \\\n    # inner comment\n"
            "    && b \\\n\n    && c\nCMD [\"x\", \"y\"]\n")
    assert parse_dockerfile(text) == [("FROM", "python:3.11-slim AS base"),
                                      ("RUN", "a && b && c"), ("CMD", '["x", "y"]')]
    assert words('["x", "y z"]') == ["x", "y z"]
    assert words("x 'y z'") == ["x", "y z"]


def test_from_is_slim_python_311(dockerfile):
    assert dockerfile[0][0] in ("FROM", "ARG")
    bases = all_of(dockerfile, "FROM")
    assert bases
    image = bases[-1].split()[0]  # the final stage is the image that runs
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image


def test_runs_as_non_root(dockerfile):
    user = last(dockerfile, "USER").split(":")[0]
    assert user not in ("root", "0", ""), user
    # the user is created, and owns the data directory
    runs = " ".join(all_of(dockerfile, "RUN"))
    assert re.search(rf"useradd\b.*\b{re.escape(user)}\b", runs) or user.isdigit()
    assert re.search(r"chown\s+\S+\s+/data\b", runs), "/data is not given to the user"
    # nothing runs as root after the switch to the user
    keywords = [kw for kw, _ in dockerfile]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert "RUN" not in keywords[last_user:]


def test_expose_and_volume(dockerfile):
    exposed = " ".join(all_of(dockerfile, "EXPOSE")).split()
    assert "7400" in exposed or "7400/tcp" in exposed
    volumes = [v for rest in all_of(dockerfile, "VOLUME") for v in words(rest)]
    assert "/data" in volumes


def test_installs_the_package(dockerfile):
    copied = [w for rest in all_of(dockerfile, "COPY") for w in words(rest)[:-1]
              if not w.startswith("--")]
    for needed in ("pyproject.toml", "README.md"):
        assert needed in copied
    assert any(c.rstrip("/") == "valqd" for c in copied)
    assert any(re.search(r"\bpip install\b", rest) for rest in all_of(dockerfile, "RUN"))


def test_copy_sources_exist(dockerfile):
    """`docker build` fails on a COPY of a file that is not in the build context."""
    copied = [w for rest in all_of(dockerfile, "COPY") for w in words(rest)[:-1]
              if not w.startswith("--")]
    missing = [c for c in copied if not (ROOT / c).exists()]
    assert not missing, f"the Dockerfile copies files that don't exist: {missing}"


def test_entrypoint_binds_all_interfaces_with_data_dir(dockerfile):
    argv = entrypoint_command(dockerfile)
    assert argv[0] == "valqd"
    assert argv[argv.index("--bind") + 1] == "0.0.0.0"
    assert argv[argv.index("--dir") + 1] == "/data"
    assert "--port" not in argv  # the default, 7400, which EXPOSE and HEALTHCHECK assume


def test_healthcheck_pings_with_python_only(dockerfile):
    rest = last(dockerfile, "HEALTHCHECK")
    assert not rest.upper().startswith("NONE")
    argv = healthcheck_command(dockerfile)
    assert "redis-cli" not in " ".join(argv)  # not in the slim image
    assert "PING" in " ".join(argv) and "+PONG" in " ".join(argv)
    assert "VALQD_PORT" in " ".join(argv) and "7400" in " ".join(argv)


# -- the HEALTHCHECK command, run --------------------------------------------------------------

def run_healthcheck(dockerfile, port: int, python: str = sys.executable,
                    timeout: float = 20) -> subprocess.CompletedProcess:
    argv = healthcheck_command(dockerfile)
    if argv[0] in ("python", "python3"):
        argv = [python, *argv[1:]]
    env = dict(os.environ, VALQD_PORT=str(port))
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def test_healthcheck_passes_against_valqd(dockerfile, valqd):
    result = run_healthcheck(dockerfile, valqd.port)
    assert result.returncode == 0, result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_fails_when_nothing_listens(dockerfile):
    result = run_healthcheck(dockerfile, free_port())
    assert result.returncode != 0


class FakeServer:
    """Accepts connections on loopback and answers each with `reply` (b"": closes at once,
    None: never answers)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.reply is not None:
                conn.recv(100)
                conn.sendall(self.reply)
                if not self.reply:
                    conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("reply", [b"-ERR nope\r\n", b"", None],
                         ids=["error-reply", "closes", "silent"])
def test_healthcheck_fails_on_a_wrong_answer(dockerfile, reply):
    server = FakeServer(reply)
    try:
        started = time.monotonic()
        result = run_healthcheck(dockerfile, server.port)
        assert result.returncode != 0
        assert time.monotonic() - started < 10  # below the HEALTHCHECK --timeout's order
    finally:
        server.close()


# -- the entrypoint, from a fresh virtual environment ------------------------------------------

def test_entrypoint_in_fresh_venv(dockerfile, tmp_path):
    """What `docker build` + `docker run` would do, minus Docker: install the COPYed build
    context with pip into a new venv, then run the ENTRYPOINT/CMD (a free port instead of 7400,
    a temporary directory instead of /data) and check it answers PING and the HEALTHCHECK."""
    context = tmp_path / "context"
    context.mkdir()
    for rest in all_of(dockerfile, "COPY"):
        for source in (w for w in words(rest)[:-1] if not w.startswith("--")):
            if not (ROOT / source).exists():
                continue  # reported by test_copy_sources_exist
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, context / source,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, context / source)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    python, bindir = venv / "bin" / "python", venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = str(bindir) + os.pathsep + env.get("PATH", "")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    try:
        pip = subprocess.run([str(python), "-m", "pip", "install", str(context)],
                             capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env,
                             cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install into a fresh venv took over {PIP_TIMEOUT_S} s "
                    "(slow or no access to the package index)")
    assert pip.returncode == 0, pip.stdout + pip.stderr

    where = subprocess.run([str(python), "-c", "import valqd; print(valqd.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the installed copy, not the tree

    data = tmp_path / "data"
    argv = entrypoint_command(dockerfile)
    argv = [str(bindir / argv[0]) if i == 0 else (str(data) if a == "/data" else a)
            for i, a in enumerate(argv)]
    port = free_port()
    argv += ["--port", str(port)]
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + 15
        while not READY.search(err_path.read_text(errors="replace")):
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        assert data.is_dir()
        assert "on 0.0.0.0 port" in err_path.read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert conn.recv(100) == b"+PONG\r\n"
        health = run_healthcheck(dockerfile, port, python=str(python))
        assert health.returncode == 0, health.stderr
        proc.send_signal(signal.SIGTERM)  # what `docker stop` sends
        assert proc.wait(10) == 0
        assert "Traceback" not in err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
