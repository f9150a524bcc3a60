"""Durability with real processes: restarts, SIGKILL under load, damaged files, rewrites under
load, disk faults, INFO persistence and leases across restarts.

Every wait is bounded in time and in count; the crash tests run for about two seconds each.
"""

import asyncio
import errno
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import hiredis
import pytest
import valkey

from support import CHILD_ENV, ManualClock, ThreadedServer, ValqdProcess
from valqd.engine import Engine
from valqd.persistence.format import AofCorruption, iter_batches
from valqd.persistence.loader import load

AOF = "appendonly.aof"
LONG = 3600  # a visibility timeout nothing in these tests outlives
FAR = 100000  # a delay nothing in these tests outlives


# -- helpers --------------------------------------------------------------------------------

def valq(c, *args):
    return c.execute_command("VALQ", *args)


def digest(c) -> bytes:
    return c.execute_command("DEBUG", "DIGEST")


def qinfo(c, queue) -> dict[bytes, int]:
    reply = valq(c, "INFO", queue)
    if isinstance(reply, dict):
        return {k: int(v) for k, v in reply.items()}
    return {k: int(v) for k, v in zip(reply[::2], reply[1::2])}


def popped(reply) -> tuple[int, bytes] | None:
    if reply == b"" or reply is None:
        return None
    fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))
    return int(fields[b"id"]), fields[b"body"]


def persistence(c) -> dict:
    return c.info("persistence")


def shutdown(proc: ValqdProcess, via: str) -> None:
    """Stop cleanly with SIGTERM, SIGINT or the SHUTDOWN command; exit code 0."""
    if via == "SHUTDOWN":
        c = proc.client()
        with pytest.raises(valkey.ConnectionError):
            c.execute_command("SHUTDOWN")
        c.close()
        assert proc.proc.wait(10) == 0
        assert proc.stop() == 0
    else:
        assert proc.stop(getattr(signal, via)) == 0


def rewrites_done(proc: ValqdProcess, c) -> int:
    """Completed rewrites: INFO's aof_rewrites when INFO reports it, else the log's count."""
    info = persistence(c)
    if "aof_rewrites" in info:
        return int(info["aof_rewrites"]) if info["aof_rewrite_in_progress"] == 0 else -1
    return proc.log().count("Background AOF rewrite finished successfully")


def wait_for_rewrite(proc: ValqdProcess, c, before: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if rewrites_done(proc, c) > before:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    raise AssertionError(f"the rewrite did not finish in {timeout} s\n{proc.log()}")


def everything_in_main(c, queue) -> dict[int, bytes]:
    """Every ready and in-flight message of `queue`, id -> body: each id up to id_sequence
    is made visible at once (EXTEND id 0), then the queue is popped empty. Destructive."""
    info = qinfo(c, queue)
    expected = info[b"msgs"]
    pipe = c.pipeline(transaction=False)
    for message_id in range(1, info[b"id_sequence"] + 1):
        pipe.execute_command("VALQ", "EXTEND", queue, message_id, 0)
    pipe.execute(raise_on_error=False)
    found: dict[int, bytes] = {}
    for _ in range(expected // 500 + 3):
        pipe = c.pipeline(transaction=False)
        for _ in range(500):
            pipe.execute_command("VALQ", "POP", queue)
        replies = [popped(r) for r in pipe.execute()]
        for message in replies:
            if message is not None:
                assert message[0] not in found, f"message {message[0]} delivered twice"
                found[message[0]] = message[1]
        if None in replies:
            break
    assert len(found) == expected
    return found


def flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def batches_of(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    return [(offset, end) for offset, end, _ in iter_batches(data, str(path))]


def run_valqd(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "valqd", *args], env=CHILD_ENV,
                          capture_output=True, text=True, timeout=timeout)


def start_expecting_failure(directory: Path, *args: str) -> tuple[int, str]:
    logfile = directory / "failed-start.log"
    done = run_valqd("--port", "auto", "--dir", str(directory), "--logfile", str(logfile), *args)
    return done.returncode, logfile.read_text(errors="replace") if logfile.exists() else ""


class Raw:
    """A bare RESP connection: one command, one reply, or CLOSED when the server hung up.
    (No client library between the test and what the server does to the connection.)"""

    CLOSED = "CLOSED"

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = hiredis.Reader()

    def __call__(self, *args):
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts)
                          + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts))
        for _ in range(1000):
            reply = self.reader.gets()
            if reply is not False:
                return reply
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return self.CLOSED
            if not data:
                return self.CLOSED
            self.reader.feed(data)
        raise AssertionError("no reply")

    def close(self) -> None:
        self.sock.close()


def once(port: int, *args):
    conn = Raw(port)
    try:
        return conn(*args)
    finally:
        conn.close()


def on_loop(ts: ThreadedServer, fn):
    """Run fn() on the server's event loop thread and return its result."""
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), ts.loop).result(10)


# -- restart round trip --------------------------------------------------------------------

BIN_QUEUE = b"rt:\x00\xff\r\n bin"
BODIES = [b"", b"\x00", b"\r\n*3\r\n$4\r\nVALQ\r\n", bytes(range(256)), "ünïcödé".encode(),
          b"B 12 00000000 0000\n", b"y" * 70000]


def build_state(c) -> None:
    """Several queues: ready, in-flight, delayed and DLQ messages, non-default settings,
    binary names and bodies, an acked message and a deleted queue."""
    assert valq(c, "CREATE", b"rt:plain") == b"created rt:plain"
    valq(c, "CREATE", BIN_QUEUE, LONG, 1, 600)
    valq(c, "CREATE", b"rt:long", 7200, 7, 604800)
    valq(c, "CREATE", b"rt:gone")
    valq(c, "PUSH", b"rt:gone", b"with its queue")
    valq(c, "DELETE", b"rt:gone")
    for body in BODIES:
        valq(c, "PUSH", b"rt:plain", body)
        valq(c, "PUSH", b"rt:long", body)
        valq(c, "PUSH", BIN_QUEUE, body)
    valq(c, "PUSH", b"rt:plain", b"delayed", FAR)
    valq(c, "PUSH", b"rt:long", b"delayed for ever", 2**64 - 1)
    acked = popped(valq(c, "POP", b"rt:plain"))
    assert valq(c, "ACK", b"rt:plain", acked[0]) == b"ack %d" % acked[0]
    popped(valq(c, "POP", b"rt:plain"))  # in flight for the default 30 s
    for _ in range(3):
        popped(valq(c, "POP", b"rt:long"))  # in flight for two hours
    leased = popped(valq(c, "POP", b"rt:long"))
    assert valq(c, "EXTEND", b"rt:long", leased[0], 40000) == b"extend"
    for _ in range(2):  # max 1 attempt: the lease runs out at once -> DLQ
        message_id, _ = popped(valq(c, "POP", BIN_QUEUE))
        assert valq(c, "EXTEND", BIN_QUEUE, message_id, 0) == b"extend"
    popped(valq(c, "POP", BIN_QUEUE))  # in flight
    info = qinfo(c, BIN_QUEUE)
    assert (info[b"dlq_msgs"], info[b"msgs"], info[b"max_delivery_attempts"]) == (2, 5, 1)
    assert qinfo(c, b"rt:long")[b"delayed_msgs"] == 1


def state_of(c) -> tuple:
    names = sorted(valq(c, "LIST"))
    return digest(c), names, [qinfo(c, name) for name in names]


@pytest.mark.parametrize("via", ["SIGTERM", "SIGINT", "SHUTDOWN"])
def test_restart_round_trip(tmp_path, via):
    proc = ValqdProcess(tmp_path / "d").start()
    try:
        c = proc.client()
        build_state(c)
        before = state_of(c)
        assert before[1] == sorted([b"rt:plain", BIN_QUEUE, b"rt:long"])
        c.close()
        shutdown(proc, via)
        proc.start()
        c = proc.client()
        assert state_of(c) == before
        assert "DB loaded from append only file" in proc.log()
        c.close()
        shutdown(proc, via)  # a second restart, from a file that was loaded and appended to
        proc.start()
        assert state_of(proc.client()) == before
    finally:
        proc.kill()


def restarted_with_the_same_state(proc: ValqdProcess, c) -> valkey.Valkey:
    """Stop with SIGTERM (closing `c`) and start again: the state is what it was. Returns a
    client of the restarted server."""
    before = state_of(c)
    c.close()
    shutdown(proc, "SIGTERM")
    proc.start()
    c = proc.client()
    assert state_of(c) == before
    return c


def test_a_file_of_an_older_valqd_is_served_appended_to_and_rewritten(tmp_path):
    """Upgrading in place: valqd starts on a file of format version 1, appends to it in
    version 1 across a restart, and its rewrite makes it version 2, nothing lost."""
    path = tmp_path / "d" / AOF
    path.parent.mkdir()
    path.write_bytes((Path(__file__).parent / "data" / "appendonly-v1.aof").read_bytes())
    proc = ValqdProcess(tmp_path / "d").start()
    try:
        c = proc.client()
        assert b"jobs" in valq(c, "LIST")
        build_state(c)
        c = restarted_with_the_same_state(proc, c)
        assert path.read_bytes().startswith(b"VALQD-AOF 1\n")  # appended to as it was
        done = rewrites_done(proc, c)
        assert c.execute_command("BGREWRITEAOF") is True
        wait_for_rewrite(proc, c, done)
        assert path.read_bytes().startswith(b"VALQD-AOF 2\n")
        valq(c, "PUSH", b"rt:plain", b"after the rewrite")
        restarted_with_the_same_state(proc, c).close()
    finally:
        proc.kill()


def test_rewrite_and_save_keep_the_state(tmp_path):
    proc = ValqdProcess(tmp_path / "d").start()
    path = tmp_path / "d" / AOF
    try:
        c = proc.client()
        build_state(c)
        before = state_of(c)
        grown = path.stat().st_size
        done = rewrites_done(proc, c)
        assert c.execute_command("BGREWRITEAOF") is True  # valkey-py maps the +status to True
        wait_for_rewrite(proc, c, done)
        assert state_of(c) == before
        assert path.stat().st_size < grown  # acks, leases and the deleted queue compacted
        assert not list(path.parent.glob("temp-rewriteaof-*"))
        c.close()
        shutdown(proc, "SIGTERM")
        proc.start()
        c = proc.client()
        assert state_of(c) == before
        assert c.execute_command("SAVE") is True
        assert state_of(c) == before
        c.close()
        proc.kill()  # SAVE fsyncs: even SIGKILL right after it keeps everything
        proc.start()
        c = proc.client()
        assert state_of(c) == before
        # and a rewritten file keeps taking appends that survive the next restart
        valq(c, "PUSH", b"rt:plain", b"after the rewrites")
        restarted_with_the_same_state(proc, c).close()
    finally:
        proc.kill()


# -- crash under load --------------------------------------------------------------------------

CRASH_QUEUES = [b"crash:a", b"crash:\x00b\r\n"]


class Worker(threading.Thread):
    """A client pushing, popping and acking until the server dies; it records each outcome
    it was told about, and what it tried without being told."""

    def __init__(self, port: int, seed: int, stop: threading.Event, deadline: float) -> None:
        super().__init__(daemon=True)
        self.port, self.rng, self.stop, self.deadline = port, random.Random(seed), stop, deadline
        self.tag = b"w%d-" % seed
        self.tried: dict[bytes, bytes] = {}  # body -> queue, every push sent
        self.replied: dict[bytes, tuple[bytes, int, bool]] = {}  # body -> (queue, id, delayed)
        self.leased: list[tuple[bytes, int, bytes]] = []
        self.ack_tried: set[bytes] = set()
        self.acked: set[bytes] = set()
        self.errors: list[str] = []

    def run(self) -> None:
        c = valkey.Valkey(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            for n in range(100000):
                if self.stop.is_set() or time.monotonic() > self.deadline:
                    return
                queue = self.rng.choice(CRASH_QUEUES)
                roll = self.rng.random()
                if roll < 0.6 or not self.leased and roll >= 0.8:
                    body = self.tag + b"%d\x00\r\n" % n + self.rng.randbytes(self.rng.randrange(20))
                    delayed = self.rng.random() < 0.1
                    self.tried[body] = queue
                    reply = valq(c, "PUSH", queue, body, *([FAR] if delayed else []))
                    self.replied[body] = (queue, int(reply), delayed)
                elif roll < 0.8:
                    message = popped(valq(c, "POP", queue))
                    if message is not None:
                        self.leased.append((queue, *message))
                else:
                    queue, message_id, body = self.leased.pop(
                        self.rng.randrange(len(self.leased)))
                    self.ack_tried.add(body)
                    assert valq(c, "ACK", queue, message_id) == b"ack %d" % message_id
                    self.acked.add(body)
        except (valkey.ConnectionError, valkey.TimeoutError, OSError):
            return  # the server was killed
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))
        finally:
            c.close()


def crash_under_load(directory: Path, policy: str, seed: int) -> None:
    rng = random.Random(seed)
    proc = ValqdProcess(directory, "--appendfsync", policy).start()
    try:
        c = proc.client()
        for queue in CRASH_QUEUES:
            valq(c, "CREATE", queue, LONG)
        c.close()
        stop = threading.Event()
        workers = [Worker(proc.port, seed * 100 + i, stop, time.monotonic() + 5)
                   for i in range(20)]
        for worker in workers:
            worker.start()
        time.sleep(rng.uniform(0.4, 1.8))
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
        stop.set()
        for worker in workers:
            worker.join(10)
        assert not any(w.is_alive() for w in workers)
        assert [e for w in workers for e in w.errors] == []

        tried = {body: queue for w in workers for body, queue in w.tried.items()}
        replied = {body: r for w in workers for body, r in w.replied.items()}
        acked = set().union(*(w.acked for w in workers))
        ack_tried = set().union(*(w.ack_tried for w in workers))
        assert len(replied) > 100 and acked, "too little happened before the kill"
        print(f"{policy} seed {seed}: {len(tried)} pushes sent, {len(replied)} acknowledged, "
              f"{len(acked)} acks acknowledged before SIGKILL")

        proc.start()
        c = proc.client()
        for queue in CRASH_QUEUES:
            info = qinfo(c, queue)
            must = {b: r[1] for b, r in replied.items()
                    if r[0] == queue and not r[2] and b not in ack_tried}
            delayed_told = sum(1 for r in replied.values() if r[0] == queue and r[2])
            delayed_tried = sum(1 for b, q in tried.items() if q == queue) - sum(
                1 for r in replied.values() if r[0] == queue and not r[2])
            assert delayed_told <= info[b"delayed_msgs"] <= delayed_tried
            assert info[b"msgs"] >= len(must)
            present = everything_in_main(c, queue)  # also checks: no id delivered twice
            bodies = list(present.values())
            assert len(bodies) == len(set(bodies)), "a message is duplicated"
            missing = {b: i for b, i in must.items() if present.get(i) != b}
            assert not missing, f"{len(missing)} acknowledged pushes lost, e.g. {list(missing)[:3]}"
            assert not acked & set(bodies), "an acked message came back"
            assert set(bodies) <= {b for b, q in tried.items() if q == queue}
    finally:
        proc.kill()


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_sigkill_under_load_always(tmp_path, seed):
    crash_under_load(tmp_path / "d", "always", seed)


def test_sigkill_under_load_everysec(tmp_path):
    """everysec writes before replying too: SIGKILL loses nothing acknowledged."""
    crash_under_load(tmp_path / "d", "everysec", 44)


# -- damaged files ----------------------------------------------------------------------------

def several_batches(directory: Path) -> tuple[Path, list[tuple[int, int]]]:
    """An AOF of one batch per command, written by a real server."""
    proc = ValqdProcess(directory).start()
    try:
        c = proc.client()
        valq(c, "CREATE", b"q", LONG)
        for n in range(6):
            valq(c, "PUSH", b"q", b"message %d \x00\r\n" % n)
        popped(valq(c, "POP", b"q"))
        c.close()
        shutdown(proc, "SIGTERM")
    finally:
        proc.kill()
    path = directory / AOF
    batches = batches_of(path)
    assert len(batches) == 8
    return path, batches


def expected_digest(path: Path) -> str:
    engine = Engine()
    load(str(path), engine)
    return engine.digest()


@pytest.mark.parametrize("where", ["payload", "length digit"])
def test_corruption_stops_startup_and_check_aof_fixes_it(tmp_path, where):
    directory = tmp_path / "d"
    path, batches = several_batches(directory)
    start, end = batches[4]
    position = (start + end) // 2 if where == "payload" else start + 2
    flip(path, position)
    with pytest.raises(AofCorruption) as info:
        load(str(path), Engine())
    assert info.value.offset == start

    code, log = start_expecting_failure(directory)
    assert code != 0
    assert f"at offset {start}" in log and str(path) in log
    assert "check-aof" in log

    checked = run_valqd("check-aof", str(path))
    assert checked.returncode == 1
    assert f"ok_up_to={start}" in checked.stdout
    fixed = run_valqd("check-aof", "--fix", "--yes", str(path))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert path.stat().st_size == start
    assert run_valqd("check-aof", str(path)).returncode == 0

    wanted = expected_digest(path)
    proc = ValqdProcess(directory).start()
    try:
        c = proc.client()
        assert digest(c).decode() == wanted
        assert qinfo(c, b"q")[b"id_sequence"] == 3  # the batches before the damage
    finally:
        proc.kill()


def test_truncated_tail_is_cut_with_a_warning(tmp_path):
    directory = tmp_path / "d"
    path, batches = several_batches(directory)
    start, end = batches[-1]
    with open(path, "r+b") as f:
        f.truncate(end - 4)

    code, log = start_expecting_failure(directory, "--aof-load-truncated", "no")
    assert code != 0 and f"at offset {start}" in log
    assert path.stat().st_size == end - 4  # refused, and left alone

    proc = ValqdProcess(directory).start()
    try:
        assert f"dropped the last {end - 4 - start} bytes" in proc.log()
        assert path.stat().st_size == start
        c = proc.client()
        info = qinfo(c, b"q")
        assert (info[b"msgs"], info[b"id_sequence"]) == (6, 6)  # the POP's batch was lost
        assert popped(valq(c, "POP", b"q"))[0] == 1
    finally:
        proc.kill()


def test_zero_tail_loads(tmp_path):
    directory = tmp_path / "d"
    path, batches = several_batches(directory)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0" * 4096)
    proc = ValqdProcess(directory).start()
    try:
        assert "dropped the last 4096 bytes" in proc.log()
        assert path.stat().st_size == size
        assert qinfo(proc.client(), b"q")[b"msgs"] == 6
    finally:
        proc.kill()


# -- rewrite under load -------------------------------------------------------------------------

REWRITE_QUEUES = [b"rw:a", b"rw:\xffb", b"rw:c"]


class ModelWorker(threading.Thread):
    """Pushes, pops and acks; records what the server acknowledged."""

    def __init__(self, port: int, seed: int, stop: threading.Event, deadline: float) -> None:
        super().__init__(daemon=True)
        self.port, self.rng, self.stop, self.deadline = port, random.Random(seed), stop, deadline
        self.pushed: dict[tuple[bytes, int], bytes] = {}
        self.acked: set[tuple[bytes, int]] = set()
        self.ops = 0
        self.errors: list[str] = []

    def run(self) -> None:
        c = valkey.Valkey(host="127.0.0.1", port=self.port, socket_timeout=10)
        leased: list[tuple[bytes, int]] = []
        try:
            for _ in range(200000):
                if self.stop.is_set() or time.monotonic() > self.deadline:
                    return
                queue = self.rng.choice(REWRITE_QUEUES)
                roll = self.rng.random()
                if roll < 0.5:
                    body = uuid.uuid4().bytes + self.rng.randbytes(self.rng.randrange(40))
                    message_id = int(valq(c, "PUSH", queue, body))
                    self.pushed[(queue, message_id)] = body
                elif roll < 0.8 or not leased:
                    message = popped(valq(c, "POP", queue))
                    if message is not None:
                        leased.append((queue, message[0]))
                else:
                    queue, message_id = leased.pop()
                    assert valq(c, "ACK", queue, message_id) == b"ack %d" % message_id
                    self.acked.add((queue, message_id))
                self.ops += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))
        finally:
            c.close()


def test_rewrite_under_concurrent_load_loses_nothing(tmp_path):
    proc = ValqdProcess(tmp_path / "d").start()
    try:
        c = proc.client()
        model: dict[tuple[bytes, int], bytes] = {}
        for queue in REWRITE_QUEUES:
            valq(c, "CREATE", queue, LONG)
            for chunk in range(4):
                pipe = c.pipeline(transaction=False)
                bodies = [b"preload %d %d" % (chunk, n) + os.urandom(24) for n in range(1000)]
                for body in bodies:
                    pipe.execute_command("VALQ", "PUSH", queue, body)
                for message_id, body in zip(pipe.execute(), bodies):
                    model[(queue, int(message_id))] = body
        stop = threading.Event()
        workers = [ModelWorker(proc.port, 500 + i, stop, time.monotonic() + 15)
                   for i in range(8)]
        for worker in workers:
            worker.start()
        overlapped = 0
        try:
            time.sleep(0.2)
            for _ in range(3):
                done = rewrites_done(proc, c)
                ops_before = sum(w.ops for w in workers)
                assert c.execute_command("BGREWRITEAOF")
                wait_for_rewrite(proc, c, done)
                overlapped += sum(w.ops for w in workers) - ops_before
                time.sleep(0.1)
        finally:
            stop.set()
            for worker in workers:
                worker.join(15)
        assert not any(w.is_alive() for w in workers)
        assert [e for w in workers for e in w.errors] == []
        assert overlapped > 0, "no command ran while a rewrite was in progress"
        print(f"{overlapped} commands acknowledged during 3 rewrites, "
              f"{sum(w.ops for w in workers)} in all")
        for worker in workers:
            model.update(worker.pushed)
        for key in set().union(*(w.acked for w in workers)):
            del model[key]
        live = digest(c)
        c.close()
        proc.kill()  # everything acknowledged was written before its reply
        proc.start()
        c = proc.client()
        assert digest(c) == live
        for queue in REWRITE_QUEUES:
            present = everything_in_main(c, queue)
            wanted = {message_id: body for (q, message_id), body in model.items() if q == queue}
            assert present == wanted, queue
    finally:
        proc.kill()


# -- disk faults ------------------------------------------------------------------------------

def _fault(code: int):
    def fail(batch: bytes) -> None:
        raise OSError(code, os.strerror(code))
    return fail


def wait_until_push_works(ts: ThreadedServer, queue: bytes, timeout: float = 4.0) -> int:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        reply = once(ts.port, "VALQ", "PUSH", queue, b"after the fault")
        if isinstance(reply, bytes):
            return int(reply)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"writes did not recover within {timeout} s: {reply!r}")


def test_io_error_closes_the_failing_batch_then_misconf_and_recovers(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    with ThreadedServer(appendonly="yes", dir=str(directory)) as ts:
        port = ts.port
        assert once(port, "VALQ", "CREATE", "q", LONG) == b"created q"
        assert once(port, "VALQ", "PUSH", "q", "before") == b"1"
        aof = ts.server.aof
        on_loop(ts, lambda: setattr(aof, "write_fault", _fault(errno.EIO)))
        assert once(port, "VALQ", "PUSH", "q", "in the failing batch") == Raw.CLOSED
        reply = once(port, "VALQ", "PUSH", "q", "refused")
        assert isinstance(reply, hiredis.ReplyError)
        assert str(reply) == "MISCONF Errors writing to the AOF file: Input/output error"
        assert once(port, "PING") == b"PONG"  # reads keep working
        assert once(port, "VALQ", "INFO", "q")[:2] == [b"delayed_msgs", b"0"]
        assert once(port, "VALQ", "POP", "q") == Raw.CLOSED  # it would change data: unknown
        on_loop(ts, lambda: setattr(aof, "write_fault", None))
        assert wait_until_push_works(ts, b"q") == 3  # "refused" took no id
        before = once(port, "DEBUG", "DIGEST")
    with ThreadedServer(ts.clock, appendonly="yes", dir=str(directory)) as ts:
        assert once(ts.port, "DEBUG", "DIGEST") == before
        info = once(ts.port, "VALQ", "INFO", "q")
        assert info[info.index(b"msgs") + 1] == b"3"


def test_disk_full_keeps_draining_and_recovers(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    with ThreadedServer(appendonly="yes", dir=str(directory)) as ts:
        port = ts.port
        assert once(port, "VALQ", "CREATE", "q", LONG) == b"created q"
        for n in range(5):
            assert once(port, "VALQ", "PUSH", "q", b"m%d" % n) == b"%d" % (n + 1)
        assert once(port, "VALQ", "POP", "q")[3] == b"1"
        assert once(port, "VALQ", "CREATE", "doomed") == b"created doomed"
        assert once(port, "VALQ", "PUSH", "doomed", "x") == b"1"
        aof = ts.server.aof
        assert aof.reserve_size > 0

        def full_unless_reserve_released(batch: bytes) -> None:
            if aof.reserve_size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        on_loop(ts, lambda: setattr(aof, "write_fault", full_unless_reserve_released))
        # the first write to fail fits in the space the reserve gave back: it is on disk
        assert once(port, "VALQ", "PUSH", "q", "squeezed in") == b"6"
        reply = once(port, "VALQ", "PUSH", "q", "refused")
        assert isinstance(reply, hiredis.ReplyError)
        assert str(reply) == "MISCONF Errors writing to the AOF file: No space left on device"
        assert str(once(port, "VALQ", "CREATE", "other")).startswith("MISCONF")
        # draining works: POP, ACK, DELETE
        assert once(port, "VALQ", "ACK", "q", 1) == b"ack 1"
        assert once(port, "VALQ", "POP", "q")[3] == b"2"
        assert once(port, "VALQ", "ACK", "q", 2) == b"ack 2"
        assert once(port, "VALQ", "EXTEND", "q", 3, 10) == b"extend"
        assert once(port, "VALQ", "PURGE", "doomed") == 1
        assert once(port, "VALQ", "DELETE", "doomed") == b"deleted doomed"
        assert once(port, "PING") == b"PONG"
        on_loop(ts, lambda: setattr(aof, "write_fault", None))
        assert wait_until_push_works(ts, b"q") == 7
        assert once(port, "VALQ", "CREATE", "other") == b"created other"
        assert once(port, "VALQ", "DELETE", "other") == b"deleted other"
        before = once(port, "DEBUG", "DIGEST")
    with ThreadedServer(ts.clock, appendonly="yes", dir=str(directory)) as ts:
        assert once(ts.port, "DEBUG", "DIGEST") == before


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                               str(mountpoint)], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace')}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True,
                          timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=10)


def test_real_disk_full_on_a_tiny_tmpfs(tiny_tmpfs):
    directory = tiny_tmpfs / "d"
    directory.mkdir()
    filler = tiny_tmpfs / "filler"
    with ThreadedServer(appendonly="yes", dir=str(directory)) as ts:
        port = ts.port
        assert once(port, "VALQ", "CREATE", "q", LONG) == b"created q"
        stat = os.statvfs(tiny_tmpfs)
        free = stat.f_bavail * stat.f_frsize
        filler.write_bytes(b"\1" * max(free - 192 * 1024, 0))  # leave ~192 KiB
        body = b"z" * 8192
        stored: list[int] = []
        refusal = None
        for _ in range(500):
            reply = once(port, "VALQ", "PUSH", "q", body)
            if not isinstance(reply, bytes):
                refusal = reply
                break
            stored.append(int(reply))
        assert refusal is not None, "the disk never filled up"
        assert str(refusal) == "MISCONF Errors writing to the AOF file: No space left on device"
        assert len(stored) > 10
        # draining works on the full disk
        for message_id in stored:
            assert once(port, "VALQ", "ACK", "q", message_id) == b"ack %d" % message_id
        assert once(port, "VALQ", "INFO", "q")[9] == b"0"  # msgs
        filler.unlink()
        wait_until_push_works(ts, b"q")
        before = once(port, "DEBUG", "DIGEST")
    with ThreadedServer(ts.clock, appendonly="yes", dir=str(directory)) as ts:
        assert once(ts.port, "DEBUG", "DIGEST") == before


# -- INFO, appendonly no -----------------------------------------------------------------------

def test_info_persistence(tmp_path):
    proc = ValqdProcess(tmp_path / "d").start()
    path = tmp_path / "d" / AOF
    try:
        c = proc.client()
        valq(c, "CREATE", "q")
        valq(c, "PUSH", "q", "x" * 1000)
        info = persistence(c)
        assert info["aof_enabled"] == 1
        assert info["aof_rewrite_in_progress"] == 0
        assert info["aof_last_bgrewrite_status"] == "ok"
        assert info["aof_last_write_status"] == "ok"
        assert info["aof_current_size"] == path.stat().st_size  # written before the reply
        assert info["aof_base_size"] < info["aof_current_size"]
        rewrites = info["aof_rewrites"]
        c.execute_command("BGREWRITEAOF")
        wait_for_rewrite(proc, c, rewrites)
        info = persistence(c)
        assert info["aof_rewrites"] == rewrites + 1
        assert info["aof_last_bgrewrite_status"] == "ok"
        assert info["aof_base_size"] == info["aof_current_size"] == path.stat().st_size
        valq(c, "PUSH", "q", "y")
        info = persistence(c)
        assert info["aof_current_size"] == path.stat().st_size > info["aof_base_size"]
    finally:
        proc.kill()


def test_appendonly_no_writes_no_file(tmp_path):
    directory = tmp_path / "d"
    proc = ValqdProcess(directory, "--appendonly", "no").start()
    try:
        c = proc.client()
        valq(c, "CREATE", "q")
        valq(c, "PUSH", "q", "gone with the process")
        assert persistence(c)["aof_enabled"] == 0
        with pytest.raises(valkey.ResponseError):
            c.execute_command("BGREWRITEAOF")
        c.close()
        shutdown(proc, "SIGTERM")
        assert sorted(p.name for p in directory.iterdir()) == ["valqd.log"]
        proc.start()
        c = proc.client()
        assert valq(c, "LIST") == [] and digest(c) == b"0" * 40
    finally:
        proc.kill()
    assert sorted(p.name for p in directory.iterdir()) == ["valqd.log"]


# -- leases across restarts --------------------------------------------------------------------

def test_leases_and_delivery_counts_survive_restarts(tmp_path):
    clock = ManualClock()
    settings = {"appendonly": "yes", "dir": str(tmp_path)}
    with ThreadedServer(clock, **settings) as ts:
        c = ts.client()
        valq(c, "CREATE", "q", 60, 2)
        for body in (b"one", b"two", b"three"):
            valq(c, "PUSH", "q", body)
        assert popped(valq(c, "POP", "q")) == (1, b"one")
        assert popped(valq(c, "POP", "q")) == (2, b"two")
        before = digest(c)
        c.close()
    clock.advance(30)  # down for 30 s: both leases still run
    with ThreadedServer(clock, **settings) as ts:
        c = ts.client()
        assert digest(c) == before
        assert popped(valq(c, "POP", "q")) == (3, b"three")  # 1 and 2 are still invisible
        assert valq(c, "POP", "q") == b""
        assert valq(c, "ACK", "q", 1) == b"ack 1"  # its consumer can still ack it
        c.close()
    clock.advance(31)  # 2's lease ran out while down (3's has 29 s left)
    with ThreadedServer(clock, **settings) as ts:
        c = ts.client()
        assert popped(valq(c, "POP", "q")) == (2, b"two")  # second delivery of 2
        assert valq(c, "POP", "q") == b""
        assert qinfo(c, "q")[b"dlq_msgs"] == 0
        c.close()
    clock.advance(61)  # 2's second lease ran out: that was its last attempt
    with ThreadedServer(clock, **settings) as ts:
        c = ts.client()
        info = qinfo(c, "q")
        assert (info[b"dlq_msgs"], info[b"msgs"]) == (1, 1)
        assert popped(valq(c, "POP", "q")) == (3, b"three")  # 3 was back: one attempt only
        with pytest.raises(valkey.ResponseError):
            valq(c, "ACK", "q", 2)  # dead-lettered, not in the main queue
        c.close()
