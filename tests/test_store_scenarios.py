"""Scenarios of the core VALQ commands, written once and run on every store: the embedded
engine (an in-process valqd on a manual clock), the Valkey Functions library (its test
build in a real valkey-server, called with FCALL on the same clock, and on every primary of
a 3-primary cluster, each call sent to its queue's primary) and valqd in front of that
library (`--store`: an in-process valqd whose Valkey store sends its manual clock). Replies
are compared as hiredis reads RESP2; an error is `Error("CODE message")`.
"""

import pytest

from support import Error, ManualClock, ThreadedServer, Wire
from valkey_deployments import ClusterWire
from valqd.store import valkey as store
from valqd.store.url import parse_store_url
from valqd.store.valkey.store import ValkeyStore

SEC = 1000


class Embedded:
    def __init__(self, server: ThreadedServer) -> None:
        self.server = server
        self.wire = Wire(server.port)
        self.clock = server.clock

    def call(self, subcommand: str, name: bytes, *args):
        return self.wire.call("VALQ", subcommand, name, *args)

    def advance(self, seconds: float) -> None:
        self.server.advance(seconds)

    def reset(self) -> None:
        assert self.wire.call("FLUSHALL") == b"OK"


class Library:
    def __init__(self, wire: Wire | ClusterWire, clock: ManualClock) -> None:
        self.wire = wire
        self.clock = clock

    def call(self, subcommand: str, name: bytes, *args):
        return self.wire.call(*store.fcall_args(subcommand, name, args, self.clock.now))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def reset(self) -> None:
        assert self.wire.call("FLUSHALL") == b"OK"


@pytest.fixture(scope="module")
def embedded_store():
    with ThreadedServer() as server:
        s = Embedded(server)
        yield s
        s.wire.close()


@pytest.fixture(scope="module")
def library_store(valkey_server):
    c = valkey_server.client()
    store.load(c, test_clock=True)
    c.close()
    s = Library(valkey_server.wire(), ManualClock())
    yield s
    s.wire.close()


@pytest.fixture(scope="module")
def cluster_library_store(valkey_cluster):
    for node in valkey_cluster.primaries():
        c = node.client()
        store.load(c, test_clock=True)
        c.close()
    s = Library(ClusterWire(valkey_cluster), ManualClock())
    yield s
    s.wire.close()


@pytest.fixture(scope="module")
def frontend_store(valkey_server):
    """valqd with --store on the library's test build, on its own manual clock."""
    store_ = ValkeyStore(parse_store_url(valkey_server.url), test_clock=True)
    with ThreadedServer(store=store_) as server:
        s = Embedded(server)
        yield s
        s.wire.close()


@pytest.fixture(scope="module")
def cluster_frontend_store(valkey_cluster):
    """valqd with --store valkey+cluster:// on the library's test build."""
    url = parse_store_url(f"valkey+cluster://{valkey_cluster.seeds()}")
    with ThreadedServer(store=ValkeyStore(url, test_clock=True)) as server:
        s = Embedded(server)
        yield s
        s.wire.close()


STORES = {"embedded": "embedded_store", "valkey-library": "library_store",
          "valkey-frontend": "frontend_store",
          "valkey-cluster-library": "cluster_library_store",
          "valkey-cluster-frontend": "cluster_frontend_store"}


@pytest.fixture(params=list(STORES))
def st(request):
    s = request.getfixturevalue(STORES[request.param])
    s.reset()
    yield s
    s.reset()


def fields(reply) -> dict:
    return dict(zip(reply[0::2], reply[1::2]))


def test_create_info_update_delete(st):
    assert st.call("CREATE", b"q", 10, 3, 120) == b"created q"
    assert st.call("CREATE", b"q") == Error("BUSYQUEUE queue 'q' already exists")
    assert fields(st.call("INFO", b"q")) == {
        b"delayed_msgs": b"0", b"dlq_msgs": b"0", b"id_sequence": b"0",
        b"max_delivery_attempts": b"3", b"msgs": b"0", b"retention_period": b"120",
        b"visibility_timeout": b"10"}
    assert st.call("UPDATE", b"q", "VISIBILITY", 20) == b"updated q"
    assert fields(st.call("INFO", b"q"))[b"visibility_timeout"] == b"20"
    assert st.call("UPDATE", b"q", "VISIBILITY", 0) == \
        Error("ERR visibility_timeout must be between 1 and 43200")
    assert st.call("DELETE", b"q") == b"deleted q"
    assert st.call("DELETE", b"q") == b"deleted q"
    assert st.call("INFO", b"q") == Error("NOQUEUE no such queue 'q'")


def test_push_pop_ack_with_a_lease_receipt(st):
    st.call("CREATE", b"q")
    assert st.call("PUSH", b"q", b"hello") == b"1"
    meta = fields(st.call("POP", b"q", "WITHMETA"))
    assert meta[b"id"] == b"1" and meta[b"attempts"] == b"1" and meta[b"body"] == b"hello"
    assert st.call("ACK", b"q", 1, "LEASE", b"1-999") == \
        Error("NOLEASE message 1 in queue 'q' is not leased with that receipt")
    assert st.call("ACK", b"q", 1, "LEASE", meta[b"lease"]) == b"ack 1"
    assert st.call("ACK", b"q", 1) == Error("NOMSG no message with id 1 in queue 'q'")
    assert st.call("POP", b"q") == b""
    assert st.call("POP", b"q", "COUNT", 5) == []


def test_priority_first_then_push_order(st):
    st.call("CREATE", b"q")
    for body, priority in ((b"low", -1), (b"a", 0), (b"high", 7), (b"b", 0)):
        st.call("PUSH", b"q", body, "PRIORITY", priority)
    popped = st.call("POP", b"q", "COUNT", 10)
    assert [fields(m)[b"body"] for m in popped] == [b"high", b"a", b"b", b"low"]


def test_a_lease_that_runs_out_redelivers_then_the_message_goes_to_the_dlq(st):
    st.call("CREATE", b"q", 5, 2, 60)
    st.call("PUSH", b"q", b"job")
    assert fields(st.call("POP", b"q"))[b"id"] == b"1"
    st.advance(5)
    meta = fields(st.call("POP", b"q", "WITHMETA"))
    assert meta[b"attempts"] == b"2"
    st.advance(5)  # the last attempt ran out
    assert st.call("POP", b"q") == b""
    info = fields(st.call("INFO", b"q"))
    assert info[b"dlq_msgs"] == b"1" and info[b"msgs"] == b"0"
    st.advance(60)  # retention
    assert fields(st.call("INFO", b"q"))[b"dlq_msgs"] == b"0"


def test_nack_follows_the_queues_exponential_backoff(st):
    st.call("CREATE", b"q", "MAXATTEMPTS", 5, "BACKOFF", "EXPONENTIAL", 2, 5)
    st.call("PUSH", b"q", b"job")
    for wait in (2, 4, 5):  # 2 s, then doubled, up to 5 s
        st.call("POP", b"q")
        assert st.call("NACK", b"q", 1, "REASON", b"try later") == b"nack 1"
        assert fields(st.call("GET", b"q", 1))[b"state"] == b"delayed"
        st.advance(wait - 0.001)
        assert st.call("POP", b"q") == b""
        st.advance(0.001)
    assert fields(st.call("GET", b"q", 1))[b"last_reason"] == b"try later"
    assert fields(st.call("POP", b"q", "WITHMETA"))[b"attempts"] == b"4"


def test_delayed_messages_fall_due_ahead_of_waiting_ones(st):
    st.call("CREATE", b"q")
    st.call("PUSH", b"q", b"plain")
    st.call("PUSH", b"q", b"later", 10)
    st.call("PUSH", b"q", b"sooner", 5)
    assert [fields(m)[b"body"] for m in st.call("PEEK", b"q", "DELAYED")] == \
        [b"sooner", b"later"]
    st.advance(10)
    assert [fields(m)[b"body"] for m in st.call("POP", b"q", "COUNT", 3)] == \
        [b"sooner", b"later", b"plain"]


def test_dedup_window_and_maxlen(st):
    st.call("CREATE", b"q", "DEDUPWINDOW", 10, "MAXLEN", 2)
    assert st.call("PUSH", b"q", b"a", "DEDUP", b"k") == b"1"
    assert st.call("PUSH", b"q", b"again", "DEDUP", b"k") == b"1"
    assert st.call("PUSH", b"q", b"b") == b"2"
    assert st.call("PUSH", b"q", b"c") == Error("QUEUEFULL queue 'q' is full (maxlen 2)")
    st.call("ACK", b"q", 1)
    st.advance(10)
    assert st.call("PUSH", b"q", b"a2", "DEDUP", b"k") == b"3"


def test_extend_reschedule_cancel_and_redrive(st):
    st.call("CREATE", b"q", 5, 1, 60)
    st.call("CREATE", b"other")
    st.call("PUSH", b"q", b"job")
    st.call("POP", b"q")
    assert st.call("EXTEND", b"q", 1, 30) == b"extend"
    st.advance(29)
    assert fields(st.call("GET", b"q", 1))[b"state"] == b"inflight"
    st.advance(1)
    assert fields(st.call("GET", b"q", 1))[b"state"] == b"dlq"
    reply = st.call("REDRIVE", b"q", "TO", b"other")
    if isinstance(st.wire, ClusterWire):  # called directly, one call is one slot's (a
        assert reply == Error("CROSSSLOT Keys in request don't hash to the same slot")
        return  # front end makes three: valq_redrive_out, _in, _done)
    assert reply == 1
    assert st.call("GET", b"other", 1) == [
        b"attempts", b"0", b"body", b"job", b"enqueued_at", b"%d" % st.clock.now, b"id", b"1",
        b"last_reason", None, b"priority", b"0", b"state", b"ready"]
    assert st.call("RESCHEDULE", b"other", 1, 60) == b"rescheduled 1"
    assert st.call("CANCEL", b"other", 1) == 1
    assert st.call("CANCEL", b"other", 1) == Error("NOMSG no message with id 1 in queue 'other'")


def test_argument_errors_name_the_problem(st):
    st.call("CREATE", b"q")
    assert st.call("PUSH", b"q", b"x", "soon") == Error(
        "ERR delay must be an integer between 0 and 18446744073709551615")
    assert st.call("POP", b"q", "COUNT", 0) == Error("ERR COUNT must be between 1 and 1000")
    assert st.call("ACK", b"q", 0) == Error("ERR message id must be a positive integer")
    assert st.call("NACK", b"q", 1, "LEASE", b"nonsense") == Error("ERR invalid lease receipt")
    assert st.call("PURGE", b"q", "everything") == Error(
        "ERR purge type must be one of main, dlq, delayed")


def test_mpop_takes_from_the_first_queue_that_has_a_message(st):
    # one hash tag: the library's MPOP is one atomic call in one slot
    st.call("CREATE", b"{s}a")
    st.call("CREATE", b"{s}b")
    st.call("PUSH", b"{s}b", b"x")
    assert st.call("MPOP", b"2", b"{s}a", b"{s}b") == [b"{s}b", [[b"body", b"x", b"id", b"1"]]]
    assert st.call("MPOP", b"2", b"{s}a", b"{s}b") is None
    assert st.call("MPOP", b"0", b"{s}a") == Error("ERR numqueues should be greater than 0")
