"""Starting real valqd servers for tests.

`ValqdProcess` runs `python -m valqd` as a child process on an ephemeral loopback port, as a
user would run it. `ThreadedServer` runs the same `Server` class on an event loop in a
background thread with a manual clock, for tests of timing over the wire without sleeping.
"""

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import valkey

from valqd.config import Config
from valqd.server import Server

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"ready to accept connections on .*? port (\d+)")


class ValqdProcess:
    def __init__(self, directory: Path, *args: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.logfile = self.directory / "valqd.log"
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 10.0) -> "ValqdProcess":
        offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "valqd", "--port", "0", "--dir", str(self.directory),
             "--logfile", str(self.logfile), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.logfile.exists():
                match = READY.search(self.logfile.read_text(errors="replace")[offset:])
                if match:
                    self.port = int(match.group(1))
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        out, err = self.proc.communicate(timeout=5) if self.proc.poll() is not None else (b"", b"")
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


class ManualClock:
    """Unix milliseconds that move only when a test moves them."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


class ThreadedServer:
    """The real Server class on a background event loop, driven by a ManualClock."""

    def __init__(self, clock: ManualClock | None = None, **settings: str) -> None:
        self.clock = clock or ManualClock()
        self.config = Config({"port": "0", "appendonly": "no", **settings})
        self.loop = asyncio.new_event_loop()
        self.server = Server(self.config, clock=self.clock)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
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
