"""Live events across front ends (valqd/store/valkey/relay.py): a SUBSCRIBE client of one
front end gets the events of calls made through another, in the embedded store's format;
the front end subscribes to the queue's sharded channel only while it has subscribers, and
the library's listen gate closes by itself after the last front end left. The events of
every kind, in order, on both protocols, are checked on both stores by
tests/test_operators.py."""

import socket

import pytest

from support import ManualClock, ThreadedServer, ValkeyServerProcess, Wire, wait_until
from valqd.store.url import parse_store_url
from valqd.store.valkey.connection import ReplyError
from valqd.store.valkey.relay import TEST_LISTEN_S, may_match_database, moved_to, queue_of
from valqd.store.valkey.store import ValkeyStore

QUICK_REFRESH_S = 0.2  # the relay's refresh in these tests (10 s in production)


def store(url: str, timeout_s: float = 5.0) -> ValkeyStore:
    made = ValkeyStore(parse_store_url(url), timeout_s=timeout_s, test_clock=True)
    made.relay_refresh_s = QUICK_REFRESH_S
    return made


@pytest.fixture
def two(valkey_server):
    """Two front ends on one valkey-server, sharing a manual clock."""
    clock = ManualClock()
    with ThreadedServer(clock, store=store(valkey_server.url)) as one, \
            ThreadedServer(clock, store=store(valkey_server.url)) as other:
        c = one.client()
        c.flushall()
        c.close()
        yield one, other


def shard_subscribers(valkey_server, channel: str) -> int:
    c = valkey_server.client()
    try:
        reply = c.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        return int(reply[1])
    finally:
        c.close()


def no_more_messages(sub: Wire, proto: int = 2) -> None:
    """Nothing but the PING's reply comes next."""
    assert sub.call("PING") == ([b"pong", b""] if proto == 2 else b"PONG")


def test_queue_channels_are_named_as_the_embedded_store_names_them():
    assert queue_of(b"valq:jobs", 16) == (0, b"jobs")
    assert queue_of(b"valq:a:b", 16) == (0, b"a:b")
    assert queue_of(b"valq@3:jobs", 16) == (3, b"jobs")
    for channel in (b"valq@16:jobs", b"valq@03:jobs", b"valq@x:jobs", b"valq@3jobs",
                    b"news", b"valq@0:jobs", b"valq@:jobs"):
        assert queue_of(channel, 16) is None, channel
    assert may_match_database(b"valq:*", 0) and not may_match_database(b"valq:*", 3)
    assert may_match_database(b"*", 3) and may_match_database(b"valq@3:j*", 3)
    assert may_match_database(b"valq?3:*", 3) and not may_match_database(b"news*", 0)


def test_a_moved_reply_names_where_to_subscribe():
    assert moved_to(ReplyError("MOVED 866 127.0.0.1:7001")) == ("127.0.0.1", 7001)
    assert moved_to(ReplyError("MOVED 866 ::1:7001")) == ("::1", 7001)
    for reply in (ReplyError("ASK 866 127.0.0.1:7001"), ReplyError("MOVED 866"),
                  ReplyError("MOVED 866 host:port"), [b"ssubscribe", b"c", 1], None):
        assert moved_to(reply) is None, reply


@pytest.mark.parametrize("proto", [2, 3])
def test_a_subscriber_of_one_front_end_gets_the_events_of_calls_through_another(
        two, valkey_server, proto):
    one, other = two
    sub = Wire(one.port)
    if proto == 3:
        sub.call("HELLO", "3")
    assert sub.call("SUBSCRIBE", "valq:q") == [b"subscribe", b"valq:q", 1]
    assert shard_subscribers(valkey_server, "valq:{q}:events") == 1
    c = other.client()
    c.execute_command("VALQ", "CREATE", "q")  # the queue did not exist when listened to
    c.execute_command("VALQ", "PUSH", "q", "a")
    c.execute_command("VALQ", "POP", "q")
    c.execute_command("VALQ", "ACK", "q", "1")
    for event in (b"pushed 1", b"delivered 1", b"acked 1"):
        assert sub.reply() == [b"message", b"valq:q", event]
    if proto == 2:
        no_more_messages(sub)
    assert sub.call("UNSUBSCRIBE", "valq:q") == [b"unsubscribe", b"valq:q", 0]
    wait_until(lambda: shard_subscribers(valkey_server, "valq:{q}:events") == 0,
               what="the front end unsubscribed from the sharded channel")
    c.execute_command("VALQ", "PUSH", "q", "b")
    no_more_messages(sub, proto if proto == 3 else 3)  # back out of subscribed mode
    sub.sock.close()
    c.close()


def test_numbered_databases_and_patterns_across_front_ends(two, valkey_server):
    one, other = two
    sub = Wire(one.port)
    assert sub.call("SUBSCRIBE", "valq@3:q") == [b"subscribe", b"valq@3:q", 1]
    assert sub.call("PSUBSCRIBE", "valq:jobs*") == [b"psubscribe", b"valq:jobs*", 2]
    c = other.client(db=3)
    c.execute_command("VALQ", "CREATE", "q")
    c.execute_command("VALQ", "PUSH", "q", "x")
    assert sub.reply() == [b"message", b"valq@3:q", b"pushed 1"]
    zero = other.client()
    zero.execute_command("VALQ", "CREATE", "q")  # database 0's q: nobody listens
    zero.execute_command("VALQ", "PUSH", "q", "x")
    direct = valkey_server.client()
    direct.config_resetstat()
    zero.execute_command("VALQ", "CREATE", "jobs:mail")  # created elsewhere: found by the
    wait_until(lambda: shard_subscribers(valkey_server, "valq:{jobs:mail}:events") == 1,
               what="the pattern's next listing")  # next listing of the queues
    listed_with = direct.info("commandstats")
    assert "cmdstat_scan" in listed_with and "cmdstat_keys" not in listed_with  # no stall
    direct.close()
    zero.execute_command("VALQ", "PUSH", "jobs:mail", "y")
    assert sub.reply() == [b"pmessage", b"valq:jobs*", b"valq:jobs:mail", b"pushed 1"]
    own = one.client()
    own.execute_command("VALQ", "CREATE", "jobs:sms")  # created here: relayed at once
    own.execute_command("VALQ", "PUSH", "jobs:sms", "z")
    assert sub.reply() == [b"pmessage", b"valq:jobs*", b"valq:jobs:sms", b"pushed 1"]
    no_more_messages(sub)
    sub.sock.close()  # the client goes away: the front end stops listening
    wait_until(lambda: not one.server.store.relay.relayed, what="nothing relayed")
    for channel in ("valq@3:{q}:events", "valq:{jobs:mail}:events", "valq:{jobs:sms}:events"):
        assert shard_subscribers(valkey_server, channel) == 0
    for client in (c, zero, own):
        client.close()


def test_deployments_on_two_databases_of_one_server_do_not_hear_each_other(valkey_server):
    """Sharded pub/sub has no databases: a queue's channel is numbered by its Valkey
    database, so valqd database 0 over Valkey database 4 is not database 0 over 0."""
    base = valkey_server.url
    clock = ManualClock()
    with ThreadedServer(clock, store=store(base)) as zero, \
            ThreadedServer(clock, store=store(base + "?db=4" if base.startswith("unix:")
                                              else base + "/4")) as four:
        subs = []
        for front in (zero, four):
            c = front.client()
            c.flushdb()
            c.execute_command("VALQ", "CREATE", "q")
            sub = Wire(front.port)
            assert sub.call("SUBSCRIBE", "valq:q") == [b"subscribe", b"valq:q", 1]
            subs.append((c, sub))
        assert shard_subscribers(valkey_server, "valq@4:{q}:events") == 1
        (c0, sub0), (c4, sub4) = subs
        c4.execute_command("VALQ", "PUSH", "q", "x")
        assert sub4.reply() == [b"message", b"valq:q", b"pushed 1"]
        no_more_messages(sub0)
        c0.execute_command("VALQ", "PUSH", "q", "x")
        assert sub0.reply() == [b"message", b"valq:q", b"pushed 1"]
        no_more_messages(sub4)
        for c, sub in subs:
            sub.sock.close()
            c.close()


def test_channels_that_name_no_queue_are_subscribed_without_the_store(two, valkey_server):
    one, _ = two
    sub = Wire(one.port)
    assert sub.call("SUBSCRIBE", "news", "valq@16:q", "valq@03:q") == \
        [b"subscribe", b"news", 1]
    assert sub.replies(2) == [[b"subscribe", b"valq@16:q", 2], [b"subscribe", b"valq@03:q", 3]]
    assert sub.call("PSUBSCRIBE", "news*") == [b"psubscribe", b"news*", 4]
    assert not one.server.store.relay.relayed
    sub.sock.close()


def test_the_listen_gate_closes_by_itself_after_the_last_front_end_left(two, valkey_server):
    """A front end never closes the gate (another may listen): it runs out LISTEN_S after
    the last refresh (here on the manual clock, TEST_LISTEN_S), and then nothing is
    published."""
    one, other = two
    watcher = valkey_server.wire()  # the sharded channel itself, straight from Valkey
    assert watcher.call("SSUBSCRIBE", "valq:{q}:events")[0] == b"ssubscribe"
    sub = Wire(one.port)
    sub.call("SUBSCRIBE", "valq:q")
    c = other.client()
    c.execute_command("VALQ", "CREATE", "q")
    c.execute_command("VALQ", "PUSH", "q", "a")
    assert watcher.reply() == [b"smessage", b"valq:{q}:events", b"pushed 1"]
    sub.sock.close()
    wait_until(lambda: not one.server.store.relay.relayed, what="nothing relayed")
    c.execute_command("VALQ", "PUSH", "q", "b")  # the gate is still open
    assert watcher.reply() == [b"smessage", b"valq:{q}:events", b"pushed 2"]
    one.advance(TEST_LISTEN_S)
    c.execute_command("VALQ", "PUSH", "q", "c")  # closed: no event
    marker = valkey_server.client()
    marker.execute_command("SPUBLISH", "valq:{q}:events", "marker")
    assert watcher.reply() == [b"smessage", b"valq:{q}:events", b"marker"]
    marker.close()
    c.close()


def test_a_subscribe_while_the_store_is_down_is_confirmed_and_relays_once_it_is_back(tmp_path):
    valkey_ = ValkeyServerProcess(tmp_path / "v", True).start()
    try:
        with ThreadedServer(store=store(valkey_.url, timeout_s=0.5)) as server:
            c = server.client()
            c.execute_command("VALQ", "CREATE", "q")
            valkey_.stop()
            sub = Wire(server.port)
            # answered after store-timeout, the relay trying again meanwhile
            assert sub.call("SUBSCRIBE", "valq:q") == [b"subscribe", b"valq:q", 1]
            gone = Wire(server.port)  # a client that leaves before its confirmation
            gone.send(b"*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\nvalq:x\r\n")
            gone.sock.shutdown(socket.SHUT_RDWR)
            gone.sock.close()
            valkey_.start()
            c.execute_command("VALQ", "CREATE", "q")  # a new, empty server
            wait_until(lambda: _pushed_reaches(c, sub), what="events relayed again")
            wait_until(lambda: set(server.server.store.relay.relayed) == {b"valq:{q}:events"},
                       what="the departed client's queue no longer relayed")
            sub.sock.close()
            c.close()
    finally:
        valkey_.stop()


def _pushed_reaches(c, sub: Wire) -> bool:
    """Push a message; whether its event reached `sub` within a short while."""
    message_id = int(c.execute_command("VALQ", "PUSH", "q", "x"))
    try:
        while True:
            reply = sub.reply(timeout=0.3)
            if reply == [b"message", b"valq:q", b"pushed %d" % message_id]:
                return True
    except (TimeoutError, socket.timeout):
        return False
