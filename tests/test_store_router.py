"""valqd's routing to a Valkey Cluster's primaries and to the primary Sentinel names
(valqd/store/valkey/router.py), on the real deployments of tests/valkey_deployments.py:
the slot map, MOVED and ASK, commands on every primary, one-slot transactions."""

import asyncio

import pytest

from support import Wire
from valqd.store.url import parse_store_url
from valqd.store.valkey import library_source, queue_key
from valqd.store.valkey.connection import ReplyError, StoreUnavailable
from valqd.store.valkey.router import (ClusterTopology, Router, SentinelTopology,
                                       parse_redirect)
from valqd.store.valkey.slots import SLOTS, key_slot

QUEUES = [b"q%d" % i for i in range(30)]
T0 = 1_700_000_000_000


def cluster_router(cluster, timeout_s: float = 5.0) -> Router:
    url = parse_store_url(f"valkey+cluster://{cluster.seeds()}")
    return Router(ClusterTopology(url, timeout_s), timeout_s=timeout_s)


async def loaded(router: Router) -> Router:
    await router.connect()
    replies = await router.each_primary("FUNCTION", "LOAD", "REPLACE", library_source(True))
    assert replies == [b"valq"] * len(replies)
    await router.each_primary("FLUSHALL")
    return router


def fcall(name: bytes, subcommand: str, *args) -> list:
    return ["FCALL", f"valq_{subcommand}", 1, queue_key(name), T0, *args]


def test_each_queue_lives_on_the_primary_of_its_slot(valkey_cluster):
    async def run() -> None:
        router = await loaded(cluster_router(valkey_cluster))
        replies = await asyncio.gather(*(router.call(*fcall(q, "create")) for q in QUEUES))
        assert replies == [b"created " + q for q in QUEUES]
        assert len(router.primaries) == 3
        await router.close()
    asyncio.run(run())
    owners = set()
    for name in QUEUES:
        owner = valkey_cluster.owner(queue_key(name))
        assert owner.call("EXISTS", queue_key(name)) == 1
        owners.add(owner.port)
    assert len(owners) == 3


def test_a_stale_map_is_corrected_by_moved(valkey_cluster):
    async def run() -> None:
        router = await loaded(cluster_router(valkey_cluster))
        wrong = router.primaries[0]
        router.owners = [wrong] * SLOTS  # as if every slot had moved since
        replies = await asyncio.gather(*(router.call(*fcall(q, "create")) for q in QUEUES))
        assert replies == [b"created " + q for q in QUEUES]
        await asyncio.sleep(0.3)  # the map is read again
        assert len(set(router.owners)) == 3
        await router.close()
    asyncio.run(run())


def test_a_slot_being_migrated_is_followed_with_asking(valkey_cluster):
    key = queue_key(b"moving")
    slot = key_slot(key)
    source = valkey_cluster.owner(key)
    target = next(p for p in valkey_cluster.primaries() if p.port != source.port)
    source_id = source.call("CLUSTER", "MYID")
    target_id = target.call("CLUSTER", "MYID")
    assert target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id) == b"OK"
    assert source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id) == b"OK"
    try:
        async def run() -> None:
            router = await loaded(cluster_router(valkey_cluster))
            # the key is not on the source any more: it answers ASK, the target serves it
            assert await router.call(*fcall(b"moving", "create")) == b"created moving"
            assert router.owners[slot] == (source.address.split(":")[0], source.port)
            await router.close()
        asyncio.run(run())
        assert source.call("EXISTS", key).startswith("ASK ")  # not there: asks elsewhere
        assert target.call("CLUSTER", "COUNTKEYSINSLOT", slot) >= 1
    finally:
        wire = Wire(target.port)  # the target's keys of the slot go: it gives the slot back
        for stray in wire.call("CLUSTER", "GETKEYSINSLOT", slot, 100):
            assert wire.call("ASKING") == b"OK" and wire.call("DEL", stray) == 1
        wire.close()
        for node in (source, target):
            assert node.call("CLUSTER", "SETSLOT", slot, "STABLE") == b"OK"


def test_a_command_for_every_primary_and_one_slot_transactions(valkey_cluster):
    async def run() -> None:
        router = await loaded(cluster_router(valkey_cluster))
        assert await router.each_primary("PING") == [b"PONG"] * 3

        done: asyncio.Future = asyncio.get_running_loop().create_future()
        router.transaction([fcall(b"a", "create"), fcall(b"a", "push", b"x")],
                           done.set_result)
        assert await done == [b"created a", b"1"]

        crossed: asyncio.Future = asyncio.get_running_loop().create_future()
        router.transaction([fcall(b"a", "info"), fcall(b"b", "info")], crossed.set_result)
        reply = await crossed
        assert isinstance(reply, ReplyError) and str(reply) == \
            "CROSSSLOT Keys in request don't hash to the same slot"
        await router.close()
    asyncio.run(run())


def test_a_cluster_that_does_not_answer_is_a_clear_error(valkey_cluster):
    async def run() -> None:
        url = parse_store_url("valkey+cluster://127.0.0.1:1")
        router = Router(ClusterTopology(url, 0.3), timeout_s=0.3)
        with pytest.raises(StoreUnavailable, match="127.0.0.1:1"):
            await router.connect()
        await router.close()
    asyncio.run(run())


def test_redirections_are_read_as_valkey_writes_them():
    assert parse_redirect("MOVED 3999 127.0.0.1:6381", "h") == (3999, ("127.0.0.1", 6381))
    assert parse_redirect("ASK 1 :6381", "h") == (1, ("h", 6381))
    assert parse_redirect("MOVED 2 [::1]:7000", "h") == (2, ("::1", 7000))


def test_sentinel_names_the_primary(valkey_sentinels):
    async def run() -> None:
        url = parse_store_url(f"valkey+sentinel://{valkey_sentinels.seeds()}/valq")
        router = Router(SentinelTopology(url, 5.0))
        await router.connect()
        assert router.primaries == [("127.0.0.1", valkey_sentinels.primary_port())]
        assert await router.call("SET", "k", "v") == b"OK"
        assert await router.each_primary("GET", "k") == [b"v"]
        await router.close()
    asyncio.run(run())
