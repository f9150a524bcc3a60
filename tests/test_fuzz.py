"""Hostile input from several connections against a live server, while a well-behaved
client works on a queue of its own.

The fuzzing connections send random and mutated RESP: truncated and bit-flipped requests,
wrong lengths, inline garbage, huge counts, nested arrays and RESP3 types, and real
commands (VALQ ones above all) with bad arguments, on queues of their own. Meanwhile a
well-behaved client pushes, pops and acks on a queue whose name they cannot guess. It must
never see an error; the server must never log a traceback; and at the end its queue must
hold exactly what a reference model says (what it pushed minus what it acked, with the
deliveries still in flight), before and after a restart from the AOF.

Seeded (VALQD_FUZZ_SEED overrides the seed) and bounded in time and count.
"""

import os
import random
import secrets
import signal
import socket
import threading
import time

import pytest
import valkey

from support import ValqdProcess
from valqd.commands.table import TABLE

SEED = int(os.environ.get("VALQD_FUZZ_SEED", "20261123"))
FUZZERS = 4
FUZZ_SECONDS = 10.0
MAX_SENDS = 5000  # per fuzzing connection
RECONNECT_EVERY = 40  # sends
FUZZ_QUEUES = [f"fz{i}" for i in range(6)]
# Commands the fuzzers never send by name: they would change what the well-behaved client
# relies on (every queue, the settings, its connection, the process).
DENIED = {"flushall", "flushdb", "swapdb", "shutdown", "config", "client|kill", "bgrewriteaof", "save", "debug"}
WORDS = [
    "COUNT", "BLOCK", "WITHMETA", "NOACK", "LEASE", "PRIORITY", "DEDUP", "REASON", "TO",
    "MAIN", "DLQ", "DELAYED", "READY", "INFLIGHT", "VISIBILITY", "MAXATTEMPTS", "RETENTION",
    "BACKOFF", "NONE", "FIXED", "EXPONENTIAL", "DEDUPWINDOW", "MAXLEN", "MATCH", "TYPE",
    "AUTH", "SETNAME", "default", "valq:fz1", "valq:*", "*", "?", "[", "fz*",
    "0", "1", "-1", "2", "3", "10", "30", "1000", "43200", "43201", "-0", "+1", "01", " 1",
    "1.5", "1e3", "9223372036854775807", "9223372036854775808", "18446744073709551615",
    "18446744073709551616", "-9223372036854775809", "nan", "inf", "", " ", "\x00", "\xff",
]
ATOMS = [b"*", b"$", b":", b"+", b"-", b",", b"(", b"#", b"=", b"~", b">", b"|", b"%",
         b"_", b"!", b"\r\n", b"\n", b"\r", b"0", b"1", b"-1", b"99999999999", b"3", b" ",
         b'"', b"'", b"\\", b"\\x4", b"PING", b"VALQ", b"PUSH", b"fz1", b"\x00", b"\xff"]
SUBCOMMANDS = [(spec.name.split("|"), spec.arity)
               for top in TABLE.values()
               for spec in (list(top.subcommands.values()) or [top])
               if spec.name not in DENIED and spec.name.split("|")[0] not in DENIED]
VALQ_SUBCOMMANDS = [(words, arity) for words, arity in SUBCOMMANDS if words[0] == "valq"]


def command(*args: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode("utf-8", "surrogateescape")
        out.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(out)


# -- what the fuzzing connections send ---------------------------------------------------------

def random_arg(rng: random.Random) -> bytes | str:
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(FUZZ_QUEUES)
    if roll < 0.75:
        return rng.choice(WORDS)
    if roll < 0.9:
        return str(rng.choice([rng.randrange(-5, 50), rng.randrange(2**64), -rng.randrange(2**63)]))
    return rng.randbytes(rng.choice([0, 1, 5, 40, 300]))


def real_command(rng: random.Random) -> list:
    """A command from the table (mostly VALQ), with arguments of the right count or not."""
    words, arity = rng.choice(VALQ_SUBCOMMANDS if rng.random() < 0.7 else SUBCOMMANDS)
    count = abs(arity) - len(words) + rng.choice([0, 0, 0, 1, 2, 3, -1])
    argv = [w.upper() if rng.random() < 0.5 else w for w in words]
    argv += [random_arg(rng) for _ in range(max(count, 0))]
    if words == ["valq", "pop"] or words == ["valq", "mpop"]:
        argv = [a if a not in ("0",) else "5" for a in argv]  # no BLOCK 0 ... mostly
    return argv


def valid_operation(rng: random.Random) -> list:
    """A well-formed VALQ command on a fuzz queue, with short timeouts and delays so that
    leases run out, delayed messages fall due and messages reach the DLQ meanwhile."""
    q = rng.choice(FUZZ_QUEUES)
    n = str(rng.randrange(1, 30))
    return rng.choice([
        ["VALQ", "CREATE", q, "1", "2", "60"],
        ["VALQ", "PUSH", q, rng.randbytes(rng.randrange(20))],
        ["VALQ", "PUSH", q, "later", str(rng.randrange(3))],
        ["VALQ", "PUSH", q, "p", "PRIORITY", str(rng.randrange(-3, 3)), "DEDUP", n],
        ["VALQ", "MPUSH", q, "a", "b", "c"],
        ["VALQ", "POP", q], ["VALQ", "POP", q, "COUNT", "3", "WITHMETA"],
        ["VALQ", "POP", q, "BLOCK", "50"], ["VALQ", "POP", q, "NOACK"],
        ["VALQ", "MPOP", "2", q, rng.choice(FUZZ_QUEUES), "BLOCK", "20"],
        ["VALQ", "ACK", q, n], ["VALQ", "NACK", q, n], ["VALQ", "NACK", q, n, "1"],
        ["VALQ", "EXTEND", q, n, "1"], ["VALQ", "MACK", q, n, "1", "2"],
        ["VALQ", "CANCEL", q, n], ["VALQ", "RESCHEDULE", q, n, "1"],
        ["VALQ", "REDRIVE", q, "TO", rng.choice(FUZZ_QUEUES)], ["VALQ", "PEEK", q, "DLQ"],
        ["VALQ", "PURGE", q, rng.choice(["MAIN", "DLQ", "DELAYED"])],
        ["VALQ", "PAUSE", q], ["VALQ", "RESUME", q], ["VALQ", "STATS", q],
        ["VALQ", "UPDATE", q, "VISIBILITY", "1", "BACKOFF", "FIXED", "1"],
        ["VALQ", "DELETE", q], ["SUBSCRIBE", "valq:" + q], ["PSUBSCRIBE", "valq:*"],
    ])


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(6)
        i = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # flip a byte
            data[min(i, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            del data[i:]
        elif kind == 2:  # insert an atom
            data[i:i] = rng.choice(ATOMS)
        elif kind == 3:  # delete a few bytes
            del data[i:i + rng.randrange(1, 6)]
        elif kind == 4:  # a wrong length in the first header after i
            at = data.find(b"$", i)
            end = data.find(b"\r\n", at)
            if at >= 0 and end > at:
                try:
                    length = int(data[at + 1:end]) + rng.choice([-2, -1, 1, 2, 100, 10**6])
                except ValueError:
                    length = 7
                data[at + 1:end] = b"%d" % length
        else:  # duplicate a slice
            j = rng.randrange(len(data) + 1)
            data[i:i] = data[min(i, j):max(i, j)][:200]
    return bytes(data)


def hostile(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.15:
        return command(*valid_operation(rng))
    if roll < 0.35:
        return command(*real_command(rng))
    if roll < 0.55:
        return mutate(rng, command(*(valid_operation(rng) if rng.random() < 0.5
                                     else real_command(rng))))
    if roll < 0.65:
        return rng.randbytes(rng.randrange(1, 200))
    if roll < 0.75:  # inline garbage, quotes and escapes included
        return b" ".join(rng.choice(ATOMS + [b"VALQ", b"POP", b'"a b"', b"'x'", b'"\\x41"'])
                         for _ in range(rng.randrange(1, 10))) + rng.choice([b"\r\n", b"\n"])
    if roll < 0.82:  # huge counts and lengths
        return rng.choice([
            b"*99999999\r\n", b"*3000000000\r\n", b"*1048577\r\n", b"*-5\r\n", b"*0\r\n",
            b"*1\r\n$2000000000\r\n", b"*2\r\n$4\r\nECHO\r\n$600000000\r\nabc",
            b"*1\r\n*4000000000\r\n", b"~4000000000\r\n", b">99999\r\n", b"|123456\r\n",
            b"*1\r\n$" + b"9" * 30 + b"\r\n", b"*" + b"1" * 70000, b"*2\r\n$" + b"1" * 70000])
    if roll < 0.9:  # nested arrays and RESP3 types where bulk strings belong
        item = rng.choice([b"*1\r\n$1\r\na\r\n", b"*2\r\n*1\r\n$1\r\na\r\n$1\r\nb\r\n",
                           b"%1\r\n$1\r\na\r\n$1\r\nb\r\n", b"~1\r\n*0\r\n", b":12\r\n",
                           b"+OK\r\n", b"-ERR x\r\n", b",1.5\r\n", b"#t\r\n", b"(123\r\n",
                           b"=5\r\ntxt:x\r\n", b"_\r\n", b"$-1\r\n", b">1\r\n$1\r\nx\r\n",
                           b"%1\r\n*1\r\n$1\r\na\r\n$1\r\nb\r\n", b"~2\r\n*0\r\n*0\r\n"])
        return b"*3\r\n$4\r\nVALQ\r\n$4\r\nPUSH\r\n" + item
    return b"".join(hostile(rng) for _ in range(rng.randrange(2, 6)))  # a pipeline


class Fuzzer(threading.Thread):
    def __init__(self, port: int, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.rng, self.stop = port, random.Random(seed), stop
        self.sends = self.connections = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.failure = exc

    def _run(self) -> None:
        sock = None
        sent_here = 0
        while not self.stop.is_set() and self.sends < MAX_SENDS:
            if sock is None or sent_here >= RECONNECT_EVERY:
                if sock is not None:
                    sock.close()
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                sock.settimeout(0.002)
                self.connections += 1
                sent_here = 0
            data = hostile(self.rng)
            try:
                sock.sendall(data)
                sent_here += 1
                self.sends += 1
                while sock.recv(1 << 16):  # drain what came back, without waiting
                    pass
                sock.close()  # the server closed its side
                sock = None
            except (socket.timeout, BlockingIOError):
                pass
            except OSError:  # closed by the server while we were sending
                sock.close()
                sock = None
        if sock is not None:
            sock.close()


# -- the well-behaved client and its model ---------------------------------------------------

class WellBehaved(threading.Thread):
    """Pushes, pops and acks on its own queue; checks every reply against a model."""

    def __init__(self, port: int, queue: str, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=15)
        self.queue, self.rng, self.stop = queue, random.Random(seed), stop
        self.ready: dict[int, bytes] = {}  # id -> body, in push order
        self.inflight: dict[int, tuple[bytes, bytes]] = {}  # id -> (body, lease)
        self.next_id = 1
        self.operations = 0
        self.errors: list[str] = []

    def call(self, *args):
        return self.client.execute_command(*args)

    def run(self) -> None:
        try:
            assert self.call("VALQ", "CREATE", self.queue, "VISIBILITY", 43200) == \
                b"created " + self.queue.encode()
            while not self.stop.is_set() and self.operations < 200_000:
                self.step()
                self.operations += 1
        except Exception as exc:  # any error reply, timeout or wrong answer
            self.errors.append(f"{type(exc).__name__}: {exc} after {self.operations} "
                               "operations")
        finally:
            self.client.close()

    def push(self, body: bytes) -> None:
        assert self.call("VALQ", "PUSH", self.queue, body) == b"%d" % self.next_id
        self.ready[self.next_id] = body
        self.next_id += 1

    def step(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.35 and len(self.ready) < 400:
            self.push(rng.randbytes(rng.choice([0, 1, 10, 100, 1000])))
        elif roll < 0.42 and len(self.ready) < 400:
            bodies = [rng.randbytes(rng.randrange(50)) for _ in range(rng.randrange(1, 6))]
            ids = self.call("VALQ", "MPUSH", self.queue, *bodies)
            assert ids == [b"%d" % (self.next_id + i) for i in range(len(bodies))]
            for body in bodies:
                self.ready[self.next_id] = body
                self.next_id += 1
        elif roll < 0.75 and len(self.inflight) < 200:
            got = self.call("VALQ", "POP", self.queue, "WITHMETA")
            if not self.ready:
                assert not got, got
                return
            meta = dict(zip(got[::2], got[1::2]))
            head = next(iter(self.ready))
            assert int(meta[b"id"]) == head and meta[b"body"] == self.ready[head], meta
            assert meta[b"attempts"] == b"1"
            self.inflight[head] = (self.ready.pop(head), meta[b"lease"])
        elif roll < 0.97 and self.inflight:
            message_id = rng.choice(list(self.inflight))
            _, lease = self.inflight.pop(message_id)
            assert self.call("VALQ", "ACK", self.queue, message_id, "LEASE", lease) == \
                b"ack %d" % message_id
        else:
            info = self.call("VALQ", "INFO", self.queue)
            fields = dict(zip(info[::2], info[1::2]))
            assert fields[b"msgs"] == b"%d" % (len(self.ready) + len(self.inflight))
            assert fields[b"id_sequence"] == b"%d" % (self.next_id - 1)


def server_state(client: valkey.Valkey, queue: str) -> tuple[list, dict, dict]:
    """(ready [(id, body)] in delivery order, in flight {id: body}, INFO fields)."""
    def peek(part: str) -> list[dict]:
        reply = client.execute_command("VALQ", "PEEK", queue, part, "COUNT", 1000)
        return [dict(zip(m[::2], m[1::2])) for m in reply]
    ready = [(int(m[b"id"]), m[b"body"]) for m in peek("READY")]
    inflight = {int(m[b"id"]): m[b"body"] for m in peek("INFLIGHT")}
    info = client.execute_command("VALQ", "INFO", queue)
    return ready, inflight, dict(zip(info[::2], info[1::2]))


def assert_matches_model(client: valkey.Valkey, good: WellBehaved) -> None:
    ready, inflight, info = server_state(client, good.queue)
    assert ready == list(good.ready.items())
    assert inflight == {i: body for i, (body, _) in good.inflight.items()}
    assert info[b"msgs"] == b"%d" % (len(good.ready) + len(good.inflight))
    assert info[b"id_sequence"] == b"%d" % (good.next_id - 1)
    assert (info[b"delayed_msgs"], info[b"dlq_msgs"]) == (b"0", b"0")


def test_fuzz_while_a_well_behaved_client_works(tmp_path):
    process = ValqdProcess(tmp_path / "fuzz").start()
    stop = threading.Event()
    queue = "wb-" + secrets.token_hex(16)  # not one the fuzzers can name
    good = WellBehaved(process.port, queue, SEED, stop)
    fuzzers = [Fuzzer(process.port, SEED * 100 + i, stop) for i in range(FUZZERS)]
    good.start()
    for fuzzer in fuzzers:
        fuzzer.start()
    deadline = time.monotonic() + FUZZ_SECONDS
    while time.monotonic() < deadline and good.is_alive() and \
            any(f.is_alive() for f in fuzzers):
        time.sleep(0.1)
    stop.set()
    good.join(20)
    for fuzzer in fuzzers:
        fuzzer.join(20)
    try:
        assert not good.is_alive() and not any(f.is_alive() for f in fuzzers)
        assert not good.errors, f"seed {SEED}: the well-behaved client saw {good.errors}"
        for fuzzer in fuzzers:
            assert fuzzer.failure is None, f"seed {SEED}: fuzzer failed: {fuzzer.failure!r}"
        assert good.operations >= 100, "the well-behaved client hardly ran"
        assert sum(f.sends for f in fuzzers) >= 200, "the fuzzers hardly ran"
        assert process.proc.poll() is None, "the server died"

        client = process.client()
        assert client.ping() is True
        assert_matches_model(client, good)
        # what the fuzzers left has short leases and delays, which run out while the
        # server restarts; the well-behaved queue does not change by itself
        others = [k for k in client.keys("*") if k != queue.encode()]
        assert client.delete(*others) == len(others) if others else True
        digest = client.execute_command("DEBUG", "DIGEST")
        client.close()
    finally:
        process.proc.send_signal(signal.SIGTERM)
        try:
            stderr = process.proc.communicate(timeout=20)[1].decode(errors="replace")
        except Exception:
            process.kill()
            raise
    log = process.log()
    for word in ("Traceback", "bug:", "Exception", "Error in", "Fatal"):
        assert word not in log, f"seed {SEED}: the server logged {word!r}:\n{log[-3000:]}"
        assert word not in stderr, f"seed {SEED}: the server wrote {word!r}:\n{stderr[-3000:]}"

    # the AOF written under fire rebuilds the same state
    try:
        process.start()
        client = process.client()
        assert client.execute_command("DEBUG", "DIGEST") == digest
        assert_matches_model(client, good)
        client.close()
    finally:
        try:
            process.stop()
        finally:
            process.kill()
    assert "Traceback" not in process.log()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hostile_generators_are_deterministic(seed):
    """The same seed sends the same bytes (a failure can be replayed)."""
    a, b = random.Random(seed), random.Random(seed)
    assert [hostile(a) for _ in range(50)] == [hostile(b) for _ in range(50)]
