"""The lean path (valqd/commands/lean.py) answers exactly as the general path does.

A differential test sends the same random requests (valid, invalid, edge-case arguments,
other commands that change the session in between), split into the same random reads, to
two servers, one with `lean-path yes` and one with `lean-path no`, and compares every reply
byte, the command and error statistics, the slow log, the canonical dump of every database
and the AOF records. Then each condition under which the lean path must not be taken is
checked on its own, with a spy on the path taken.
"""

import random
import re
import time
import uuid

import pytest

from support import Error, ManualClock, ThreadedServer, Wire, encode_command
from valqd.commands.args import parse_int
from valqd.commands.lean import number, u64
from valqd.engine.dump import dump
from valqd.errors import CommandError
from valqd.persistence.loader import scan

QUEUES = ["q", "q", "q", "full", "paused", "missing"]
VALID_IDS = ["1", "2", "3", "4", "5", "6", "7", "8"]
BAD_IDS = ["0", "-1", "01", "x", "", "18446744073709551615", "18446744073709551616", "3 ",
           "+3", "٣"]
VALID_NUMBERS = ["0", "1", "2", "5", "30", "0", "1"]
BAD_NUMBERS = ["00", "-1", "-0", "x", "18446744073709551615", "18446744073709551616",
               "9223372036854775807", "9223372036854775808", "-9223372036854775808",
               "2147483647", "2147483648", "-2147483648", "43200", "43201", ""]


def pick(rng: random.Random, valid: list[str], bad: list[str]) -> str:
    """Mostly a valid value, now and then an invalid or edge-case one."""
    return rng.choice(valid if rng.random() < 0.85 else bad)


def spelling(rng: random.Random, word: str) -> str:
    """A keyword as clients write it: upper, lower, or now and then mixed case."""
    return rng.choice([word.upper(), word.lower(), word.upper(), word.capitalize()])


def receipt(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return f"{rng.choice(VALID_IDS)}-{rng.randint(0, 8)}"
    return rng.choice(["1-", "-1", "x", "1-x", "01-1", "1-01", "", "2-18446744073709551616"])


def options(rng: random.Random, choices: dict) -> list[str]:
    """Some of `choices` (keyword -> value maker, None for a flag), in random order, now and
    then repeated, unknown or missing its value."""
    words: list[str] = []
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        keyword = rng.choice(list(choices)) if rng.random() < 0.93 else "BOGUS"
        words.append(spelling(rng, keyword))
        make = choices.get(keyword)
        if make is not None and rng.random() < 0.95:
            words.append(make())
    return words


def lean_command(rng: random.Random) -> list[str]:
    queue = rng.choice(QUEUES)
    mid = pick(rng, VALID_IDS, BAD_IDS)
    kind = rng.choice(["PUSH", "PUSH", "PUSH", "POP", "POP", "ACK", "ACK", "EXTEND", "NACK"])
    args = ["VALQ" if rng.random() < 0.9 else "valq", spelling(rng, kind)
            if rng.random() < 0.1 else kind, queue]
    if kind == "PUSH":
        args.append(rng.choice(["body", "", "b" * 40, "x\r\ny", "big" * 30]))
        if rng.random() < 0.3:
            args.append(pick(rng, VALID_NUMBERS, BAD_NUMBERS))
        args += options(rng, {"PRIORITY": lambda: pick(rng, VALID_NUMBERS + ["-5"],
                                                       BAD_NUMBERS),
                              "DEDUP": lambda: rng.choice(["k1", "k2", ""])})
    elif kind == "POP":
        args += options(rng, {"COUNT": lambda: pick(rng, ["1", "2", "3", "1000"],
                                                    ["0", "1001", "x", "-1"]),
                              "WITHMETA": None, "NOACK": None,
                              "BLOCK": lambda: rng.choice(["1", "x", "-1"])})
    elif kind == "ACK":
        args.append(mid)
        args += options(rng, {"LEASE": lambda: receipt(rng)})
    elif kind == "EXTEND":
        args += [mid, pick(rng, VALID_NUMBERS, BAD_NUMBERS)]
        args += options(rng, {"LEASE": lambda: receipt(rng)})
    else:
        args.append(mid)
        if rng.random() < 0.3:
            args.append(pick(rng, VALID_NUMBERS, BAD_NUMBERS))
        args += options(rng, {"LEASE": lambda: receipt(rng),
                              "REASON": lambda: rng.choice(["oops", "", "x y"])})
    if rng.random() < 0.03:
        args = args[:rng.randint(0, len(args))]  # too few arguments, or none at all
    return args


def other_command(rng: random.Random) -> list[str]:
    """Commands of the general path, among them those that change what the lean path may do."""
    return rng.choice([
        ["MULTI"], ["EXEC"], ["DISCARD"], ["SELECT", "1"], ["SELECT", "0"],
        ["HELLO", "3"], ["HELLO", "2"], ["PING"], ["VALQ", "STATS", "q"],
        ["VALQ", "PEEK", "q", "INFLIGHT"], ["VALQ", "GET", "q", "2"],
        ["VALQ", "CREATE", "q"], ["VALQ", "MPUSH", "q", "m1", "m2"],
        ["VALQ", "MACK", "q", "1", "2"], ["CLIENT", "SETNAME", "x"],
        ["CONFIG", "SET", "max-message-size", rng.choice(["50", "1mb"])],
        ["VALQ", "PAUSE", "q"], ["VALQ", "RESUME", "q"], ["VALQ", "DELETE", "paused"],
        ["VALQ", "CREATE", "paused"], ["VALQ", "PAUSE", "paused"],
        ["VALQ", "UPDATE", "q", "MAXATTEMPTS", "2"], ["VALQ", "POP"], ["VALQ"], ["NOSUCH"],
    ])


def pair(tmp_path, clock_start: int):
    """Two servers alike but for lean-path, each with an AOF and a slow log of every command."""
    servers = []
    for lean in ("yes", "no"):
        (tmp_path / lean).mkdir()
        servers.append(ThreadedServer(
            ManualClock(clock_start), appendonly="yes", dir=str(tmp_path / lean),
            **{"lean-path": lean, "slowlog-log-slower-than": "0", "slowlog-max-len": "100000",
               "databases": "2"}))
    return servers


def read_through(wire: Wire, marker: bytes) -> bytes:
    """Every reply byte up to and including the reply that ends with `marker`."""
    data = b""
    end = marker + b"\r\n"
    wire.sock.settimeout(10)
    while not data.endswith(end):
        chunk = wire.sock.recv(1 << 16)
        assert chunk, data[-300:]
        data += chunk
    return data


def statistics(wire: Wire) -> tuple[list[str], list[str], str]:
    """commandstats without the timings, errorstats, and the commands processed."""
    info = wire.call("INFO", "commandstats", "errorstats", "stats").decode()
    calls = sorted(re.sub(r"usec=\d+,usec_per_call=[\d.]+,", "", line)
                   for line in info.splitlines() if line.startswith("cmdstat_"))
    errors = sorted(line for line in info.splitlines() if line.startswith("errorstat_"))
    total = re.search(r"total_commands_processed:(\d+)", info)
    return calls, errors, total.group(1) if total else ""


def slow_log(wire: Wire) -> list:
    """The slow log's entries without their id, time and duration."""
    return [entry[3:4] + entry[5:] for entry in wire.call("SLOWLOG", "GET", "-1")]


@pytest.mark.parametrize("seed", range(4))
def test_both_paths_answer_alike_byte_for_byte(tmp_path, seed):
    rng = random.Random(seed)
    lean_server, general_server = pair(tmp_path, 1_700_000_000_000 + seed)
    with lean_server, general_server:
        wires = [Wire(s.port, nodelay=True) for s in (lean_server, general_server)]
        setup = [["VALQ", "CREATE", "q", "VISIBILITY", "30", "MAXATTEMPTS", "3"],
                 ["VALQ", "CREATE", "full", "MAXLEN", "2"], ["VALQ", "CREATE", "paused"],
                 ["VALQ", "PAUSE", "paused"], ["SELECT", "1"], ["VALQ", "CREATE", "q"],
                 ["SELECT", "0"]]
        for wire in wires:
            for args in setup:
                wire.call(*args)
        for round_no in range(30):
            commands = [lean_command(rng) if rng.random() < 0.85 else other_command(rng)
                        for _ in range(rng.randint(1, 25))]
            marker = f"mark-{round_no}-{uuid.uuid4().hex}".encode()
            data = b"".join(encode_command(args) for args in commands if args)
            # end in a known state: out of MULTI, then a PING that answers in every mode
            data += encode_command(["DISCARD"]) + encode_command(["PING", marker])
            cuts = sorted(rng.sample(range(1, len(data)), min(rng.randint(0, 6),
                                                                len(data) - 1)))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
            for piece in pieces:
                for wire in wires:
                    wire.send(piece)
                if rng.random() < 0.5:
                    time.sleep(0.002)  # most often a read of its own
            replies = [read_through(wire, marker) for wire in wires]
            assert replies[0] == replies[1], (round_no, commands, replies)
            if rng.random() < 0.3:
                seconds = rng.choice([1, 29, 31, 61])
                for server in (lean_server, general_server):
                    server.advance(seconds)
        checks = []
        for wire, server in zip(wires, (lean_server, general_server)):
            fresh = Wire(server.port)
            checks.append((statistics(fresh), slow_log(fresh),
                           [dump(engine.queues) for engine in server.server.databases.engines]))
            fresh.close()
            wire.close()
        assert checks[0][0] == checks[1][0]  # statistics
        assert checks[0][1] == checks[1][1]  # slow log
        assert checks[0][2] == checks[1][2]  # every database's dump
    assert aof_records(tmp_path / "yes") == aof_records(tmp_path / "no")


def aof_records(directory) -> list[tuple[int, tuple]]:
    """The AOF's records, each with its database. The `select` records that frame another
    database's records are left out: how they group depends on which records were committed
    in one batch, that is on how the requests were split into reads, not on the path."""
    records, database = [], 0
    found: list = []
    scan(str(directory / "appendonly.aof"), found.append)
    for record in found:
        if record[0] == "select":
            database = record[1]
        else:
            records.append((database, record))
    return records


# -- when the lean path is taken, and when it must not be ------------------------------------

class Spy:
    """Tells whether the commands since the last look were served on the lean path, from
    the count it keeps (nothing is patched: the compiled build runs the same test)."""

    def __init__(self, server: ThreadedServer) -> None:
        self.lean = server.server.lean
        self.mark = self.lean.served

    def served(self) -> int:
        """Commands served on the lean path since the last look."""
        served, self.mark = self.lean.served - self.mark, self.lean.served
        return served

    def took_general(self, command: str) -> bool:
        """Whether the command just sent (`command`, for the reader) went to the general
        path: the lean path served nothing since the last look."""
        return self.served() == 0


@pytest.fixture
def spied(tmp_path):
    server = ThreadedServer(appendonly="yes", dir=str(tmp_path))
    with server:
        yield server, Spy(server)


USUAL_FORMS = [
    (["VALQ", "PUSH", "q", "a"], b"1"),
    (["VALQ", "PUSH", "q", "b", "0", "PRIORITY", "-3", "DEDUP", "k"], b"2"),
    (["VALQ", "PUSH", "q", "c", "dedup", "k"], b"2"),
    (["VALQ", "PUSH", "q", "d", "5"], b"3"),
    (["VALQ", "POP", "q"], [b"body", b"a", b"id", b"1"]),
    (["VALQ", "ACK", "q", "1"], b"ack 1"),
    (["VALQ", "PUSH", "q", "e", "priority", "2"], b"4"),
    (["VALQ", "POP", "q", "COUNT", "1", "WITHMETA"], None),
    (["VALQ", "EXTEND", "q", "4", "60", "LEASE", "4-2"], b"extend"),
    (["VALQ", "EXTEND", "q", "4", "60"], b"extend"),
    (["VALQ", "NACK", "q", "4", "0", "LEASE", "4-2", "REASON", "failed"], b"nack 4"),
    (["VALQ", "POP", "q", "withmeta", "noack"], None),
    (["VALQ", "POP", "q"], [b"body", b"b", b"id", b"2"]),
    (["VALQ", "NACK", "q", "2"], b"nack 2"),
    (["VALQ", "POP", "q", "COUNT", "5"], None),
    (["VALQ", "ACK", "q", "2", "LEASE", "2-4"], b"ack 2"),
    (["VALQ", "POP", "q", "NOACK"], b""),
]


def test_the_usual_forms_of_the_five_commands_take_the_lean_path(spied):
    server, spy = spied
    wire = Wire(server.port)
    assert wire.call("VALQ", "CREATE", "q") == b"created q"
    for args, expected in USUAL_FORMS:
        reply = wire.call(*args)
        assert not isinstance(reply, str), (args, reply)
        if expected is not None:
            assert reply == expected, (args, reply)
        assert not spy.took_general(" ".join(args[:2]).lower()), args


def test_each_condition_sends_the_command_to_the_general_path(spied):
    server, spy = spied
    wire = Wire(server.port)
    wire.call("VALQ", "CREATE", "q")
    # BLOCK may park the client
    assert wire.call("VALQ", "POP", "q", "BLOCK", "1") == b""
    assert spy.took_general("valq pop")
    # MULTI: queued by the dispatcher
    assert wire.call("MULTI") == b"OK"
    assert wire.call("VALQ", "PUSH", "q", "x") == b"QUEUED"
    assert spy.took_general("valq push")
    assert wire.call("EXEC") == [b"1"]
    # a spelling the one-lookup table does not have
    assert wire.call("VaLq", "PuSh", "q", "y") == b"2"
    assert spy.took_general("valq push")
    # an argument out of range, an unknown option: the general path's own error
    assert wire.call("VALQ", "PUSH", "q", "z", "PRIORITY", "2147483648") == Error(
        "ERR priority must be an integer between -2147483648 and 2147483647")
    assert spy.took_general("valq push")
    assert wire.call("VALQ", "ACK", "q", "1", "LEASE") == Error("ERR syntax error")
    assert spy.took_general("valq ack")
    # a body over max-message-size
    wire.call("CONFIG", "SET", "max-message-size", "3")
    assert wire.call("VALQ", "PUSH", "q", "long") == Error(
        "ERR message body is 4 bytes, more than max-message-size (3)")
    assert spy.took_general("valq push")
    wire.call("CONFIG", "SET", "max-message-size", "1mb")
    # maxmemory: pushes may be refused (OOM), pops never are
    wire.call("CONFIG", "SET", "maxmemory", "1")
    assert wire.call("VALQ", "PUSH", "q", "w") == Error(
        "OOM command not allowed when used memory > 'maxmemory'.")
    assert spy.took_general("valq push")
    assert wire.call("VALQ", "POP", "q") == [b"body", b"x", b"id", b"1"]
    assert not spy.took_general("valq pop")
    wire.call("CONFIG", "SET", "maxmemory", "0")
    # the AOF cannot be written: MISCONF for pushes
    server.server.aof.write_error = "Input/output error"
    assert wire.call("VALQ", "PUSH", "q", "w") == Error(
        "MISCONF Errors writing to the AOF file: Input/output error")
    assert spy.took_general("valq push")
    server.server.aof.write_error = None
    # loading
    server.server.state.loading = True
    assert wire.call("VALQ", "PUSH", "q", "w") == Error(
        "LOADING valqd is loading the dataset in memory")
    assert spy.took_general("valq push")
    server.server.state.loading = False
    # lean-path no: everything through the dispatcher
    wire.call("CONFIG", "SET", "lean-path", "no")
    assert wire.call("VALQ", "PUSH", "q", "v") == b"3"
    assert spy.took_general("valq push")
    wire.call("CONFIG", "SET", "lean-path", "yes")
    assert wire.call("VALQ", "PUSH", "q", "u") == b"4"
    assert not spy.took_general("valq push")


def test_subscribed_sessions_take_the_general_path(spied):
    server, spy = spied
    wire, listener = Wire(server.port), Wire(server.port)
    wire.call("VALQ", "CREATE", "q")
    assert listener.call("SUBSCRIBE", "valq:q") == [b"subscribe", b"valq:q", 1]
    assert listener.call("VALQ", "PUSH", "q", "x") == Error(
        "ERR Can't execute 'valq|push': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT "
        "/ RESET are allowed in this context")
    assert spy.took_general("valq push")
    # a lean push is published like any other
    assert wire.call("VALQ", "PUSH", "q", "y") == b"1"
    assert not spy.took_general("valq push")
    assert listener.reply() == [b"message", b"valq:q", b"pushed 1"]
    resp3 = Wire(server.port)
    resp3.call("HELLO", "3")
    resp3.call("SUBSCRIBE", "valq:other")
    assert resp3.call("VALQ", "PUSH", "q", "z") == b"2"  # RESP3 may, on the general path
    assert spy.took_general("valq push")


def test_restricted_and_unauthenticated_sessions_take_the_general_path(tmp_path):
    server = ThreadedServer(requirepass="secret")
    with server:
        spy = Spy(server)
        wire = Wire(server.port)
        assert wire.call("VALQ", "PUSH", "q", "x") == Error("NOAUTH Authentication required.")
        assert spy.took_general("valq push")
        assert wire.call("AUTH", "secret") == b"OK"
        wire.call("VALQ", "CREATE", "jobs")
        wire.call("VALQ", "CREATE", "other")
        assert wire.call("VALQ", "PUSH", "jobs", "x") == b"1"
        assert not spy.took_general("valq push")
        wire.call("ACL", "SETUSER", "producer", "on", ">pw", "~jobs", "+valq|push")
        producer = Wire(server.port)
        assert producer.call("AUTH", "producer", "pw") == b"OK"
        assert producer.call("VALQ", "PUSH", "jobs", "y") == b"2"
        assert spy.took_general("valq push")
        assert producer.call("VALQ", "PUSH", "other", "y") == Error(
            "NOPERM No permissions to access a key")
        assert producer.call("VALQ", "POP", "jobs") == Error(
            "NOPERM User producer has no permissions to run the 'valq|pop' command")


def test_renamed_commands_take_the_lean_path_under_their_new_name():
    server = ThreadedServer(renames={"valq": "jobq"})
    with server:
        spy = Spy(server)
        wire = Wire(server.port)
        assert wire.call("JOBQ", "CREATE", "q") == b"created q"
        assert wire.call("JOBQ", "PUSH", "q", "x") == b"1"
        assert not spy.took_general("jobq push")
        assert wire.call("VALQ", "PUSH", "q", "x") == Error(
            "ERR unknown command 'VALQ', with args beginning with: 'PUSH' 'q' 'x' ")
        assert spy.took_general("valq push")


def test_lean_commands_count_in_the_statistics_and_the_slow_log(spied):
    server, spy = spied
    wire, observer = Wire(server.port), Wire(server.port)
    wire.call("VALQ", "CREATE", "q")
    observer.call("CONFIG", "RESETSTAT")
    observer.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
    observer.call("SLOWLOG", "RESET")
    spy.served()
    wire.send(b"".join(encode_command(args) for args in (
        ["VALQ", "PUSH", "q", "a"], ["VALQ", "PUSH", "nope", "a"], ["VALQ", "POP", "q"],
        ["VALQ", "ACK", "q", "9"], ["VALQ", "ACK", "q", "1"])))
    assert wire.replies(5)[1] == Error("NOQUEUE no such queue 'nope'")
    assert spy.served() == 5
    info = observer.call("INFO", "commandstats", "errorstats").decode()
    assert re.search(r"cmdstat_valq\|push:calls=2,usec=\d+,usec_per_call=[\d.]+,"
                     r"rejected_calls=0,failed_calls=1", info), info
    assert re.search(r"cmdstat_valq\|ack:calls=2,.*failed_calls=1", info), info
    assert "errorstat_NOQUEUE:count=1" in info and "errorstat_NOMSG:count=1" in info
    entries = observer.call("SLOWLOG", "GET", "-1")
    assert [entry[3] for entry in entries[::-1]][1:] == [
        [b"VALQ", b"PUSH", b"q", b"a"], [b"VALQ", b"PUSH", b"nope", b"a"], [b"VALQ", b"POP", b"q"],
        [b"VALQ", b"ACK", b"q", b"9"], [b"VALQ", b"ACK", b"q", b"1"],
        [b"INFO", b"commandstats", b"errorstats"]]
    assert b" cmd=valq|ack " in observer.call("CLIENT", "LIST")
    observer.call("CONFIG", "SET", "slowlog-log-slower-than", "-1")
    logged = observer.call("SLOWLOG", "LEN")
    wire.call("VALQ", "PUSH", "q", "b")
    assert observer.call("SLOWLOG", "LEN") == logged


def test_a_lean_push_serves_a_client_blocked_in_a_pop(spied):
    server, spy = spied
    pusher, waiter = Wire(server.port), Wire(server.port)
    pusher.call("VALQ", "CREATE", "q")
    waiter.send(encode_command(["VALQ", "POP", "q", "BLOCK", "0"]))
    deadline = time.monotonic() + 10
    while (stats := pusher.call("VALQ", "STATS", "q"))[stats.index(b"blocked") + 1] != b"1":
        assert time.monotonic() < deadline, "the pop never blocked"
        time.sleep(0.01)
    spy.served()
    pusher.send(encode_command(["VALQ", "PUSH", "q", "a"]) +
                encode_command(["VALQ", "PUSH", "q", "b"]))
    assert pusher.replies(2) == [b"1", b"2"]
    assert not spy.took_general("valq push")
    assert waiter.reply() == [b"body", b"a", b"id", b"1"]
    assert pusher.call("VALQ", "POP", "q") == [b"body", b"b", b"id", b"2"]


NUMBERS = [b"", b"-", b"0", b"-0", b"00", b"01", b"-01", b"1", b"-1", b"9" * 18, b"9" * 19,
           b"-" + b"9" * 18, b"-" + b"9" * 19, b"18446744073709551615", b"18446744073709551616",
           b"9223372036854775807", b"9223372036854775808", b"-9223372036854775808",
           b"-9223372036854775809", b"+1", b" 1", b"1 ", "٣".encode(), b"1a", b"a1", b"--1",
           b"1" * 40, b"000", b"1/", b"1:", b"/", b":"]


@pytest.mark.parametrize("low, high", [(0, 2**64 - 1), (1, 2**64 - 1), (-2**63, 2**63 - 1),
                                       (1, 1000), (-5, 5)])
def test_lean_numbers_are_read_as_the_general_path_reads_them(low, high):
    """The lean path reads short numbers digit by digit; what it reads, and what it
    refuses (leaving the reply to the general path), is what parse_int reads."""
    rng = random.Random(16)
    samples = NUMBERS + [bytes(rng.choice(b"0123456789-+ a/:") for _ in range(rng.randint(0, 22)))
                         for _ in range(3000)]
    for raw in samples:
        try:
            expected = parse_int(raw, low, high)
        except CommandError:
            expected = None
        assert number(raw, low, high) == expected, raw
        if high == 2**64 - 1:
            assert u64(raw, low) == expected, raw
