"""What each log level tells an operator (valqd.logs), and JSON lines."""

import json

import pytest

from support import ValqdProcess, Wire, wait_until

VERBOSE_ONLY = ("Settings that differ from the defaults:", "Accepted 127.0.0.1:",
                "Protocol error (expected '$', got '+') from client: id=",
                "Slow command (", "Client closed connection id=")


def exercise(process: ValqdProcess, password: str = "") -> None:
    """A slow-logged command, a protocol error, a refused client, and goodbyes."""
    wire = Wire(process.port)
    if password:
        assert wire.call("AUTH", password) == b"OK"
    assert wire.call("VALQ", "CREATE", "jobs") == b"created jobs"
    wire.send(b"*1\r\n+PING\r\n")
    assert wire.reply() == "ERR Protocol error: expected '$', got '+'"
    assert wire.closed_by_server()
    wire.close()
    holder = Wire(process.port)
    assert holder.call("AUTH", password) == b"OK" if password else \
        holder.call("PING") == b"PONG"
    refused = Wire(process.port)  # maxclients 1
    assert refused.reply() == "ERR max number of clients reached"
    refused.close()
    holder.close()


@pytest.mark.parametrize("level", ["verbose", "debug"])
def test_verbose_tells_the_configuration_and_each_client_event(tmp_path, level):
    conf = tmp_path / "valqd.conf"
    conf.write_text("maxclients 1\nslowlog-log-slower-than 0\nrequirepass hidden-pw\n"
                    "protected-mode no\n")
    process = ValqdProcess(tmp_path / "v", "--config", str(conf), "--loglevel", level).start()
    try:
        exercise(process, "hidden-pw")
        wait_until(lambda: "Client 127.0.0.1 refused: max number of clients reached "
                           "(maxclients 1)" in process.log(), what="the refusal")
        wait_until(lambda: process.log().count("Client closed connection id=") >= 2,
                   what="the goodbyes")
    finally:
        process.stop()
    log = process.log()
    assert f"Configuration loaded from {conf}" in log
    for words in VERBOSE_ONLY:
        assert words in log, words
    assert "maxclients=1 " in log and "slowlog-log-slower-than=0" in log
    assert "Slow command (" in log and "from client id=" in log and ": VALQ CREATE jobs" in log
    assert "hidden-pw" not in log and "requirepass=********" in log
    assert ("Every setting: port=" in log) is (level == "debug")
    assert " - Accepted 127.0.0.1:" in log  # Valkey's mark for verbose lines


def test_notice_keeps_to_the_lifecycle(tmp_path):
    process = ValqdProcess(tmp_path / "v", "--maxclients", "1",
                           "--slowlog-log-slower-than", "0").start()
    try:
        exercise(process)
        wait_until(lambda: "refused: max number of clients reached" in process.log(),
                   what="the refusal summed up")
    finally:
        process.stop()
    log = process.log()
    assert "No config file specified, using the defaults and the command line" in log
    for words in VERBOSE_ONLY:
        assert words not in log, words


def test_loglevel_verbose_at_run_time(tmp_path):
    process = ValqdProcess(tmp_path / "v").start()
    try:
        wire = Wire(process.port)
        assert wire.call("CONFIG", "SET", "loglevel", "verbose") == b"OK"
        wire.send(b"*1\r\n=4\r\ntxt:\r\n")
        assert wire.reply() == "ERR Protocol error: expected '$', got '='"
        wait_until(lambda: "Protocol error (expected '$', got '=') from client" in
                   process.log(), what="the protocol error line")
        wire.close()
    finally:
        process.stop()


def test_json_lines(tmp_path):
    process = ValqdProcess(tmp_path / "v", "--log-format", "json", "--loglevel", "verbose",
                           "--maxclients", "1").start()
    try:
        exercise(process)
        wait_until(lambda: "refused" in process.log(), what="the refusal")
    finally:
        process.stop()
    lines = [json.loads(line) for line in process.log().splitlines()]
    assert lines and all(set(line) == {"ts", "pid", "role", "level", "msg"} for line in lines)
    assert all(line["pid"] == process.proc.pid and line["role"] == "M" for line in lines)
    assert all(line["ts"].endswith("Z") and len(line["ts"]) == 24 for line in lines)
    levels = {line["level"] for line in lines}
    assert {"notice", "verbose", "warning"} <= levels
    messages = [line["msg"] for line in lines]
    assert any(m.startswith("valqd ") and "ready to accept connections on 127.0.0.1 port "
               f"{process.port}, pid" in m for m in messages)
    assert any(m.startswith("Protocol error (expected '$', got '+')") for m in messages)
    assert messages[-1] == "valqd is now ready to exit, bye bye..."


def test_bad_log_format_is_refused(tmp_path):
    process = ValqdProcess(tmp_path / "v", "--log-format", "xml")
    with pytest.raises(RuntimeError) as info:
        process.start()
    assert "log-format" in str(info.value) and "valkey, json" in str(info.value)
