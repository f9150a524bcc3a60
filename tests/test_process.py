"""valqd as a user runs it: `python -m valqd` with flags, a config file, signals and errors."""

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import valkey

import valqd
from support import CHILD_ENV, ValqdProcess, ready_port


# `pid:M 23 Nov 2026 07:40:00.123 * valqd 0.1.0 ready to accept connections on ADDR port N,
# pid P, LOOP event loop`
STARTUP_LINE = re.compile(
    r"^(?P<logpid>\d+):M \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2}\.\d{3} \* "
    r"valqd (?P<version>\S+) ready to accept connections on (?P<addr>\S+) "
    r"port (?P<port>\d+), pid (?P<pid>\d+), (?P<loop>asyncio|uvloop) event loop, "
    r"(?P<build>compiled|pure) build$",
    re.MULTILINE)


def run_valqd(*args: str, cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run `python -m valqd ARGS` to completion (for runs that must exit by themselves)."""
    return subprocess.run([sys.executable, "-m", "valqd", *args], cwd=cwd, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=timeout)


class Launched:
    """`python -m valqd` with stdout and stderr going to files, so nothing can block on a pipe."""

    def __init__(self, tmp: Path, *args: str, cwd: Path | None = None) -> None:
        self.out_path, self.err_path = tmp / "stdout.txt", tmp / "stderr.txt"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "valqd", *args],
                                         cwd=cwd or tmp, env=CHILD_ENV, stdout=out, stderr=err)
        self.port = 0

    def wait_ready(self, log: Path | None = None, timeout: float = 10) -> "Launched":
        log = log or self.err_path
        port = ready_port(self.proc, log, timeout=timeout)
        if port is not None:
            self.port = port
            return self
        self.kill()
        raise AssertionError(f"valqd did not start:\n{self.stderr()}\n"
                             f"{log.read_text(errors='replace') if log.exists() else ''}")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def launched():
    started: list[Launched] = []

    def launch(tmp: Path, *args: str, cwd: Path | None = None) -> Launched:
        started.append(Launched(tmp, *args, cwd=cwd))
        return started[-1]

    yield launch
    for process in started:
        process.kill()


@pytest.fixture
def busy_port():
    """A port held by a listening socket for the duration of the test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def config_get(port: int, name: str) -> str:
    with valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=10,
                       decode_responses=True) as client:
        return client.config_get(name)[name]


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


# -- --help, --version, bad command lines -------------------------------------------------

def test_help(tmp_path):
    result = run_valqd("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: valqd")
    for flag in ("--port", "--bind", "--dir", "--loglevel", "--logfile", "--config", "--version"):
        assert flag in result.stdout
    assert "7400" in result.stdout and "127.0.0.1" in result.stdout  # the defaults are shown
    assert result.stderr == ""


def test_version(tmp_path):
    result = run_valqd("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the version, then which build runs (tests/test_build.py checks that part)
    assert result.stdout.strip() == f"valqd {valqd.__version__} {valqd.BUILD.describe()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", valqd.__version__)


@pytest.mark.parametrize("args, words", [
    (["--port", "abc"], ["port", "integer"]),
    (["--port", "70000"], ["port", "65535"]),
    (["--port", "-1"], ["port"]),
    (["--port"], ["--port"]),
    (["--loglevel", "loud"], ["loglevel", "debug", "notice"]),
    (["--bogus"], ["unrecognized", "--bogus"]),
    (["extra-positional"], ["unrecognized", "extra-positional"]),
], ids=["port-abc", "port-too-big", "port-negative", "port-no-value", "loglevel-loud",
        "unknown-flag", "positional"])
def test_bad_command_line(tmp_path, args, words):
    result = run_valqd(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith("usage: valqd"), result.stderr
    assert "valqd: error:" in result.stderr
    for word in words:
        assert word in result.stderr
    assert_no_traceback(result.stderr, result.stdout)


@pytest.mark.parametrize("content, words", [
    ('port "7400\n', ["unbalanced quotes"]),
    ("nosuchsetting 1\n", ["bad directive", "nosuchsetting"]),
    ("port 1 2\n", ["wrong number of arguments"]),
    ("loglevel\n", ["wrong number of arguments"]),
    ("# ok\nport abc\n", ["port", "integer"]),
    ("loglevel loud\n", ["loglevel", "notice"]),
], ids=["unbalanced-quotes", "unknown-name", "two-values", "no-value", "bad-int",
        "bad-enum"])
def test_bad_config_file(tmp_path, content, words):
    conf = tmp_path / "valqd.conf"
    conf.write_text(content)
    result = run_valqd("--config", str(conf), cwd=tmp_path)
    assert result.returncode != 0
    for word in words:
        assert word in result.stderr
    assert_no_traceback(result.stderr, result.stdout)


def test_bad_config_file_names_line(tmp_path):
    conf = tmp_path / "valqd.conf"
    conf.write_text("# a comment\n\nport 0\nfrobnicate yes\n")
    result = run_valqd("--config", str(conf), cwd=tmp_path)
    assert result.returncode != 0
    assert f"{conf}:4:" in result.stderr


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_config_file(tmp_path, kind):
    path = tmp_path / "nope.conf"
    if kind == "directory":
        path.mkdir()
    result = run_valqd("--config", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert str(path) in result.stderr
    assert_no_traceback(result.stderr, result.stdout)


# -- the config file ------------------------------------------------------------------------

def test_config_file_is_honoured(tmp_path, launched):
    data = tmp_path / "data dir" / "nested"
    log = tmp_path / "log dir" / "valqd log.txt"
    log.parent.mkdir()
    conf = tmp_path / "valqd.conf"
    conf.write_text(
        "# valqd configuration, valkey.conf style\n"
        "\n"
        "   # an indented comment\n"
        "Port auto\n"                       # names are case-insensitive
        "bind '127.0.0.1'\n"
        f'dir "{data}"\n'                 # quoted: the path has a space
        f"logfile '{log}'\n"
        'loglevel "verbose"\n')
    server = launched(tmp_path, "--config", str(conf)).wait_ready(log)
    assert data.is_dir()
    assert config_get(server.port, "dir") == str(data)
    assert config_get(server.port, "logfile") == str(log)
    assert config_get(server.port, "loglevel") == "verbose"
    assert config_get(server.port, "bind") == "127.0.0.1"
    assert STARTUP_LINE.search(log.read_text())
    assert server.stderr() == ""  # everything went to the logfile


def test_flags_override_config_file(tmp_path, busy_port):
    other_dir = tmp_path / "dir from the file"
    conf = tmp_path / "valqd.conf"
    conf.write_text(f"port {busy_port}\n"        # would fail to start if it won
                    f'dir "{other_dir}"\n'
                    "loglevel warning\n"         # would hide the ready line if it won
                    "bind 127.0.0.1\n")
    server = ValqdProcess(tmp_path / "flag dir", "--config", str(conf), "--loglevel", "debug")
    server.start()  # passes --port auto --dir --logfile after --config: the flags must win
    try:
        assert server.port != busy_port
        assert config_get(server.port, "loglevel") == "debug"
        assert config_get(server.port, "dir") == str(tmp_path / "flag dir")
        assert config_get(server.port, "bind") == "127.0.0.1"  # from the file, no flag given
        assert not other_dir.exists()
    finally:
        assert server.stop() == 0


def test_config_set_loglevel_at_run_time(tmp_path):
    server = ValqdProcess(tmp_path / "v").start()
    try:
        with server.client(decode_responses=True) as client:
            assert client.config_set("loglevel", "warning") is True
            assert client.config_get("loglevel") == {"loglevel": "warning"}
            with pytest.raises(valkey.ResponseError):
                client.config_set("loglevel", "loud")
            with pytest.raises(valkey.ResponseError):
                client.config_set("port", "1234")  # immutable while running
    finally:
        assert server.stop() == 0


# -- startup -------------------------------------------------------------------------------

def test_startup_log_line(tmp_path):
    server = ValqdProcess(tmp_path / "v").start()
    try:
        match = STARTUP_LINE.search(server.log())
        assert match, server.log()
        assert match["version"] == valqd.__version__
        assert match["addr"] == "127.0.0.1"
        assert int(match["port"]) == server.port != 0
        assert int(match["pid"]) == int(match["logpid"]) == server.proc.pid
        assert match["build"] == valqd.BUILD.name  # the child imports this run's valqd
        with server.client() as client:
            assert client.ping() is True
    finally:
        assert server.stop() == 0


def test_logs_to_stderr_without_logfile(tmp_path, launched):
    server = launched(tmp_path, "--port", "auto").wait_ready()
    match = STARTUP_LINE.search(server.stderr())
    assert match and int(match["pid"]) == server.proc.pid
    assert int(match["port"]) == server.port
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert "bye bye" in server.stderr()
    assert_no_traceback(server.stderr(), server.stdout())
    assert server.stdout() == ""


# -- stopping ------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(tmp_path, sig):
    """With clients connected, a message in flight (an armed timer) and a pipeline being
    answered, the signal still gives exit code 0 and a clean log."""
    server = ValqdProcess(tmp_path / "v").start()
    try:
        idle = server.client()
        idle.execute_command("VALQ", "CREATE", "q")
        idle.execute_command("VALQ", "PUSH", "q", "m")
        assert idle.execute_command("VALQ", "POP", "q")
        busy = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        busy.sendall(b"PING\r\n" * 1000)
        server.proc.send_signal(sig)
        out, err = server.proc.communicate(timeout=10)
    finally:
        server.kill()
    assert server.proc.returncode == 0
    log = server.log()
    assert f"Received {signal.Signals(sig).name}" in log
    assert "bye bye" in log
    assert_no_traceback(log, err.decode(), out.decode())
    busy.settimeout(5)
    received = b""
    try:
        while chunk := busy.recv(65536):  # the server closed the connection
            received += chunk
    except ConnectionResetError:  # closed with our unread requests in its buffer: a RST
        pass
    busy.close()
    idle.close()
    assert set(received.split(b"\r\n")) <= {b"+PONG", b""}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stderr_has_no_traceback(tmp_path, launched, sig):
    server = launched(tmp_path, "--port", "auto", "--logfile", "valqd.log")
    server.wait_ready(tmp_path / "valqd.log")
    server.proc.send_signal(sig)
    assert server.proc.wait(10) == 0
    assert_no_traceback(server.stderr(), server.stdout(), (tmp_path / "valqd.log").read_text())
    assert server.stderr() == ""


def test_shutdown_command_exits_cleanly(tmp_path):
    server = ValqdProcess(tmp_path / "v").start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(b"*1\r\n$8\r\nSHUTDOWN\r\n")
            conn.recv(100)  # Valkey closes the connection without a reply
        assert server.proc.wait(10) == 0
        err = server.proc.stderr.read().decode()
    finally:
        server.kill()
    assert_no_traceback(err, server.log())


# -- errors at startup ----------------------------------------------------------------------

def test_port_in_use(tmp_path, busy_port):
    result = run_valqd("--port", str(busy_port), cwd=tmp_path)
    assert result.returncode != 0
    assert "address already in use" in result.stderr.lower()
    assert str(busy_port) in result.stderr
    assert_no_traceback(result.stderr, result.stdout)


def test_port_in_use_by_another_valqd(tmp_path):
    first = ValqdProcess(tmp_path / "first").start()
    try:
        result = run_valqd("--port", str(first.port), "--dir", str(tmp_path / "second"),
                           cwd=tmp_path)
        assert result.returncode != 0
        assert "address already in use" in result.stderr.lower()
        assert_no_traceback(result.stderr, result.stdout)
        with first.client() as client:
            assert client.ping() is True  # the first one is unharmed
    finally:
        assert first.stop() == 0


@pytest.mark.parametrize("address", ["256.1.1.1", "no-such-host.invalid"])
def test_bad_bind_address(tmp_path, address):
    result = run_valqd("--port", "auto", "--bind", address, cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not start" in result.stderr
    assert_no_traceback(result.stderr, result.stdout)


# -- --dir ----------------------------------------------------------------------------------

def test_dir_is_created_and_used(tmp_path, launched):
    """A nested --dir is created; whatever the server writes goes there, not to the cwd."""
    data = tmp_path / "a" / "b" / "c"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    server = launched(tmp_path, "--port", "auto", "--dir", str(data), cwd=cwd).wait_ready()
    assert data.is_dir()
    assert config_get(server.port, "dir") == str(data)
    with valkey.Valkey(host="127.0.0.1", port=server.port, socket_timeout=10) as client:
        client.execute_command("VALQ", "CREATE", "q")
        client.execute_command("VALQ", "PUSH", "q", "m")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert list(cwd.iterdir()) == []
    assert_no_traceback(server.stderr())


def test_relative_dir_is_relative_to_the_working_directory(tmp_path, launched):
    server = launched(tmp_path, "--port", "auto", "--dir", "rel/data").wait_ready()
    assert (tmp_path / "rel" / "data").is_dir()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0


def test_dir_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("")
    result = run_valqd("--port", "auto", "--dir", str(tmp_path / "afile"), cwd=tmp_path)
    assert result.returncode != 0
    assert "afile" in result.stderr
    assert_no_traceback(result.stderr, result.stdout)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_event_loop_choice(tmp_path, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="pip install valqd[fast] for uvloop")
    server = ValqdProcess(tmp_path / "d", "--event-loop", loop).start()
    try:
        assert f", {loop} event loop" in server.log()
        c = server.client()
        assert c.execute_command("VALQ", "CREATE", "q") == b"created q"
        assert c.execute_command("VALQ", "PUSH", "q", "m") == b"1"
        assert c.execute_command("VALQ", "POP", "q", "BLOCK", "10") == [b"body", b"m", b"id", b"1"]
        c.close()
    finally:
        assert server.stop() == 0
