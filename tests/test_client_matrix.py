"""The same job-queue session through valkey-py as users write it, in every mode run here:
the blocking client and the asyncio client, RESP2 and RESP3, with the client's default
`pipeline()` (a MULTI/EXEC transaction). The Node clients run it in test_node_clients.py;
README.md's client matrix lists what was run."""

import asyncio
import threading
import time

import pytest
import valkey
import valkey.asyncio

from support import as_map


def check_session(replies: dict) -> None:
    assert replies["create"] == b"created jobs"
    assert replies["push"] == b"1"
    popped = as_map(replies["pop"])
    assert popped[b"body"] == b"hello" and popped[b"id"] == b"1"
    assert replies["ack"] == b"ack 1"
    served = as_map(replies["blocking_pop"])
    assert served[b"body"] == b"later" and served[b"attempts"] == b"1"
    assert replies["transaction"][:2] == [b"3", b"4"]
    assert as_map(replies["transaction"][2])[b"body"] == b"t1"
    assert as_map(replies["info"])[b"msgs"] == b"2"


def push_later(port: int, protocol: int) -> threading.Thread:
    """Another client pushes `later` once the first one is parked in its blocking POP."""
    def run() -> None:
        other = valkey.Valkey(port=port, protocol=protocol, socket_timeout=10)
        deadline = time.monotonic() + 10
        while as_map(other.execute_command("VALQ", "STATS", "jobs"))[b"blocked"] == b"0":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        other.execute_command("VALQ", "PUSH", "jobs", "later")
        other.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_valkey_py_blocking_client(client):
    protocol = client.connection_pool.connection_kwargs["protocol"]
    port = client.connection_pool.connection_kwargs["port"]
    r = valkey.Valkey(port=port, protocol=protocol, socket_timeout=10)
    replies = {"create": r.execute_command("VALQ", "CREATE", "jobs"),
               "push": r.execute_command("VALQ", "PUSH", "jobs", "hello")}
    replies["pop"] = r.execute_command("VALQ", "POP", "jobs")
    replies["ack"] = r.execute_command("VALQ", "ACK", "jobs", 1)
    pusher = push_later(port, protocol)
    replies["blocking_pop"] = r.execute_command("VALQ", "POP", "jobs", "BLOCK", 5000,
                                                "WITHMETA")
    pusher.join(10)
    r.execute_command("VALQ", "ACK", "jobs", 2)
    pipe = r.pipeline()  # transaction=True: MULTI ... EXEC
    pipe.execute_command("VALQ", "PUSH", "jobs", "t1")
    pipe.execute_command("VALQ", "PUSH", "jobs", "t2")
    pipe.execute_command("VALQ", "POP", "jobs")
    replies["transaction"] = pipe.execute()
    replies["info"] = r.execute_command("VALQ", "INFO", "jobs")
    check_session(replies)
    r.close()


def test_valkey_py_asyncio_client(client):
    protocol = client.connection_pool.connection_kwargs["protocol"]
    port = client.connection_pool.connection_kwargs["port"]

    async def session() -> dict:
        r = valkey.asyncio.Valkey(port=port, protocol=protocol, socket_timeout=10)
        replies = {"create": await r.execute_command("VALQ", "CREATE", "jobs"),
                   "push": await r.execute_command("VALQ", "PUSH", "jobs", "hello")}
        replies["pop"] = await r.execute_command("VALQ", "POP", "jobs")
        replies["ack"] = await r.execute_command("VALQ", "ACK", "jobs", 1)
        pusher = push_later(port, protocol)
        replies["blocking_pop"] = await r.execute_command("VALQ", "POP", "jobs", "BLOCK",
                                                          5000, "WITHMETA")
        pusher.join(10)
        await r.execute_command("VALQ", "ACK", "jobs", 2)
        async with r.pipeline() as pipe:  # transaction=True
            pipe.execute_command("VALQ", "PUSH", "jobs", "t1")
            pipe.execute_command("VALQ", "PUSH", "jobs", "t2")
            pipe.execute_command("VALQ", "POP", "jobs")
            replies["transaction"] = await pipe.execute()
        replies["info"] = await r.execute_command("VALQ", "INFO", "jobs")
        await r.aclose()
        return replies

    check_session(asyncio.run(session()))
