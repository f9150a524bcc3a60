"""Many consumers racing for one queue of a real valqd process, each on its own connection
in its own thread: every message is delivered exactly once per lease, and acked once."""

import collections
import threading

import valkey

MESSAGES = 10_000
CONSUMERS = 50


def fill(client: valkey.Valkey, queue: str, count: int, visibility: int) -> None:
    assert client.execute_command("VALQ", "CREATE", queue, "VISIBILITY", visibility) == \
        b"created " + queue.encode()
    pipe = client.pipeline(transaction=False)
    for start in range(1, count + 1, 500):
        pipe.execute_command("VALQ", "MPUSH", queue,
                             *[b"m%d" % i for i in range(start, min(start + 500, count + 1))])
    ids = [int(i) for batch in pipe.execute() for i in batch]
    assert ids == list(range(1, count + 1))


def race(server, queue: str, consume) -> list:
    """Run `consume(client)` in CONSUMERS threads started together; their results."""
    barrier = threading.Barrier(CONSUMERS)
    results: list = [None] * CONSUMERS
    errors: list[BaseException] = []

    def run(index: int) -> None:
        client = None
        try:
            client = server.client()
            client.ping()
            barrier.wait(30)
            results[index] = consume(client)
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()
        finally:
            if client is not None:
                client.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(CONSUMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a consumer hung"
    assert not errors, errors[:3]
    return results


def meta(reply: list) -> dict:
    return dict(zip(reply[::2], reply[1::2]))


def test_50_consumers_race_pop_on_10000_messages(fresh_valqd):
    admin = fresh_valqd.client()
    fill(admin, "race", MESSAGES, 43200)

    def consume(client: valkey.Valkey) -> tuple[list, int]:
        got, acks = [], 0
        for _ in range(MESSAGES + 1):  # bounded: never more POPs than messages
            reply = client.execute_command("VALQ", "POP", "race", "WITHMETA")
            if not reply:
                break
            m = meta(reply)
            got.append((int(m[b"id"]), m[b"body"], int(m[b"attempts"]), m[b"lease"]))
            ack = client.execute_command("VALQ", "ACK", "race", m[b"id"], "LEASE", m[b"lease"])
            assert ack == b"ack " + m[b"id"]
            acks += 1
        return got, acks

    results = race(fresh_valqd, "race", consume)
    deliveries = [d for got, _ in results for d in got]
    ids = [d[0] for d in deliveries]
    assert len(ids) == len(set(ids)) == MESSAGES, "a message was delivered twice, or lost"
    assert set(ids) == set(range(1, MESSAGES + 1))
    assert all(body == b"m%d" % i and attempts == 1 for i, body, attempts, _ in deliveries)
    assert len({d[3] for d in deliveries}) == MESSAGES  # one lease receipt per delivery
    assert sum(acks for _, acks in results) == MESSAGES
    busy = sum(1 for got, _ in results if got)
    assert busy >= CONSUMERS // 2, f"only {busy} consumers got work: not much of a race"
    info = meta(admin.execute_command("VALQ", "INFO", "race"))
    assert info[b"msgs"] == b"0" and info[b"id_sequence"] == b"%d" % MESSAGES
    stats = meta(admin.execute_command("VALQ", "STATS", "race"))
    assert stats[b"delivered"] == stats[b"acked"] == b"%d" % MESSAGES
    admin.close()


def test_each_lease_delivers_once_and_expired_leases_deliver_again(fresh_valqd):
    """Consumers race twice over 2,000 messages with 1 s leases, acking nothing the first
    time. Whatever the timing, a receipt is never handed out twice and each delivery of a
    message counts one more attempt; once every lease ran out, the second race delivers
    every message once more, and the first race's receipts no longer ack."""
    count = 2000
    admin = fresh_valqd.client()
    fill(admin, "again", count, 1)

    def take_all(client: valkey.Valkey) -> list:
        got = []
        for _ in range(count + 1):
            reply = client.execute_command("VALQ", "POP", "again", "COUNT", 7, "WITHMETA")
            if not reply:
                break
            for m in map(meta, reply):
                got.append((int(m[b"id"]), int(m[b"attempts"]), m[b"lease"]))
        return got

    first = [d for got in race(fresh_valqd, "again", take_all) for d in got]
    assert set(d[0] for d in first) == set(range(1, count + 1))
    for _ in range(100):  # every lease runs out 1 s after its POP; bounded wait
        stats = meta(admin.execute_command("VALQ", "STATS", "again"))
        if stats[b"expired"] == b"%d" % len(first):
            break
        threading.Event().wait(0.1)
    else:
        raise AssertionError(f"leases did not run out: {stats}")
    assert admin.execute_command("VALQ", "UPDATE", "again", "VISIBILITY", 43200) == \
        b"updated q"  # the module names no queue
    second = [d for got in race(fresh_valqd, "again", take_all) for d in got]
    assert sorted(d[0] for d in second) == list(range(1, count + 1))

    receipts = collections.Counter(d[2] for d in first + second)
    assert max(receipts.values()) == 1 and len(receipts) == len(first) + len(second)
    delivered: dict[int, list[int]] = collections.defaultdict(list)
    for message_id, attempts, _ in first + second:
        delivered[message_id].append(attempts)
    for message_id, attempts in delivered.items():
        assert sorted(attempts) == list(range(1, len(attempts) + 1)), (message_id, attempts)

    old_id, _, old_lease = first[0]
    current = [d for d in second if d[0] == old_id][0][2]
    try:
        admin.execute_command("VALQ", "ACK", "again", old_id, "LEASE", old_lease)
        raise AssertionError("an old receipt acked a message delivered again since")
    except valkey.exceptions.ResponseError as exc:
        assert str(exc).startswith("NOLEASE"), exc
    assert admin.execute_command("VALQ", "ACK", "again", old_id, "LEASE", current) == \
        b"ack %d" % old_id
    admin.close()
