"""Commands routed to the primary that serves them, in a Valkey Cluster or behind Sentinel,
and retried while the deployment heals.

A `Router` keeps one pipelined `Client` (connection.py) per primary and a slot map: which
primary owns each of the 16384 slots. A command goes to the owner of its key's slot
(slots.py: the queue's hash tag). Behind Sentinel there is one primary and every slot is
its own, so the same code serves both; only `Topology.read()` differs: a cluster's map
comes from CLUSTER SHARDS (CLUSTER SLOTS on servers without it), Sentinel's primary from
`SENTINEL GET-MASTER-ADDR-BY-NAME`.

What is retried, until the command's deadline (`timeout_s` after it came):
- `MOVED slot host:port`: the slot has a new owner: the map is read again and the command
  goes there; `ASK slot host:port` (a slot being migrated): ASKING and the command go to
  that node once;
- `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`, `READONLY` (the node became a
  replica), `UNBLOCKED` (a blocked command of a node that became a replica): the command
  did not run; the map is read again and the command sent again after a short pause;
- a refused connection, or one lost before the command was written to it (or a `resend`
  command, a read, that it carried): the map is read again and the command sent again.
  A write that was written when its connection broke may have run: it is not sent again
  (a PUSH could be stored twice), its caller gets `ReplyLost` (`-INDOUBT`).
After the deadline the caller gets `StoreUnavailable` naming the last trouble, which the
store answers as `-TRYAGAIN`.
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from ..url import StoreUrl
from .connection import (Arg, Callback, Client, Reply, ReplyError, ReplyLost, SetupCall,
                         StoreUnavailable)
from .replicas import ReplicaWait
from .slots import SLOTS, key_slot

log = logging.getLogger("valqd")

Address = tuple[str, int]
# (first slot, last slot, primary) for every served range
SlotRanges = list[tuple[int, int, Address]]

RETRIED = frozenset((b"TRYAGAIN", b"CLUSTERDOWN", b"MASTERDOWN", b"LOADING", b"READONLY",
                     b"UNBLOCKED"))
RETRY_FIRST_S = 0.02
RETRY_MAX_S = 0.5
REFRESH_EVERY_S = 0.1  # at most this often while something is wrong
SCAN_NODE_BITS = 10  # a fanned-out SCAN cursor: node cursor << 10 | node index


def parse_redirect(text: str, default_host: str) -> tuple[int, Address]:
    """(slot, address) of `MOVED 3999 127.0.0.1:6381` or `ASK ...`; an empty host
    (`MOVED 3999 :6381`) is the node that answered."""
    _, slot, where = text.split(" ", 2)
    host, _, port = where.rpartition(":")
    return int(slot), (host.strip("[]") or default_host, int(port))


def command_key(args: Sequence[Arg]) -> bytes | None:
    """The key that routes a command: FCALL's first key, else the first argument."""
    name = args[0].upper() if isinstance(args[0], bytes) else str(args[0]).upper().encode()
    if name in (b"FCALL", b"FCALL_RO"):
        return _bytes(args[3]) if len(args) > 3 and _bytes(args[2]) != b"0" else None
    return _bytes(args[1]) if len(args) > 1 else None


def _bytes(arg: Arg) -> bytes:
    return arg if isinstance(arg, bytes) else (arg.encode() if isinstance(arg, str)
                                               else b"%d" % arg)


def shards_ranges(reply: Reply, asked: Address, tls: bool) -> SlotRanges:
    """The slot ranges of a CLUSTER SHARDS reply, each with its shard's online primary."""
    ranges: SlotRanges = []
    for shard in reply:
        fields = dict(zip(shard[0::2], shard[1::2]))
        primary = None
        for node in fields[b"nodes"]:
            info = dict(zip(node[0::2], node[1::2]))
            if info.get(b"role") == b"master" and info.get(b"health") == b"online":
                primary = _node_address(info, asked, tls)
        if primary is None:
            continue  # its primary failed: its slots wait for a replica to take over
        slots = fields[b"slots"]
        ranges += [(int(slots[i]), int(slots[i + 1]), primary)
                   for i in range(0, len(slots), 2)]
    return sorted(ranges)


def _node_address(info: dict[bytes, Reply], asked: Address, tls: bool) -> Address:
    endpoint = info.get(b"endpoint") or info.get(b"ip") or b""
    host = endpoint.decode() if endpoint not in (b"", b"?") else asked[0]
    port = info.get(b"tls-port") if tls else info.get(b"port")
    return host, int(port if port is not None else info[b"port"])


def slots_ranges(reply: Reply, asked: Address) -> SlotRanges:
    """The slot ranges of a CLUSTER SLOTS reply (servers without CLUSTER SHARDS)."""
    ranges: SlotRanges = []
    for entry in reply:
        host = entry[2][0].decode() if entry[2][0] not in (b"", b"?") else asked[0]
        ranges.append((int(entry[0]), int(entry[1]), (host, int(entry[2][1]))))
    return sorted(ranges)


class Topology:
    """Where the primaries are: `read()` asks the deployment once."""

    def __init__(self, url: StoreUrl, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.known: list[Address] = list(url.hosts)  # addresses worth asking, in order

    async def read(self) -> SlotRanges:
        """The slot ranges, from the first address that answers; StoreUnavailable when
        none does."""
        trouble = "no address to ask"
        for address in list(dict.fromkeys(self.known)):
            try:
                ranges = await self.ask(address)
            except (StoreUnavailable, ReplyError, OSError, ValueError, IndexError,
                    KeyError, TypeError) as exc:
                trouble = f"{address[0]}:{address[1]}: {exc}"
                continue
            # next time: who answered first, then the seeds (and for a cluster, any
            # primary, as the one that answered may be the next to fail)
            self.known = [address, *self.url.hosts, *self.also_ask(ranges)]
            return ranges
        raise StoreUnavailable(f"no node of {self.url.address} answered ({trouble})")

    async def ask(self, address: Address) -> SlotRanges:
        raise NotImplementedError

    def also_ask(self, ranges: SlotRanges) -> list[Address]:
        """Addresses beyond the URL's worth asking next time."""
        return []

    async def call(self, address: Address, *args: Arg, url: StoreUrl | None = None) -> Reply:
        """One command on a short-lived connection to `address`."""
        client = Client(dataclasses.replace(url or self.url, hosts=(address,)), 0,
                        min(self.timeout_s, 1.0), "valqd-topology")
        try:
            await client.connect()
            reply = await asyncio.wait_for(client.call(*args), min(self.timeout_s, 1.0))
        except asyncio.TimeoutError:
            raise StoreUnavailable("no reply") from None
        finally:
            await client.close()
        if isinstance(reply, ReplyError):
            raise reply
        return reply


class ClusterTopology(Topology):
    """A Valkey Cluster: its slot map, from any node (the seeds, then every node seen)."""

    async def ask(self, address: Address) -> SlotRanges:
        try:
            ranges = shards_ranges(await self.call(address, "CLUSTER", "SHARDS"), address,
                                   self.url.tls)
        except ReplyError as exc:
            if not str(exc).startswith("ERR unknown"):
                raise
            ranges = slots_ranges(await self.call(address, "CLUSTER", "SLOTS"), address)
        return ranges

    def also_ask(self, ranges: SlotRanges) -> list[Address]:
        return [primary for _, _, primary in ranges]


class SentinelTopology(Topology):
    """A primary that Sentinel names: every slot is its."""

    async def ask(self, address: Address) -> SlotRanges:
        sentinel_url = dataclasses.replace(self.url, username=self.url.sentinel_username,
                                           password=self.url.sentinel_password)
        reply = await self.call(address, "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                self.url.master_name, url=sentinel_url)
        if reply is None:
            raise StoreUnavailable(f"no master named {self.url.master_name!r}")
        return [(0, SLOTS - 1, (reply[0].decode(), int(reply[1])))]


@dataclasses.dataclass(eq=False)
class _Request:
    """One command on its way: where it goes, until when it may be retried."""

    args: Sequence[Arg]
    callback: Callback
    slot: int
    deadline: float
    asking: Address | None = None  # after ASK: this node, once
    commands: Sequence[Sequence[Arg]] = ()  # a transaction's (args is empty)
    wait: ReplicaWait | None = None  # a write answered once the replicas have it
    resend: bool = False  # a read: sent again should its connection be lost
    retries: int = 0
    trouble: str = ""


class Router:
    """Send commands to their slot's primary; retry what the deployment's healing refuses
    (see the module's docstring). The interface of `Client` (`send`, `call`, `connect`,
    `close`) plus what only a deployment of several primaries needs: `primaries` (their
    addresses, in slot order), `owner(slot)`, `client(address)` (the pipelined connection
    to one primary), `send_to_slot`, `each_primary`."""

    def __init__(self, topology: Topology, db: int = 0, timeout_s: float = 5.0,
                 name: str = "valqd",
                 on_connect: Callable[[SetupCall], Awaitable[None]] | None = None) -> None:
        self.topology = topology
        self.url = topology.url
        self.db = db
        self.timeout_s = timeout_s
        self.name = name
        self.on_connect = on_connect
        self.owners: list[Address | None] = [None] * SLOTS
        self.primaries: list[Address] = []  # in slot order: one per served range's owner
        self._primary_slots: list[int] | None = None  # primary_slots(), until a change
        self._slots_by_primary: dict[Address, list[int]] | None = None  # the same
        self.clients: dict[Address, Client] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -REFRESH_EVERY_S
        self._waiting: list[_Request] = []  # for the next map
        self._connecting: set[Address] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the map -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Read the map and connect to every primary; StoreUnavailable when the deployment
        does not answer within timeout_s."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self._apply(await self.topology.read())
                await asyncio.gather(*(self.client(p).connect() for p in self.primaries))
                if self.primaries and None not in self.owners:
                    return
                trouble = "not every slot is served"
            except StoreUnavailable as exc:
                trouble = str(exc)
            if time.monotonic() >= deadline:
                raise StoreUnavailable(f"{self.url.address}: {trouble}")
            await asyncio.sleep(REFRESH_EVERY_S)

    def _apply(self, ranges: SlotRanges) -> None:
        owners: list[Address | None] = [None] * SLOTS
        for low, high, address in ranges:
            owners[low:high + 1] = [address] * (high - low + 1)
        if owners != self.owners:
            log.info("Store slot map of %s: %s", self.url.address,
                     ", ".join(f"{low}-{high} {a[0]}:{a[1]}" for low, high, a in ranges))
        self.owners = owners
        self._primary_slots = self._slots_by_primary = None
        self.primaries = list(dict.fromkeys(address for _, _, address in ranges))
        for address in [a for a in self.clients if a not in self.primaries]:
            self._background(self.clients.pop(address).close())

    def refresh(self) -> None:
        """Read the map again soon (at most every REFRESH_EVERY_S), then send what waits."""
        if self._refreshing is None and not self._closed:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            pause = self._refreshed_at + REFRESH_EVERY_S - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            self._refreshed_at = time.monotonic()
            try:
                self._apply(await self.topology.read())
            except StoreUnavailable as exc:
                for request in self._waiting:
                    request.trouble = str(exc)
        finally:
            self._refreshing = None
        waiting, self._waiting = self._waiting, []
        for request in waiting:
            self._dispatch(request)

    def client(self, address: Address) -> Client:
        client = self.clients.get(address)
        if client is None:
            client = self.clients[address] = Client(
                dataclasses.replace(self.url, hosts=(address,)), self.db, self.timeout_s,
                self.name, self.on_connect, requeue=False)
        return client

    # -- sending -----------------------------------------------------------------------------

    def owner(self, slot: int) -> Address | None:
        """The primary serving `slot` as far as this router knows (None: none right now;
        the map is read again)."""
        address = self.owners[slot]
        if address is None:
            self.refresh()
        return address

    def redirected(self, text: str, asked: Address) -> None:
        """`MOVED slot host:port` came from `asked` on a connection of the caller's own:
        the map learns it (and is read again)."""
        slot, where = parse_redirect(text, asked[0])
        self._moved(slot, where)

    def _moved(self, slot: int, where: Address) -> None:
        self.owners[slot] = where
        self._primary_slots = self._slots_by_primary = None
        if where not in self.primaries:
            self.primaries.append(where)
        self.refresh()

    def send(self, args: Sequence[Arg], callback: Callback,
             wait: ReplicaWait | None = None, resend: bool = False) -> None:
        """Send one command to its key's primary; `callback` gets its reply. With `wait`,
        the reply waits for the replicas (replicas.py) of the primary that ran it;
        `resend`: a read, sent again should its connection be lost after it was written
        (a write is not: its caller gets ReplyLost)."""
        key = command_key(args)
        self._dispatch(_Request(args, callback, key_slot(key) if key is not None else 0,
                                time.monotonic() + self.timeout_s, wait=wait,
                                resend=resend))

    def send_to_slot(self, slot: int, args: Sequence[Arg], callback: Callback,
                     resend: bool = False) -> None:
        self._dispatch(_Request(args, callback, slot, time.monotonic() + self.timeout_s,
                                resend=resend))

    async def call(self, *args: Arg, resend: bool = False) -> Reply:
        """One command's reply, awaited: a `ReplyError` is returned, StoreUnavailable
        raised."""
        return await self._call(lambda done: self.send(args, done, resend=resend))

    async def call_on_slot(self, slot: int, *args: Arg, resend: bool = False) -> Reply:
        return await self._call(lambda done: self.send_to_slot(slot, args, done, resend))

    async def _call(self, send: Callable[[Callback], None]) -> Reply:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def done(reply: Reply) -> None:
            if not future.done():
                future.set_result(reply)

        send(done)
        reply = await future
        if isinstance(reply, StoreUnavailable):
            raise reply
        return reply

    def primary_slots(self) -> list[int]:
        """A slot of each primary, in slot order: a command sent to each reaches every
        primary once, even after a failover moved them."""
        if self._primary_slots is None:
            first: dict[Address, int] = {}
            for slot, owner in enumerate(self.owners):
                if owner is not None and owner not in first:
                    first[owner] = slot
            self._primary_slots = list(first.values()) or [0]
        return self._primary_slots

    def slots_by_primary(self) -> dict[Address, list[int]]:
        """The slots each primary owns, primaries in slot order (computed once per map)."""
        if self._slots_by_primary is None:
            owned: dict[Address, list[int]] = {}
            for slot, owner in enumerate(self.owners):
                if owner is not None:
                    owned.setdefault(owner, []).append(slot)
            self._slots_by_primary = owned
        return self._slots_by_primary

    async def each_primary(self, *args: Arg) -> list[Reply]:
        """`args` on every primary, their replies in slot order (a read, or a command that
        may run twice: sent again should a connection be lost)."""
        return list(await asyncio.gather(*(self.call_on_slot(slot, *args, resend=True)
                                           for slot in self.primary_slots())))

    def _dispatch(self, request: _Request) -> None:
        if self._closed:
            request.callback(StoreUnavailable("the store's client is closed"))
            return
        address = request.asking or self.owners[request.slot]
        if address is None:
            request.trouble = request.trouble or f"no primary serves slot {request.slot}"
            self._retry_later(request)
            return
        client = self.client(address)
        if not client.connected:  # waiting here, not in the client, follows a new map
            self._connect_soon(address)
            request.trouble = request.trouble or f"connecting to {address[0]}:{address[1]}"
            self._retry_later(request)
            return
        if request.asking is not None:
            client.send((b"ASKING",), _ignore)

        def answered(reply: Reply) -> None:
            self._answered(request, address, reply)

        if request.wait is not None:
            request.wait.send(client, request.args, answered)
        else:
            client.send(request.args, answered, request.resend)

    def _connect_soon(self, address: Address) -> None:
        if address in self._connecting:
            return
        client = self.client(address)

        async def connect() -> None:
            try:
                await client.connect()
            except StoreUnavailable:
                self.refresh()  # the map may name another primary by now
            finally:
                self._connecting.discard(address)

        self._connecting.add(address)
        self._background(connect())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on its own, holding the task until it ends (the loop holds only a
        weak reference)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answered(self, request: _Request, address: Address, reply: Reply) -> None:
        if isinstance(reply, ReplyError):
            text = str(reply)
            code = text.partition(" ")[0].encode()
            if code == b"MOVED" or code == b"ASK":
                slot, where = parse_redirect(text, address[0])
                request.asking = where if code == b"ASK" else None
                if code == b"MOVED":
                    self._moved(slot, where)
                if self._live(request, text):
                    self._dispatch(request)
                return
            if code in RETRIED:
                request.asking = None
                if self._live(request, text):
                    self._retry_later(request)
                return
        elif isinstance(reply, StoreUnavailable) and not isinstance(reply, ReplyLost):
            request.asking = None
            if self._live(request, str(reply)):
                self._retry_later(request)
            return
        request.callback(reply)

    def _live(self, request: _Request, trouble: str) -> bool:
        """False (and the caller answered) once the request's deadline passed."""
        request.trouble = trouble
        if time.monotonic() < request.deadline:
            return True
        request.callback(StoreUnavailable(
            f"the store at {self.url.address} did not serve the command within "
            f"{self.timeout_s:g} s ({request.trouble})"))
        return False

    def _retry_later(self, request: _Request) -> None:
        """After a pause that grows with each retry: with the map read again first."""
        if not self._live(request, request.trouble):
            return
        pause = min(RETRY_FIRST_S * 2 ** request.retries, RETRY_MAX_S,
                    max(0.0, request.deadline - time.monotonic()))
        request.retries += 1

        def again() -> None:
            self._waiting.append(request)
            self.refresh()

        asyncio.get_running_loop().call_later(pause, again)

    # -- transactions ------------------------------------------------------------------------

    def transaction(self, commands: Sequence[Sequence[Arg]], callback: Callback,
                    wait: ReplicaWait | None = None) -> None:
        """MULTI, `commands`, EXEC on the primary of their slot; `callback` gets EXEC's
        reply. Commands of several slots are refused with Valkey's CROSSSLOT, as one
        node does (a transaction is one slot's); a transaction refused because its slot
        moved (EXECABORT after MOVED) ran nothing and is sent again."""
        slots = {key_slot(key) for key in map(command_key, commands) if key is not None}
        if len(slots) > 1:
            callback(ReplyError("CROSSSLOT Keys in request don't hash to the same slot"))
            return
        slot = slots.pop() if slots else 0
        self._transaction(_Request((), callback, slot, time.monotonic() + self.timeout_s,
                                   commands=commands, wait=wait))

    def _transaction(self, request: _Request) -> None:
        address = self.owners[request.slot]
        if address is None or self._closed:
            self._later(request, f"no primary serves slot {request.slot}")
            return
        client = self.client(address)
        if not client.connected:
            self._connect_soon(address)
            self._later(request, f"connecting to {address[0]}:{address[1]}")
            return
        queued: list[Reply] = []
        client.send((b"MULTI",), queued.append)
        for args in request.commands:
            client.send(args, queued.append)

        def done(reply: Reply) -> None:
            if type(reply) is not list and _nothing_ran(reply, queued):
                self._later(request, str(reply))
            else:
                request.callback(reply)

        if request.wait is not None:
            request.wait.send(client, (b"EXEC",), done)
        else:
            client.send((b"EXEC",), done)

    def _later(self, request: _Request, trouble: str) -> None:
        if not self._live(request, trouble):
            return
        pause = min(RETRY_FIRST_S * 2 ** request.retries, RETRY_MAX_S)
        request.retries += 1
        self.refresh()
        asyncio.get_running_loop().call_later(pause, self._transaction, request)

    # -- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        if self._refreshing is not None:
            self._refreshing.cancel()
        for client in list(self.clients.values()):
            await client.close()
        self.clients.clear()
        waiting, self._waiting = self._waiting, []
        for request in waiting:
            request.callback(StoreUnavailable("the store's client is closed"))


def _ignore(reply: Reply) -> None:
    return None


def _retried(reply: Reply) -> bool:
    """A reply that says the command did not run, for now: worth sending again."""
    if isinstance(reply, StoreUnavailable):
        return not isinstance(reply, ReplyLost)
    return isinstance(reply, ReplyError) and \
        str(reply).partition(" ")[0].encode() in RETRIED | {b"MOVED", b"ASK"}


def _nothing_ran(reply: Reply, queued: list[Reply]) -> bool:
    """EXEC's error `reply` (after the replies to MULTI and the queued commands) says the
    transaction did not run for a reason that passes: the slot moved, the deployment was
    healing, the connection was lost."""
    if _retried(reply):
        return True
    return str(reply).startswith("EXECABORT") and any(map(_retried, queued))
