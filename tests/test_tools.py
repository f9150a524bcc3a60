"""The stock tools against valqd: redis-cli (RESP2 and RESP3) and redis-benchmark."""

import shutil
import subprocess

import pytest

MISSING = [tool for tool in ("redis-cli", "redis-benchmark") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} not found: "
    "install them with `apt-get install -y redis-tools` (.ci/run does)")


def tool(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def cli(valqd):
    """`cli(args...)`: redis-cli against the module's valqd, stdout (raw mode: not a tty)."""
    with valqd.client() as client:
        client.flushall()

    def run(*args: str) -> str:
        result = tool("redis-cli", "-p", str(valqd.port), *args)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        return result.stdout

    return run


def info(cli, queue: str) -> dict[str, int]:
    lines = cli("VALQ", "INFO", queue).splitlines()
    return {key: int(value) for key, value in zip(lines[0::2], lines[1::2])}


# -- redis-cli ------------------------------------------------------------------------------

def test_redis_cli_create_push_pop(cli):
    assert cli("VALQ", "CREATE", "q1") == "created q1\n"
    assert cli("VALQ", "PUSH", "q1", "m1") == "1\n"
    assert cli("VALQ", "PUSH", "q1", "m2") == "2\n"
    assert cli("VALQ", "POP", "q1") == "body\nm1\nid\n1\n"  # RESP2: a flat array
    assert cli("VALQ", "ACK", "q1", "1") == "ack 1\n"


def test_redis_cli_resp3_pop_is_a_map(cli):
    cli("VALQ", "CREATE", "q1")
    cli("VALQ", "PUSH", "q1", "m1")
    cli("VALQ", "PUSH", "q1", "m2")
    assert cli("-3", "VALQ", "POP", "q1") == "body m1\nid 1\n"  # raw mode prints map pairs
    assert cli("-3", "--no-raw", "VALQ", "POP", "q1") == '1# "body" => "m2"\n2# "id" => "2"\n'
    assert cli("-3", "VALQ", "POP", "q1") == "\n"  # nothing visible: "" (not nil)


def test_redis_cli_formatted_replies(cli):
    assert cli("--no-raw", "VALQ", "CREATE", "q1") == '"created q1"\n'
    assert cli("--no-raw", "VALQ", "PUSH", "q1", "m1") == '"1"\n'
    assert cli("--no-raw", "VALQ", "POP", "q1") == '1) "body"\n2) "m1"\n3) "id"\n4) "1"\n'
    assert cli("--no-raw", "VALQ", "POP", "q1") == '""\n'
    assert cli("--no-raw", "VALQ", "LIST") == '1) "q1"\n'


def test_redis_cli_errors(cli):
    assert cli("--no-raw", "VALQ", "PUSH", "nope", "m1").startswith("(error) ")
    assert cli("--no-raw", "VALQ", "PUSH").startswith("(error) ERR ")
    assert cli("--no-raw", "FOO", "a", "b") == (
        "(error) ERR unknown command 'FOO', with args beginning with: 'a' 'b' \n")


def test_redis_cli_server_commands(cli):
    cli("VALQ", "CREATE", "q1")
    cli("VALQ", "CREATE", "q2")
    assert cli("PING") == "PONG\n"
    assert cli("-3", "PING") == "PONG\n"
    assert cli("DBSIZE") == "2\n"
    assert sorted(cli("--scan").split()) == ["q1", "q2"]
    assert sorted(cli("--scan", "--pattern", "*2").split()) == ["q2"]
    assert cli("TYPE", "q1") == "valq-type\n"
    assert "# Server" in cli("INFO")


# -- redis-benchmark -------------------------------------------------------------------------

def benchmark(valqd, *args: str) -> None:
    result = tool("redis-benchmark", "-p", str(valqd.port), *args, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "requests per second" in result.stdout, output
    assert "ERR" not in output and "error" not in output.lower(), output


@pytest.mark.parametrize("pipeline", [[], ["-P", "16"]], ids=["plain", "pipelined-16"])
def test_redis_benchmark_push_and_pop(valqd, cli, pipeline):
    cli("VALQ", "CREATE", "q1")
    benchmark(valqd, "-n", "10000", "-c", "50", "-q", *pipeline, "valq", "push", "q1", "m1")
    after_push = info(cli, "q1")
    assert after_push["id_sequence"] >= 10000
    assert after_push["msgs"] == after_push["id_sequence"]
    benchmark(valqd, "-n", "10000", "-c", "50", "-q", *pipeline, "valq", "pop", "q1")
    after_pop = info(cli, "q1")
    assert after_pop["id_sequence"] == after_push["id_sequence"]  # popping adds no message
    assert after_pop["msgs"] == after_push["msgs"]  # popped messages are in flight, not gone
    if after_push["id_sequence"] == 10000:  # 10000 pushed, 10000 popped: all in flight
        assert cli("VALQ", "POP", "q1") == "\n"
