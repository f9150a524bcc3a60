"""Who gets in: requirepass (AUTH, HELLO AUTH, NOAUTH, the smaller limits before AUTH, the
password kept out of CONFIG GET, the log and the slow log), protected mode (unit tests, and
a real client from a non-loopback address in a network namespace of the test's own), TLS
with throwaway certificates made by the openssl command line, and rename-command.
"""

import asyncio
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys

import pytest
import valkey

from support import Error, ValqdProcess, Wire, encode_command, listening_ports
from valqd.commands.context import Session
from valqd.commands.table import TABLE
from valqd.config import Config
from valqd.server import MAX_CLIENTS_REACHED, PROTECTED_MODE_DENIED, Server, _is_loopback

PASSWORD = "s3cret-Pa55 word!"
NOAUTH = "NOAUTH Authentication required."
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
HELLO_NOAUTH = ("NOAUTH HELLO must be called with the client already authenticated, "
                "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                "authenticate the client and select the RESP protocol version at the same "
                "time")


# -- requirepass ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    process = ValqdProcess(tmp_path_factory.mktemp("secured"), "--requirepass", PASSWORD)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def wires(secured):
    opened: list[Wire] = []

    def open_wire() -> Wire:
        wire = Wire(secured.port)
        opened.append(wire)
        return wire

    yield open_wire
    for wire in opened:
        wire.close()


def every_command() -> list[list[str]]:
    """An argv of the right arity for every command and subcommand in the table."""
    out = []
    for spec in TABLE.values():
        specs = list(spec.subcommands.values()) or [spec]
        if spec.subcommands and spec.handler is not None:
            specs.append(spec)
        for sub in specs:
            words = sub.name.split("|")
            count = abs(sub.arity)
            out.append(words + ["x"] * (count - len(words)))
    return out


NO_AUTH_COMMANDS = {"auth", "hello", "quit", "reset"}  # RESET too, as in Valkey


def test_every_command_but_auth_hello_quit_needs_auth(secured, wires):
    wire = wires()
    checked = 0
    for argv in every_command():
        if argv[0] in NO_AUTH_COMMANDS:
            continue
        # a refused EXEC ends the transaction, naming why (as Valkey's execCommandAbort)
        expected = f"EXECABORT Transaction discarded because of: {NOAUTH}" \
            if argv == ["exec"] else NOAUTH
        assert wire.call(*argv) == Error(expected), argv
        checked += 1
    assert checked > 50
    # nothing ran: SHUTDOWN, FLUSHALL, CONFIG SET, VALQ CREATE were all refused
    assert wire.call("AUTH", PASSWORD) == b"OK"
    assert wire.call("DBSIZE") == 0
    assert wire.call("CONFIG", "GET", "maxclients") == [b"maxclients", b"10000"]
    assert secured.proc.poll() is None


def test_noauth_examples(wires):
    wire = wires()
    for argv in (["PING"], ["VALQ", "CREATE", "q"], ["VALQ", "PUSH", "q", "m"],
                 ["VALQ", "LIST"], ["CONFIG", "GET", "requirepass"], ["FLUSHALL"],
                 ["SHUTDOWN", "NOSAVE"], ["DEBUG", "DIGEST"], ["SUBSCRIBE", "valq:q"],
                 ["CLIENT", "SETNAME", "me"], ["SELECT", "0"], ["INFO"]):
        assert wire.call(*argv) == Error(NOAUTH), argv
    assert wire.call("NOSUCHCOMMAND", "a") == Error(
        "ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'a' ")
    assert wire.call("ECHO") == Error("ERR wrong number of arguments for 'echo' command")
    assert wire.call("PING", "a", "b") == Error(NOAUTH)  # arity -1: NOAUTH first
    assert wire.call("AUTH", PASSWORD) == b"OK"
    assert wire.call("CLIENT", "GETNAME") is None


def test_inline_commands_need_auth_too(wires):
    wire = wires()
    wire.send(b"PING\r\nVALQ CREATE q\r\n")
    assert wire.reply() == Error(NOAUTH)
    assert wire.reply() == Error(NOAUTH)
    wire.send(f'AUTH "{PASSWORD}"\r\nPING\r\n'.encode())
    assert wire.reply() == b"OK"
    assert wire.reply() == b"PONG"


@pytest.mark.parametrize("argv", [
    ["AUTH", "wrong"], ["AUTH", "default", "wrong"], ["AUTH", "admin", PASSWORD],
    ["AUTH", ""], ["AUTH", PASSWORD + " "], ["AUTH", PASSWORD.upper()],
    ["HELLO", "3", "AUTH", "default", "wrong"], ["HELLO", "2", "AUTH", "bob", PASSWORD],
], ids=["auth", "auth-default", "auth-other-user", "auth-empty", "auth-trailing-space",
        "auth-case", "hello-3", "hello-other-user"])
def test_wrong_password(wires, argv):
    wire = wires()
    assert wire.call(*argv) == Error(WRONGPASS)
    assert wire.call("PING") == Error(NOAUTH)
    wire.send(encode_command(("CLIENT", "GETNAME")))
    assert wire.raw(len(NOAUTH) + 3) == b"-" + NOAUTH.encode() + b"\r\n"  # still RESP2


@pytest.mark.parametrize("argv", [["AUTH", PASSWORD], ["AUTH", "default", PASSWORD]],
                         ids=["auth", "auth-default"])
def test_right_password(wires, argv):
    wire = wires()
    assert wire.call(*argv) == b"OK"
    assert wire.call("PING") == b"PONG"
    assert wire.call("VALQ", "CREATE", "authq") in (b"created authq",
                                                    Error("BUSYQUEUE queue 'authq' already exists"))
    assert wire.call("AUTH", "wrong") == Error(WRONGPASS)
    assert wire.call("PING") == b"PONG"  # a failed AUTH does not log a client out


def test_auth_syntax(wires):
    wire = wires()
    assert wire.call("AUTH", "a", "b", "c") == Error("ERR syntax error")
    assert wire.call("AUTH") == Error("ERR wrong number of arguments for 'auth' command")


def test_hello_3_auth(wires):
    wire = wires()
    reply = wire.call("HELLO", "3", "AUTH", "default", PASSWORD, "SETNAME", "w1")
    assert type(reply) is dict and reply[b"proto"] == 3 and reply[b"server"] == b"valqd"
    wire.send(encode_command(("CLIENT", "GETNAME")))
    assert wire.raw(8) == b"$2\r\nw1\r\n"
    wire.send(encode_command(("VALQ", "LIST")) + encode_command(("CONFIG", "GET", "requirepass")))
    assert type(wire.reply()) is list
    assert wire.reply() == {b"requirepass": b"********"}


def test_hello_without_auth_changes_nothing(wires):
    """As Valkey: HELLO answers NOAUTH before it switches the protocol or names the
    client."""
    wire = wires()
    assert wire.call("HELLO", "3", "SETNAME", "sneaky") == Error(HELLO_NOAUTH)
    assert wire.call("HELLO") == Error(HELLO_NOAUTH)
    assert wire.call("AUTH", PASSWORD) == b"OK"
    wire.send(encode_command(("CLIENT", "GETNAME")))
    assert wire.raw(5) == b"$-1\r\n"  # RESP2 null: neither proto 3 nor the name stuck
    hello = wire.call("HELLO")
    assert dict(zip(hello[::2], hello[1::2]))[b"proto"] == 2


def test_quit_and_reset_before_auth(wires):
    wire = wires()
    assert wire.call("RESET") == b"RESET"
    assert wire.call("QUIT") == b"OK"
    assert wire.closed_by_server()


def test_reset_logs_out(wires):
    wire = wires()
    assert wire.call("AUTH", PASSWORD) == b"OK"
    assert wire.call("PING") == b"PONG"
    assert wire.call("RESET") == b"RESET"
    assert wire.call("PING") == Error(NOAUTH)


@pytest.mark.parametrize("protocol", [2, 3])
def test_valkey_py_with_password(secured, protocol):
    client = secured.client(protocol=protocol, password=PASSWORD)
    assert client.ping() is True
    client.execute_command("VALQ", "CREATE", f"pyq{protocol}")
    assert client.execute_command("VALQ", "PUSH", f"pyq{protocol}", "hello") == b"1"
    popped = client.execute_command("VALQ", "POP", f"pyq{protocol}")
    if protocol == 3:
        assert popped == {b"body": b"hello", b"id": b"1"}
    else:
        assert popped == [b"body", b"hello", b"id", b"1"]
    client.close()
    with pytest.raises(valkey.exceptions.AuthenticationError):
        secured.client(protocol=protocol, password="wrong").ping()
    with pytest.raises(valkey.exceptions.AuthenticationError,
                       match="Authentication required"):
        secured.client(protocol=2).ping()


def test_password_never_shown(secured, wires):
    wire = wires()
    assert wire.call("AUTH", PASSWORD) == b"OK"
    assert wire.call("CONFIG", "GET", "requirepass") == [b"requirepass", b"********"]
    everything = wire.call("CONFIG", "GET", "*")
    assert b"********" in everything
    assert not any(PASSWORD.encode() in value for value in everything)
    assert PASSWORD.encode() not in wire.call("INFO", "everything")
    assert PASSWORD.encode() not in wire.call("CLIENT", "LIST")


def test_password_not_in_log_or_slowlog(secured, wires):
    wire = wires()
    assert wire.call("AUTH", "default", PASSWORD) == b"OK"
    assert wire.call("CONFIG", "SET", "slowlog-log-slower-than", 0) == b"OK"
    assert wire.call("CONFIG", "SET", "loglevel", "debug") == b"OK"
    assert wire.call("SLOWLOG", "RESET") == b"OK"
    try:
        other = wires()
        assert other.call("AUTH", PASSWORD) == b"OK"
        assert other.call("AUTH", "default", "a-wrong-guess") == Error(WRONGPASS)
        other.call("HELLO", "3", "AUTH", "default", PASSWORD, "SETNAME", "x")
        new_password = "an0ther-s3cret"
        assert wire.call("CONFIG", "SET", "requirepass", new_password,
                         "slowlog-max-len", 128) == b"OK"
        assert wire.call("CONFIG", "SET", "requirepass", PASSWORD) == b"OK"
        entries = wire.call("SLOWLOG", "GET", -1)
    finally:
        assert wire.call("CONFIG", "SET", "slowlog-log-slower-than", 10000,
                         "loglevel", "notice") == b"OK"
    logged = [entry[3] for entry in entries]
    assert [b"auth", b"(redacted)"] in [[a.lower() for a in args] for args in logged]
    assert [b"AUTH", b"(redacted)", b"(redacted)"] in logged
    assert [b"HELLO", b"3", b"AUTH", b"(redacted)", b"(redacted)", b"SETNAME", b"x"] in logged
    assert [b"CONFIG", b"SET", b"requirepass", b"(redacted)", b"slowlog-max-len",
            b"128"] in logged
    flat = b" ".join(b" ".join(args) for args in logged)
    for secret in (PASSWORD, "a-wrong-guess", new_password):
        assert secret.encode() not in flat
    files = [path for path in secured.directory.iterdir() if path.is_file()]
    assert secured.logfile in files  # the log, the AOF and its reserve
    for path in files:
        content = path.read_bytes()
        for secret in (PASSWORD, "a-wrong-guess", new_password):
            assert secret.encode() not in content, path.name


def test_config_set_requirepass_at_run_time(tmp_path):
    process = ValqdProcess(tmp_path / "runtime").start()
    try:
        admin = Wire(process.port)
        assert admin.call("PING") == b"PONG"  # no password: clients are authenticated
        assert admin.call("AUTH", "x") == Error(
            "ERR AUTH <password> called without any password configured for the default "
            "user. Are you sure your configuration is correct?")
        assert admin.call("AUTH", "default", "anything") == b"OK"
        assert admin.call("CONFIG", "SET", "requirepass", "newpass") == b"OK"
        assert admin.call("PING") == b"PONG"  # already connected clients stay in
        late = Wire(process.port)
        assert late.call("PING") == Error(NOAUTH)
        assert late.call("AUTH", "newpass") == b"OK"
        assert admin.call("CONFIG", "SET", "requirepass", "") == b"OK"
        assert Wire(process.port).call("PING") == b"PONG"
        assert "newpass" not in process.log()
    finally:
        process.stop()


# -- limits before AUTH ----------------------------------------------------------------------

def test_unauthenticated_multibulk_length(wires):
    wire = wires()
    assert wire.call("ECHO", "x") == Error(NOAUTH)  # 2 arguments: fine, but NOAUTH
    wire.send(encode_command(("DEL", *["k"] * 10)))  # 11 elements
    assert wire.reply() == Error("ERR Protocol error: unauthenticated multibulk length")
    assert wire.closed_by_server()


def test_unauthenticated_multibulk_length_at_the_header(wires):
    wire = wires()
    wire.send(b"*11\r\n")
    assert wire.reply() == Error("ERR Protocol error: unauthenticated multibulk length")
    assert wire.closed_by_server()


def test_unauthenticated_bulk_length(wires):
    wire = wires()
    wire.send(b"*2\r\n$4\r\nECHO\r\n$16385\r\n")
    assert wire.reply() == Error("ERR Protocol error: unauthenticated bulk length")
    assert wire.closed_by_server()
    wire = wires()
    assert wire.call("ECHO", b"x" * 16384) == Error(NOAUTH)


def test_inline_before_auth_has_the_inline_limit(wires):
    wire = wires()
    wire.send(b"DEL " + b"k " * 20 + b"\r\n")  # inline: many arguments are fine
    assert wire.reply() == Error(NOAUTH)


def test_larger_limits_after_auth(wires):
    wire = wires()
    wire.send(encode_command(("AUTH", PASSWORD)) + encode_command(("DEL", *["nokey"] * 20))
              + encode_command(("ECHO", b"y" * 100_000)))
    assert wire.reply() == b"OK"
    assert wire.reply() == 0
    assert wire.reply() == b"y" * 100_000


def test_limits_come_back_after_reset(wires):
    wire = wires()
    assert wire.call("AUTH", PASSWORD) == b"OK"
    assert wire.call("RESET") == b"RESET"
    wire.send(encode_command(("DEL", *["k"] * 11)))
    assert wire.reply() == Error("ERR Protocol error: unauthenticated multibulk length")


# -- protected mode: decisions ---------------------------------------------------------------

@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("", True), ("localhost", True), ("10.0.0.1", False), ("192.168.1.20", False),
    ("0.0.0.0", False), ("::", False), ("::ffff:10.0.0.1", False), ("fe80::1%eth0", False),
    ("2001:db8::1", False), ("8.8.8.8", False), ("not-an-address", False),
])
def test_is_loopback(host, loopback):
    assert _is_loopback(host) is loopback


def make_server(**settings: str) -> Server:
    async def build() -> Server:
        return Server(Config({"port": "0", "appendonly": "no", **settings}))
    return asyncio.run(build())


def test_refusal_in_protected_mode():
    server = make_server(bind="0.0.0.0")
    assert server.refusal("127.0.0.1") is None
    assert server.refusal("::1") is None
    assert server.refusal("10.1.2.3") == PROTECTED_MODE_DENIED
    assert server.refusal("::ffff:192.168.0.9") == PROTECTED_MODE_DENIED
    assert server.state.rejected_connections == 2
    assert PROTECTED_MODE_DENIED.startswith(
        b"-DENIED valqd is running in protected mode because protected mode is enabled and "
        b"no password is set for the default user.")
    assert PROTECTED_MODE_DENIED.endswith(b"\r\n") and PROTECTED_MODE_DENIED.count(b"\n") == 1
    server.config.set("protected-mode", "no")
    assert server.refusal("10.1.2.3") is None
    server.config.set("protected-mode", "yes")
    server.config.set("requirepass", "pw")
    assert server.refusal("10.1.2.3") is None


def test_refusal_with_protected_mode_off_or_a_password():
    assert make_server(**{"protected-mode": "no"}).refusal("10.1.2.3") is None
    assert make_server(requirepass="pw").refusal("10.1.2.3") is None


def test_refusal_at_maxclients():
    server = make_server(maxclients="2")
    for i in (1, 2):
        assert server.refusal("127.0.0.1") is None
        server.state.clients[i] = Session(i)
    assert server.refusal("127.0.0.1") == MAX_CLIENTS_REACHED
    assert server.refusal("10.0.0.1") == MAX_CLIENTS_REACHED
    assert server.state.rejected_connections == 2
    del server.state.clients[1]
    assert server.refusal("127.0.0.1") is None


# -- protected mode: a real client from another address ----------------------------------------

CLIENT_SCRIPT = r"""
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
for line in sys.argv[3:]:
    sock.sendall(line.encode() + b"\r\n")
sock.settimeout(1.5)
data, closed = b"", False
try:
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            closed = True
            break
        data += chunk
except socket.timeout:
    pass
except ConnectionResetError:
    closed = True
print(repr((data, closed)))
"""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=check)


@pytest.fixture(scope="module")
def netns():
    """A network namespace joined to this one by a veth pair: the test's "other computer",
    at 10.200.N.2, reaching the host side at 10.200.N.1."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (install iproute2) to make a network namespace")
    tag = os.getpid() % 100000
    name, host_if, ns_if = f"valqd-test-{tag}", f"vqh{tag}", f"vqn{tag}"
    subnet = f"10.200.{tag % 250 + 1}"
    try:
        run("ip", "netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace (needs root and iproute2): "
                    f"{getattr(exc, 'stderr', exc)}")
    try:
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        run("ip", "link", "set", ns_if, "netns", name)
        run("ip", "addr", "add", f"{subnet}.1/24", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "netns", "exec", name, "ip", "addr", "add", f"{subnet}.2/24", "dev", ns_if)
        run("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        run("ip", "link", "del", host_if, check=False)
        run("ip", "netns", "del", name, check=False)
        pytest.skip(f"cannot set up a veth pair: {exc.stderr}")
    yield name, f"{subnet}.1"
    run("ip", "link", "del", host_if, check=False)
    run("ip", "netns", "del", name, check=False)


def remote(netns, port: int, *lines: str) -> tuple[bytes, bool]:
    """Send inline commands from inside the namespace: (what came back, closed?)."""
    name, address = netns
    result = run("ip", "netns", "exec", name, sys.executable, "-c", CLIENT_SCRIPT,
                 address, str(port), *lines)
    return eval(result.stdout)  # the repr of a (bytes, bool) printed by CLIENT_SCRIPT


def test_protected_mode_refuses_a_remote_client(tmp_path, netns):
    process = ValqdProcess(tmp_path / "pm", "--bind", "0.0.0.0").start()
    try:
        data, closed = remote(netns, process.port, "PING")
        assert data == PROTECTED_MODE_DENIED and closed
        assert Wire(process.port).call("PING") == b"PONG"  # loopback is welcome
        stats = Wire(process.port).call("INFO", "stats").decode()
        assert "rejected_connections:1" in stats
        # from the loopback interface, protected mode can be turned off
        assert Wire(process.port).call("CONFIG", "SET", "protected-mode", "no") == b"OK"
        assert remote(netns, process.port, "PING") == (b"+PONG\r\n", False)
    finally:
        process.stop()


def test_protected_mode_no_lets_a_remote_client_in(tmp_path, netns):
    process = ValqdProcess(tmp_path / "pmno", "--bind", "0.0.0.0",
                           "--protected-mode", "no").start()
    try:
        assert remote(netns, process.port, "PING", "VALQ CREATE remote") == \
            (b"+PONG\r\n$14\r\ncreated remote\r\n", False)
    finally:
        process.stop()


def test_requirepass_lets_a_remote_client_authenticate(tmp_path, netns):
    process = ValqdProcess(tmp_path / "pmpass", "--bind", "0.0.0.0",
                           "--requirepass", "remote-pw").start()
    try:
        assert remote(netns, process.port, "PING") == (b"-" + NOAUTH.encode() + b"\r\n",
                                                       False)
        assert remote(netns, process.port, "AUTH wrong", "AUTH remote-pw", "PING") == (
            b"-" + WRONGPASS.encode() + b"\r\n+OK\r\n+PONG\r\n", False)
    finally:
        process.stop()


# -- TLS ------------------------------------------------------------------------------------------

def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certificates(directory) -> None:
    """A CA, and a server and a client certificate signed by it; plus a second CA with a
    client certificate of its own (a stranger's). EC keys: fast to make."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command line to make certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                "-subj", f"/CN=valqd test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    (directory / "leaf.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("stranger", "other-ca")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=directory)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey",
                f"{ca}.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                "-extfile", "leaf.ext", cwd=directory)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    make_certificates(directory)
    return directory


TLS_PORT = re.compile(r"ready to accept connections on .*TLS port (\d+)")


def start_tls(directory, certs, auth_clients: str, *args: str) -> tuple[ValqdProcess, int]:
    """valqd with TLS on a port the system picks; with client certificates required, TLS
    only (`--port 0`), as no listener may then serve a client without one."""
    plain = ("--port", "0") if auth_clients == "yes" else ()
    process = ValqdProcess(directory, "--tls-port", "auto", *plain,
                           "--tls-cert-file", str(certs / "server.crt"),
                           "--tls-key-file", str(certs / "server.key"),
                           "--tls-ca-cert-file", str(certs / "ca.crt"),
                           "--tls-auth-clients", auth_clients, *args).start()
    match = TLS_PORT.search(process.log())
    assert match, process.log()
    return process, int(match.group(1))


def tls_client(port: int, certs, identity: str | None = "client", protocol: int = 2):
    extra = {} if identity is None else {
        "ssl_certfile": str(certs / f"{identity}.crt"),
        "ssl_keyfile": str(certs / f"{identity}.key")}
    return valkey.Valkey(host="localhost", port=port, ssl=True, protocol=protocol,
                         ssl_ca_certs=str(certs / "ca.crt"), ssl_check_hostname=True,
                         socket_timeout=5, **extra)


def raw_tls_ping(port: int, certs, identity: str | None) -> bytes:
    """PING over TLS with the ssl module; what came back (b"" if the server refused)."""
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    if identity:
        context.load_cert_chain(str(certs / f"{identity}.crt"), str(certs / f"{identity}.key"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                tls.sendall(b"PING\r\n")
                return tls.recv(100)
    except (ssl.SSLError, ConnectionError, socket.timeout):
        return b""


@pytest.mark.parametrize("protocol", [2, 3])
def test_tls_with_client_certificate(tmp_path, certs, protocol):
    process, port = start_tls(tmp_path / "tls", certs, "yes")
    try:
        client = tls_client(port, certs, protocol=protocol)
        assert client.ping() is True
        client.execute_command("VALQ", "CREATE", "secure")
        assert client.execute_command("VALQ", "PUSH", "secure", b"\x00tls\xff") == b"1"
        popped = client.execute_command("VALQ", "POP", "secure")
        assert (popped[b"body"] if protocol == 3 else popped[1]) == b"\x00tls\xff"
        client.close()
        assert raw_tls_ping(port, certs, "client") == b"+PONG\r\n"
        # TLS only: no plain TCP listener serves a client without a certificate
        assert listening_ports(process.proc.pid) == {port}
        assert tls_client(port, certs).info("server")["tcp_port"] == 0
    finally:
        process.stop()
    assert "Traceback" not in process.log()


def test_tls_refuses_a_client_without_certificate(tmp_path, certs):
    process, port = start_tls(tmp_path / "tls-yes", certs, "yes")
    try:
        with pytest.raises(valkey.exceptions.ConnectionError):
            tls_client(port, certs, identity=None).ping()
        assert raw_tls_ping(port, certs, None) == b""
        assert raw_tls_ping(port, certs, "stranger") == b""  # signed by another CA
        # a client that speaks plain RESP to the TLS port gets nothing and no harm is done
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(encode_command(("PING",)))
            try:
                assert b"PONG" not in sock.recv(100)
            except ConnectionError:
                pass
        assert raw_tls_ping(port, certs, "client") == b"+PONG\r\n"
        assert tls_client(port, certs).ping() is True
    finally:
        process.stop()
    assert "Traceback" not in process.log()


@pytest.mark.parametrize("mode", ["optional", "no"])
def test_tls_without_client_certificate_when_not_required(tmp_path, certs, mode):
    process, port = start_tls(tmp_path / f"tls-{mode}", certs, mode)
    try:
        assert tls_client(port, certs, identity=None).ping() is True
        assert raw_tls_ping(port, certs, None) == b"+PONG\r\n"
        assert tls_client(port, certs).ping() is True
        # optional still checks a certificate that is shown; no does not ask for one
        assert raw_tls_ping(port, certs, "stranger") == (b"" if mode == "optional"
                                                         else b"+PONG\r\n")
        assert listening_ports(process.proc.pid) == {process.port, port}
    finally:
        process.stop()


def test_port_0_serves_tls_only(tmp_path, certs):
    """As in Valkey, `--port 0` turns plain TCP off (it once picked a random port)."""
    process, port = start_tls(tmp_path / "tls-only", certs, "optional", "--port", "0")
    try:
        assert process.port == port
        assert listening_ports(process.proc.pid) == {port}
        assert tls_client(port, certs, identity=None).ping() is True
        assert tls_client(port, certs).config_get("port") == {"port": "0"}
    finally:
        process.stop()
    assert "ready to accept connections on 127.0.0.1 TLS port %d, pid" % port in process.log()


def test_required_client_certificates_and_a_plain_port_refuse_to_start(tmp_path, certs):
    log = start_must_fail(ValqdProcess(tmp_path / "tls-and-plain", "--tls-port", "auto",
                                       "--tls-cert-file", str(certs / "server.crt"),
                                       "--tls-key-file", str(certs / "server.key"),
                                       "--tls-ca-cert-file", str(certs / "ca.crt")))
    assert "tls-auth-clients yes: every client must show a certificate, but port auto " \
        "would serve plain TCP without one; set port 0 to serve TLS only" in log


def test_required_client_certificates_and_an_http_port_refuse_to_start(tmp_path, certs):
    log = start_must_fail(ValqdProcess(tmp_path / "tls-and-http", "--port", "0",
                                       "--tls-port", "auto", "--http-port", "auto",
                                       "--tls-cert-file", str(certs / "server.crt"),
                                       "--tls-key-file", str(certs / "server.key"),
                                       "--tls-ca-cert-file", str(certs / "ca.crt")))
    assert "tls-auth-clients yes: every client must show a certificate, but http-port " \
        "auto would serve HTTP without one; set http-port 0, or tls-auth-clients optional" \
        in log


def test_no_listener_at_all_refuses_to_start(tmp_path):
    log = start_must_fail(ValqdProcess(tmp_path / "none", "--port", "0"))
    assert "port 0 turns plain TCP off, and tls-port is 0: no listener left" in log


def start_must_fail(process: ValqdProcess) -> str:
    """Start a server that must refuse to start; its log. Never leaves one running."""
    try:
        with pytest.raises(RuntimeError):
            process.start()
        assert process.proc.wait(10) == 1
    finally:
        process.kill()
        process.stop()
    log = process.log()
    assert "Traceback" not in log
    return log


def test_tls_needs_a_ca_to_check_clients(tmp_path, certs):
    log = start_must_fail(ValqdProcess(tmp_path / "tls-noca", "--tls-port", "auto",
                                       "--tls-cert-file", str(certs / "server.crt"),
                                       "--tls-key-file", str(certs / "server.key")))
    assert "tls-auth-clients needs tls-ca-cert-file" in log


def test_tls_bad_certificate_file_fails_start_up(tmp_path, certs):
    (tmp_path / "bad.crt").write_text("not a certificate\n")
    log = start_must_fail(ValqdProcess(tmp_path / "tls-bad", "--tls-port", "auto",
                                       "--tls-cert-file", str(tmp_path / "bad.crt"),
                                       "--tls-key-file", str(certs / "server.key"),
                                       "--tls-auth-clients", "no"))
    assert "Could not start:" in log


# -- rename-command --------------------------------------------------------------------------------

def test_rename_command_to_empty_disables_it(tmp_path):
    process = ValqdProcess(tmp_path / "ren", "--rename-command", "FLUSHALL", "").start()
    try:
        wire = Wire(process.port)
        assert wire.call("VALQ", "CREATE", "kept") == b"created kept"
        assert wire.call("FLUSHALL") == Error(
            "ERR unknown command 'FLUSHALL', with args beginning with: ")
        assert wire.call("flushall", "SYNC") == Error(
            "ERR unknown command 'flushall', with args beginning with: 'SYNC' ")
        assert wire.call("DBSIZE") == 1
    finally:
        process.stop()


def test_rename_config_to_myconfig(tmp_path):
    process = ValqdProcess(tmp_path / "ren2", "--rename-command", "CONFIG", "MYCONFIG").start()
    try:
        wire = Wire(process.port)
        assert wire.call("MYCONFIG", "GET", "port") == [b"port", str(process.port).encode()]
        assert wire.call("myconfig", "SET", "maxclients", "50") == b"OK"
        assert wire.call("MyConfig", "GET", "maxclients") == [b"maxclients", b"50"]
        assert wire.call("CONFIG", "GET", "port") == Error(
            "ERR unknown command 'CONFIG', with args beginning with: 'GET' 'port' ")
        client = process.client()  # valkey-py does not need CONFIG to connect
        assert client.ping() is True
    finally:
        process.stop()


def test_rename_command_in_config_file(tmp_path):
    config = tmp_path / "valqd.conf"
    config.write_text('rename-command DEBUG ""\nrename-command SHUTDOWN my-shutdown\n'
                      "rename-command config cfg\n")
    process = ValqdProcess(tmp_path / "ren3", "--config", str(config)).start()
    try:
        wire = Wire(process.port)
        assert wire.call("DEBUG", "DIGEST") == Error(
            "ERR unknown command 'DEBUG', with args beginning with: 'DIGEST' ")
        assert wire.call("SHUTDOWN") == Error(
            "ERR unknown command 'SHUTDOWN', with args beginning with: ")
        assert wire.call("CFG", "GET", "maxclients") == [b"maxclients", b"10000"]
        wire.send(encode_command(("MY-SHUTDOWN", "NOSAVE")))
        assert process.proc.wait(10) == 0
    finally:
        process.kill()
        process.stop()


@pytest.mark.parametrize("args, message", [
    (["--rename-command", "NOSUCH", "x"], "rename-command: unknown command 'nosuch'"),
    (["--rename-command", "CONFIG", "PING"],
     "rename-command: 'config' to 'ping': target command name already exists"),
    (["--rename-command", "CONFIG", "x", "--rename-command", "DEBUG", "x"],
     "target command name already exists"),
], ids=["unknown", "onto-another-command", "two-onto-one-name"])
def test_bad_rename_fails_start_up(tmp_path, args, message):
    assert message in start_must_fail(ValqdProcess(tmp_path / "ren-bad", *args))


def test_bad_rename_in_config_file_fails_start_up(tmp_path):
    config = tmp_path / "valqd.conf"
    config.write_text("rename-command FLUSHEVERYTHING x\n")
    log = start_must_fail(ValqdProcess(tmp_path / "ren-bad2", "--config", str(config)))
    assert "Could not start: rename-command: unknown command 'flusheverything'" in log
