"""The Dockerfile: check what it says, run its HEALTHCHECK command (with and without a
password), run its entrypoint from a fresh virtual environment and, where a Docker engine
runs, build the image and wait for it to turn healthy with a password."""

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

from support import CHILD_ENV, READY, ROOT, ValqdProcess, ready_port
from valqd import healthcheck
from valqd.config import parse_command_line

DOCKERFILE = ROOT / "Dockerfile"
PIP_TIMEOUT_S = 300  # the build stage's step compiles with mypyc


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


def context_sources(dockerfile) -> list[str]:
    """What the COPY instructions take from the build context (not from another stage)."""
    return [w for rest in all_of(dockerfile, "COPY") if "--from=" not in rest
            for w in words(rest)[:-1] if not w.startswith("--")]


def stages(dockerfile) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, FROM first."""
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile:
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


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


def test_installs_the_compiled_package(dockerfile):
    """A build stage with a C compiler builds the wheels (valqd compiled, or the build
    fails), the image installs only those: the compiled build, with uvloop."""
    copied = [c.rstrip("/") for c in context_sources(dockerfile)]
    for needed in ("pyproject.toml", "README.md", "setup.py", "MANIFEST.in", "buildsys",
                   "valqd"):
        assert needed in copied, copied
    build, image = stages(dockerfile)[0], stages(dockerfile)[-1]
    assert len(stages(dockerfile)) == 2
    build_runs = " ".join(rest for kw, rest in build if kw == "RUN")
    assert re.search(r"apt-get install\b.*\bgcc\b", build_runs), build_runs
    # the `fast` extra: uvloop, the event loop the README's figures were measured with
    assert re.search(r"VALQD_BUILD=compiled pip wheel --wheel-dir (\S+) \S*\[fast\]",
                     build_runs), build_runs
    name = build[0][1].split()[-1]  # FROM image AS name
    assert any(kw == "COPY" and f"--from={name}" in rest for kw, rest in image)
    image_runs = " ".join(rest for kw, rest in image if kw == "RUN")
    assert re.search(r"pip install --no-index --find-links \S+ \S*valqd\[fast\]", image_runs)
    assert "gcc" not in image_runs  # no compiler in the image
    assert ("ENV", "VALQD_BUILD=compiled") in image  # no pure fallback at run time


def test_copy_sources_exist(dockerfile):
    """`docker build` fails on a COPY of a file that is not in the build context."""
    copied = context_sources(dockerfile)
    missing = [c for c in copied if not (ROOT / c).exists()]
    assert not missing, f"the Dockerfile copies files that don't exist: {missing}"


def test_entrypoint_binds_all_interfaces_with_data_dir(dockerfile):
    argv = entrypoint_command(dockerfile)
    assert argv[0] == "valqd"
    assert argv[argv.index("--bind") + 1] == "0.0.0.0"
    assert argv[argv.index("--dir") + 1] == "/data"
    assert "--port" not in argv  # the default, 7400, which EXPOSE and HEALTHCHECK assume


def test_healthcheck_is_valqds_own_check(dockerfile):
    rest = last(dockerfile, "HEALTHCHECK")
    assert not rest.upper().startswith("NONE")
    assert healthcheck_command(dockerfile) == ["valqd", "healthcheck"]
    start_period = re.search(r"--start-period=(\d+)s", rest)
    assert start_period and int(start_period.group(1)) >= 30  # AOF loading answers -LOADING


# -- the HEALTHCHECK command, run --------------------------------------------------------------

def run_healthcheck(dockerfile, port: int, python: str = sys.executable,
                    timeout: float = 20, **env: str) -> subprocess.CompletedProcess:
    """The HEALTHCHECK's command (`valqd` run as `python -m valqd`), with VALQD_PORT and
    any other environment variables given."""
    argv = healthcheck_command(dockerfile)
    if argv[0] == "valqd":
        argv = [python, "-m", "valqd", *argv[1:]]
    base = CHILD_ENV if python == sys.executable else os.environ
    environ = {k: v for k, v in base.items() if not k.startswith("VALQD_")}
    environ.update(VALQD_PORT=str(port), **env)
    return subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=timeout)


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


@pytest.fixture(scope="module")
def valqd_with_password(tmp_path_factory):
    server = ValqdProcess(tmp_path_factory.mktemp("pw"), "--requirepass", "s3cret pass")
    yield server.start()
    server.stop()


def test_healthcheck_authenticates_with_the_password_from_env(dockerfile, valqd_with_password):
    port = valqd_with_password.port
    ok = run_healthcheck(dockerfile, port, VALQD_REQUIREPASS="s3cret pass")
    assert ok.returncode == 0, ok.stderr
    missing = run_healthcheck(dockerfile, port)
    assert missing.returncode == 1 and "NOAUTH" in missing.stderr, missing.stderr
    wrong = run_healthcheck(dockerfile, port, VALQD_REQUIREPASS="nope")
    assert wrong.returncode == 1 and "WRONGPASS" in wrong.stderr, wrong.stderr


def test_healthcheck_reads_a_password_file(dockerfile, valqd_with_password, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret pass\n")
    ok = run_healthcheck(dockerfile, valqd_with_password.port,
                         VALQD_REQUIREPASS_FILE=str(secret))
    assert ok.returncode == 0, ok.stderr
    unreadable = run_healthcheck(dockerfile, valqd_with_password.port,
                                 VALQD_REQUIREPASS_FILE=str(tmp_path / "missing"))
    assert unreadable.returncode == 1 and "can't read" in unreadable.stderr


def test_healthcheck_finds_port_and_password_on_the_servers_command_line(tmp_path):
    """In the container the server is process 1: the check reads its flags from
    /proc/1/cmdline. Here, the command line of a real valqd started with them."""
    secret = tmp_path / "password"
    secret.write_text("from a file\n")
    server = ValqdProcess(tmp_path / "data", "--requirepass-file", str(secret)).start()
    try:
        cmdline = f"/proc/{server.proc.pid}/cmdline"
        assert healthcheck.server_flags(cmdline)["requirepass-file"] == str(secret)
        with pytest.raises(ValueError, match="'auto' is not a number: set VALQD_PORT"):
            healthcheck.target({}, cmdline)  # the test server asked for any free port
        port, password = healthcheck.target({"VALQD_PORT": str(server.port)}, cmdline)
        assert (port, password) == (server.port, "from a file")
        assert healthcheck.check(port, password) is None
        assert "WRONGPASS" in healthcheck.check(port, "nope")
    finally:
        server.stop()
    flags = tmp_path / "cmdline"
    flags.write_bytes(b"python\0/usr/local/bin/valqd\0--port=7411\0--requirepass\0pw\0")
    assert healthcheck.target({}, str(flags)) == (7411, "pw")
    assert healthcheck.target({"VALQD_PORT": "7412"}, str(flags)) == (7412, "pw")
    assert healthcheck.target({}, str(tmp_path / "none")) == (7400, "")


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
    """What `docker build` + `docker run` would do, minus Docker: build the wheels from the
    COPYed build context as the build stage does (valqd compiled with mypyc), install only
    them into a new venv as the image does, then run the ENTRYPOINT/CMD (a free port instead
    of 7400, a temporary directory instead of /data) and check it answers PING and the
    HEALTHCHECK, on the compiled build."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("needs a C compiler to build the image's compiled wheel: "
                    "apt-get install -y gcc python3-dev")
    context = tmp_path / "context"
    context.mkdir()
    ignored = shutil.ignore_patterns("__pycache__", "*.so", "compiled.json")  # .dockerignore
    for source in context_sources(dockerfile):
        if not (ROOT / source).exists():
            continue  # reported by test_copy_sources_exist
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, context / source, ignore=ignored)
        else:
            shutil.copy(ROOT / source, context / source)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    python, bindir = venv / "bin" / "python", venv / "bin"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "VALQD_BUILD")}
    env["PATH"] = str(bindir) + os.pathsep + env.get("PATH", "")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheels = tmp_path / "wheels"
    steps = [  # the build stage's RUN, then the image's
        [str(python), "-m", "pip", "wheel", "--wheel-dir", str(wheels), f"{context}[fast]"],
        [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
         "valqd[fast]"]]
    for step, extra in zip(steps, ({"VALQD_BUILD": "compiled"}, {})):
        try:
            pip = subprocess.run(step, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                                 env=dict(env, **extra), cwd=tmp_path)
        except subprocess.TimeoutExpired:
            pytest.skip(f"{' '.join(step[2:4])} took over {PIP_TIMEOUT_S} s "
                        "(slow or no access to the package index)")
        assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    env["VALQD_BUILD"] = "compiled"  # the image's ENV

    where = subprocess.run([str(python), "-c", "import valqd; print(valqd.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the installed copy, not the tree
    version = subprocess.run([str(bindir / "valqd"), "--version"], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=60)
    assert " compiled (" in version.stdout, version.stdout + version.stderr

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


# -- the password from a file or the environment, not the command line ---------------------

def test_password_sources(tmp_path):
    secret = tmp_path / "password"
    secret.write_bytes(b"two words\r\nsecond line ignored\n")
    values, *_ = parse_command_line(["--requirepass-file", str(secret)], environ={})
    assert values["requirepass"] == "two words"
    values, *_ = parse_command_line([], environ={"VALQD_REQUIREPASS": "from env"})
    assert values["requirepass"] == "from env"
    values, *_ = parse_command_line(["--requirepass", "flag"],
                                    environ={"VALQD_REQUIREPASS": "env"})
    assert values["requirepass"] == "flag"  # a flag or the config file wins over the env
    values, *_ = parse_command_line(["--requirepass-file", str(secret)],
                                    environ={"VALQD_REQUIREPASS": "env"})
    assert values["requirepass"] == "two words"
    assert "requirepass" not in parse_command_line([], environ={})[0]


@pytest.mark.parametrize("args, message", [
    (["--requirepass-file", "/nonexistent/pw"], "requirepass-file: can't read /nonexistent/pw: "
                                                "No such file or directory"),
    (["--requirepass-file", "EMPTY"], "holds no password (its first line is empty)"),
    (["--requirepass-file", "EMPTY", "--requirepass", "x"], "requirepass and requirepass-file "
                                                            "both give the password"),
], ids=["missing", "empty", "both"])
def test_password_file_errors_stop_start_up(tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    argv = [str(empty) if a == "EMPTY" else a for a in args]
    result = subprocess.run([sys.executable, "-m", "valqd", "--port", "auto", "--dir",
                             str(tmp_path), *argv], capture_output=True, text=True,
                            timeout=30, env=CHILD_ENV)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_server_takes_the_password_from_the_environment(tmp_path):
    env = dict(CHILD_ENV, VALQD_REQUIREPASS="env pass")
    logfile = tmp_path / "valqd.log"
    proc = subprocess.Popen([sys.executable, "-m", "valqd", "--port", "auto", "--dir",
                             str(tmp_path), "--logfile", str(logfile)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = ready_port(proc, logfile)
        assert port, logfile.read_text()
        assert "env pass" not in open(f"/proc/{proc.pid}/cmdline").read()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"PING\r\n")
            assert conn.recv(100).startswith(b"-NOAUTH")
            conn.sendall(b'AUTH "env pass"\r\n')
            assert conn.recv(100) == b"+OK\r\n"
    finally:
        proc.terminate()
        proc.wait(10)


# -- the image, built and run by a real Docker engine ---------------------------------------

def docker_engine() -> str | None:
    """Why no image can be built here, or None when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "needs Docker: the docker command is not installed"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no reason given"])[-1]
        return f"needs a running Docker engine (docker info failed: {reason})"
    return None


def test_image_builds_and_turns_healthy_with_a_password(tmp_path):
    """docker build, then docker run with the password in a mounted file (as a secret) and
    with the password in the environment: the HEALTHCHECK turns healthy, a client that
    authenticates is served, one that does not is refused."""
    missing = docker_engine()
    if missing:
        pytest.skip(missing)
    tag = f"valqd-test:{os.getpid()}"
    build = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    runs = {
        "file": ["-v", f"{secret}:/run/secrets/valqd-password:ro", tag,
                 "--requirepass-file", "/run/secrets/valqd-password"],
        "env": ["-e", "VALQD_REQUIREPASS=s3cret", tag],
    }
    try:
        for how, args in runs.items():
            started = subprocess.run(["docker", "run", "-d", "-p", "127.0.0.1::7400",
                                      "--health-interval=1s", *args],
                                     capture_output=True, text=True, timeout=60)
            assert started.returncode == 0, started.stderr
            container = started.stdout.strip()
            try:
                deadline = time.monotonic() + 90
                while True:
                    health = subprocess.run(
                        ["docker", "inspect", "--format", "{{.State.Health.Status}}",
                         container], capture_output=True, text=True, timeout=30).stdout.strip()
                    if health == "healthy":
                        break
                    assert health in ("starting", ""), (how, health)
                    assert time.monotonic() < deadline, (how, health)
                    time.sleep(1)
                mapped = subprocess.run(["docker", "port", container, "7400/tcp"],
                                        capture_output=True, text=True, timeout=30).stdout
                port = int(mapped.strip().splitlines()[0].rsplit(":", 1)[1])
                with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                    conn.sendall(b"PING\r\n")
                    assert conn.recv(100).startswith(b"-NOAUTH")
                    conn.sendall(b"AUTH s3cret\r\nPING\r\n")
                    answer = b""
                    while answer.count(b"\r\n") < 2:
                        chunk = conn.recv(100)
                        assert chunk, answer
                        answer += chunk
                    assert answer == b"+OK\r\n+PONG\r\n"
                ps = subprocess.run(["docker", "inspect", "--format", "{{.Args}}", container],
                                    capture_output=True, text=True, timeout=30).stdout
                assert "s3cret" not in ps  # the command line does not show the password
            finally:
                subprocess.run(["docker", "rm", "-f", container], capture_output=True,
                               timeout=60)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)
