"""The Valkey deployments the store tests run on (tests/valkey_deployments.py), and the slot
function (valqd/store/valkey/slots.py) that routes a queue to its cluster shard."""

import random

from valqd.store.valkey import queue_key
from valqd.store.valkey.slots import SLOTS, hash_tag, key_slot


def test_the_cluster_has_three_primaries_each_with_a_replica_in_sync(valkey_cluster):
    primaries = valkey_cluster.primaries()
    assert len(primaries) == 3
    ranges = valkey_cluster.slot_ranges()
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:]))
    for primary in primaries:
        replica = valkey_cluster.replica_of(primary)
        replication = replica.info("replication")
        assert replication["master_port"] == str(primary.port)
        assert replication["master_link_status"] == "up"
    assert primaries[0].info("cluster")["cluster_state"] == "ok"


def test_key_slot_is_cluster_keyslot(valkey_cluster):
    rng = random.Random(13)
    keys = [b"", b"{", b"}", b"{}", b"{}x", b"x{}y{z}", b"foo{bar}{zap}", b"{{a}}", b"a{b",
            queue_key(b"c d\xff\xc3\xa9{x}\r"), queue_key(b"{s}a")]
    alphabet = b"{}ab\x00\xff"
    keys += [bytes(rng.choice(alphabet) for _ in range(rng.randrange(12)))
             for _ in range(300)]
    c = valkey_cluster.primaries()[0].client()
    pipe = c.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("CLUSTER", "KEYSLOT", key)
    assert pipe.execute() == [key_slot(k) for k in keys]
    c.close()


def test_a_queues_keys_share_the_queues_hash_tag():
    assert hash_tag(queue_key(b"jobs")) == b"jobs"
    assert hash_tag(queue_key(b"jobs") + b":lease") == b"jobs"
    assert key_slot(queue_key(b"jobs")) == key_slot(queue_key(b"jobs") + b":dlq")


def test_the_sentinels_name_the_primary(valkey_sentinels):
    primary = valkey_sentinels.current_primary()
    assert primary.info("replication")["role"] == "master"
    replica = next(s for s in valkey_sentinels.servers if s is not primary)
    assert replica.info("replication")["master_port"] == str(primary.port)
