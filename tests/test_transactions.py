"""MULTI / EXEC / DISCARD / WATCH / UNWATCH through the real `valkey` client (its default
pipeline() is a transaction) and on the wire, as Valkey 9.1 answers them (a real Valkey
checks the replies in test_commands_vs_valkey.py)."""

import threading

import pytest
import valkey
from valkey.exceptions import ResponseError, WatchError

from support import ThreadedServer, ValqdProcess, Wire, as_map, stats, valq, wait_until
from valqd.engine import Engine
from valqd.persistence.format import iter_batches, parse_records
from valqd.persistence.loader import load

RUN_ON_STORES = True  # and again with valqd in front of Valkey (conftest.py)


def pipe(c: valkey.Valkey, *commands, raise_on_error=True):
    p = c.pipeline()  # transaction=True: MULTI ... EXEC
    for command in commands:
        p.execute_command(*command)
    return p.execute(raise_on_error=raise_on_error)


def test_a_transaction_of_every_valq_subcommand(client):
    replies = pipe(client,
                   ("VALQ", "CREATE", "q", 30, 1, 60), ("VALQ", "CREATE", "other"),
                   ("VALQ", "UPDATE", "q", "MAXATTEMPTS", 2),
                   ("VALQ", "PUSH", "q", "a"), ("VALQ", "PUSH", "q", "b", 100),
                   ("VALQ", "MPUSH", "q", "c", "d", "e"),
                   ("VALQ", "POP", "q"), ("VALQ", "POP", "q", "COUNT", 1, "WITHMETA"),
                   ("VALQ", "MPOP", 1, "q"), ("VALQ", "ACK", "q", 1),
                   ("VALQ", "EXTEND", "q", 3, 60), ("VALQ", "NACK", "q", 3),
                   ("VALQ", "MACK", "q", 4), ("VALQ", "GET", "q", 5),
                   ("VALQ", "PEEK", "q", "READY"), ("VALQ", "CANCEL", "q", 5),
                   ("VALQ", "RESCHEDULE", "q", 2, 0), ("VALQ", "REDRIVE", "q", "TO", "other"),
                   ("VALQ", "PAUSE", "q"), ("VALQ", "RESUME", "q"), ("VALQ", "STATS", "q"),
                   ("VALQ", "INFO", "q"), ("VALQ", "LIST"), ("VALQ", "PURGE", "q", "DLQ"),
                   ("VALQ", "HELP"), ("VALQ", "DELETE", "other"))
    assert len(replies) == 26
    assert replies[:6] == [b"created q", b"created other", b"updated q", b"1", b"2",
                           [b"3", b"4", b"5"]]
    assert as_map(replies[6]) == {b"body": b"a", b"id": b"1"}
    assert replies[9] == b"ack 1"
    assert replies[15] == 1
    assert sorted(replies[22]) == [b"other", b"q"]
    assert replies[-1] == b"deleted other"
    # each reply is what the same command answers outside a transaction
    assert int(as_map(replies[20])[b"pushed"]) == 5
    assert valq(client, "LIST") == [b"q"]
    assert stats(client)["id_sequence"] == 5


def test_queued_replies_on_the_wire(timed_server):
    w = Wire(timed_server.port)
    assert w.call("MULTI") == b"OK"
    assert w.call("VALQ", "CREATE", "q") == b"QUEUED"
    assert w.call("VALQ", "PUSH", "q", "x") == b"QUEUED"
    assert w.call("VALQ", "POP", "nope") == b"QUEUED"  # fails at run time, in the array
    created, pushed, failed = w.call("EXEC")
    assert (created, pushed, str(failed)) == (b"created q", b"1", "NOQUEUE no such queue 'nope'")
    assert w.call("EXEC") == "ERR EXEC without MULTI"
    assert w.call("DISCARD") == "ERR DISCARD without MULTI"
    assert w.call("MULTI") == b"OK"
    assert w.call("EXEC") == []
    w.close()


@pytest.mark.parametrize("refused, error", [
    (("NOSUCH", "x"), "unknown command 'NOSUCH'"),
    (("VALQ", "NOSUCH", "q"), "unknown subcommand 'NOSUCH'"),
    (("VALQ", "ACK", "q"), "wrong number of arguments for 'valq|ack' command"),
    (("SUBSCRIBE", "valq:q"), "Command 'subscribe' not allowed inside a transaction"),
    (("SHUTDOWN",), "Command 'shutdown' not allowed inside a transaction"),
    (("SAVE",), "Command 'save' not allowed inside a transaction"),
    (("MULTI",), "Command 'multi' not allowed inside a transaction"),  # as in Valkey 8+
])
def test_execabort_leaves_nothing_behind(client, refused, error):
    valq(client, "CREATE", "q")
    with pytest.raises(ResponseError) as excinfo:  # valkey-py raises the queuing error
        pipe(client, ("VALQ", "PUSH", "q", "a"), refused, ("VALQ", "PUSH", "q", "b"))
    assert error in str(excinfo.value)
    assert stats(client)["id_sequence"] == 0 and stats(client)["ready"] == 0
    assert client.ping()  # out of MULTI, the connection serves on


def test_execabort_and_refusal_texts_on_the_wire(timed_server):
    w = Wire(timed_server.port)
    w.call("MULTI")
    assert w.call("VALQ", "CREATE", "q") == b"QUEUED"
    assert w.call("PSUBSCRIBE", "valq:*") == \
        "ERR Command 'psubscribe' not allowed inside a transaction"
    assert w.call("EXEC") == "EXECABORT Transaction discarded because of previous errors."
    assert w.call("EXISTS", "q") == 0
    w.call("MULTI")  # WATCH inside MULTI aborts it too, as in Valkey 8+
    assert w.call("WATCH", "q") == "ERR Command 'watch' not allowed inside a transaction"
    assert w.call("EXEC") == "EXECABORT Transaction discarded because of previous errors."
    w.close()


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_a_refused_exec_discards_the_transaction_at_once(timed_server):
    """As Valkey's execCommandAbort: EXEC refused before it runs (here its arity) answers
    EXECABORT with the reason, and the transaction and WATCHes are gone."""
    w = Wire(timed_server.port)
    assert w.call("WATCH", "q") == b"OK"
    assert w.call("MULTI") == b"OK"
    assert w.call("VALQ", "CREATE", "q") == b"QUEUED"
    assert w.call("EXEC", "now") == "EXECABORT Transaction discarded because of: wrong " \
        "number of arguments for 'exec' command"
    assert w.call("EXEC") == "ERR EXEC without MULTI"
    assert w.call("EXISTS", "q") == 0
    assert w.call("EXEC", "now") == "EXECABORT Transaction discarded because of: wrong " \
        "number of arguments for 'exec' command"  # outside MULTI too, as Valkey
    w.close()


def test_runtime_errors_are_per_command(client):
    valq(client, "CREATE", "q")
    replies = pipe(client, ("VALQ", "PUSH", "q", "a"), ("VALQ", "ACK", "q", 99),
                   ("VALQ", "PUSH", "q", "b"), raise_on_error=False)
    assert replies[0] == b"1" and replies[2] == b"2"
    assert isinstance(replies[1], ResponseError) and "NOMSG" in str(replies[1])
    assert stats(client)["ready"] == 2


def test_a_blocking_pop_inside_multi_does_not_block(client):
    valq(client, "CREATE", "q")
    replies = pipe(client, ("VALQ", "POP", "q", "BLOCK", 0),
                   ("VALQ", "MPOP", 1, "q", "BLOCK", 0), ("VALQ", "PUSH", "q", "a"),
                   ("VALQ", "POP", "q", "BLOCK", 0))
    assert replies[:3] == [b"", None, b"1"]  # as without BLOCK: the module's "" and nil
    assert as_map(replies[3]) == {b"body": b"a", b"id": b"1"}


def test_discard_drops_the_queue_and_reset_leaves_multi(timed_server):
    w = Wire(timed_server.port)
    w.call("WATCH", "q")
    w.call("MULTI")
    w.call("VALQ", "CREATE", "q")
    assert w.call("CLIENT", "INFO") == b"QUEUED"
    assert w.call("DISCARD") == b"OK"
    line = w.call("CLIENT", "INFO").decode()
    assert " multi=-1 " in line and " watch=0 " in line
    w.call("WATCH", "a", "b", "a")
    w.call("MULTI")
    w.call("PING")
    assert w.call("RESET") == b"RESET"  # not queued: leaves MULTI and forgets the WATCH
    line = w.call("CLIENT", "INFO").decode()
    assert " multi=-1 " in line and " watch=0 " in line
    assert w.call("EXISTS", "q") == 0
    w.close()


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_client_list_counts_queued_and_watched(timed_server):
    c = timed_server.client()
    w = Wire(timed_server.port)
    w.call("WATCH", "a", "b", "a")
    w.call("MULTI")
    w.call("PING")
    w.call("PING")
    line = [x for x in c.execute_command("CLIENT", "LIST").decode().split("\n")
            if x and "cmd=ping" in x][0]
    assert " multi=2 " in line and " watch=2 " in line
    w.close()
    c.close()


# -- WATCH --------------------------------------------------------------------------------

def watched_exec(c, name, change):
    """WATCH name, let `change` run, then a transaction: its replies, or None if aborted."""
    with c.pipeline() as p:
        p.watch(name)
        change()
        p.multi()
        p.execute_command("VALQ", "PUSH", name, "mine")
        try:
            return p.execute(raise_on_error=False)
        except WatchError:
            return None


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_watch_fails_after_a_write_by_another_client(tc, timed_server):
    other = timed_server.client()
    valq(tc, "CREATE", "q")
    assert watched_exec(tc, "q", lambda: None) == [b"1"]
    assert watched_exec(tc, "q", lambda: valq(other, "PUSH", "q", "theirs")) is None
    assert watched_exec(tc, "q", lambda: valq(other, "POP", "q")) is None
    assert watched_exec(tc, "q", lambda: valq(other, "PEEK", "q")) == [b"3"]  # a read
    assert watched_exec(tc, "q", lambda: valq(other, "UPDATE", "q", "MAXLEN", 9)) is None
    assert watched_exec(tc, "q", lambda: valq(other, "PAUSE", "q")) is None
    assert stats(tc)["id_sequence"] == 3  # the aborted ones pushed nothing
    other.close()


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_watch_fails_after_a_lease_runs_out(tc, timed_server):
    valq(tc, "CREATE", "q", 30)
    valq(tc, "PUSH", "q", "a")
    valq(tc, "POP", "q")
    assert watched_exec(tc, "q", lambda: timed_server.advance(29)) == [b"2"]
    assert watched_exec(tc, "q", lambda: timed_server.advance(2)) is None
    assert stats(tc)["expired"] == 1


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_watch_fails_when_a_lease_runs_out_before_the_exec_even_without_the_timer(
        tc, timed_server):
    """The clock passes the deadline but the server's timer has not fired yet: EXEC
    applies what fell due first, and that change counts."""
    valq(tc, "CREATE", "q", 30)
    valq(tc, "PUSH", "q", "a")
    valq(tc, "POP", "q")
    assert watched_exec(tc, "q", lambda: timed_server.clock.advance(31)) is None


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_watch_fails_when_a_delay_falls_due_or_a_dlq_message_is_dropped(tc, timed_server):
    valq(tc, "CREATE", "q", 30, 1, 60)
    valq(tc, "PUSH", "q", "later", 10)
    assert watched_exec(tc, "q", lambda: timed_server.advance(11)) is None
    valq(tc, "POP", "q", "COUNT", 10)
    assert watched_exec(tc, "q", lambda: timed_server.advance(31)) is None  # to the DLQ
    assert stats(tc)["dlq"] == 1
    assert watched_exec(tc, "q", lambda: timed_server.advance(61)) is None  # dropped
    assert stats(tc)["dropped"] == 1


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_watch_fails_on_delete_flush_and_creation(tc, timed_server):
    other = timed_server.client()
    valq(tc, "CREATE", "q")
    assert watched_exec(tc, "q", lambda: other.delete("q")) is None
    valq(tc, "CREATE", "q")
    assert watched_exec(tc, "q", lambda: other.flushall()) is None
    assert watched_exec(tc, "q", lambda: valq(other, "CREATE", "q")) is None  # was missing
    assert watched_exec(tc, "q", lambda: (other.delete("q"), valq(other, "CREATE", "q"))) \
        is None  # another queue of the same name
    other.delete("q")
    # missing at WATCH and at EXEC: unchanged, even if it existed meanwhile (README)
    assert watched_exec(tc, "q", lambda: (valq(other, "CREATE", "q"),
                                          valq(other, "DELETE", "q"))) is not None
    assert watched_exec(tc, "q", lambda: other.flushall()) is not None
    other.close()


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_watch_of_a_missing_queue_that_stays_missing_passes(tc, timed_server):
    with tc.pipeline() as p:
        p.watch("q")
        timed_server.client().flushall()
        p.multi()
        p.ping()
        assert p.execute() == [True]


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_own_write_unwatch_and_discard(timed_server):
    w = Wire(timed_server.port)
    w.call("VALQ", "CREATE", "q")
    w.call("WATCH", "q")
    w.call("VALQ", "PUSH", "q", "own write")  # Valkey: the watcher's own write counts too
    w.call("MULTI")
    w.call("PING")
    assert w.call("EXEC") is None
    w.call("WATCH", "q")
    w.call("VALQ", "PUSH", "q", "x")
    assert w.call("UNWATCH") == b"OK"
    w.call("MULTI")
    w.call("PING")
    assert w.call("EXEC") == [b"PONG"]
    w.call("WATCH", "q")
    w.call("MULTI")
    w.call("DISCARD")
    w.call("VALQ", "PUSH", "q", "y")  # the WATCH went with the DISCARD
    w.call("MULTI")
    w.call("PING")
    assert w.call("EXEC") == [b"PONG"]
    w.close()


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_watch_nil_is_a_null_array_in_both_protocols(timed_server):
    w = Wire(timed_server.port)
    for proto, null in ((2, b"*-1\r\n"), (3, b"_\r\n")):
        w.call("HELLO", proto)
        w.call("WATCH", "q")
        w.call("VALQ", "CREATE", "q")
        w.call("MULTI")
        w.send(b"*1\r\n$4\r\nEXEC\r\n")
        assert w.raw(len(null)) == null
        w.call("DEL", "q")
    w.close()


# -- atomicity -----------------------------------------------------------------------------

def test_exec_is_atomic_while_other_clients_write(client, valqd):
    valq(client, "CREATE", "q", 60)
    stop = threading.Event()

    def writer() -> None:
        c = valqd.client()
        while not stop.is_set():
            valq(c, "PUSH", "q", "theirs")
            valq(c, "POP", "q")
        c.close()

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(40):
            replies = pipe(client, ("VALQ", "PURGE", "q"),
                           *[("VALQ", "PUSH", "q", "mine")] * 5,
                           ("VALQ", "POP", "q", "COUNT", 100, "NOACK"))
            popped = replies[-1]
            ids = [int(as_map(m)[b"id"]) for m in popped]
            assert ids == [int(i) for i in replies[1:6]]  # exactly our pushes, in order
    finally:
        stop.set()
        for t in threads:
            t.join(10)


# -- persistence -----------------------------------------------------------------------------

def test_one_exec_is_one_aof_batch_and_a_torn_one_loads_nothing(tmp_path):
    directory = tmp_path / "d"
    proc = ValqdProcess(directory).start()
    try:
        c = proc.client()
        valq(c, "CREATE", "q")
        valq(c, "PUSH", "q", "before")
        before = c.execute_command("DEBUG", "DIGEST")
        pipe(c, *[("VALQ", "PUSH", "q", b"x" * 100)] * 20, ("VALQ", "POP", "q"),
             ("VALQ", "ACK", "q", 1), ("BGREWRITEAOF",))
        after = c.execute_command("DEBUG", "DIGEST")
    finally:
        proc.kill()
    path = directory / "appendonly.aof"
    data = path.read_bytes()
    batches = list(iter_batches(data, str(path)))
    start, end, payload = batches[-1]
    kinds = [record[0] for record in parse_records(payload)]
    assert kinds == ["push"] * 20 + ["lease", "remove"]  # the whole EXEC, nothing else
    assert end == len(data)
    digests = set()
    for cut in range(start, end + 1, 7):
        copy = tmp_path / f"cut-{cut}.aof"
        copy.write_bytes(data[:cut])
        engine = Engine()
        load(str(copy), engine)
        digests.add(engine.digest().encode())
        copy.unlink()
    assert digests == {before}  # every cut inside the batch: none of the transaction
    engine = Engine()
    load(str(path), engine)
    assert engine.digest().encode() == after


def test_bgrewriteaof_inside_exec_is_scheduled(tmp_path):
    """The fork commits the AOF: started inside EXEC it would split the transaction's
    batch, so it starts right after, as Valkey's scheduled rewrite."""
    directory = tmp_path / "d"
    directory.mkdir()
    with ThreadedServer(appendonly="yes", dir=str(directory)) as ts:
        w = Wire(ts.port)
        w.call("MULTI")
        w.call("VALQ", "CREATE", "q")
        w.call("BGREWRITEAOF")
        w.call("VALQ", "PUSH", "q", "a")
        assert w.call("EXEC") == [b"created q",
                                  b"Background append only file rewriting scheduled", b"1"]
        wait_until(lambda: ts.server.aof.rewrites == 1, what="the scheduled rewrite")
        before = w.call("DEBUG", "DIGEST")
        w.close()
    with ThreadedServer(ts.clock, appendonly="yes", dir=str(directory)) as ts:
        assert ts.client().execute_command("DEBUG", "DIGEST") == before
