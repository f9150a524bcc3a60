"""What protects an operator from a bad day: listener limits (tcp-backlog, maxclients
against the descriptor limit, refusals in the log), and the `--port auto` way to ask for an
ephemeral port now that `--port 0` means no plain TCP, as in Valkey.
"""

import resource
import shutil
import subprocess

import pytest

from support import ValqdProcess, Wire, listening_ports, wait_until


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
