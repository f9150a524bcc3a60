"""valqd's generic commands against a real valkey-server: the same sequences of commands,
pipelined on a fresh connection to each (RESP2, or RESP3 after HELLO 3), must get the same
replies, compared as raw RESP: the type byte of every reply and every element, and every
byte of its content, but for the fields that name the server or the connection (HELLO's
server, version, id and modules; the connection's id wherever CLIENT ID answers it).
Random sequences from a seeded generator over the commands both servers have, plus
hand-written cases.

The commands valqd has that Valkey also has: PING, ECHO, AUTH, HELLO, SELECT, QUIT, RESET,
MULTI, EXEC, DISCARD, WATCH, UNWATCH, CLIENT, COMMAND, INFO, CONFIG, ACL, DBSIZE, KEYS,
SCAN, TYPE, EXISTS, DEL, FLUSHALL, FLUSHDB, SWAPDB, MOVE, SLOWLOG, SUBSCRIBE, PSUBSCRIBE,
UNSUBSCRIBE, PUNSUBSCRIBE, BGREWRITEAOF, SAVE, DEBUG, TIME and SHUTDOWN. Left out on
purpose, because valqd differs by design (README.md) or the reply is not deterministic:
- keys are queues, and these tests create none (every database stays empty on both);
- INFO, CONFIG GET/SET of parameters, COMMAND (but for its errors and a LIST pattern that
  matches only a command both have), the HELP texts of every container and ACL CAT without
  a category: valqd has its own parameters, commands, flags and a `valq` ACL category;
- SAVE, BGREWRITEAOF (valqd's AOF), SHUTDOWN, DEBUG (Valkey refuses it unless
  enable-debug-command is set), TIME, ACL GENPASS, ACL LOG's entries, SLOWLOG GET/LEN (what
  is slow depends on the machine), CLIENT LIST/INFO/KILL (addresses, ages, fields);
- (P)SUBSCRIBE and (P)UNSUBSCRIBE inside MULTI: valqd refuses them (README, Transactions);
- CLIENT REPLY, which valqd does not implement (an unknown subcommand).
"""

import random

import pytest

from support import Wire, encode_command

SEQUENCES = 1200
END = b"end-of-sequence"


# -- replies as raw RESP trees -----------------------------------------------------------

def read_reply(data: bytes, at: int) -> tuple[tuple, int] | None:
    """The reply starting at data[at] as (type byte, content or children) and where the next
    one starts; None when it is not complete yet."""
    end = data.find(b"\r\n", at)
    if end < 0:
        return None
    kind, line = data[at:at + 1], data[at + 1:end]
    at = end + 2
    if kind in b"$=!" and line != b"-1":
        size = int(line)
        if len(data) < at + size + 2:
            return None
        return (kind, data[at:at + size]), at + size + 2
    if kind in b"*~>%|" and line != b"-1":
        children = []
        for _ in range(int(line) * (2 if kind in b"%|" else 1)):
            child = read_reply(data, at)
            if child is None:
                return None
            children.append(child[0])
            at = child[1]
        return (kind, tuple(children)), at
    return (kind, line), at


HELLO_VARIABLE = {b"server", b"version", b"id", b"modules"}
# the first element of a RESP2 pub/sub reply, whose counts are not ids
PUBSUB_KINDS = {((b"$", kind),) for kind in (b"subscribe", b"unsubscribe", b"psubscribe",
                                               b"punsubscribe", b"pong")}


def normalized(reply: tuple, client_id: bytes, top: bool = True) -> tuple:
    """The reply without what names the server or the connection: HELLO's server, version,
    id and modules, and the connection's id as a reply of its own or in EXEC's array."""
    kind, content = reply
    if kind == b":" and content == client_id and top:
        return kind, b"<id>"
    if kind in b"%*" and isinstance(content, tuple) and content[:1] == ((b"$", b"server"),):
        pairs = zip(content[0::2], content[1::2])
        return kind, tuple(item for key, value in pairs if key[1] not in HELLO_VARIABLE
                           for item in (key, value))
    if kind == b"*" and isinstance(content, tuple) and top and \
            content[:1] not in PUBSUB_KINDS:  # EXEC's replies
        return kind, tuple(normalized(child, client_id, True) for child in content)
    return reply


def session_replies(wire: Wire, commands: list[list[bytes]], resp3: bool) -> list:
    """The replies to `commands` on a fresh connection, normalized, up to the END marker
    (RESET, then PING END) or the server's close (QUIT)."""
    client_id = str(wire.call("CLIENT", "ID")).encode()
    if resp3:
        assert isinstance(wire.call("HELLO", "3"), dict)
    wire.send(b"".join(encode_command(argv) for argv in
                       [*commands, [b"RESET"], [b"PING", END]]))
    data, at, replies = b"", 0, []
    while True:
        parsed = read_reply(data, at)
        if parsed is None:
            try:
                chunk = wire.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                replies.append("closed")
                return replies
            data += chunk
            continue
        reply, at = parsed
        if reply == (b"$", END):
            return replies
        replies.append(normalized(reply, client_id))


# -- the commands both servers have, as the generator picks them -------------------------

ARGS = [b"a", b"b", b"x*", b"", b"1", b"0", b"-1", b"abc", b"99999999999999999999"]
CASES: list[tuple[bytes, ...]] = [
    (b"PING",), (b"PING", b"hello"), (b"PING", b"a", b"b"), (b"PING", b""),
    (b"ECHO",), (b"ECHO", b"x"), (b"ECHO", b"x", b"y"), (b"ECHO", b""),
    (b"HELLO",), (b"HELLO", b"2"), (b"HELLO", b"3"), (b"HELLO", b"4"), (b"HELLO", b"abc"),
    (b"HELLO", b"-1"), (b"HELLO", b"3", b"SETNAME", b"conn"), (b"HELLO", b"2", b"SETNAME"),
    (b"HELLO", b"3", b"SETNAME", b"a b"), (b"HELLO", b"2", b"AUTH", b"default", b"pw"),
    (b"HELLO", b"2", b"AUTH", b"nobody", b"pw"), (b"HELLO", b"2", b"AUTH", b"default"),
    (b"HELLO", b"3", b"FOO"), (b"HELLO", b"2", b"SETNAME", b"n", b"FOO", b"x"),
    (b"SELECT", b"0"), (b"SELECT", b"15"), (b"SELECT", b"16"), (b"SELECT", b"-1"),
    (b"SELECT", b"abc"), (b"SELECT", b"+1"), (b"SELECT", b"01"), (b"SELECT", b"1.0"),
    (b"SELECT", b"2147483648"), (b"SELECT", b"99999999999999999999"), (b"SELECT",),
    (b"SELECT", b"1", b"2"),
    (b"CLIENT",), (b"CLIENT", b"FOO"), (b"CLIENT", b"ID"), (b"CLIENT", b"ID", b"x"),
    (b"CLIENT", b"SETNAME", b"conn"), (b"CLIENT", b"SETNAME", b""),
    (b"CLIENT", b"SETNAME", b"a b"), (b"CLIENT", b"SETNAME", b"a\nb"),
    (b"CLIENT", b"SETNAME"), (b"CLIENT", b"SETNAME", b"a", b"b"), (b"CLIENT", b"GETNAME"),
    (b"CLIENT", b"GETNAME", b"x"), (b"CLIENT", b"SETINFO", b"LIB-NAME", b"lib"),
    (b"CLIENT", b"SETINFO", b"lib-ver", b"1.0"), (b"CLIENT", b"SETINFO", b"FOO", b"x"),
    (b"CLIENT", b"SETINFO", b"LIB-NAME", b"a b"), (b"CLIENT", b"SETINFO", b"LIB-VER"),
    (b"CLIENT", b"NO-EVICT", b"ON"), (b"CLIENT", b"NO-EVICT", b"off"),
    (b"CLIENT", b"NO-EVICT", b"x"), (b"CLIENT", b"NO-EVICT"),
    (b"CLIENT", b"NO-TOUCH", b"ON"), (b"CLIENT", b"NO-TOUCH", b"OFF"),
    (b"CLIENT", b"NO-TOUCH", b"x"), (b"CLIENT", b"NO-TOUCH", b"ON", b"x"),
    (b"CLIENT", b"KILL"), (b"CLIENT", b"INFO", b"x"),
    (b"RESET",), (b"RESET", b"x"), (b"QUIT",),
    (b"MULTI",), (b"MULTI", b"x"), (b"EXEC",), (b"EXEC", b"x"), (b"DISCARD",),
    (b"DISCARD", b"x"), (b"WATCH", b"a"), (b"WATCH", b"a", b"b"), (b"WATCH",), (b"UNWATCH",),
    (b"UNWATCH", b"x"),
    (b"AUTH",), (b"AUTH", b"pw"), (b"AUTH", b"default", b"pw"), (b"AUTH", b"nobody", b"pw"),
    (b"AUTH", b"a", b"b", b"c"),
    (b"CONFIG",), (b"CONFIG", b"FOO"), (b"CONFIG", b"GET"), (b"CONFIG", b"SET"),
    (b"CONFIG", b"SET", b"x"), (b"CONFIG", b"SET", b"no-such-parameter", b"1"),
    (b"CONFIG", b"RESETSTAT", b"x"), (b"CONFIG", b"REWRITE", b"x"),
    (b"COMMAND", b"FOO"), (b"COMMAND", b"COUNT", b"x"), (b"COMMAND", b"INFO", b"no-such"),
    (b"COMMAND", b"DOCS", b"no-such"), (b"COMMAND", b"LIST", b"x"),
    (b"COMMAND", b"LIST", b"FILTERBY"), (b"COMMAND", b"LIST", b"FILTERBY", b"FOO", b"x"),
    (b"COMMAND", b"LIST", b"FILTERBY", b"PATTERN", b"pin*"),
    (b"COMMAND", b"LIST", b"FILTERBY", b"PATTERN", b"xyz*"),
    (b"COMMAND", b"LIST", b"FILTERBY", b"ACLCAT", b"nosuch"),
    (b"COMMAND", b"LIST", b"FILTERBY", b"MODULE", b"nosuch"),
    (b"COMMAND", b"LIST", b"FILTERBY", b"PATTERN", b"a", b"b"),
    (b"FOO",), (b"FOO", b"bar", b"baz"),
    (b"DBSIZE",), (b"DBSIZE", b"x"), (b"KEYS", b"*"), (b"KEYS",), (b"EXISTS", b"a", b"b"),
    (b"EXISTS",), (b"TYPE", b"a"), (b"TYPE",), (b"DEL", b"a"), (b"DEL",),
    (b"SCAN", b"0"), (b"SCAN", b"abc"), (b"SCAN", b"-1"), (b"SCAN", b"0", b"MATCH"),
    (b"SCAN", b"0", b"COUNT", b"0"), (b"SCAN", b"0", b"COUNT", b"abc"),
    (b"SCAN", b"0", b"MATCH", b"x*", b"COUNT", b"5", b"TYPE", b"string"),
    (b"SCAN", b"0", b"FOO", b"x"), (b"SCAN", b"0", b"NOVALUES"), (b"SCAN",),
    (b"FLUSHALL",), (b"FLUSHALL", b"ASYNC"), (b"FLUSHALL", b"sync"), (b"FLUSHALL", b"FOO"),
    (b"FLUSHDB",), (b"FLUSHDB", b"SYNC", b"x"), (b"SWAPDB", b"0", b"1"),
    (b"SWAPDB", b"0", b"abc"), (b"SWAPDB", b"0", b"99"), (b"SWAPDB", b"0"),
    (b"MOVE", b"a", b"1"), (b"MOVE", b"a", b"0"), (b"MOVE", b"a", b"abc"),
    (b"MOVE", b"a", b"99"),
    (b"SLOWLOG",), (b"SLOWLOG", b"FOO"), (b"SLOWLOG", b"GET", b"abc"),
    (b"SLOWLOG", b"GET", b"-5"), (b"SLOWLOG", b"GET", b"1", b"2"), (b"SLOWLOG", b"LEN", b"x"),
    (b"SLOWLOG", b"RESET"),
    (b"ACL",), (b"ACL", b"FOO"), (b"ACL", b"WHOAMI"), (b"ACL", b"WHOAMI", b"x"),
    (b"ACL", b"USERS"), (b"ACL", b"LIST"), (b"ACL", b"GETUSER", b"nobody"),
    (b"ACL", b"DELUSER", b"nobody"), (b"ACL", b"CAT", b"foo"), (b"ACL", b"CAT", b"a", b"b"),
    (b"ACL", b"GENPASS", b"abc"), (b"ACL", b"GENPASS", b"0"), (b"ACL", b"LOG", b"x"),
    (b"ACL", b"DRYRUN", b"default", b"ping"), (b"ACL", b"DRYRUN", b"nobody", b"ping"),
    (b"TIME", b"x"), (b"SAVE", b"x"), (b"BGREWRITEAOF", b"x"),
]
PUBSUB = [(b"SUBSCRIBE", b"a"), (b"SUBSCRIBE", b"a", b"b", b"a"), (b"SUBSCRIBE",),
          (b"UNSUBSCRIBE",), (b"UNSUBSCRIBE", b"a"), (b"UNSUBSCRIBE", b"b", b"c"),
          (b"PSUBSCRIBE", b"x*"), (b"PSUBSCRIBE",), (b"PUNSUBSCRIBE",),
          (b"PUNSUBSCRIBE", b"x*", b"y*")]
# weighted: the commands that change what the others answer come up more often
MODES = [(b"MULTI",), (b"EXEC",), (b"DISCARD",), (b"HELLO", b"3"), (b"HELLO", b"2"),
         (b"RESET",)]


def random_case(word: bytes, rnd: random.Random) -> bytes:
    return bytes(c ^ 0x20 if chr(c).isalpha() and rnd.random() < 0.5 else c for c in word)


def random_sequence(rnd: random.Random) -> list[list[bytes]]:
    """Up to 8 commands, command names and subcommands in random case. No (un)subscribing
    inside MULTI (valqd refuses it by design), nothing after QUIT."""
    commands: list[list[bytes]] = []
    in_multi = False
    while len(commands) < rnd.randint(1, 8):
        pool = rnd.choice((CASES, CASES, PUBSUB, MODES))
        argv = list(rnd.choice(pool))
        if in_multi and pool is PUBSUB:
            continue
        name = argv[0].upper()
        if name == b"MULTI" and len(argv) == 1:
            in_multi = True
        elif name == b"EXEC" or name in (b"DISCARD", b"RESET") and len(argv) == 1:
            in_multi = False  # an EXEC refused for its arity ends the transaction too
        argv[0] = random_case(argv[0], rnd)
        if len(argv) > 1 and name in (b"CLIENT", b"CONFIG", b"COMMAND", b"SLOWLOG", b"ACL"):
            argv[1] = random_case(argv[1], rnd)
        commands.append(argv)
        if name == b"QUIT":
            break
    return commands


@pytest.fixture(scope="module")
def both(valqd, valkey_server):
    """Opens a fresh raw connection to each server: (valqd's, Valkey's)."""
    opened: list[Wire] = []

    def open_pair() -> tuple[Wire, Wire]:
        pair = (Wire(valqd.port), valkey_server.wire())
        opened.extend(pair)
        return pair

    yield open_pair
    for wire in opened:
        wire.close()


def assert_same(both, commands: list[list[bytes]], resp3: bool, context=None) -> None:
    ours, theirs = both()
    try:
        assert session_replies(ours, commands, resp3) == \
            session_replies(theirs, commands, resp3), (context, resp3, commands)
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("first", range(0, SEQUENCES, 200))
def test_random_command_sequences_get_valkeys_replies(both, first):
    for seed in range(first, first + 200):
        rnd = random.Random(seed)
        assert_same(both, random_sequence(rnd), rnd.random() < 0.5, seed)


def _argv(line: str) -> list[bytes]:
    return [word.encode() for word in line.split()]


HAND_WRITTEN = [
    # transactions: what runs, what is queued, what aborts
    "MULTI; PING; ECHO a; CLIENT SETNAME x; CLIENT GETNAME; SELECT 1; SELECT 99; EXEC",
    "MULTI; MULTI; PING; EXEC",
    "MULTI; WATCH a; PING; EXEC",
    "MULTI; ECHO; PING; EXEC",
    "MULTI; FOO; EXEC",
    "MULTI; CLIENT FOO; EXEC",
    "MULTI; SAVE; EXEC",
    "MULTI; SHUTDOWN; EXEC",
    "MULTI; PING; EXEC x; EXEC",
    "EXEC x; MULTI; EXEC",
    "MULTI; PING; DISCARD; EXEC",
    "MULTI; EXEC; EXEC; DISCARD",
    "MULTI; RESET; EXEC",
    "MULTI; HELLO 3; CLIENT ID; EXEC",
    "WATCH a b; UNWATCH; MULTI; PING; EXEC",
    "WATCH a; MULTI; DEL a; EXEC",
    "MULTI; QUIT",
    # subscribed mode: what RESP2 allows, and that RESP3 allows everything
    "SUBSCRIBE a; PING; PING x; ECHO x; SELECT 1; CLIENT ID; FOO; SUBSCRIBE b; UNSUBSCRIBE; "
    "PING",
    "PSUBSCRIBE x*; PING; PUNSUBSCRIBE y*; PUNSUBSCRIBE; PING",
    "SUBSCRIBE a b a; PSUBSCRIBE a*; UNSUBSCRIBE b c; PUNSUBSCRIBE; UNSUBSCRIBE; ECHO x",
    "SUBSCRIBE a; MULTI; HELLO 3; PING",
    "SUBSCRIBE a; RESET; PING",
    "SUBSCRIBE a; QUIT",
    "UNSUBSCRIBE; PUNSUBSCRIBE; PING",
    # the connection's settings
    "HELLO 3 SETNAME n; CLIENT GETNAME; HELLO 2; CLIENT SETNAME; CLIENT GETNAME",
    "CLIENT SETNAME n; RESET; CLIENT GETNAME",
    "SELECT 3; SWAPDB 3 4; RESET; DBSIZE",
    "AUTH pw; AUTH default pw; AUTH nobody pw; ACL WHOAMI",
    "client id; Client Id; CLIENT no-evict on; client NO-TOUCH Off",
]


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
@pytest.mark.parametrize("line", HAND_WRITTEN)
def test_hand_written_sequences_get_valkeys_replies(both, line, resp3):
    assert_same(both, [_argv(command) for command in line.split(";")], resp3)
