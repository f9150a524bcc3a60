"""The server commands clients and tools send, answered as Valkey 7.2 answers them.

Exact replies are checked on raw sockets (the bytes Valkey would send); the same commands
also go through valkey-py over RESP2 and RESP3 (`client`), as applications send them.
"""

import time

import hiredis
import pytest
import valkey
from support import Wire, encode_command

WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
NO_PASSWORD = (b"-ERR AUTH <password> called without any password configured for the "
               b"default user. Are you sure your configuration is correct?\r\n")
SYNTAX = b"-ERR syntax error\r\n"
NOT_INT = b"-ERR value is not an integer or out of range\r\n"
BAD_NAME = b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
HELLO_KEYS = {"server", "version", "proto", "id", "mode", "role", "modules"}


# -- helpers -----------------------------------------------------------------------------

def command(*args) -> bytes:
    return encode_command(args)


def arity(name: str) -> bytes:
    return b"-ERR wrong number of arguments for '%b' command\r\n" % name.encode()


class Raw(Wire):
    """A raw connection whose `call` returns the exact bytes of one reply."""

    def read_reply(self) -> bytes:
        """The bytes of exactly one reply (only one is ever outstanding)."""
        data = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server after {data!r}")
            data += chunk
            reader = hiredis.Reader()
            reader.feed(data)
            if reader.gets() is not False:
                assert not reader.has_data(), data
                return data

    def call(self, *args) -> bytes:
        self.send(encode_command(args))
        return self.read_reply()

    def parsed(self, *args):
        reader = hiredis.Reader()
        reader.feed(self.call(*args))
        return reader.gets()


def as_dict(reply):
    """A map reply as a dict, from a RESP3 map or a RESP2 flat array."""
    if isinstance(reply, dict):
        return reply
    assert isinstance(reply, list) and len(reply) % 2 == 0, reply
    return dict(zip(reply[0::2], reply[1::2]))


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def info_line(raw: Raw) -> dict[str, str]:
    line = raw.parsed("CLIENT", "INFO").decode()
    assert line.endswith("\n") and line.count("\n") == 1
    return dict(field.split("=", 1) for field in line.split())


@pytest.fixture
def raw(valqd):
    """A raw RESP2 connection to the shared server, with no queues."""
    conn = Raw(valqd.port)
    assert conn.call("FLUSHALL") == b"+OK\r\n"
    yield conn
    conn.close()


@pytest.fixture
def open_raw(valqd):
    """Opens more raw connections to the shared server; all are closed afterwards."""
    opened = []

    def open_() -> Raw:
        opened.append(Raw(valqd.port))
        return opened[-1]

    yield open_
    for conn in opened:
        conn.close()


def create(conn, *names) -> None:
    for name in names:
        reply = conn.call("VALQ", "CREATE", name) if isinstance(conn, Raw) else \
            conn.execute_command("VALQ", "CREATE", name)
        assert reply in (b"$%d\r\ncreated %b\r\n" % (8 + len(name), name.encode()),
                         b"created " + name.encode())


# -- PING, ECHO ----------------------------------------------------------------------------

def test_ping(client, raw):
    assert client.ping() is True
    assert raw.call("PING") == b"+PONG\r\n"
    assert raw.call("PING", "hello") == b"$5\r\nhello\r\n"
    assert raw.call("PING", "") == b"$0\r\n\r\n"
    assert raw.call("PING", "a", "b") == arity("ping")


def test_ping_inline_and_resp3(raw):
    raw.send(b"PING\r\n")
    assert raw.read_reply() == b"+PONG\r\n"
    raw.call("HELLO", "3")
    assert raw.call("PING") == b"+PONG\r\n"
    assert raw.call("PING", "x") == b"$1\r\nx\r\n"


def test_echo(client, raw):
    assert client.echo("hi there") == b"hi there"
    assert client.echo(b"\x00\xff\r\n") == b"\x00\xff\r\n"
    assert raw.call("ECHO", "") == b"$0\r\n\r\n"
    assert raw.call("ECHO") == arity("echo")
    assert raw.call("ECHO", "a", "b") == arity("echo")


# -- HELLO -----------------------------------------------------------------------------------

def test_hello_without_arguments_keeps_the_protocol(raw):
    reply = raw.call("HELLO")
    assert reply.startswith(b"*14\r\n")
    fields = {text(k): v for k, v in as_dict(raw.parsed("HELLO")).items()}
    assert set(fields) == HELLO_KEYS
    assert fields["proto"] == 2
    assert fields["id"] == raw.parsed("CLIENT", "ID")
    assert (fields["mode"], fields["role"], fields["modules"]) == (b"standalone", b"master", [])
    assert isinstance(fields["server"], bytes) and isinstance(fields["version"], bytes)


def test_hello_switches_protocol(raw):
    reply = raw.call("HELLO", "3")
    assert reply.startswith(b"%7\r\n")
    reader = hiredis.Reader()
    reader.feed(reply)
    fields = {text(k): v for k, v in reader.gets().items()}
    assert set(fields) == HELLO_KEYS and fields["proto"] == 3
    assert raw.call("CLIENT", "GETNAME") == b"_\r\n"  # RESP3 null
    assert raw.call("HELLO").startswith(b"%7\r\n")  # stays on 3
    assert raw.parsed("HELLO")[b"proto"] == 3
    assert raw.call("HELLO", "2").startswith(b"*14\r\n")
    assert raw.call("CLIENT", "GETNAME") == b"$-1\r\n"


def test_hello_through_valkey_py(client):
    fields = {text(k): v for k, v in as_dict(client.execute_command("HELLO")).items()}
    assert set(fields) == HELLO_KEYS
    assert fields["proto"] == client.connection_pool.connection_kwargs["protocol"]
    assert fields["id"] == client.client_id()


@pytest.mark.parametrize("version", ["4", "1", "0", "-1", "9223372036854775807"])
def test_hello_unsupported_protocol(raw, version):
    assert raw.call("HELLO", version) == b"-NOPROTO unsupported protocol version\r\n"
    assert raw.parsed("HELLO")[5] == 2  # unchanged


@pytest.mark.parametrize("version", ["x", "3.0", " 3", "+3", "03", "", "99999999999999999999"])
def test_hello_protocol_not_an_integer(raw, version):
    assert raw.call("HELLO", version) == \
        b"-ERR Protocol version is not an integer or out of range\r\n"


@pytest.mark.parametrize("args, option", [
    (["foo"], "foo"), (["Foo", "x"], "Foo"), (["AUTH", "default"], "AUTH"),
    (["auth"], "auth"), (["SETNAME"], "SETNAME"), (["SETNAME", "n", "extra"], "extra"),
])
def test_hello_bad_option_is_echoed_as_given(raw, args, option):
    assert raw.call("HELLO", "3", *args) == \
        b"-ERR Syntax error in HELLO option '%b'\r\n" % option.encode()
    assert raw.parsed("HELLO")[5] == 2  # nothing applied
    assert raw.call("CLIENT", "GETNAME") == b"$-1\r\n"


def test_hello_setname(raw):
    reply = raw.parsed("HELLO", "3", "SETNAME", "worker-1")
    assert reply[b"proto"] == 3
    assert raw.call("CLIENT", "GETNAME") == b"$8\r\nworker-1\r\n"
    assert raw.call("HELLO", "2", "setname", "a b") == BAD_NAME
    assert raw.call("CLIENT", "GETNAME") == b"$8\r\nworker-1\r\n"
    assert raw.call("PING") == b"+PONG\r\n"
    assert raw.parsed("HELLO")[b"proto"] == 3  # the failed HELLO 2 changed nothing


def test_hello_auth(raw):
    assert raw.parsed("HELLO", "3", "AUTH", "default", "anything")[b"proto"] == 3
    assert raw.parsed("HELLO", "2", "auth", "default", "")[5] == 2
    assert raw.call("HELLO", "3", "AUTH", "bob", "secret") == WRONGPASS
    assert raw.parsed("HELLO")[5] == 2
    both = raw.parsed("HELLO", "3", "AUTH", "default", "pw", "SETNAME", "both")
    assert both[b"proto"] == 3
    assert raw.call("CLIENT", "GETNAME") == b"$4\r\nboth\r\n"


def test_hello_checks_options_then_credentials_then_name(raw):
    # Valkey parses every option first, then authenticates, then sets the name.
    assert raw.call("HELLO", "3", "AUTH", "bob", "x", "BOGUS") == \
        b"-ERR Syntax error in HELLO option 'BOGUS'\r\n"
    assert raw.call("HELLO", "3", "SETNAME", "a b", "AUTH", "bob", "x") == WRONGPASS
    assert raw.call("HELLO", "3", "SETNAME", "ok", "AUTH", "bob", "x") == WRONGPASS
    assert raw.call("CLIENT", "GETNAME") == b"$-1\r\n"
    assert raw.parsed("HELLO")[5] == 2


# -- AUTH, SELECT ----------------------------------------------------------------------------

def test_auth(client, raw):
    assert raw.call("AUTH", "secret") == NO_PASSWORD
    assert raw.call("AUTH", "default", "anything") == b"+OK\r\n"
    assert raw.call("auth", "default", "") == b"+OK\r\n"
    assert raw.call("AUTH", "bob", "secret") == WRONGPASS
    assert raw.call("AUTH") == arity("auth")
    assert raw.call("AUTH", "a", "b", "c") == SYNTAX
    assert client.execute_command("AUTH", "default", "x") in (True, b"OK")
    assert client.ping() is True


def test_select(client, raw):
    assert client.select(0) in (True, b"OK")
    assert raw.call("SELECT", "0") == b"+OK\r\n"
    assert raw.call("SELECT", "15") == b"+OK\r\n"  # databases 16
    assert raw.call("SELECT", "-1") == b"-ERR DB index is out of range\r\n"
    assert raw.call("SELECT", "16") == b"-ERR DB index is out of range\r\n"
    assert raw.call("SELECT", "x") == NOT_INT
    assert raw.call("SELECT", "0.0") == NOT_INT
    assert raw.call("SELECT", "99999999999") == \
        b"-ERR value is out of range, value must between -2147483648 and 2147483647\r\n"
    assert raw.call("SELECT") == arity("select")
    assert raw.call("SELECT", "0", "1") == arity("select")
    with pytest.raises(valkey.ResponseError, match="^DB index is out of range$"):
        client.select(16)


# -- CLIENT ----------------------------------------------------------------------------------

def test_client_setname_getname(client, raw):
    assert client.client_getname() is None
    assert client.client_setname("app-1") is True
    assert text(client.client_getname()) == "app-1"
    assert raw.call("CLIENT", "GETNAME") == b"$-1\r\n"
    assert raw.call("CLIENT", "SETNAME", "x") == b"+OK\r\n"
    assert raw.call("client", "getname") == b"$1\r\nx\r\n"
    assert raw.call("CLIENT", "SETNAME", "") == b"+OK\r\n"  # clears it
    assert raw.call("CLIENT", "GETNAME") == b"$-1\r\n"
    for bad in ("a b", "a\nb", "tab\t", "\x7f", "caf\u00e9"):
        assert raw.call("CLIENT", "SETNAME", bad.encode()) == BAD_NAME
    assert raw.call("CLIENT", "GETNAME") == b"$-1\r\n"
    assert raw.call("CLIENT", "SETNAME") == arity("client|setname")
    assert raw.call("CLIENT", "SETNAME", "a", "b") == arity("client|setname")
    assert raw.call("CLIENT", "GETNAME", "x") == arity("client|getname")


def test_client_id(client, raw, open_raw):
    own = raw.parsed("CLIENT", "ID")
    assert isinstance(own, int) and own > 0
    assert int(info_line(raw)["id"]) == own
    assert open_raw().parsed("CLIENT", "ID") > own  # ids only grow
    assert isinstance(client.client_id(), int)
    assert raw.call("CLIENT", "ID", "x") == arity("client|id")


def test_client_setinfo(client, raw):
    assert raw.call("CLIENT", "SETINFO", "LIB-NAME", "mylib") == b"+OK\r\n"
    assert raw.call("client", "setinfo", "lib-ver", "1.2.3") == b"+OK\r\n"
    fields = info_line(raw)
    assert (fields["lib-name"], fields["lib-ver"]) == ("mylib", "1.2.3")
    assert raw.call("CLIENT", "SETINFO", "LIB-NAME", "a b") == \
        b"-ERR LIB-NAME cannot contain spaces, newlines or special characters.\r\n"
    assert raw.call("CLIENT", "SETINFO", "lib-ver", "1\n2") == \
        b"-ERR lib-ver cannot contain spaces, newlines or special characters.\r\n"
    assert raw.call("CLIENT", "SETINFO", "colour", "x") == \
        b"-ERR Unrecognized option 'colour'\r\n"
    assert raw.call("CLIENT", "SETINFO", "LIB-NAME") == arity("client|setinfo")
    assert info_line(raw)["lib-name"] == "mylib"
    # valkey-py announces itself with SETINFO on connect
    assert client.client_info()["lib-name"] in ("valkey-py", "redis-py")


def test_client_list(client, raw, open_raw):
    other = open_raw()
    other.call("CLIENT", "SETNAME", "other")
    listing = raw.parsed("CLIENT", "LIST").decode()
    assert listing.endswith("\n")
    lines = {}
    for line in listing.splitlines():
        fields = dict(field.split("=", 1) for field in line.split())
        for key in ("id", "addr", "laddr", "name", "age", "idle", "flags", "db", "cmd",
                    "user", "resp", "lib-name", "lib-ver"):
            assert key in fields, line
        lines[int(fields["id"])] = fields
    own = lines[raw.parsed("CLIENT", "ID")]
    assert (own["cmd"], own["resp"], own["name"], own["db"]) == ("client|list", "2", "", "0")
    other_fields = lines[other.parsed("CLIENT", "ID")]
    assert (other_fields["name"], other_fields["cmd"]) == ("other", "client|setname")
    assert other_fields["addr"] == info_line(other)["addr"]

    ids = {int(c["id"]) for c in client.client_list()}
    assert {int(own["id"]), int(other_fields["id"])} <= ids

    one = raw.parsed("CLIENT", "LIST", "ID", other_fields["id"]).decode()
    assert one.count("\n") == 1 and f"id={other_fields['id']} " in one
    assert raw.call("CLIENT", "LIST", "ID", "999999") == b"$0\r\n\r\n"
    assert raw.call("CLIENT", "LIST", "ID", "x") == b"-ERR Invalid client ID\r\n"
    assert raw.parsed("CLIENT", "LIST", "TYPE", "normal").count(b"\n") >= 2
    assert raw.call("CLIENT", "LIST", "TYPE", "master") == b"$0\r\n\r\n"
    assert raw.call("CLIENT", "LIST", "TYPE", "Bogus") == b"-ERR Unknown client type 'Bogus'\r\n"
    assert raw.call("CLIENT", "LIST", "bogus") == SYNTAX
    assert raw.call("CLIENT", "LIST", "TYPE", "normal", "ID", "1") == SYNTAX


def test_client_list_and_info_are_verbatim_in_resp3(raw):
    raw.call("HELLO", "3")
    reply = raw.call("CLIENT", "LIST")
    assert reply.startswith(b"=") and b"\r\ntxt:id=" in reply
    assert b" resp=3 " in reply
    reply = raw.call("CLIENT", "INFO")
    assert reply.startswith(b"=") and b"\r\ntxt:id=" in reply and reply.endswith(b"\n\r\n")


def test_client_info(client, raw):
    fields = info_line(raw)
    assert fields["cmd"] == "client|info" and fields["resp"] == "2"
    assert int(fields["id"]) == raw.parsed("CLIENT", "ID")
    info = client.client_info()
    assert int(info["id"]) == client.client_id()
    assert raw.call("CLIENT", "INFO", "x") == arity("client|info")


def test_client_kill_by_address(raw, open_raw):
    victim = open_raw()
    address = info_line(victim)["addr"]
    assert raw.call("CLIENT", "KILL", address) == b"+OK\r\n"
    assert victim.closed_by_server(5.0)
    assert raw.call("CLIENT", "KILL", address) == b"-ERR No such client\r\n"
    assert raw.call("CLIENT", "KILL", "10.1.2.3:4567") == b"-ERR No such client\r\n"
    assert raw.call("PING") == b"+PONG\r\n"


def test_client_kill_by_address_can_kill_itself(open_raw):
    me = open_raw()
    assert me.call("CLIENT", "KILL", info_line(me)["addr"]) == b"+OK\r\n"
    assert me.closed_by_server(5.0)


def test_client_kill_with_filters(raw, open_raw):
    victim, bystander = open_raw(), open_raw()
    victim_id = victim.parsed("CLIENT", "ID")
    assert raw.call("CLIENT", "KILL", "ID", victim_id) == b":1\r\n"
    assert victim.closed_by_server(5.0)
    assert raw.call("CLIENT", "KILL", "ID", victim_id) == b":0\r\n"
    assert bystander.call("PING") == b"+PONG\r\n"

    victim = open_raw()
    address = info_line(victim)["addr"]
    assert raw.call("client", "kill", "addr", address, "skipme", "yes") == b":1\r\n"
    assert victim.closed_by_server(5.0)

    laddr = info_line(raw)["laddr"]
    own = raw.parsed("CLIENT", "ID")
    assert raw.call("CLIENT", "KILL", "ID", own) == b":0\r\n"  # SKIPME yes by default
    assert raw.call("CLIENT", "KILL", "ID", own, "LADDR", laddr) == b":0\r\n"
    assert raw.call("CLIENT", "KILL", "USER", "default", "ID", 999999) == b":0\r\n"
    assert raw.call("CLIENT", "KILL", "TYPE", "master") == b":0\r\n"
    assert bystander.call("PING") == b"+PONG\r\n"


def test_client_kill_skipme_no_kills_the_caller_after_replying(open_raw):
    me = open_raw()
    own = me.parsed("CLIENT", "ID")
    assert me.call("CLIENT", "KILL", "ID", own, "SKIPME", "no") == b":1\r\n"
    assert me.closed_by_server(5.0)


def test_client_kill_errors(raw):
    assert raw.call("CLIENT", "KILL", "ID", "0") == \
        b"-ERR client-id should be greater than 0\r\n"
    assert raw.call("CLIENT", "KILL", "ID", "x") == \
        b"-ERR client-id should be greater than 0\r\n"
    assert raw.call("CLIENT", "KILL", "USER", "bob") == b"-ERR No such user 'bob'\r\n"
    assert raw.call("CLIENT", "KILL", "TYPE", "Bogus") == b"-ERR Unknown client type 'Bogus'\r\n"
    assert raw.call("CLIENT", "KILL", "SKIPME", "maybe") == SYNTAX
    assert raw.call("CLIENT", "KILL", "BOGUS", "x") == SYNTAX
    assert raw.call("CLIENT", "KILL", "ID", "1", "SKIPME") == SYNTAX
    assert raw.call("CLIENT", "KILL") == arity("client|kill")
    assert raw.call("PING") == b"+PONG\r\n"


def test_client_unknown_subcommand(client, raw):
    assert raw.call("CLIENT", "FOO") == b"-ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n"
    assert raw.call("client", "foo", "bar") == \
        b"-ERR unknown subcommand 'foo'. Try CLIENT HELP.\r\n"
    assert raw.call("CLIENT") == arity("client")
    with pytest.raises(valkey.ResponseError, match=r"^unknown subcommand 'nope'\. Try CLIENT"):
        client.execute_command("CLIENT", "nope")


# -- COMMAND ---------------------------------------------------------------------------------

def test_command_without_arguments(raw):
    entries = raw.parsed("COMMAND")
    names = [e[0] for e in entries]
    assert len(names) == len(set(names)) == raw.parsed("COMMAND", "COUNT")
    for entry in entries:
        assert len(entry) == 10 and isinstance(entry[1], int)
        assert b"|" not in entry[0]
    assert {b"valq", b"ping", b"client", b"command", b"info", b"config", b"scan"} <= set(names)


def test_command_count(client, raw):
    count = raw.parsed("COMMAND", "COUNT")
    top_level = [n for n in raw.parsed("COMMAND", "LIST") if b"|" not in n]
    assert count == len(top_level)
    assert client.command_count() == count
    assert raw.call("COMMAND", "COUNT", "x") == arity("command|count")


def test_command_info(raw):
    [valq] = raw.parsed("COMMAND", "INFO", "valq")
    assert valq[:2] == [b"valq", -1]
    subcommands = {sub[0]: sub for sub in valq[9]}
    assert subcommands[b"valq|push"][1] == -4
    assert subcommands[b"valq|push"][3:6] == [2, 2, 1]  # the queue is the first key
    [ping] = raw.parsed("COMMAND", "INFO", "PING")
    assert ping[:2] == [b"ping", -1] and b"fast" in ping[2]
    assert ping[9] == []
    [push] = raw.parsed("COMMAND", "INFO", "valq|push")
    assert push[:2] == [b"valq|push", -4] and push == subcommands[b"valq|push"]
    assert raw.parsed("COMMAND", "INFO", "VALQ|PUSH") == [push]
    assert raw.parsed("COMMAND", "INFO", "nope") == [None]
    assert raw.call("COMMAND", "INFO", "nope") == b"*1\r\n$-1\r\n"
    assert raw.call("COMMAND", "INFO", "valq|nope") == b"*1\r\n$-1\r\n"
    assert raw.parsed("COMMAND", "INFO", "ping", "nope", "echo")[1] is None
    assert len(raw.parsed("COMMAND", "INFO")) == raw.parsed("COMMAND", "COUNT")
    raw.call("HELLO", "3")
    assert raw.call("COMMAND", "INFO", "nope") == b"*1\r\n_\r\n"
    assert raw.parsed("COMMAND", "INFO", "ping")[0][:2] == [b"ping", -1]


def test_command_docs_cover_every_valq_subcommand(raw):
    names = raw.parsed("COMMAND", "LIST", "FILTERBY", "PATTERN", "valq|*")
    arities = {e[0]: e[1] for e in raw.parsed("COMMAND", "INFO", "valq")[0][9]}
    assert set(names) == set(arities) and b"valq|push" in names and len(names) >= 11
    for proto in (2, 3):
        raw.call("HELLO", proto)
        docs = as_dict(raw.parsed("COMMAND", "DOCS", "valq"))
        valq = as_dict(docs[b"valq"])
        assert valq[b"summary"]
        subcommands = {k: as_dict(v) for k, v in as_dict(valq[b"subcommands"]).items()}
        assert set(subcommands) == set(names)
        for name, doc in subcommands.items():
            assert doc[b"summary"] and doc[b"group"] and doc[b"since"], name
            if abs(arities[name]) > 2:  # takes arguments
                arguments = [as_dict(a) for a in doc[b"arguments"]]
                assert arguments, name
                for argument in arguments:
                    assert argument[b"name"] and argument[b"type"], (name, argument)
        push_args = [as_dict(a) for a in subcommands[b"valq|push"][b"arguments"]]
        assert [a[b"name"] for a in push_args[:2]] == [b"queue", b"body"]
        assert push_args[0][b"type"] == b"key"


def test_command_docs_other_forms(raw):
    ping = as_dict(as_dict(raw.parsed("COMMAND", "DOCS", "ping"))[b"ping"])
    assert ping[b"summary"] and ping[b"group"] == b"connection"
    assert raw.call("COMMAND", "DOCS", "nope") == b"*0\r\n"
    both = as_dict(raw.parsed("COMMAND", "DOCS", "nope", "echo", "valq|pop"))
    assert set(both) == {b"echo", b"valq|pop"}
    everything = as_dict(raw.parsed("COMMAND", "DOCS"))
    assert len(everything) == raw.parsed("COMMAND", "COUNT")


def test_command_list(raw):
    names = raw.parsed("COMMAND", "LIST")
    assert len(names) == len(set(names))
    assert {b"valq", b"valq|push", b"valq|pop", b"ping", b"client|list", b"config|get"} <= \
        set(names)
    filtered = raw.parsed("COMMAND", "LIST", "FILTERBY", "PATTERN", "VALQ|P*")
    assert {b"valq|push", b"valq|pop"} <= set(filtered)
    assert all(n.startswith(b"valq|p") for n in filtered)
    assert raw.call("COMMAND", "LIST", "FILTERBY", "PATTERN", "zz*") == b"*0\r\n"
    assert raw.call("COMMAND", "LIST", "bogus") == SYNTAX
    assert raw.call("COMMAND", "LIST", "FILTERBY", "PATTERN", "a", "b") == SYNTAX
    transactions = raw.parsed("COMMAND", "LIST", "FILTERBY", "ACLCAT", "Transaction")
    assert sorted(transactions) == [b"discard", b"exec", b"multi", b"unwatch", b"watch"]
    assert b"valq|push" in raw.parsed("COMMAND", "LIST", "FILTERBY", "ACLCAT", "valq")
    assert raw.call("COMMAND", "LIST", "FILTERBY", "ACLCAT", "nosuch") == b"*0\r\n"
    assert raw.call("COMMAND", "LIST", "FILTERBY", "MODULE", "lua") == b"*0\r\n"


def test_command_unknown_subcommand(raw):
    assert raw.call("COMMAND", "FOO") == b"-ERR unknown subcommand 'FOO'. Try COMMAND HELP.\r\n"


# -- INFO ------------------------------------------------------------------------------------

def sections(reply: bytes) -> list[str]:
    return [line[2:] for line in reply.decode().split("\r\n") if line.startswith("# ")]


def test_info_default_sections(client, raw):
    reply = raw.parsed("INFO")
    assert reply.endswith(b"\r\n")
    names = sections(reply)
    for name in ("Server", "Clients", "Memory", "Persistence", "Stats", "Replication", "CPU",
                 "Keyspace"):
        assert name in names, names
    assert "Commandstats" not in names
    info = client.info()
    assert info["redis_version"] == "7.2.4"
    assert info["tcp_port"] == client.connection_pool.connection_kwargs["port"]
    assert info["connected_clients"] >= 1


def test_info_text_layout(raw):
    # "# Section\r\nfield:value\r\n...", sections separated by one empty line, as Valkey.
    reply = raw.parsed("INFO", "server", "clients").decode()
    blocks = reply.split("\r\n\r\n")
    assert len(blocks) == 2 and blocks[0].startswith("# Server\r\n")
    assert blocks[1].startswith("# Clients\r\n") and blocks[1].endswith("\r\n")
    for line in reply.split("\r\n"):
        assert line == "" or line.startswith("# ") or ":" in line


def test_info_server(client, valqd, raw):
    reply = raw.parsed("INFO", "server").decode()
    assert sections(reply.encode()) == ["Server"]
    fields = dict(line.split(":", 1) for line in reply.split("\r\n")[1:] if line)
    assert fields["redis_version"] == "7.2.4"
    assert int(fields["tcp_port"]) == valqd.port
    assert fields["redis_mode"] == "standalone"
    info = client.info("server")
    assert info["tcp_port"] == valqd.port and "connected_clients" not in info
    assert sections(raw.parsed("INFO", "SERVER")) == ["Server"]


def test_info_commandstats(client, raw):
    create(client, "q")
    client.config_resetstat()
    client.execute_command("VALQ", "PUSH", "q", "m")
    stats = client.info("commandstats")
    assert stats["cmdstat_valq|push"]["calls"] == 1
    assert stats["cmdstat_valq|push"]["failed_calls"] == 0
    with pytest.raises(valkey.ResponseError):
        client.execute_command("VALQ", "PUSH", "nope", "m")
    stats = client.info("commandstats")
    assert stats["cmdstat_valq|push"]["calls"] == 2
    assert stats["cmdstat_valq|push"]["failed_calls"] == 1
    assert "Commandstats" in sections(raw.parsed("INFO", "all"))
    assert "Commandstats" in sections(raw.parsed("INFO", "everything"))


def test_info_keyspace(client, raw):
    assert raw.parsed("INFO", "keyspace") == b"# Keyspace\r\n"
    assert client.info("keyspace") == {}
    create(client, "a", "b", "c")
    assert raw.parsed("INFO", "keyspace") == b"# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n"
    assert client.info("keyspace")["db0"]["keys"] == 3


def test_info_queues(client, raw):
    create(client, "jobs", "mail")
    for body in ("a", "b", "c"):
        client.execute_command("VALQ", "PUSH", "jobs", body)
    client.execute_command("VALQ", "PUSH", "jobs", "later", "100")
    client.execute_command("VALQ", "POP", "jobs")
    reply = raw.parsed("INFO", "queues").decode()
    assert sections(reply.encode()) == ["Queues"]
    lines = [line for line in reply.split("\r\n")[1:] if line]
    assert lines == [
        "queue0:name=jobs,msgs=3,ready=2,inflight=1,delayed=1,dlq=0",
        "queue1:name=mail,msgs=0,ready=0,inflight=0,delayed=0,dlq=0",
    ]
    assert client.info("queues")["queue0"]["name"] == "jobs"


def test_info_over_resp3_is_verbatim(client, raw):
    raw.call("HELLO", "3")
    reply = raw.call("INFO", "server")
    assert reply.startswith(b"=") and b"\r\ntxt:# Server\r\n" in reply
    info = client.info()
    assert "redis_version" in info and "tcp_port" in info


def test_info_unknown_section_is_empty(raw):
    assert raw.call("INFO", "nosuchsection") == b"$0\r\n\r\n"
    assert sections(raw.parsed("INFO", "nosuchsection", "server")) == ["Server"]


# -- CONFIG ----------------------------------------------------------------------------------

def config_get(conn, *patterns) -> dict[str, str]:
    return {text(k): text(v) for k, v in as_dict(conn.parsed("CONFIG", "GET", *patterns)).items()}


def test_config_get_patterns(client, raw):
    everything = config_get(raw, "*")
    assert {"port", "bind", "dir", "loglevel", "logfile"} <= set(everything)
    assert everything["bind"] == "127.0.0.1" and everything["loglevel"] == "notice"
    assert config_get(raw, "port") == {"port": everything["port"]}
    assert everything["port"].isdigit()
    logs = config_get(raw, "log*")
    assert {"loglevel", "logfile"} <= set(logs)
    assert logs == {k: v for k, v in everything.items() if k.startswith("log")}
    assert set(config_get(raw, "?ind")) == {"bind"}
    assert set(config_get(raw, "[bp]o*")) == {n for n in everything if n[:2] in ("bo", "po")}
    assert set(config_get(raw, "port", "bind", "p*", "port")) == \
        {"bind"} | {n for n in everything if n.startswith("p")}
    flat = raw.parsed("CONFIG", "GET", "port", "port", "*")
    assert len(flat) == 2 * len(everything)  # each setting once
    assert config_get(raw, "nosuchsetting") == {}
    assert raw.call("CONFIG", "GET", "nosuchsetting") == b"*0\r\n"
    assert {text(k) for k in client.config_get("log*")} == set(logs)
    assert client.config_get("nosuchsetting") == {}
    assert raw.call("CONFIG", "GET") == arity("config|get")
    raw.call("HELLO", "3")
    assert raw.call("CONFIG", "GET", "bind") == b"%1\r\n$4\r\nbind\r\n$9\r\n127.0.0.1\r\n"


def test_config_set_loglevel(client, raw):
    try:
        assert client.config_set("loglevel", "warning") is True
        assert config_get(raw, "loglevel") == {"loglevel": "warning"}
        assert raw.call("CONFIG", "SET", "LOGLEVEL", "DEBUG") == b"+OK\r\n"
        assert config_get(raw, "loglevel") == {"loglevel": "debug"}
    finally:
        assert raw.call("CONFIG", "SET", "loglevel", "notice") == b"+OK\r\n"


def test_config_set_errors(raw):
    assert raw.call("CONFIG", "SET", "loglevel", "loud") == (
        b"-ERR CONFIG SET failed (possibly related to argument 'loglevel') - argument(s) must "
        b"be one of the following: debug, verbose, notice, warning, nothing\r\n")
    assert raw.call("CONFIG", "SET", "port", "7000") == (
        b"-ERR CONFIG SET failed (possibly related to argument 'port') - can't set immutable "
        b"config\r\n")
    assert raw.call("CONFIG", "SET", "nosuch", "1") == \
        b"-ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'\r\n"
    assert raw.call("CONFIG", "SET", "loglevel", "debug", "loglevel", "notice") == (
        b"-ERR CONFIG SET failed (possibly related to argument 'loglevel') - duplicate "
        b"parameter\r\n")
    # names are all looked up before any value is parsed
    assert raw.call("CONFIG", "SET", "loglevel", "loud", "nosuch", "1") == \
        b"-ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'\r\n"
    # all or nothing
    assert raw.call("CONFIG", "SET", "loglevel", "debug", "port", "1").startswith(
        b"-ERR CONFIG SET failed (possibly related to argument 'port')")
    assert config_get(raw, "loglevel") == {"loglevel": "notice"}
    # a bad value after a good one: the good one takes no effect either, not even its hook
    assert raw.call("CONFIG", "SET", "maxmemory", "1", "proto-max-bulk-len", "bogus")\
        .startswith(b"-ERR CONFIG SET failed (possibly related to argument 'proto-max-bulk-len')")
    assert config_get(raw, "maxmemory") == {"maxmemory": "0"}
    assert raw.call("VALQ", "CREATE", "after-bad-set").startswith(b"$")  # no OOM
    assert raw.call("CONFIG", "SET", "loglevel") == arity("config|set")
    assert raw.call("CONFIG", "SET", "loglevel", "debug", "port") == arity("config|set")
    assert raw.call("CONFIG", "FOO") == b"-ERR unknown subcommand 'FOO'. Try CONFIG HELP.\r\n"
    assert raw.call("CONFIG") == arity("config")


def test_config_resetstat(client, raw):
    create(client, "q")
    client.execute_command("VALQ", "PUSH", "q", "m")
    assert "cmdstat_valq|push" in client.info("commandstats")
    assert raw.call("CONFIG", "RESETSTAT") == b"+OK\r\n"
    reply = raw.parsed("INFO", "commandstats").decode()
    assert "cmdstat_valq|push" not in reply
    assert [line.split(":")[0] for line in reply.split("\r\n")[1:] if line] == \
        ["cmdstat_config|resetstat"]
    assert raw.call("CONFIG", "RESETSTAT", "x") == arity("config|resetstat")


# -- keyspace --------------------------------------------------------------------------------

def test_dbsize(client, raw):
    assert client.dbsize() == 0
    create(client, "a", "b", "c")
    assert client.dbsize() == 3
    assert raw.call("DBSIZE") == b":3\r\n"
    assert raw.call("DBSIZE", "x") == arity("dbsize")


def test_keys_glob_patterns(client, raw):
    names = ["alpha", "beta", "bet", "bx", "a*b", "axb", "h[e]llo", "hello", "q?"]
    create(client, *names)

    def keys(pattern):
        return sorted(k.decode() for k in client.keys(pattern))

    assert keys("*") == sorted(names)
    assert keys("b*") == ["bet", "beta", "bx"]
    assert keys("be?") == ["bet"]
    assert keys("b?") == ["bx"]
    assert keys("[a-b]*") == sorted(n for n in names if n[0] in "ab")
    assert keys("[^a]*") == sorted(n for n in names if n[0] != "a")
    assert keys("h[ae]llo") == ["hello"]
    assert keys("a\\*b") == ["a*b"]
    assert keys("a*b") == ["a*b", "axb"]
    assert keys("h\\[e\\]llo") == ["h[e]llo"]
    assert keys("q\\?") == ["q?"]
    assert keys("nomatch*") == []
    assert keys("ALPHA") == []  # case-sensitive
    assert raw.call("KEYS") == arity("keys")
    assert raw.call("KEYS", "a", "b") == arity("keys")


def test_scan_visits_every_queue_exactly_once(client, raw):
    names = [f"q{i:03d}" for i in range(100)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.execute_command("VALQ", "CREATE", name)
    pipe.execute()
    seen, cursor, calls = [], 0, 0
    while True:
        cursor, batch = client.scan(cursor, count=7)
        calls += 1
        assert len(batch) <= 7
        seen += batch
        if cursor == 0:
            break
    assert calls >= 100 // 7
    assert sorted(seen) == [n.encode() for n in names]  # each exactly once
    assert sorted(client.scan_iter(match="q00*", count=7)) == [n.encode() for n in names[:10]]
    assert len(list(client.scan_iter(_type="valq-type", count=13))) == 100
    assert list(client.scan_iter(_type="string")) == []
    reply = raw.parsed("SCAN", "0", "COUNT", "1000")
    assert reply[0] == b"0" and len(reply[1]) == 100


def test_scan_reply_shape_and_errors(raw):
    assert raw.call("SCAN", "0") == b"*2\r\n$1\r\n0\r\n*0\r\n"
    create(raw, "a", "b", "c")
    first = raw.parsed("SCAN", "0", "COUNT", "2")
    assert first[0] != b"0" and len(first[1]) == 2
    rest = raw.parsed("SCAN", first[0], "count", "2", "match", "*", "type", "valq-type")
    assert rest[0] == b"0" and sorted(first[1] + rest[1]) == [b"a", b"b", b"c"]
    assert raw.call("SCAN", "x") == b"-ERR invalid cursor\r\n"
    assert raw.call("SCAN", "-1x") == b"-ERR invalid cursor\r\n"
    assert raw.call("SCAN", "0", "COUNT", "0") == SYNTAX
    assert raw.call("SCAN", "0", "COUNT", "x") == NOT_INT
    assert raw.call("SCAN", "0", "BOGUS", "x") == SYNTAX
    assert raw.call("SCAN", "0", "MATCH") == SYNTAX
    assert raw.call("SCAN") == arity("scan")


def test_type(client, raw):
    create(client, "q")
    assert client.type("q") == b"valq-type"
    assert client.type("nope") == b"none"
    assert raw.call("TYPE", "q") == b"+valq-type\r\n"
    assert raw.call("TYPE", "nope") == b"+none\r\n"
    assert raw.call("TYPE") == arity("type")
    assert raw.call("TYPE", "a", "b") == arity("type")


def test_exists(client, raw):
    create(client, "a", "b")
    assert client.exists("a") == 1
    assert client.exists("a", "a", "b", "nope") == 3
    assert client.exists("nope") == 0
    assert raw.call("EXISTS", "a", "a") == b":2\r\n"
    assert raw.call("EXISTS") == arity("exists")


def test_del(client, raw):
    create(client, "a", "b", "c")
    for body in ("x", "y"):
        client.execute_command("VALQ", "PUSH", "a", body)
    client.execute_command("VALQ", "POP", "a")
    assert client.delete("a", "b", "nope", "a") == 2
    assert client.exists("a", "b", "c") == 1
    assert client.dbsize() == 1
    with pytest.raises(valkey.ResponseError, match="^NOQUEUE"):
        client.execute_command("VALQ", "PUSH", "a", "z")
    create(client, "a")  # a new, empty queue: the old messages are gone
    assert client.execute_command("VALQ", "POP", "a") == b""
    assert raw.call("DEL", "nope") == b":0\r\n"
    assert raw.call("DEL") == arity("del")


def test_flushall(client, raw):
    create(client, "a", "b")
    assert client.flushall(asynchronous=True) is True
    assert client.dbsize() == 0
    create(client, "a")
    assert raw.call("FLUSHALL", "SYNC") == b"+OK\r\n"
    assert raw.call("DBSIZE") == b":0\r\n"
    create(client, "a")
    assert raw.call("flushall", "async") == b"+OK\r\n"
    assert raw.call("FLUSHALL") == b"+OK\r\n"
    create(client, "a")
    assert raw.call("FLUSHALL", "BOGUS") == SYNTAX
    assert raw.call("FLUSHALL", "SYNC", "ASYNC") == SYNTAX
    assert raw.call("DBSIZE") == b":1\r\n"  # a failed FLUSHALL drops nothing


def test_time(client, raw):
    before = time.time()
    seconds, micros = client.time()
    after = time.time()
    assert before - 1 <= seconds + micros / 1e6 <= after + 1
    assert 0 <= micros < 1_000_000
    reply = raw.parsed("TIME")
    assert len(reply) == 2 and all(isinstance(x, bytes) and x.isdigit() for x in reply)
    assert abs(int(reply[0]) - time.time()) < 5
    assert raw.call("TIME").startswith(b"*2\r\n$10\r\n")
    assert raw.call("TIME", "x") == arity("time")


# -- QUIT, RESET, SHUTDOWN ---------------------------------------------------------------------

def test_quit(open_raw):
    conn = open_raw()
    assert conn.call("QUIT") == b"+OK\r\n"
    assert conn.closed_by_server(5.0)
    conn = open_raw()
    conn.send(command("QUIT") + command("PING"))  # nothing after QUIT is answered
    assert conn.sock.recv(100) == b"+OK\r\n"
    assert conn.closed_by_server(5.0)


def test_reset(raw):
    raw.call("HELLO", "3", "SETNAME", "named")
    assert raw.call("CLIENT", "GETNAME") == b"$5\r\nnamed\r\n"
    assert raw.call("RESET") == b"+RESET\r\n"
    assert raw.call("CLIENT", "GETNAME") == b"$-1\r\n"  # RESP2 again, no name
    assert raw.parsed("HELLO")[5] == 2
    assert raw.call("reset") == b"+RESET\r\n"
    assert raw.call("RESET", "x") == arity("reset")


def test_shutdown(fresh_valqd):
    conn = Raw(fresh_valqd.port)
    try:
        assert conn.call("SHUTDOWN", "BOGUS") == SYNTAX
        assert conn.call("SHUTDOWN", "ABORT") == b"-ERR No shutdown in progress.\r\n"
        assert conn.call("SHUTDOWN", "ABORT", "NOW") == SYNTAX
        assert conn.call("SHUTDOWN", "NOSAVE", "ABORT") == SYNTAX
        assert conn.call("SHUTDOWN", "SAVE", "NOSAVE") == SYNTAX
        assert conn.call("SHUTDOWN", "ABORT", "BOGUS") == SYNTAX
        assert conn.call("PING") == b"+PONG\r\n"  # still up
        conn.send(command("SHUTDOWN"))
        assert conn.closed_by_server(10)  # closed with no reply
    finally:
        conn.close()
    assert fresh_valqd.proc.wait(timeout=10) == 0
    log = fresh_valqd.log()
    assert "Traceback" not in log
    assert "ready to exit" in log


# -- dispatch: unknown commands, arity, letter case ------------------------------------------

def test_unknown_command(client, raw):
    assert raw.call("foo", "a", "b") == \
        b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n"
    assert raw.call("FOO") == b"-ERR unknown command 'FOO', with args beginning with: \r\n"
    assert raw.call("foo", "x" * 200) == \
        b"-ERR unknown command 'foo', with args beginning with: '" + b"x" * 128 + b"' \r\n"
    assert raw.call("foo", "a\r\nb") == \
        b"-ERR unknown command 'foo', with args beginning with: 'a  b' \r\n"
    with pytest.raises(valkey.ResponseError) as caught:
        client.execute_command("foo", "a", "b")
    assert str(caught.value) == "unknown command 'foo', with args beginning with: 'a' 'b' "
    assert raw.call("PING") == b"+PONG\r\n"


@pytest.mark.parametrize("args, name", [
    (["PING", "a", "b"], "ping"), (["ECHO"], "echo"), (["SELECT"], "select"),
    (["AUTH"], "auth"), (["RESET", "x"], "reset"), (["DBSIZE", "x"], "dbsize"),
    (["KEYS"], "keys"), (["SCAN"], "scan"), (["TYPE"], "type"), (["EXISTS"], "exists"),
    (["DEL"], "del"), (["TIME", "x"], "time"), (["CLIENT"], "client"),
    (["CLIENT", "ID", "x"], "client|id"), (["CLIENT", "SETNAME"], "client|setname"),
    (["CLIENT", "GETNAME", "x"], "client|getname"), (["CLIENT", "INFO", "x"], "client|info"),
    (["CLIENT", "KILL"], "client|kill"), (["CLIENT", "SETINFO", "x"], "client|setinfo"),
    (["CONFIG"], "config"), (["CONFIG", "GET"], "config|get"),
    (["CONFIG", "SET", "a"], "config|set"), (["CONFIG", "SET", "a", "b", "c"], "config|set"),
    (["CONFIG", "RESETSTAT", "x"], "config|resetstat"),
    (["COMMAND", "COUNT", "x"], "command|count"),
])
def test_wrong_arity(raw, args, name):
    assert raw.call(*args) == arity(name)


def test_wrong_arity_through_valkey_py(client):
    with pytest.raises(valkey.ResponseError) as caught:
        client.execute_command("ECHO")
    assert str(caught.value) == "wrong number of arguments for 'echo' command"


def test_any_letter_case(client, raw):
    assert raw.call("pInG") == b"+PONG\r\n"
    assert raw.call("Echo", "x") == b"$1\r\nx\r\n"
    assert raw.call("cLiEnT", "SeTnAmE", "n") == b"+OK\r\n"
    assert raw.call("client", "GETNAME") == b"$1\r\nn\r\n"
    assert raw.call("ConFig", "gEt", "bind") == b"*2\r\n$4\r\nbind\r\n$9\r\n127.0.0.1\r\n"
    assert raw.call("command", "count") == b":%d\r\n" % raw.parsed("COMMAND", "COUNT")
    assert raw.call("dbSIZE") == b":0\r\n"
    assert raw.call("vAlQ", "cReAtE", "q") == b"$9\r\ncreated q\r\n"
    assert raw.call("type", "q") == b"+valq-type\r\n"
    assert raw.call("Flushall", "Async") == b"+OK\r\n"
    assert client.execute_command("pInG") in (True, b"PONG")
