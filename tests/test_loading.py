"""Start-up like Valkey's: the port opens before the AOF loads, commands that need the data
get `-LOADING` meanwhile (those with the `loading` flag are served), the event loop answers
between slices of records, and a port that is taken fails at once, before any loading."""

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import CHILD_ENV, ready_port
from valqd.engine import Engine, make_settings
from valqd.persistence.aof import AppendOnlyFile

MESSAGES = 400_000  # about two seconds of loading on the build machine
LISTENING = re.compile(r"Listening on .*? port (\d+)")
LOADING = b"-LOADING valqd is loading the dataset in memory\r\n"


@pytest.fixture(scope="module")
def big_aof(tmp_path_factory) -> Path:
    """An AOF of MESSAGES pushes to queue `big`, written by the engine and the AOF writer."""
    path = tmp_path_factory.mktemp("big") / "appendonly.aof"
    aof = AppendOnlyFile(str(path), "no")
    aof.open()
    engine = Engine(journal=aof.append)
    engine.create_queue(b"big", make_settings())
    now = int(time.time() * 1000)
    for start in range(0, MESSAGES, 1000):
        engine.push_many(b"big", [b"m%d" % i for i in range(start, start + 1000)], now)
        aof.commit()
    aof.close()
    return path


class Starting:
    """`python -m valqd` on a directory, watched from its first log line on."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.log = directory / "valqd.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "valqd", "--dir", str(directory), "--logfile",
             str(self.log), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=CHILD_ENV)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def listening_port(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while not (match := LISTENING.search(self.text())):
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.005)
        return int(match.group(1))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def command(sock: socket.socket, *args: bytes) -> bytes:
    """Send one command and read one whole reply (a line, or a bulk string)."""
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a)
                                                   for a in args))
    data = b""
    while True:
        chunk = sock.recv(1 << 16)
        assert chunk, data
        data += chunk
        if data[:1] in b"$=" and data[1:2] != b"-":
            size = int(data[1:data.index(b"\r\n")])
            if len(data) >= data.index(b"\r\n") + 2 + size + 2:
                return data
        elif data.endswith(b"\r\n") and data[:1] in b"+-:_%*":
            if data[:1] not in b"%*" or data.count(b"\r\n") > 1:
                return data


def copy_aof(big_aof: Path, directory: Path) -> Path:
    directory.mkdir()
    shutil.copy(big_aof, directory / "appendonly.aof")
    return directory


def test_clients_are_served_while_the_aof_loads(big_aof, tmp_path):
    starting = Starting(copy_aof(big_aof, tmp_path / "d"), "--port", "auto")
    try:
        port = starting.listening_port()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            # commands that need the data wait for it, as in Valkey (PING has no
            # `loading` flag there either)
            assert command(sock, b"VALQ", b"LIST") == LOADING
            assert command(sock, b"VALQ", b"POP", b"big", b"BLOCK", b"0") == LOADING
            assert command(sock, b"DBSIZE") == LOADING
            assert command(sock, b"PING") == LOADING
            # the connection and server commands are served
            assert command(sock, b"CLIENT", b"SETNAME", b"early") == b"+OK\r\n"
            assert command(sock, b"AUTH", b"x").startswith(b"-ERR AUTH <password> called")
            info = command(sock, b"INFO", b"persistence")
            assert b"\nloading:1\r\n" in info, info
            total = int(re.search(rb"loading_total_bytes:(\d+)", info).group(1))
            assert total == big_aof.stat().st_size
            # the event loop answers between slices: many round trips while loading
            answered, loaded = 0, []
            while True:
                reply = command(sock, b"INFO", b"persistence")
                if b"\nloading:0\r\n" in reply:
                    break
                answered += 1
                loaded.append(int(re.search(rb"loading_loaded_bytes:(\d+)", reply).group(1)))
            assert answered >= 5, answered
            assert loaded == sorted(loaded) and loaded[-1] > loaded[0]
            assert command(sock, b"DBSIZE") == b":1\r\n"
            assert command(sock, b"CLIENT", b"GETNAME") == b"$5\r\nearly\r\n"
            reply = command(sock, b"VALQ", b"INFO", b"big")
            assert b"\r\n$4\r\nmsgs\r\n$6\r\n%d\r\n" % MESSAGES in reply, reply
        assert re.search(r"ready to accept connections", starting.text())
        assert starting.text().index("Listening on") < starting.text().index("DB loaded")
    finally:
        starting.close()


def test_hello_and_auth_work_while_loading(big_aof, tmp_path):
    starting = Starting(copy_aof(big_aof, tmp_path / "d"), "--port", "auto",
                        "--requirepass", "secret")
    try:
        port = starting.listening_port()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            assert command(sock, b"VALQ", b"LIST").startswith(b"-NOAUTH")  # auth first
            assert command(sock, b"AUTH", b"secret") == b"+OK\r\n"
            assert command(sock, b"HELLO", b"3").startswith(b"%")
            assert command(sock, b"VALQ", b"LIST") == LOADING
    finally:
        starting.close()


def test_shutdown_while_loading_leaves_the_aof_alone(big_aof, tmp_path):
    directory = copy_aof(big_aof, tmp_path / "d")
    starting = Starting(directory, "--port", "auto")
    try:
        port = starting.listening_port()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            assert command(sock, b"PING") == LOADING  # still loading
            sock.sendall(b"SHUTDOWN\r\n")
            assert sock.recv(100) == b""
        assert starting.proc.wait(20) == 0, starting.text()
        assert (directory / "appendonly.aof").read_bytes() == big_aof.read_bytes()
        assert "DB loaded" not in starting.text()
    finally:
        starting.close()


def test_a_taken_port_fails_at_once_before_loading(big_aof, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        starting = Starting(copy_aof(big_aof, tmp_path / "d"), "--port", str(port))
        try:
            assert starting.proc.wait(20) == 1
            text = starting.text()
            assert re.search(r"Could not start: .*address already in use", text), text
            assert "DB loaded" not in text and "Loading AOF" not in text
        finally:
            starting.close()
