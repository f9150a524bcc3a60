"""Numbered databases through the real `valkey` client: SELECT, the per-database keyspace
commands, FLUSHDB, FLUSHALL, SWAPDB, MOVE, INFO keyspace, events, WATCH, and the AOF."""

import pytest
import valkey
from valkey.exceptions import ResponseError, WatchError

from support import (Background, ValqdProcess, Wire, as_map, stats, valq,
                     wait_until)
from valqd.engine import Databases, Engine, make_settings
from valqd.persistence.aof import AppendOnlyFile
from valqd.persistence.format import iter_batches, parse_records
from valqd.persistence.loader import load

RUN_ON_STORES = True  # and again with valqd in front of Valkey (conftest.py)


@pytest.fixture
def dbs(timed_server, proto):
    """Clients of databases 0, 3 and 15 of the manual-clock server."""
    clients = [timed_server.client(protocol=proto, db=n) for n in (0, 3, 15)]
    yield clients
    for c in clients:
        c.close()


def test_each_database_is_its_own_set_of_queues(dbs):
    c0, c3, c15 = dbs
    valq(c0, "CREATE", "q")
    valq(c3, "CREATE", "q")
    valq(c3, "CREATE", "only3")
    valq(c0, "PUSH", "q", "zero")
    valq(c3, "PUSH", "q", "three")
    valq(c3, "PUSH", "q", "three again")
    assert as_map(valq(c3, "POP", "q"))[b"body"] == b"three"
    assert stats(c0)["ready"] == 1 and stats(c3)["ready"] == 1
    assert sorted(c3.keys()) == [b"only3", b"q"] and c0.keys() == [b"q"] and c15.keys() == []
    assert sorted(valq(c3, "LIST")) == [b"only3", b"q"] and valq(c0, "LIST") == [b"q"]
    assert (c0.dbsize(), c3.dbsize(), c15.dbsize()) == (1, 2, 0)
    assert c0.exists("q", "only3") == 1 and c3.exists("q", "only3") == 2
    assert c0.type("only3") in (b"none", "none") and c3.type("only3") in (b"valq-type",
                                                                           "valq-type")
    assert sorted(c3.scan(0, count=100)[1]) == [b"only3", b"q"]
    assert c15.scan(0)[1] == []
    with pytest.raises(ResponseError, match="NOQUEUE"):
        valq(c15, "PUSH", "q", "x")
    assert c0.delete("only3") == 0 and c3.delete("only3") == 1
    assert c3.info("keyspace") == {"db0": {"keys": 1, "expires": 0, "avg_ttl": 0},
                                   "db3": {"keys": 1, "expires": 0, "avg_ttl": 0}}


def test_flushdb_flushes_the_selected_database_and_flushall_every_one(dbs):
    c0, c3, c15 = dbs
    for c in dbs:
        valq(c, "CREATE", "q")
        valq(c, "PUSH", "q", "x")
    assert c3.flushdb() is True
    assert (c0.dbsize(), c3.dbsize(), c15.dbsize()) == (1, 0, 1)
    assert c3.execute_command("FLUSHDB", "SYNC") in (True, b"OK")
    with pytest.raises(ResponseError, match="^syntax error$"):
        c3.execute_command("FLUSHDB", "LATER")
    assert c0.info("messages")["messages"] == 2  # totals count every database
    assert c0.flushall() is True
    assert (c0.dbsize(), c3.dbsize(), c15.dbsize()) == (0, 0, 0)
    assert c0.info("keyspace") == {}


def test_select_errors_and_reset(timed_server):
    w = Wire(timed_server.port)
    assert w.call("SELECT", "16") == "ERR DB index is out of range"
    assert w.call("SELECT", "x") == "ERR value is not an integer or out of range"
    assert w.call("SELECT", "7") == b"OK"
    assert " db=7 " in w.call("CLIENT", "INFO").decode()
    w.call("VALQ", "CREATE", "q")
    assert w.call("RESET") == b"RESET"
    assert " db=0 " in w.call("CLIENT", "INFO").decode()
    assert w.call("EXISTS", "q") == 0
    w.close()


@pytest.mark.embedded_only("SWAPDB and MOVE are refused in store mode: the databases are Valkey's")
def test_swapdb(dbs, timed_server):
    c0, c3, c15 = dbs
    valq(c0, "CREATE", "q")
    valq(c0, "PUSH", "q", "was in 0")
    valq(c3, "CREATE", "three")
    assert c15.swapdb(0, 3) is True
    assert c0.keys() == [b"three"] and c3.keys() == [b"q"]
    assert as_map(valq(c3, "POP", "q"))[b"body"] == b"was in 0"
    assert c0.swapdb(3, 3) is True  # the same one: nothing happens
    w = Wire(timed_server.port)
    assert w.call("SWAPDB", "x", "1") == "ERR invalid first DB index"
    assert w.call("SWAPDB", "1", "x") == "ERR invalid second DB index"
    assert w.call("SWAPDB", "1", "16") == "ERR DB index is out of range"
    assert w.call("SWAPDB", "-1", "1") == "ERR DB index is out of range"
    w.close()


@pytest.mark.embedded_only("SWAPDB and MOVE are refused in store mode: the databases are Valkey's")
def test_swapdb_serves_a_client_blocked_on_its_number(dbs, timed_server, proto):
    c0, c3, _ = dbs
    valq(c0, "CREATE", "q")
    valq(c3, "CREATE", "q")
    valq(c3, "PUSH", "q", "in 3")
    bg = Background(timed_server.port, proto, "VALQ", "POP", "q", "BLOCK", 0)  # database 0
    wait_until(lambda: stats(c0)["blocked"] == 1, what="the POP to block")
    assert not bg.done()
    c3.swapdb(0, 3)
    assert as_map(bg.get())[b"body"] == b"in 3"


def test_a_push_in_another_database_does_not_wake_a_blocked_pop(dbs, timed_server, proto):
    c0, c3, _ = dbs
    valq(c0, "CREATE", "q")
    valq(c3, "CREATE", "q")
    bg = Background(timed_server.port, proto, "VALQ", "POP", "q", "BLOCK", 0)
    wait_until(lambda: stats(c0)["blocked"] == 1, what="the POP to block")
    valq(c3, "PUSH", "q", "in 3")
    assert stats(c3)["blocked"] == 0 and stats(c3)["ready"] == 1 and not bg.done()
    valq(c0, "PUSH", "q", "in 0")
    assert as_map(bg.get())[b"body"] == b"in 0"


@pytest.mark.embedded_only("SWAPDB and MOVE are refused in store mode: the databases are Valkey's")
def test_move_carries_messages_leases_and_timers(dbs, timed_server):
    c0, c3, _ = dbs
    valq(c0, "CREATE", "q", 30)
    valq(c0, "PUSH", "q", "a")
    valq(c0, "PUSH", "q", "later", 100)
    valq(c0, "POP", "q")
    assert c0.move("q", 3) is True
    assert c0.keys() == [] and c3.keys() == [b"q"]
    s = stats(c3)
    assert (s["inflight"], s["delayed"], s["id_sequence"]) == (1, 1, 2)
    timed_server.advance(31)  # the lease runs out in its new database
    assert stats(c3)["ready"] == 1 and stats(c3)["expired"] == 1
    timed_server.advance(70)
    assert stats(c3)["ready"] == 2
    valq(c0, "CREATE", "q")
    assert c3.move("q", 0) is False  # the target has one of that name
    assert c3.move("missing", 0) is False
    with pytest.raises(ResponseError, match="^source and destination objects are the same$"):
        c3.move("q", 3)
    with pytest.raises(ResponseError, match="^DB index is out of range$"):
        c3.move("q", 16)
    with pytest.raises(ResponseError, match="^value is not an integer or out of range$"):
        c3.execute_command("MOVE", "q", "x")


@pytest.mark.embedded_only("SWAPDB and MOVE are refused in store mode: the databases are Valkey's")
def test_events_of_other_databases_have_their_own_channel(dbs, timed_server):
    c0, c3, _ = dbs
    sub = Wire(timed_server.port)
    sub.call("SUBSCRIBE", "valq:q", "valq@3:q")
    sub.reply()
    valq(c3, "CREATE", "q")
    valq(c3, "PUSH", "q", "x")
    assert sub.reply() == [b"message", b"valq@3:q", b"pushed 1"]
    valq(c0, "CREATE", "q")
    valq(c0, "PUSH", "q", "x")
    assert sub.reply() == [b"message", b"valq:q", b"pushed 1"]
    c0.swapdb(0, 3)
    valq(c0, "PUSH", "q", "y")  # the queue that came from database 3
    assert sub.reply() == [b"message", b"valq:q", b"pushed 2"]
    sub.close()


@pytest.mark.embedded_only("WATCH is refused in store mode: a front end shares its connection to Valkey between clients")
def test_watch_and_transactions_across_databases(dbs, timed_server):
    c0, c3, _ = dbs
    valq(c0, "CREATE", "q")
    valq(c3, "CREATE", "q")
    with c3.pipeline() as p:
        p.watch("q")
        valq(c0, "PUSH", "q", "another database's q")
        p.multi()
        p.execute_command("VALQ", "PUSH", "q", "mine")
        assert p.execute() == [b"1"]
    with c3.pipeline() as p:
        p.watch("q")
        c0.swapdb(0, 3)  # database 3 now holds another queue named q
        p.multi()
        p.execute_command("VALQ", "PUSH", "q", "mine")
        with pytest.raises(WatchError):
            p.execute()
    replies = c0.pipeline().execute_command("VALQ", "PUSH", "q", "to 0") \
        .execute_command("SELECT", 3).execute_command("VALQ", "PUSH", "q", "to 3") \
        .execute_command("SELECT", 0).execute()
    assert replies == [b"2", True, b"2", True]  # one push in each since the swap
    assert stats(c0)["id_sequence"] == 2 and stats(c3)["id_sequence"] == 2


# -- persistence -----------------------------------------------------------------------------

def fill(c0, c3, c15) -> None:
    for c, name in ((c0, "zero"), (c3, "three"), (c15, "fifteen")):
        valq(c, "CREATE", name, 30)
        valq(c, "CREATE", "q")
        for body in ("a", "b", "c"):
            valq(c, "PUSH", name, f"{name} {body}")
        valq(c, "POP", name)
    c0.swapdb(3, 15)
    c0.move("zero", 7)
    valq(c3, "PUSH", "fifteen", "after the swap")


def contents(port: int) -> dict:
    c = valkey.Valkey(port=port)
    found = {}
    for n in range(16):
        c.select(n)
        for name in c.keys():
            s = stats(c, name)
            found[n, name] = (s["ready"], s["inflight"], s["id_sequence"])
    found["digest"] = c.execute_command("DEBUG", "DIGEST")
    c.close()
    return found


def test_every_database_is_persisted_exactly(tmp_path):
    directory = tmp_path / "d"
    proc = ValqdProcess(directory).start()
    try:
        clients = [proc.client(db=n) for n in (0, 3, 15)]
        fill(*clients)
        before = contents(proc.port)
        assert before[7, b"zero"] == (2, 1, 3) and before[3, b"fifteen"] == (3, 1, 4)
        assert before[15, b"three"] == (2, 1, 3)
    finally:
        proc.kill()
    proc = ValqdProcess(directory).start()
    try:
        assert contents(proc.port) == before
        proc.client().execute_command("SAVE")  # the rewritten file names databases too
    finally:
        proc.kill()
    proc = ValqdProcess(directory).start()
    try:
        assert contents(proc.port) == before
    finally:
        proc.kill()


def test_an_aof_from_before_databases_loads_into_database_0(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    aof = AppendOnlyFile(str(directory / "appendonly.aof"))
    aof.open()
    old = Engine(journal=aof.append)  # one engine, no select records: as before databases
    old.create_queue(b"q", make_settings())
    old.push(b"q", b"old", 1_700_000_000_000)
    aof.close()
    assert b"select" not in (directory / "appendonly.aof").read_bytes()
    proc = ValqdProcess(directory).start()
    try:
        c = proc.client()
        assert c.keys() == [b"q"] and as_map(valq(c, "POP", "q"))[b"body"] == b"old"
        assert c.info("keyspace") == {"db0": {"keys": 1, "expires": 0, "avg_ttl": 0}}
    finally:
        proc.kill()


def test_records_of_another_database_are_framed_and_a_torn_frame_loads_nothing(tmp_path):
    directory = tmp_path / "d"
    proc = ValqdProcess(directory).start()
    try:
        c3 = proc.client(db=3)
        valq(c3, "CREATE", "q")
        before = c3.execute_command("DEBUG", "DIGEST")
        pipe = c3.pipeline()
        for _ in range(5):
            pipe.execute_command("VALQ", "PUSH", "q", "x" * 50)
        pipe.execute()
        after = c3.execute_command("DEBUG", "DIGEST")
    finally:
        proc.kill()
    path = directory / "appendonly.aof"
    data = path.read_bytes()
    start, end, payload = list(iter_batches(data, str(path)))[-1]
    records = list(parse_records(payload))  # one frame for the five pushes
    assert [r[0] for r in records] == ["select"] + ["push"] * 5 + ["select"]
    assert records[0] == ("select", 3) and records[-1] == ("select", 0)
    digests = set()
    for cut in range(start, end + 1, 11):
        (tmp_path / "cut.aof").write_bytes(data[:cut])
        databases = Databases(16)
        load(str(tmp_path / "cut.aof"), databases)
        digests.add(databases.digest().encode())
    assert digests == {before}
    databases = Databases(16)
    load(str(path), databases)
    assert databases.digest().encode() == after


def test_an_aof_naming_a_database_out_of_range_stops_startup(tmp_path):
    directory = tmp_path / "d"
    proc = ValqdProcess(directory).start()
    try:
        valq(proc.client(db=5), "CREATE", "q")
    finally:
        proc.kill()
    with pytest.raises(RuntimeError) as excinfo:
        ValqdProcess(directory, "--databases", "4").start()
    assert "database 5 out of range (databases is 4)" in str(excinfo.value)
    proc = ValqdProcess(directory, "--databases", "6").start()
    try:
        assert proc.client(db=5).keys() == [b"q"]
        with pytest.raises(ResponseError, match="DB index is out of range"):
            proc.client(db=6).ping()
    finally:
        proc.kill()
