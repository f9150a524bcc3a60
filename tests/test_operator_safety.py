"""What protects an operator from a bad day: listener limits (tcp-backlog, maxclients
against the descriptor limit, refusals in the log), the `--port auto` way to ask for an
ephemeral port now that `--port 0` means no plain TCP (as in Valkey), one server per data
directory, a rewrite child that holds nothing of its parent's, and check-aof.
"""

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import CHILD_ENV, ValqdProcess, Wire, listening_ports, stats, wait_until
from valqd.persistence.format import MAGIC, encode_batch, encode_effects


def listen_backlog(port: int) -> int:
    """The accept queue length of the socket listening on `port`, as `ss` reports it."""
    if shutil.which("ss") is None:
        pytest.skip("no `ss` command (install iproute2) to read a listen backlog")
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[2])  # State Recv-Q Send-Q ...: Send-Q is the backlog of a listener


@pytest.mark.parametrize("args, backlog", [((), 511), (("--tcp-backlog", "37"), 37)],
                         ids=["default", "set"])
def test_tcp_backlog(tmp_path, args, backlog):
    process = ValqdProcess(tmp_path / "v", *args).start()
    try:
        assert listen_backlog(process.port) == backlog
        with process.client() as client:
            assert client.config_get("tcp-backlog") == {"tcp-backlog": str(backlog)}
    finally:
        process.stop()


def low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))


def test_maxclients_lowered_to_the_descriptor_limit(tmp_path):
    process = ValqdProcess(tmp_path / "v", preexec_fn=low_file_limit).start()
    try:
        with process.client() as client:
            assert client.config_get("maxclients") == {"maxclients": "68"}
        probe = Wire(process.port)
        assert probe.call("CONFIG", "SET", "maxclients", "1000") == (
            "ERR CONFIG SET failed (possibly related to argument 'maxclients') - The operating "
            "system is not able to handle the specified number of clients, try with 68")
        assert probe.call("CONFIG", "SET", "maxclients", "50") == b"OK"
        assert probe.call("CONFIG", "SET", "maxclients", "68") == b"OK"
        probe.close()
        log = process.log()
        assert "You requested maxclients of 10000 requiring at least 10032 max file " \
            "descriptors." in log
        assert "Current maximum open files is 100. maxclients has been reduced to 68 to " \
            "compensate for low ulimit. If you need higher maxclients increase 'ulimit -n'." \
            in log
        # the 69th client is refused with Valkey's error, not lost in a failing accept()
        wires = [Wire(process.port)]
        wait_until(lambda: wires[0].call("CLIENT", "LIST").count(b"\n") == 1,
                   what="the first client gone")
        wires += [Wire(process.port) for _ in range(67)]
        assert all(w.call("PING") == b"PONG" for w in wires)
        refused = Wire(process.port)
        assert refused.reply() == "ERR max number of clients reached"
        for wire in wires + [refused]:
            wire.close()
    finally:
        process.stop()


def test_descriptor_limit_too_low_to_start(tmp_path):
    def tiny() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (30, 30))
    process = ValqdProcess(tmp_path / "v", preexec_fn=tiny)
    with pytest.raises(RuntimeError):
        process.start()
    process.stop()
    assert "Your current 'ulimit -n' of 30 is not enough for the server to start." in \
        process.log()
    assert "Traceback" not in process.log()


def test_refused_client_is_logged(tmp_path):
    process = ValqdProcess(tmp_path / "v", "--maxclients", "1").start()
    try:
        first = Wire(process.port)
        assert first.call("PING") == b"PONG"
        second = Wire(process.port)
        assert second.reply() == "ERR max number of clients reached"
        wait_until(lambda: "Client 127.0.0.1 refused: max number of clients reached "
                           "(maxclients 1)" in process.log(), what="the refusal line")
        # a flood is summed up, not logged line by line
        for _ in range(20):
            Wire(process.port).close()
        assert process.log().count("refused: max number of clients") <= 2
        first.close()
        second.close()
    finally:
        process.stop()


def test_port_auto_picks_a_free_port_and_reports_it(tmp_path):
    process = ValqdProcess(tmp_path / "v").start()  # ValqdProcess passes --port auto
    try:
        assert process.port > 0
        assert listening_ports(process.proc.pid) == {process.port}
        with process.client() as client:
            assert client.config_get("port") == {"port": str(process.port)}
            assert client.info("server")["tcp_port"] == process.port
    finally:
        process.stop()


# -- one server per data directory ---------------------------------------------------------------

def run_valqd(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "valqd", *args], env=CHILD_ENV, input=input,
                          capture_output=True, text=True, timeout=60)


def test_second_server_on_the_same_directory_refuses_to_start(tmp_path):
    directory = tmp_path / "shared"
    first = ValqdProcess(directory).start()
    try:
        with first.client() as client:
            client.execute_command("VALQ", "CREATE", "q")
            client.execute_command("VALQ", "PUSH", "q", "acknowledged")
        second = run_valqd("--port", "auto", "--dir", str(directory))
        assert second.returncode == 1
        assert f"Could not start: the data directory {directory} is in use by another valqd " \
            f"(pid {first.proc.pid}, which holds the lock on {directory}/valqd.lock)" \
            in second.stderr
        assert "Traceback" not in second.stderr
        with first.client() as client:
            assert client.execute_command("VALQ", "POP", "q")[1] == b"acknowledged"
    finally:
        first.stop()
    again = ValqdProcess(directory).start()  # the lock goes with the process
    again.stop()


def aof_of(*effects: tuple) -> bytes:
    return MAGIC + b"".join(encode_batch(encode_effects([e])) for e in effects)


CREATE = ("create", b"q", 30000, 3, 86400000)


@pytest.mark.parametrize("effects, reason", [
    ((CREATE, ("push", b"q", 1, 1, 0, 0, b"a"), CREATE),
     "queue b'q' created twice"),
    ((CREATE, ("push", b"q", 1, 1, 0, 0, b"a"), ("push", b"q", 1, 2, 0, 0, b"b")),
     "message id 1 of queue b'q' given out again (the last was 1)"),
    ((CREATE, ("push", b"q", 1, 1, 0, 0, b"a"), ("remove", b"q", 1),
      ("push", b"q", 1, 2, 0, 0, b"b")),  # the other server's push, after this one's ack
     "message id 1 of queue b'q' given out again (the last was 1)"),
], ids=["queue-twice", "id-twice", "id-after-ack"])
def test_what_two_writers_leave_is_corruption(tmp_path, effects, reason):
    """Two servers that loaded the same file and appended to it each give the next id to a
    different message: that file is refused at start-up, and check-aof says where."""
    directory = tmp_path / "d"
    directory.mkdir()
    path = directory / "appendonly.aof"
    data = aof_of(*effects)
    path.write_bytes(data)
    bad_offset = len(aof_of(*effects[:-1]))
    logfile = directory / "start.log"
    started = run_valqd("--port", "auto", "--dir", str(directory), "--logfile", str(logfile))
    assert started.returncode == 1
    assert f"at offset {bad_offset}: bad record ({reason})" in logfile.read_text()
    checked = run_valqd("check-aof", str(path))
    assert checked.returncode == 1
    assert f"ok_up_to={bad_offset}" in checked.stdout and reason in checked.stdout
    assert path.read_bytes() == data


def test_check_aof_replays_through_the_engine(tmp_path):
    """A well-formed file the server refuses (an ack of a message never pushed) used to
    pass check-aof as OK."""
    path = tmp_path / "appendonly.aof"
    path.write_bytes(aof_of(CREATE, ("remove", b"q", 7)))
    checked = run_valqd("check-aof", str(path))
    assert checked.returncode == 1
    assert f"ok_up_to={len(aof_of(CREATE))}" in checked.stdout


def test_check_aof_fix_asks_and_keeps_what_it_cuts(tmp_path):
    path = tmp_path / "appendonly.aof"
    good = aof_of(CREATE)
    data = aof_of(CREATE, CREATE)
    path.write_bytes(data)
    refused = run_valqd("check-aof", "--fix", str(path), input="n\n")
    assert refused.returncode == 1 and "Continue? [y/N]" in refused.stdout
    assert path.read_bytes() == data
    nothing_typed = run_valqd("check-aof", "--fix", str(path), input="")
    assert nothing_typed.returncode == 1 and path.read_bytes() == data
    fixed = run_valqd("check-aof", "--fix", str(path), input="y\n")
    assert fixed.returncode == 0, fixed.stdout
    assert path.read_bytes() == good
    backup = tmp_path / f"appendonly.aof.cut-at-{len(good)}"
    assert backup.read_bytes() == data[len(good):]
    assert f"kept in {backup}" in fixed.stdout
    assert run_valqd("check-aof", str(path)).returncode == 0
    assert run_valqd("check-aof", "--yes", str(path)).returncode == 2  # --yes needs --fix


# -- the rewrite child --------------------------------------------------------------------------

REWRITE_STARTED = re.compile(r"Background append only file rewriting started by pid (\d+)")


def process_state(pid: int) -> str | None:
    """The state letter of process `pid` (None: gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def held_by(pid: int) -> set[str]:
    """What the descriptors of process `pid` point at (empty once it is gone)."""
    held = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                held.add(os.readlink(fd))
            except OSError:
                pass
    except OSError:
        pass
    return held


def test_killing_the_parent_during_a_rewrite_frees_the_port(tmp_path):
    directory = tmp_path / "d"
    server = ValqdProcess(directory).start()
    port, child = server.port, 0
    try:
        with server.client() as client:
            client.execute_command("VALQ", "CREATE", "q")
            pipe = client.pipeline(transaction=False)
            for _ in range(100):  # enough that the child is still writing when stopped
                pipe.execute_command("VALQ", "MPUSH", "q", *[b"x" * 100] * 1000)
            pipe.execute()
            client.execute_command("BGREWRITEAOF")
        wait_until(lambda: REWRITE_STARTED.search(server.log()), what="the rewrite child")
        child = int(REWRITE_STARTED.search(server.log()).group(1))
        # its first act is to close what it inherited; then it is stopped mid-write, so
        # that it is surely alive when the parent dies
        wait_until(lambda: not [h for h in held_by(child) if h.startswith("socket:")],
                   what="the child to close its sockets")
        os.kill(child, signal.SIGSTOP)
        assert str(directory / "valqd.lock") not in held_by(child)
        server.kill()
        restarted = ValqdProcess(directory, "--port", str(port)).start()
        try:
            assert restarted.port == port
            with restarted.client() as client:
                assert stats(client, "q")["ready"] == 100_000
        finally:
            restarted.stop()
        os.kill(child, signal.SIGCONT)  # an orphan: it stops writing and leaves
        wait_until(lambda: process_state(child) in (None, "Z"), what="the orphan to exit")
    finally:
        server.kill()
        if child and process_state(child) not in (None, "Z"):
            os.kill(child, signal.SIGKILL)
    assert not list(directory.glob("temp-rewriteaof-*"))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_no_thread_alive_after_start_or_fsync(tmp_path, loop):
    """A rewrite forks: no thread may be alive then (resolving the bind address on a thread
    pool, uvloop's way, or an idle fsync thread pool left some)."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    server = ValqdProcess(tmp_path / "v", "--event-loop", loop, "--bind", "localhost").start()
    try:
        with server.client() as client:
            client.execute_command("VALQ", "CREATE", "q")
            client.execute_command("VALQ", "PUSH", "q", "x")  # the everysec fsync follows
            wait_until(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0)
        wait_until(lambda: "Threads:\t1\n" in Path(f"/proc/{server.proc.pid}/status").read_text(),
                   timeout=5, what="a single thread")
    finally:
        server.stop()
