"""Access control as Valkey's ACL has it: users and their rules, categories and key specs in
the command table, NOPERM and WRONGPASS, the ACL log, the ACL file, and the typical roles
(a producer, a worker, a read-only dashboard) driven by the real `valkey` client over RESP2
and RESP3. The rule listings and error texts were taken from Valkey 9.1 given the same
commands."""

import hashlib
import os

import pytest
import valkey
from valkey.exceptions import AuthenticationError, NoPermissionError, ResponseError

from support import Error, ManualClock, ThreadedServer, ValqdProcess, Wire, as_map
from valqd.commands import acl
from valqd.commands.context import ServerState
from valqd.commands.dispatch import Dispatcher
from valqd.commands.table import TABLE
from valqd.commands.users import Acl
from valqd.config import Config
from valqd.engine import Engine
from valqd.errors import CommandError

DEFAULT_LINE = b"user default on nopass ~* &* +@all"
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
KEY_NOPERM = "NOPERM No permissions to access a key"


def noperm(user: str, command: str) -> str:
    return f"NOPERM User {user} has no permissions to run the '{command}' command"


def sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def specs() -> dict:
    out = {}
    for spec in TABLE.values():
        out[spec.name] = spec
        out.update(spec.subcommands)
    return out


@pytest.fixture
def users() -> Acl:
    return Acl(specs())


def setuser(users: Acl, name: str, *rules: str):
    return users.set_user(name.encode(), [r.encode() for r in rules])


# -- rules, as ACL LIST and GETUSER show them --------------------------------------------------

def test_default_and_new_users_are_listed_as_valkey_lists_them(users):
    assert users.default.describe() == DEFAULT_LINE
    assert users.default.unrestricted
    assert setuser(users, "n").describe() == b"user n off resetchannels -@all"
    alice = setuser(users, "alice", "on", ">pw", "~jobs:*", "+@read", "-valq|get", "&chan*")
    assert alice.describe() == (f"user alice on #{sha('pw')} ~jobs:* resetchannels &chan* "
                                "-@all +@read -valq|get").encode()
    bob = setuser(users, "bob", "+client|list", "%R~r:*", "%W~w:*", "%RW~rw:*")
    assert bob.describe() == b"user bob off %R~r:* %W~w:* ~rw:* resetchannels -@all +client|list"


@pytest.mark.parametrize("rules, commands", [
    (["nocommands", "+@read", "-@read", "+@write", "+@read"], b"-@all +@write +@read"),
    (["+@all", "-valq|purge", "+valq|purge", "-flushall"], b"+@all +valq|purge -flushall"),
    (["-@all", "+valq", "-valq|purge"], b"-@all +valq -valq|purge"),
    (["+valq|push", "allcommands"], b"+@all"),
    (["+@all", "nocommands"], b"-@all"),
])
def test_command_rules_are_listed_in_order_with_repeats_replaced(users, rules, commands):
    assert setuser(users, "u", *rules).describe_commands() == commands


def test_command_rules_allow_exactly_what_they_name(users):
    user = setuser(users, "u", "+valq", "-valq|purge", "+@dangerous", "-flushall")
    assert user.may_run("valq|push") and user.may_run("valq") and user.may_run("keys")
    assert not user.may_run("valq|purge") and not user.may_run("flushall")
    assert not user.may_run("ping")
    assert not user.unrestricted
    everything = setuser(users, "all", "on", "+@all", "~*", "&*")
    assert everything.unrestricted
    assert not setuser(users, "nokeys", "+@all", "&*").unrestricted


@pytest.mark.parametrize("rule, message", [
    ("bogus", "Syntax error"),
    ("+nosuch", "Unknown command or category name in ACL"),
    ("+@nosuch", "Unknown command or category name in ACL"),
    ("+valq|nosuch", "Unknown command or category name in ACL"),
    ("+ping|x", "Unknown command or category name in ACL"),
    ("#abc", "The password hash must be exactly 64 characters and contain only lowercase "
             "hexadecimal characters"),
    ("#" + "A" * 64, "The password hash must be exactly 64 characters and contain only "
                     "lowercase hexadecimal characters"),
    ("<nopw", "The password you are trying to remove from the user does not exist"),
    ("!" + "0" * 64, "The password you are trying to remove from the user does not exist"),
    ("%X~d", "Syntax error"),
    ("%R", "Syntax error"),
    ("(~x +get)", "Selectors are not supported by valqd"),
])
def test_bad_rules_get_valkeys_errors_and_change_nothing(users, rule, message):
    before = setuser(users, "u", "on", ">pw", "~jobs:*", "+valq|push").describe()
    with pytest.raises(Exception) as caught:
        setuser(users, "u", "off", "resetkeys", rule)
    assert str(caught.value) == f"Error in ACL SETUSER modifier '{rule}': {message}"
    assert users.get(b"u").describe() == before


def test_patterns_after_a_star_are_refused(users):
    for first, then, what in (("allkeys", "%R~y", "allkeys"), ("~*", "~x", "allkeys"),
                              ("allchannels", "&y", "allchannels"), ("&*", "&y", "allchannels")):
        with pytest.raises(Exception) as caught:
            setuser(users, "u", first, then)
        assert f"(or the '{what}' flag)" in str(caught.value)


def test_key_patterns_merge_and_grant_read_or_write(users):
    user = setuser(users, "u", "%R~a", "%W~a", "%W~b", "%R~c*", "~d\\*")
    assert user.describe_keys() == b"~a %W~b %R~c* ~d\\*"
    assert user.may_access(b"a", 3) and user.may_access(b"b", 2)
    assert not user.may_access(b"b", 1) and not user.may_access(b"b", 3)
    assert user.may_access(b"cat", 1) and not user.may_access(b"cat", 2)
    assert user.may_access(b"d*", 3) and not user.may_access(b"dx", 3)
    assert user.may_access(b"x", 0) is False  # a key no pattern matches, even without access


def test_passwords_nopass_and_reset(users):
    user = setuser(users, "u", "on", ">a", ">b", ">a")
    assert user.passwords == [sha("a").encode(), sha("b").encode()]
    assert users.authenticate(b"u", b"b") is user
    assert users.authenticate(b"u", b"c") is None
    setuser(users, "u", "<a", f"#{sha('c')}")
    assert users.authenticate(b"u", b"a") is None and users.authenticate(b"u", b"c") is user
    setuser(users, "u", "nopass")
    assert user.flags() == [b"on", b"nopass"] and user.passwords == []
    assert users.authenticate(b"u", b"anything") is user
    setuser(users, "u", "off")
    assert users.authenticate(b"u", b"anything") is None
    setuser(users, "u", "on", "reset")
    assert user.describe() == b"user u off resetchannels -@all"
    assert users.authenticate(b"nobody", b"") is None


def test_usernames_with_spaces_are_refused(users):
    for name in ("bad name", "nul\0", ""):
        with pytest.raises(Exception, match="Usernames can't contain spaces or null"):
            setuser(users, name)


def test_requirepass_is_the_default_users_password(users):
    users.set_default_password("s3cret")
    assert users.default.describe() == f"user default on #{sha('s3cret')} ~* &* +@all".encode()
    assert users.authenticate(b"default", b"s3cret") is users.default
    users.set_default_password("")
    assert users.default.describe() == DEFAULT_LINE


# -- the command table: categories and key specs ---------------------------------------------

def test_every_command_has_categories_from_the_table():
    all_specs = specs()
    for name, spec in all_specs.items():
        assert spec.categories, name
        assert ("fast" in spec.categories) != ("slow" in spec.categories), name
    expect = {
        "valq|push": ("write", "fast", "valq"), "valq|pop": ("write", "fast", "blocking", "valq"),
        "valq|stats": ("read", "fast", "valq"), "valq|purge": ("write", "slow", "valq"),
        "flushall": ("keyspace", "write", "slow", "dangerous"),
        "keys": ("keyspace", "read", "slow", "dangerous"),
        "config|set": ("admin", "slow", "dangerous"), "shutdown": ("admin", "slow", "dangerous"),
        "client|list": ("admin", "slow", "dangerous", "connection"),
        "ping": ("fast", "connection"), "subscribe": ("pubsub", "slow"),
        "acl|whoami": ("slow",), "acl|setuser": ("admin", "slow", "dangerous"),
    }
    for name, categories in expect.items():
        assert all_specs[name].categories == categories, name


@pytest.mark.parametrize("argv, keys", [
    (["valq", "push", "jobs", "body"], [(b"jobs", 2)]),
    (["valq", "pop", "jobs", "COUNT", "5"], [(b"jobs", 3)]),
    (["valq", "stats", "jobs"], [(b"jobs", 1)]),
    (["valq", "mpop", "2", "a", "b", "COUNT", "3"], [(b"a", 3), (b"b", 3)]),
    (["valq", "mpop", "x", "a"], []),  # the handler refuses it before touching a queue
    (["valq", "redrive", "q", "COUNT", "5", "to", "other"], [(b"q", 2), (b"other", 2)]),
    (["valq", "redrive", "q", "TO", "a", "TO", "b"], [(b"q", 2), (b"a", 2), (b"b", 2)]),
    (["valq", "list"], []),
    (["del", "a", "b"], [(b"a", 2), (b"b", 2)]),
    (["exists", "a", "b"], [(b"a", 0), (b"b", 0)]),
    (["type", "a"], [(b"a", 0)]),
])
def test_every_command_says_which_arguments_are_queues(argv, keys):
    words = [w.encode() for w in argv]
    spec = specs()["|".join(argv[:2])] if argv[0] == "valq" else TABLE[argv[0]]
    assert [(key, key_spec.access) for key_spec in spec.key_specs
            for key in key_spec.find(words)] == keys
    # the permission check sees the same keys: a user allowed none is refused the first
    users = Acl(specs())
    nobody = setuser(users, "u", "+@all")
    assert users.denial(nobody, spec, words) == (("key", keys[0][0]) if keys else None)


def test_every_queue_argument_is_covered_by_a_key_spec():
    for name, spec in specs().items():
        if any(a.type == "key" for a in spec.args):
            assert spec.key_specs, name


# -- the roles over the wire -----------------------------------------------------------------

ROLES = [
    ("producer", "p-pw", ["~jobs:*", "+valq|push", "+valq|mpush", "+ping"]),
    ("worker", "w-pw", ["~jobs:*", "+valq|pop", "+valq|ack", "+valq|extend", "+valq|nack",
                        "+ping"]),
    ("dashboard", "d-pw", ["%R~*", "+@read", "-@dangerous", "+info"]),
]


@pytest.fixture(scope="module")
def server():
    with ThreadedServer(clock=ManualClock()) as srv:
        admin = srv.client()
        for name, password, rules in ROLES:
            admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", *rules)
        admin.execute_command("VALQ", "CREATE", "jobs:email")
        admin.execute_command("VALQ", "CREATE", "billing")
        yield srv


def role(server, name: str, protocol: int = 2) -> valkey.Valkey:
    password = {n: p for n, p, _ in ROLES}[name]
    return server.client(protocol=protocol, username=name, password=password)


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_producer_may_only_push_to_jobs(server, protocol):
    producer = role(server, "producer", protocol)
    assert int(producer.execute_command("VALQ", "PUSH", "jobs:email", "hi")) >= 1
    assert int(producer.execute_command("VALQ", "MPUSH", "jobs:email", "a", "b")[0]) >= 1
    with pytest.raises(NoPermissionError, match=KEY_NOPERM[7:]):
        producer.execute_command("VALQ", "PUSH", "billing", "hi")
    for command, name in ((("VALQ", "POP", "jobs:email"), "valq|pop"),
                          (("VALQ", "PURGE", "jobs:email"), "valq|purge"),
                          (("FLUSHALL",), "flushall"), (("CONFIG", "SET", "maxclients", "1"),
                                                        "config|set"),
                          (("SHUTDOWN",), "shutdown"), (("ACL", "WHOAMI"), "acl|whoami")):
        with pytest.raises(NoPermissionError) as caught:
            producer.execute_command(*command)
        assert str(caught.value) == noperm("producer", name)[7:]


def test_a_worker_may_pop_ack_extend_and_nack(server):
    admin, worker = server.client(), role(server, "worker", 3)
    admin.execute_command("VALQ", "PUSH", "jobs:email", "one")
    admin.execute_command("VALQ", "PUSH", "jobs:email", "two")
    first = worker.execute_command("VALQ", "POP", "jobs:email")
    assert worker.execute_command("VALQ", "EXTEND", "jobs:email", first[b"id"], 60) == b"extend"
    assert worker.execute_command("VALQ", "ACK", "jobs:email", first[b"id"]).startswith(b"ack")
    second = worker.execute_command("VALQ", "POP", "jobs:email")
    worker.execute_command("VALQ", "NACK", "jobs:email", second[b"id"])
    with pytest.raises(NoPermissionError, match="'valq|push' command"):
        worker.execute_command("VALQ", "PUSH", "jobs:email", "x")
    with pytest.raises(NoPermissionError, match="No permissions to access a key"):
        worker.execute_command("VALQ", "POP", "billing")
    admin.execute_command("VALQ", "PURGE", "jobs:email")


def test_a_dashboard_reads_everything_and_changes_nothing(server):
    dashboard = role(server, "dashboard")
    assert b"jobs:email" in dashboard.execute_command("VALQ", "LIST")
    stats = as_map(dashboard.execute_command("VALQ", "STATS", "billing"))
    assert stats[b"ready"] == b"0"
    dashboard.execute_command("VALQ", "PEEK", "jobs:email")
    assert dashboard.execute_command("DBSIZE") >= 2
    assert "connected_clients" in dashboard.info("clients")
    for command, name in ((("VALQ", "POP", "jobs:email"), "valq|pop"),
                          (("VALQ", "PUSH", "jobs:email", "x"), "valq|push"),
                          (("KEYS", "*"), "keys"), (("FLUSHALL",), "flushall")):
        with pytest.raises(NoPermissionError) as caught:
            dashboard.execute_command(*command)
        assert str(caught.value) == noperm("dashboard", name)[7:]


def test_read_and_write_key_permissions_are_separate(server):
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "rw", "on", ">x", "+@valq", "%R~billing",
                          "%W~jobs:*")
    user = server.client(username="rw", password="x")
    assert as_map(user.execute_command("VALQ", "STATS", "billing"))[b"ready"] == b"0"
    with pytest.raises(NoPermissionError):
        user.execute_command("VALQ", "PUSH", "billing", "x")
    user.execute_command("VALQ", "PUSH", "jobs:email", "x")
    with pytest.raises(NoPermissionError):  # POP returns the message: read and write
        user.execute_command("VALQ", "POP", "jobs:email")
    with pytest.raises(NoPermissionError):  # every queue of MPOP is checked
        user.execute_command("VALQ", "MPOP", 2, "jobs:email", "billing")
    with pytest.raises(NoPermissionError):  # and the TO queue of REDRIVE
        user.execute_command("VALQ", "REDRIVE", "jobs:email", "to", "billing")
    admin.execute_command("VALQ", "PURGE", "jobs:email")
    admin.execute_command("ACL", "DELUSER", "rw")


def test_denials_and_failed_logins_go_to_the_acl_log(server):
    admin = server.client()
    admin.execute_command("ACL", "LOG", "RESET")
    producer = role(server, "producer")
    for _ in range(2):
        with pytest.raises(NoPermissionError):
            producer.execute_command("VALQ", "PUSH", "billing", "x")
    with pytest.raises(NoPermissionError):
        producer.execute_command("VALQ", "PURGE", "jobs:email")
    wire = Wire(server.port)
    assert wire.call("AUTH", "producer", "wrong") == Error(WRONGPASS)
    assert wire.call("HELLO", "3", "AUTH", "nobody", "x") == Error(WRONGPASS)
    wire.close()
    entries = [dict(zip(e[::2], e[1::2])) for e in admin.execute_command("ACL", "LOG")]
    # newest first; the valkey client's CLIENT SETINFO on connecting is denied too, as
    # Valkey denies it to a user without +client|setinfo
    assert [(e[b"reason"], e[b"object"], e[b"username"], e[b"count"]) for e in entries] == [
        (b"auth", b"HELLO", b"nobody", 1), (b"auth", b"AUTH", b"producer", 1),
        (b"command", b"valq|purge", b"producer", 1), (b"key", b"billing", b"producer", 2),
        (b"command", b"client|setinfo", b"producer", 2)]
    newest = entries[0]
    assert list(newest) == [b"count", b"reason", b"context", b"object", b"username",
                            b"age-seconds", b"client-info", b"entry-id", b"timestamp-created",
                            b"timestamp-last-updated"]
    assert newest[b"context"] == b"toplevel"
    assert b"user=" in newest[b"client-info"]
    assert b" cmd=valq|purge user=producer " in entries[2][b"client-info"]
    assert len(admin.execute_command("ACL", "LOG", 2)) == 2
    assert admin.execute_command("ACL", "LOG", -1) == []
    assert admin.execute_command("ACL", "LOG", "RESET") == b"OK"
    assert admin.execute_command("ACL", "LOG") == []
    with pytest.raises(ResponseError, match="value is not an integer"):
        admin.execute_command("ACL", "LOG", "x")


def test_auth_and_hello_switch_users(server):
    wire = Wire(server.port)
    assert wire.call("ACL", "WHOAMI") == b"default"
    assert wire.call("AUTH", "dashboard", "d-pw") == b"OK"
    assert wire.call("ACL", "WHOAMI") == Error(noperm("dashboard", "acl|whoami"))
    assert wire.call("HELLO", "3", "AUTH", "worker", "w-pw")[b"proto"] == 3
    assert wire.call("PING") == b"PONG"
    assert wire.call("AUTH", "worker", "bad") == Error(WRONGPASS)
    assert wire.call("PING") == b"PONG"  # a failed AUTH keeps the user it had
    assert wire.call("RESET") == b"RESET"
    assert wire.call("ACL", "WHOAMI") == b"default"
    wire.close()


def test_a_user_that_is_off_cannot_log_in(server):
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "sleeper", "off", ">pw", "+@all", "~*")
    with pytest.raises(AuthenticationError):
        server.client(username="sleeper", password="pw").ping()
    admin.execute_command("ACL", "DELUSER", "sleeper")


def test_changed_rules_apply_to_connected_clients(server):
    admin, wire = server.client(), Wire(server.port)
    admin.execute_command("ACL", "SETUSER", "live", "on", ">pw", "+ping")
    assert wire.call("AUTH", "live", "pw") == b"OK"
    assert wire.call("PING") == b"PONG"
    admin.execute_command("ACL", "SETUSER", "live", "-ping")
    assert wire.call("PING") == Error(noperm("live", "ping"))
    admin.execute_command("ACL", "SETUSER", "live", "+@all", "~*", "&*")
    assert wire.call("DBSIZE") >= 0
    client_list = admin.execute_command("CLIENT", "LIST")
    assert b"user=live" in client_list and b"user=default" in client_list
    assert admin.execute_command("CLIENT", "KILL", "USER", "live") == 1
    assert wire.closed_by_server()
    with pytest.raises(ResponseError, match="No such user 'ghost'"):
        admin.execute_command("CLIENT", "KILL", "USER", "ghost")
    admin.execute_command("ACL", "DELUSER", "live")


def test_deleting_a_user_closes_its_connections(server):
    admin, wire = server.client(), Wire(server.port)
    admin.execute_command("ACL", "SETUSER", "gone", "on", "nopass", "+@all", "~*")
    assert wire.call("AUTH", "gone", "x") == b"OK"
    assert admin.execute_command("ACL", "DELUSER", "gone", "never-was") == 1
    assert wire.closed_by_server()
    with pytest.raises(ResponseError, match="The 'default' user cannot be removed"):
        admin.execute_command("ACL", "DELUSER", "default")


def test_channels_are_checked_and_revoking_them_disconnects(server):
    admin, wire = server.client(), Wire(server.port)
    admin.execute_command("ACL", "SETUSER", "listener", "on", ">pw", "+@pubsub",
                          "&valq:jobs:*")
    assert wire.call("AUTH", "listener", "pw") == b"OK"
    assert wire.call("SUBSCRIBE", "valq:billing") == Error(
        "NOPERM No permissions to access a channel")
    assert wire.call("PSUBSCRIBE", "valq:*") == Error("NOPERM No permissions to access a channel")
    assert wire.call("SUBSCRIBE", "valq:jobs:email")[0] == b"subscribe"
    admin.execute_command("ACL", "SETUSER", "listener", "resetchannels")
    assert wire.closed_by_server()
    admin.execute_command("ACL", "DELUSER", "listener")


def test_acl_subcommands_over_the_wire(server):
    admin = server.client(protocol=3)
    assert admin.execute_command("ACL", "WHOAMI") == b"default"
    assert set(admin.execute_command("ACL", "USERS")) >= {b"default", b"producer", b"worker"}
    listing = admin.execute_command("ACL", "LIST")
    assert DEFAULT_LINE in listing
    assert f"user producer on #{sha('p-pw')} ~jobs:* resetchannels -@all +valq|push " \
           f"+valq|mpush +ping".encode() in listing
    user = admin.execute_command("ACL", "GETUSER", "producer")
    assert user[b"flags"] == [b"on"] and user[b"keys"] == b"~jobs:*"
    assert user[b"passwords"] == [sha("p-pw").encode()]
    assert user[b"commands"] == b"-@all +valq|push +valq|mpush +ping"
    assert user[b"channels"] == b"" and user[b"selectors"] == []
    assert admin.execute_command("ACL", "GETUSER", "nobody") is None
    categories = admin.execute_command("ACL", "CAT")
    assert b"dangerous" in categories and b"valq" in categories and b"list" in categories
    assert b"valq|purge" in admin.execute_command("ACL", "CAT", "write")
    assert b"flushall" in admin.execute_command("ACL", "CAT", "dangerous")
    assert admin.execute_command("ACL", "CAT", "list") == []
    assert len(admin.execute_command("ACL", "GENPASS")) == 64
    assert len(admin.execute_command("ACL", "GENPASS", 10)) == 3
    assert admin.execute_command("ACL", "HELP")[0].startswith(b"ACL <subcommand>")
    for command, message in (
            (("ACL", "CAT", "nosuch"), "Unknown category 'nosuch'"),
            (("ACL", "SETUSER", "x", "bogus"),
             "Error in ACL SETUSER modifier 'bogus': Syntax error"),
            (("ACL", "SETUSER", "bad name"), "Usernames can't contain spaces"),
            (("ACL", "NOSUCH"), "unknown subcommand 'NOSUCH'. Try ACL HELP."),
            (("ACL", "WHOAMI", "x"), "wrong number of arguments for 'acl|whoami' command"),
            (("ACL", "GENPASS", 0), "ACL GENPASS argument must be"),
            (("ACL", "DRYRUN", "nobody", "ping"), "User 'nobody' not found"),
            (("ACL", "DRYRUN", "producer", "nosuch"), "Command 'nosuch' not found"),
            (("ACL", "DRYRUN", "producer", "valq", "push"),
             "wrong number of arguments for 'valq|push' command"),
            (("ACL", "SAVE"), "This instance is not configured to use an ACL file"),
            (("ACL", "LOAD"), "This instance is not configured to use an ACL file")):
        with pytest.raises(ResponseError) as caught:
            admin.execute_command(*command)
        assert str(caught.value).startswith(message), command


def test_dryrun_says_what_a_user_could_do(server):
    admin = server.client()
    assert admin.execute_command("ACL", "DRYRUN", "producer", "VALQ", "PUSH", "jobs:a",
                                 "x") == b"OK"
    assert admin.execute_command("ACL", "DRYRUN", "producer", "valq", "push", "billing",
                                 "x") == b"User producer has no permissions to access the " \
                                         b"'billing' key"
    assert admin.execute_command("ACL", "DRYRUN", "producer", "flushall") == \
        b"User producer has no permissions to run the 'flushall' command"


def test_command_info_shows_categories_and_key_specs(server):
    admin = server.client()
    wire = Wire(server.port)
    (push,) = wire.call("COMMAND", "INFO", "valq|push")
    assert push[6] == [b"@write", b"@fast", b"@valq"]
    assert push[3:6] == [2, 2, 1]
    assert push[8][0][:2] == [b"flags", [b"RW", b"insert"]]
    (mpop,) = wire.call("COMMAND", "INFO", "valq|mpop")
    assert b"movablekeys" in mpop[2] and mpop[3:6] == [0, 0, 0]
    docs = wire.call("COMMAND", "DOCS", "valq|redrive")[1]
    other = dict(zip(docs[1::2][docs[0::2].index(b"arguments")][2][::2],
                     docs[1::2][docs[0::2].index(b"arguments")][2][1::2]))
    assert other[b"name"] == b"other" and other[b"key_spec_index"] == 1
    wire.close()
    admin.close()


# -- the default user and requirepass ---------------------------------------------------------

def test_requirepass_and_config_set_keep_working():
    with ThreadedServer(requirepass="first") as srv:
        wire = Wire(srv.port)
        assert wire.call("PING") == Error("NOAUTH Authentication required.")
        assert wire.call("AUTH", "first") == b"OK"
        assert wire.call("CONFIG", "SET", "requirepass", "second") == b"OK"
        assert wire.call("ACL", "LIST") == [
            f"user default on #{sha('second')} ~* &* +@all".encode()]
        assert wire.call("PING") == b"PONG"  # changing the password logs nobody out
        other = Wire(srv.port)
        assert other.call("AUTH", "first") == Error(WRONGPASS)
        assert other.call("AUTH", "default", "second") == b"OK"
        assert wire.call("CONFIG", "SET", "requirepass", "") == b"OK"
        assert Wire(srv.port).call("PING") == b"PONG"
        assert wire.call("ACL", "SETUSER", "default", "resetpass", ">third") == b"OK"
        assert Wire(srv.port).call("PING") == Error("NOAUTH Authentication required.")
        assert srv.server.refusal("10.0.0.1") is None  # protected mode sees the password
        wire.close()
        other.close()


def test_a_restricted_default_user_is_checked_from_the_first_command():
    with ThreadedServer() as srv:
        admin = Wire(srv.port)
        admin.call("ACL", "SETUSER", "root", "on", ">pw", "+@all", "~*", "&*")
        admin.call("ACL", "SETUSER", "default", "-flushall")
        fresh = Wire(srv.port)
        assert fresh.call("FLUSHALL") == Error(noperm("default", "flushall"))
        assert fresh.call("AUTH", "root", "pw") == b"OK"
        assert fresh.call("FLUSHALL") == b"OK"
        admin.close()
        fresh.close()


# -- the dispatcher alone: what an HTTP front end does -------------------------------------------

def test_authenticate_through_the_dispatcher_without_a_socket():
    state = ServerState(Engine(), Config({"appendonly": "no", "requirepass": "pw"}), TABLE,
                        lambda: 1_700_000_000_000)
    dispatcher = Dispatcher(state)
    session = acl.open_session(state, 1, "http", "")
    assert dispatcher.execute(session, [b"VALQ", b"LIST"]).startswith(b"-NOAUTH")
    dispatcher.execute(session, [b"ACL", b"SETUSER", b"x"])  # refused: not authenticated
    assert state.acl.get(b"x") is None
    assert dispatcher.execute(session, [b"AUTH", b"pw"]) == b"+OK\r\n"
    assert dispatcher.execute(session, [b"ACL", b"SETUSER", b"app", b"on", b">k", b"~jobs:*",
                                        b"+valq|push", b"+valq|create"]) == b"+OK\r\n"
    app = acl.open_session(state, 2, "http", "")
    assert dispatcher.execute(app, [b"AUTH", b"app", b"bad"]).startswith(b"-WRONGPASS")
    acl.authenticate(state, app, b"app", b"k")
    assert app.user.name == b"app" and app.authenticated and app.restricted
    assert dispatcher.execute(app, [b"VALQ", b"CREATE", b"jobs:1"]) == b"$14\r\ncreated jobs:1\r\n"
    assert dispatcher.execute(app, [b"VALQ", b"CREATE", b"x"]) == \
        b"-NOPERM No permissions to access a key\r\n"
    assert dispatcher.execute(app, [b"VALQ", b"POP", b"jobs:1"]) == \
        b"-NOPERM User app has no permissions to run the 'valq|pop' command\r\n"
    with pytest.raises(CommandError) as caught:
        acl.authenticate(state, app, b"app", b"nope")
    assert caught.value.code == "WRONGPASS"
    assert app.user.name == b"app"


# -- the ACL file, config-file users and --user ---------------------------------------------------

def test_acl_save_and_load_use_valkeys_file_format(tmp_path):
    path = tmp_path / "users.acl"
    path.write_bytes(b"user default on nopass ~* &* +@all\n")
    with ThreadedServer(aclfile=str(path)) as srv:
        admin = srv.client()
        admin.execute_command("ACL", "SETUSER", "alice", "on", ">pw", "~jobs:*", "+@read",
                              "-valq|peek")
        assert admin.execute_command("ACL", "SAVE") == b"OK"
        assert path.read_bytes() == (
            f"user alice on #{sha('pw')} ~jobs:* resetchannels -@all +@read -valq|peek\n"
            "user default on nopass ~* &* +@all\n").encode()
        alice = Wire(srv.port)
        assert alice.call("AUTH", "alice", "pw") == b"OK"
        bob = Wire(srv.port)
        admin.execute_command("ACL", "SETUSER", "bob", "on", "nopass", "+@all", "~*")
        assert bob.call("AUTH", "bob", "x") == b"OK"
        path.write_bytes(f"user alice on #{sha('pw')} ~* +ping\n"
                         "user carol on >c +@all ~*\n".encode())
        assert admin.execute_command("ACL", "LOAD") == b"OK"
        assert sorted(admin.execute_command("ACL", "USERS")) == [b"alice", b"carol", b"default"]
        assert bob.closed_by_server()  # bob is gone
        assert alice.call("PING") == b"PONG"  # alice stays, under her new rules
        assert alice.call("VALQ", "LIST") == Error(noperm("alice", "valq|list"))
        before = admin.execute_command("ACL", "LIST")
        path.write_bytes(b"user dave on >d +@all\nuser eve bogus\n")
        with pytest.raises(ResponseError) as caught:
            admin.execute_command("ACL", "LOAD")
        assert str(caught.value) == (
            f"{path}:2: Error in applying operation 'bogus': Syntax error. WARNING: ACL "
            "errors detected, no change to the previously active ACL rules was performed")
        path.write_bytes(b"user dave on\nuser dave off\n")
        with pytest.raises(ResponseError, match="Duplicate user 'dave' found"):
            admin.execute_command("ACL", "LOAD")
        path.write_bytes(b"alice on\n")
        with pytest.raises(ResponseError, match="line should start with user keyword"):
            admin.execute_command("ACL", "LOAD")
        assert admin.execute_command("ACL", "LIST") == before
        path.unlink()
        with pytest.raises(ResponseError, match="No such file or directory"):
            admin.execute_command("ACL", "LOAD")
        alice.close()
        bob.close()


def test_acl_save_error_leaves_the_old_file(tmp_path):
    path = tmp_path / "users.acl"
    path.write_bytes(b"user default on nopass ~* &* +@all\n")
    with ThreadedServer(aclfile=str(path)) as srv:
        admin = srv.client()
        admin.execute_command("ACL", "SETUSER", "x")
        (tmp_path / f"users.acl.tmp-{os.getpid()}").mkdir()  # where the new file would go
        with pytest.raises(ResponseError, match="error trying to save the ACLs"):
            admin.execute_command("ACL", "SAVE")
        assert path.read_bytes() == b"user default on nopass ~* &* +@all\n"


def test_an_acl_file_without_default_keeps_requirepass(tmp_path):
    path = tmp_path / "users.acl"
    path.write_bytes(b"user app on >k ~jobs:* +valq|push\n")
    with ThreadedServer(aclfile=str(path), requirepass="admin-pw") as srv:
        wire = Wire(srv.port)
        assert wire.call("PING") == Error("NOAUTH Authentication required.")
        assert wire.call("AUTH", "app", "k") == b"OK"
        assert wire.call("AUTH", "admin-pw") == b"OK"
        wire.close()


def test_a_bad_acl_file_stops_the_server(tmp_path):
    path = tmp_path / "users.acl"
    path.write_bytes(b"user app on +nosuch\n")
    process = ValqdProcess(tmp_path / "data", "--aclfile", str(path), "--appendonly", "no")
    with pytest.raises(RuntimeError, match="did not start"):
        process.start(timeout=5)
    assert f"{path}:1: Error in applying operation '+nosuch': Unknown command" in process.log()
    missing = ValqdProcess(tmp_path / "data2", "--aclfile", str(tmp_path / "none.acl"),
                           "--appendonly", "no")
    with pytest.raises(RuntimeError, match="did not start"):
        missing.start(timeout=5)
    assert "No such file or directory" in missing.log()


def test_users_from_the_config_file_and_flags(tmp_path):
    conf = tmp_path / "valqd.conf"
    conf.write_text('port 0\nappendonly no\nuser app on >k ~jobs:* +valq|push\n')
    process = ValqdProcess(tmp_path / "data", "--config", str(conf), "--user",
                           "ops on >o +@all ~* &*")
    process.start()
    try:
        app = process.client(username="app", password="k")
        with pytest.raises(NoPermissionError):
            app.execute_command("VALQ", "CREATE", "jobs:x")
        ops = process.client(username="ops", password="o")
        assert ops.execute_command("ACL", "WHOAMI") == b"ops"
        assert sorted(ops.execute_command("ACL", "USERS")) == [b"app", b"default", b"ops"]
    finally:
        process.stop()
    both = ValqdProcess(tmp_path / "both", "--config", str(conf), "--aclfile", "x.acl")
    with pytest.raises(RuntimeError, match="users in the config file and an ACL file"):
        both.start(timeout=5)


# -- transactions: checked when queued and again at EXEC ------------------------------------------

def test_acl_in_a_transaction(server):
    admin, wire = server.client(), Wire(server.port)
    admin.execute_command("ACL", "SETUSER", "tx", "on", ">pw", "+@all", "-flushall", "~jobs:*")
    assert wire.call("AUTH", "tx", "pw") == b"OK"
    assert wire.call("MULTI") == b"OK"
    assert wire.call("FLUSHALL") == Error(noperm("tx", "flushall"))
    assert wire.call("VALQ", "PUSH", "billing", "x") == Error(KEY_NOPERM)
    assert wire.call("EXEC").startswith("EXECABORT")
    admin.execute_command("ACL", "LOG", "RESET")
    assert wire.call("MULTI") == b"OK"
    assert wire.call("VALQ", "STATS", "jobs:email") == b"QUEUED"
    assert wire.call("VALQ", "PEEK", "jobs:email") == b"QUEUED"
    assert wire.call("PING") == b"QUEUED"
    admin.execute_command("ACL", "SETUSER", "tx", "-valq|peek", "resetkeys", "~other")
    reason = ("NOPERM ACLs rules changed between the moment the transaction was accumulated "
              "and the EXEC call. This command is no longer allowed for the following reason: ")
    replies = wire.call("EXEC")
    assert [str(r) for r in replies[:2]] == [
        reason + "no permission to touch the specified keys",
        reason + "no permission to execute the command or subcommand"]
    assert replies[2] == b"PONG"
    entries = [dict(zip(e[::2], e[1::2])) for e in admin.execute_command("ACL", "LOG")]
    assert [(e[b"reason"], e[b"context"], e[b"object"]) for e in entries] == [
        (b"command", b"multi", b"valq|peek"), (b"key", b"multi", b"jobs:email")]
    admin.execute_command("ACL", "DELUSER", "tx")
    wire.close()


# -- the HTTP API authenticates with the same users ------------------------------------------------

def test_http_requests_run_as_the_acl_user_they_name(tmp_path):
    from http_support import Api, http_valqd
    process, port = http_valqd(tmp_path, "--requirepass", "admin-pw", "--user",
                               "producer on >p-pw ~jobs:* +valq|push")
    try:
        admin = Api(port, "admin-pw")
        assert admin.put("/api/queues/jobs:email", {}).status == 201
        assert admin.put("/api/queues/billing", {}).status == 201
        producer = Api(port, ("producer", "p-pw"))
        assert producer.post("/api/queues/jobs:email/messages", {"body": "hi"}).status == 201
        refused = producer.post("/api/queues/billing/messages", {"body": "hi"})
        assert refused.status == 403 and refused.json["error"] == "NOPERM"
        assert producer.post("/api/queues/jobs:email/pop", {}).status == 403
        assert Api(port, ("producer", "wrong")).get("/api/queues").status == 401
        for api in (admin, producer):
            api.close()
    finally:
        process.stop()
