"""Integration tests of the VALQ command family against the real server, RESP2 and RESP3.

The reference is /work/shared/valq-compat.md (syntax, defaults, limits, reply shapes) and,
for the wording of errors, valqd/errors.py and the handlers. `client` runs every test over
RESP2 and RESP3 on a shared, flushed valqd process; anything that needs time to pass uses
`timed_server` (manual clock) with a client of each protocol. Every test runs on the
embedded store and on valqd in front of a real valkey-server (`--store`, see conftest.py).
"""

import os
import re

import pytest
from valkey.exceptions import ResponseError
from support import as_map, raw_reply_line, valq

RUN_ON_STORES = True  # and again with valqd in front of Valkey (conftest.py)

SUBCOMMANDS = ["create", "delete", "update", "list", "info", "purge", "push", "pop", "ack",
               "extend", "nack", "mpush", "mpop", "mack", "get", "peek", "cancel",
               "reschedule", "redrive", "pause", "resume", "stats", "help"]
MODULE_HELP_LINES = [
    b"valq create - create new q",
    b"valq delete - delete q",
    b"valq update - update q",
    b"valq list - list all queues",
    b"valq info - info about q",
    b"valq purge - purge messages in q, dlq or delayed q",
    b"valq push - push message to q, optionally with delay",
    b"valq pop - get message from q",
    b"valq ack - ack message completion",
    b"valq extend - extend message to have more time to complete it",
    b"valq help - display help information",
]
INFO_KEYS = [b"delayed_msgs", b"dlq_msgs", b"id_sequence", b"max_delivery_attempts", b"msgs",
             b"retention_period", b"visibility_timeout"]
MAX_U64 = "18446744073709551615"
NOT_INT = "value is not an integer or out of range"
BAD_ID = "message id must be a positive integer"
BAD_DELAY = "delay must be an integer between 0 and 18446744073709551615"
BAD_PURGE = "purge type must be one of main, dlq, delayed"
VT_RANGE = "visibility_timeout must be between 1 and 43200"
MDA_RANGE = "max_delivery_attempts must be between 1 and 20"
RP_RANGE = "retention_period must be between 60 and 604800"
SECONDS_RANGE = "seconds must be between 0 and 43200"
# Strings that are not integers in Valkey's strict sense (string2ll).
NON_INTEGERS = ["abc", "1.5", " 1", "1 ", "+1", "01", "", "-0", "1e3", "0x10", "١"]


# -- helpers ---------------------------------------------------------------------------------

def pop(c, name="q"):
    """POP as (id, body), or None when the reply is the empty bulk string."""
    reply = valq(c, "POP", name)
    if reply == b"":
        return None
    m = as_map(reply, [b"body", b"id"])
    assert isinstance(m[b"body"], bytes) and isinstance(m[b"id"], bytes)
    return int(m[b"id"]), m[b"body"]


def info(c, name="q") -> dict:
    m = as_map(valq(c, "INFO", name), INFO_KEYS)
    for value in m.values():
        assert isinstance(value, bytes) and re.fullmatch(rb"0|[1-9][0-9]*", value), m
    return {k.decode(): int(v) for k, v in m.items()}


def assert_error(c, args, code, message):
    """`args` fails with exactly `-<code> <message>`, and the connection is still usable.

    valkey-py strips the `ERR ` prefix from the exception text and keeps other codes, so the
    code is also checked on the wire with a raw socket."""
    with pytest.raises(ResponseError) as excinfo:
        c.execute_command(*args)
    assert type(excinfo.value) is ResponseError
    expected = message if code == "ERR" else f"{code} {message}"
    assert str(excinfo.value) == expected
    assert raw_reply_line(c, args) == f"-{code} {message}\r\n".encode()
    assert c.execute_command("PING") in (True, b"PONG")
    assert c.execute_command("ECHO", "still-here") == b"still-here"


def valq_error(c, args, code, message):
    assert_error(c, ("VALQ", *args), code, message)


# -- VALQ, VALQ HELP, unknown subcommands ----------------------------------------------------

def test_help_without_subcommand(client):
    assert valq(client) == valq(client, "HELP")


def test_help_lines(client):
    lines = valq(client, "HELP")
    # the module's eleven lines, in the module's order, with valqd's additions before HELP
    assert [line for line in lines if line in MODULE_HELP_LINES] == MODULE_HELP_LINES
    assert lines[-1] == b"valq help - display help information"
    assert valq(client, "help") == lines
    assert valq(client, "HeLp") == lines
    subs = []
    for line in lines:
        match = re.fullmatch(rb"valq ([a-z]+) - (.+)", line)
        assert match, line
        subs.append(match.group(1).decode())
    assert sorted(subs) == sorted(SUBCOMMANDS)


@pytest.mark.parametrize("sub", ["x", "nosuch", "PUSHX", "créer"])
def test_unknown_subcommand(client, sub):
    valq_error(client, (sub,), "ERR", f"unknown subcommand '{sub}'. Try VALQ HELP.")
    valq_error(client, (sub, "q", "body"), "ERR", f"unknown subcommand '{sub}'. Try VALQ HELP.")


# -- arity -----------------------------------------------------------------------------------

ARITY_CASES = [
    ("create",), ("CREATE",),
    ("delete",), ("delete", "q", "x"),
    ("update",), ("update", "q"), ("update", "q", "1", "2"), ("update", "q", "1", "2", "3", "4"),
    ("list", "x"),
    ("info",), ("info", "q", "x"),
    ("purge",),
    ("push",), ("push", "q"),
    ("pop",),
    ("ack",), ("ack", "q"),
    ("extend",), ("extend", "q"), ("extend", "q", "1"),
    ("help", "x"),
]


@pytest.mark.parametrize("args", ARITY_CASES, ids=" ".join)
def test_wrong_arity(client, args):
    valq(client, "CREATE", "q")
    name = args[0].lower()
    for variant in (args, (args[0].upper(), *args[1:]), (args[0].capitalize(), *args[1:])):
        valq_error(client, variant, "ERR", f"wrong number of arguments for 'valq|{name}' command")
    # nothing changed
    assert info(client)["id_sequence"] == 0
    assert valq(client, "LIST") == [b"q"]


@pytest.mark.parametrize("args", [
    ("CREATE", "q2", "1", "2", "60", "4"),
    ("PUSH", "q", "body", "1", "2"),
    ("PURGE", "q", "main", "x"),
    ("PURGE", "q", "dlq", "dlq"),
    ("POP", "q", "x"),
    ("ACK", "q", "1", "2"),
    ("EXTEND", "q", "1", "2", "3"),
], ids=" ".join)
def test_too_many_arguments_is_syntax_error(client, args):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "m")
    valq_error(client, args, "ERR", "syntax error")
    assert valq(client, "LIST") == [b"q"]
    assert info(client)["msgs"] == 1
    assert info(client)["id_sequence"] == 1


def test_subcommands_are_case_insensitive(client):
    assert valq(client, "create", "q") == b"created q"
    assert valq(client, "Push", "q", "m") == b"1"
    assert valq(client, "pUsH", "q", "n", "0") == b"2"
    assert as_map(valq(client, "pop", "q"), [b"body", b"id"]) == {b"body": b"m", b"id": b"1"}
    assert valq(client, "eXtEnD", "q", "1", "5") == b"extend"
    assert valq(client, "ack", "q", "1") == b"ack 1"
    assert valq(client, "list") == [b"q"]
    assert info(client) == info(client, "q")
    assert as_map(valq(client, "Info", "q"), INFO_KEYS)[b"msgs"] == b"1"
    assert valq(client, "update", "q", "1", "2", "60") == b"updated q"
    assert valq(client, "purge", "q", "MAIN") == 1
    assert valq(client, "delete", "q") == b"deleted q"


# -- CREATE ----------------------------------------------------------------------------------

def test_create_defaults(client):
    assert valq(client, "CREATE", "q") == b"created q"
    assert info(client) == {"delayed_msgs": 0, "dlq_msgs": 0, "id_sequence": 0,
                            "max_delivery_attempts": 5, "msgs": 0, "retention_period": 86400,
                            "visibility_timeout": 30}


@pytest.mark.parametrize("values, expected", [
    ((), (30, 5, 86400)),
    (("10",), (10, 5, 86400)),
    (("10", "3"), (10, 3, 86400)),
    (("10", "3", "120"), (10, 3, 120)),
    (("1", "1", "60"), (1, 1, 60)),
    (("43200", "20", "604800"), (43200, 20, 604800)),
])
def test_create_optional_positionals(client, values, expected):
    assert valq(client, "CREATE", "q", *values) == b"created q"
    got = info(client)
    assert (got["visibility_timeout"], got["max_delivery_attempts"],
            got["retention_period"]) == expected


@pytest.mark.parametrize("values, message", [
    (("0",), VT_RANGE), (("43201",), VT_RANGE), (("-1",), VT_RANGE),
    (("30", "0"), MDA_RANGE), (("30", "21"), MDA_RANGE), (("30", "-5"), MDA_RANGE),
    (("30", "5", "59"), RP_RANGE), (("30", "5", "604801"), RP_RANGE),
    (("30", "5", "0"), RP_RANGE),
])
def test_create_out_of_range(client, values, message):
    valq_error(client, ("CREATE", "q", *values), "ERR", message)
    assert valq(client, "LIST") == []
    assert client.exists("q") == 0


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("bad", NON_INTEGERS + ["99999999999999999999"])
def test_create_non_integer(client, position, bad):
    values = ["30", "5", "86400"]
    values[position] = bad
    valq_error(client, ("CREATE", "q", *values[:position + 1]), "ERR", NOT_INT)
    assert valq(client, "LIST") == []


def test_create_existing_is_busyqueue(client):
    assert valq(client, "CREATE", "q", "10", "3", "120") == b"created q"
    valq(client, "PUSH", "q", "m")
    valq_error(client, ("CREATE", "q"), "BUSYQUEUE", "queue 'q' already exists")
    valq_error(client, ("CREATE", "q", "20", "4", "600"), "BUSYQUEUE", "queue 'q' already exists")
    got = info(client)
    assert (got["visibility_timeout"], got["max_delivery_attempts"],
            got["retention_period"], got["msgs"], got["id_sequence"]) == (10, 3, 120, 1, 1)


def test_create_range_checked_before_existence(client):
    valq(client, "CREATE", "q")
    valq_error(client, ("CREATE", "q", "0"), "ERR", VT_RANGE)


def test_create_binary_name(client):
    name = b"\x00q\xff\r\n "
    assert valq(client, "CREATE", name) == b"created " + name
    assert valq(client, "LIST") == [name]
    with pytest.raises(ResponseError, match="^BUSYQUEUE queue '"):
        valq(client, "CREATE", name)


@pytest.mark.embedded_only("Valkey ends an error reply at a NUL byte (a C string), so a "
                           "store's error names such a queue only up to it")
def test_an_error_names_a_binary_queue_as_it_is(client):
    name = b"\x00q\xff\r\n "
    valq(client, "CREATE", name)
    valq_error(client, ("CREATE", name), "BUSYQUEUE", "queue '\x00q\\xff   ' already exists")


# -- DELETE ----------------------------------------------------------------------------------

def test_delete(client):
    valq(client, "CREATE", "q", "10")
    valq(client, "CREATE", "other")
    for body in ("a", "b", "c"):
        valq(client, "PUSH", "q", body)
    valq(client, "PUSH", "q", "later", "100")
    assert pop(client) == (1, b"a")
    assert valq(client, "DELETE", "q") == b"deleted q"
    assert valq(client, "LIST") == [b"other"]
    valq_error(client, ("INFO", "q"), "NOQUEUE", "no such queue 'q'")
    valq_error(client, ("POP", "q"), "NOQUEUE", "no such queue 'q'")
    valq_error(client, ("ACK", "q", "2"), "NOQUEUE", "no such queue 'q'")
    # a new queue of the same name starts empty, with default settings and ids from 1
    valq(client, "CREATE", "q")
    assert info(client) == {"delayed_msgs": 0, "dlq_msgs": 0, "id_sequence": 0,
                            "max_delivery_attempts": 5, "msgs": 0, "retention_period": 86400,
                            "visibility_timeout": 30}
    assert pop(client) is None
    assert valq(client, "PUSH", "q", "new") == b"1"
    assert pop(client) == (1, b"new")


def test_delete_missing_is_not_an_error(client):
    """As in the module (deleting a missing key is not an error): `deleted <name>`, and
    nothing else changes."""
    valq(client, "CREATE", "other")
    assert valq(client, "DELETE", "nope") == b"deleted nope"
    valq(client, "CREATE", "q")
    assert valq(client, "DELETE", "q") == b"deleted q"
    assert valq(client, "DELETE", "q") == b"deleted q"
    assert valq(client, "DELETE", b"\xfe\x00") == b"deleted \xfe\x00"
    assert valq(client, "LIST") == [b"other"]
    assert client.dbsize() == 1


# -- UPDATE ----------------------------------------------------------------------------------

def test_update(client):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "m")
    assert valq(client, "UPDATE", "q", "60", "7", "3600") == b"updated q"
    got = info(client)
    assert (got["visibility_timeout"], got["max_delivery_attempts"],
            got["retention_period"], got["msgs"], got["id_sequence"]) == (60, 7, 3600, 1, 1)
    assert valq(client, "UPDATE", "q", "1", "1", "60") == b"updated q"
    assert valq(client, "UPDATE", "q", "43200", "20", "604800") == b"updated q"
    got = info(client)
    assert (got["visibility_timeout"], got["max_delivery_attempts"],
            got["retention_period"]) == (43200, 20, 604800)
    assert pop(client) == (1, b"m")


def test_update_replies_the_literal_q_as_the_module(client):
    """The module's update.rs replies `updated q` whatever the queue is called."""
    valq(client, "CREATE", "jobs")
    assert valq(client, "UPDATE", "jobs", "60", "7", "3600") == b"updated q"
    assert valq(client, "UPDATE", "jobs", "VISIBILITY", "61") == b"updated q"
    assert info(client, "jobs")["visibility_timeout"] == 61


@pytest.mark.parametrize("values, message", [
    (("0", "5", "60"), VT_RANGE), (("43201", "5", "60"), VT_RANGE),
    (("30", "0", "60"), MDA_RANGE), (("30", "21", "60"), MDA_RANGE),
    (("30", "5", "59"), RP_RANGE), (("30", "5", "604801"), RP_RANGE),
    (("x", "5", "60"), NOT_INT), (("30", "1.5", "60"), NOT_INT), (("30", "5", "+60"), NOT_INT),
    (("30", "5", "060"), NOT_INT), (("30", "5", ""), NOT_INT),
])
def test_update_bad_values(client, values, message):
    valq(client, "CREATE", "q", "10", "3", "120")
    valq_error(client, ("UPDATE", "q", *values), "ERR", message)
    got = info(client)
    assert (got["visibility_timeout"], got["max_delivery_attempts"],
            got["retention_period"]) == (10, 3, 120)


def test_update_missing_queue(client):
    valq_error(client, ("UPDATE", "nope", "30", "5", "60"), "NOQUEUE", "no such queue 'nope'")
    assert valq(client, "LIST") == []


def test_update_changes_visibility_of_next_pop(timed_server, tc):
    valq(tc, "CREATE", "q", "100")
    valq(tc, "PUSH", "q", "m")
    valq(tc, "UPDATE", "q", "5", "5", "60")
    assert pop(tc) == (1, b"m")
    timed_server.advance(4.999)
    assert pop(tc) is None
    timed_server.advance(0.001)
    assert pop(tc) == (1, b"m")


# -- LIST ------------------------------------------------------------------------------------

def test_list_empty(client):
    assert valq(client, "LIST") == []


def test_list_sorted_binary(client):
    names = [b"b", b"a", b"\xff", b"\x00", b"A", b"aa", b"a\x00", b"q\r\nx", b"10", b"9"]
    for name in names:
        assert valq(client, "CREATE", name) == b"created " + name
    assert valq(client, "LIST") == sorted(names)
    valq(client, "DELETE", b"aa")
    assert valq(client, "LIST") == sorted(n for n in names if n != b"aa")


# -- INFO ------------------------------------------------------------------------------------

def test_info_shape(client):
    valq(client, "CREATE", "q")
    reply = valq(client, "INFO", "q")
    if client.connection_pool.connection_kwargs.get("protocol") == 3:
        assert isinstance(reply, dict)
    else:
        assert isinstance(reply, list) and len(reply) == 14
    m = as_map(reply, INFO_KEYS)
    assert len(m) == 7
    assert all(isinstance(v, bytes) for v in m.values())
    assert m == {b"delayed_msgs": b"0", b"dlq_msgs": b"0", b"id_sequence": b"0",
                 b"max_delivery_attempts": b"5", b"msgs": b"0", b"retention_period": b"86400",
                 b"visibility_timeout": b"30"}


def test_info_counts(client):
    valq(client, "CREATE", "q")
    for i in range(4):
        valq(client, "PUSH", "q", f"m{i}")
    valq(client, "PUSH", "q", "d1", "100")
    valq(client, "PUSH", "q", "d2", MAX_U64)
    assert pop(client) == (1, b"m0")
    assert pop(client) == (2, b"m1")
    got = info(client)
    # msgs = 2 visible + 2 in flight; the delayed ones are counted apart
    assert (got["msgs"], got["delayed_msgs"], got["dlq_msgs"], got["id_sequence"]) == (4, 2, 0, 6)
    valq(client, "ACK", "q", "1")
    valq(client, "ACK", "q", "3")
    got = info(client)
    assert (got["msgs"], got["delayed_msgs"], got["id_sequence"]) == (2, 2, 6)


def test_info_missing_queue(client):
    valq_error(client, ("INFO", "nope"), "NOQUEUE", "no such queue 'nope'")
    valq_error(client, ("INFO", b"a\r\nb"), "NOQUEUE", "no such queue 'a  b'")


def test_info_counts_dlq_separately(timed_server, tc):
    valq(tc, "CREATE", "q", "10", "1", "60")
    valq(tc, "PUSH", "q", "dead")
    valq(tc, "PUSH", "q", "alive")
    valq(tc, "PUSH", "q", "later", "1000")
    assert pop(tc) == (1, b"dead")
    timed_server.advance(10)
    got = info(tc)
    assert (got["msgs"], got["delayed_msgs"], got["dlq_msgs"], got["id_sequence"]) == (1, 1, 1, 3)


# -- PURGE -----------------------------------------------------------------------------------

def test_purge_default_main(client):
    valq(client, "CREATE", "q")
    for body in ("a", "b", "c"):
        valq(client, "PUSH", "q", body)
    valq(client, "PUSH", "q", "later", "100")
    assert pop(client) == (1, b"a")  # in flight
    assert valq(client, "PURGE", "q") == 3
    got = info(client)
    assert (got["msgs"], got["delayed_msgs"], got["id_sequence"]) == (0, 1, 4)
    assert pop(client) is None
    valq_error(client, ("ACK", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")
    valq_error(client, ("ACK", "q", "2"), "NOMSG", "no message with id 2 in queue 'q'")
    assert valq(client, "PURGE", "q") == 0
    # ids are never reused
    assert valq(client, "PUSH", "q", "d") == b"5"
    assert valq(client, "PURGE", "q", "main") == 1
    assert valq(client, "PURGE", "q", "MAIN") == 0


def test_purge_delayed(client):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "now")
    valq(client, "PUSH", "q", "d1", "100")
    valq(client, "PUSH", "q", "d2", "200")
    assert valq(client, "PURGE", "q", "delayed") == 2
    got = info(client)
    assert (got["msgs"], got["delayed_msgs"]) == (1, 0)
    valq_error(client, ("ACK", "q", "2"), "NOMSG", "no message with id 2 in queue 'q'")
    assert valq(client, "PURGE", "q", "Delayed") == 0
    assert pop(client) == (1, b"now")


def test_purge_dlq(timed_server, tc):
    valq(tc, "CREATE", "q", "10", "1", "600")
    for body in ("a", "b", "c"):
        valq(tc, "PUSH", "q", body)
    assert pop(tc) == (1, b"a")
    assert pop(tc) == (2, b"b")
    timed_server.advance(10)
    assert info(tc)["dlq_msgs"] == 2
    assert valq(tc, "PURGE", "q", "dlq") == 2
    got = info(tc)
    assert (got["msgs"], got["dlq_msgs"]) == (1, 0)
    assert valq(tc, "PURGE", "q", "DLQ") == 0
    assert pop(tc) == (3, b"c")


@pytest.mark.parametrize("word", ["all", "mains", "", "dead", "MAIN "])
def test_purge_unknown_part(client, word):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "m")
    valq_error(client, ("PURGE", "q", word), "ERR", BAD_PURGE)
    assert info(client)["msgs"] == 1


def test_purge_missing_queue(client):
    valq_error(client, ("PURGE", "nope"), "NOQUEUE", "no such queue 'nope'")
    valq_error(client, ("PURGE", "nope", "dlq"), "NOQUEUE", "no such queue 'nope'")


# -- PUSH ------------------------------------------------------------------------------------

def test_push_ids(client):
    valq(client, "CREATE", "q")
    valq(client, "CREATE", "other")
    for i in range(1, 12):
        reply = valq(client, "PUSH", "q", f"m{i}")
        assert reply == str(i).encode()
        assert isinstance(reply, bytes)
    assert valq(client, "PUSH", "other", "x") == b"1"  # per-queue counter
    assert info(client)["id_sequence"] == 11


def test_push_delay_zero_is_visible(client):
    valq(client, "CREATE", "q")
    assert valq(client, "PUSH", "q", "m", "0") == b"1"
    got = info(client)
    assert (got["msgs"], got["delayed_msgs"]) == (1, 0)
    assert pop(client) == (1, b"m")


def test_push_delay_hides_message(client):
    valq(client, "CREATE", "q")
    assert valq(client, "PUSH", "q", "later", "100") == b"1"
    got = info(client)
    assert (got["msgs"], got["delayed_msgs"]) == (0, 1)
    assert pop(client) is None
    valq_error(client, ("ACK", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")


def test_push_max_delay(client):
    valq(client, "CREATE", "q")
    assert valq(client, "PUSH", "q", "forever", MAX_U64) == b"1"
    assert valq(client, "PUSH", "q", "almost", "18446744073709551614") == b"2"
    got = info(client)
    assert (got["msgs"], got["delayed_msgs"]) == (0, 2)
    assert pop(client) is None


def test_push_max_delay_saturates(timed_server, tc):
    valq(tc, "CREATE", "q")
    valq(tc, "PUSH", "q", "forever", MAX_U64)
    timed_server.advance(10 * 365 * 86400)
    assert pop(tc) is None
    assert info(tc)["delayed_msgs"] == 1


@pytest.mark.parametrize("delay", ["18446744073709551616", "99999999999999999999999", "-1",
                                   "1.5", " 1", "+1", "01", "", "abc", "-0", "1s", "1e3"])
def test_push_bad_delay(client, delay):
    valq(client, "CREATE", "q")
    valq_error(client, ("PUSH", "q", "m", delay), "ERR", BAD_DELAY)
    got = info(client)
    assert (got["msgs"], got["delayed_msgs"], got["id_sequence"]) == (0, 0, 0)
    assert valq(client, "PUSH", "q", "m") == b"1"


def test_push_missing_queue(client):
    valq_error(client, ("PUSH", "nope", "m"), "NOQUEUE", "no such queue 'nope'")
    valq_error(client, ("PUSH", "nope", "m", "5"), "NOQUEUE", "no such queue 'nope'")
    assert valq(client, "LIST") == []


@pytest.mark.parametrize("body", [
    b"", b"\x00", b"a\x00b", b"line1\r\nline2", b"\r\n", b"$5\r\nhello\r\n", b"*1\r\n",
    bytes(range(256)), "héllo wörld ✓".encode(), b"\xff\xfe\xfd",
], ids=lambda b: repr(b[:12]))
def test_push_binary_bodies(client, body):
    valq(client, "CREATE", "q")
    assert valq(client, "PUSH", "q", body) == b"1"
    assert valq(client, "PUSH", "q", b"next") == b"2"
    assert pop(client) == (1, body)
    assert pop(client) == (2, b"next")


def test_push_one_mib_body(client):
    valq(client, "CREATE", "q")
    body = os.urandom(1024 * 1024 - 7) + b"\x00\r\n\r\n\x00\x00"
    assert len(body) == 1024 * 1024
    assert valq(client, "PUSH", "q", body) == b"1"
    assert valq(client, "PUSH", "q", b"small") == b"2"
    assert pop(client) == (1, body)
    assert pop(client) == (2, b"small")
    assert valq(client, "ACK", "q", "1") == b"ack 1"


def test_delayed_message_due_goes_to_head(timed_server, tc):
    valq(tc, "CREATE", "q")
    valq(tc, "PUSH", "q", "waiting")
    valq(tc, "PUSH", "q", "delayed", "5")
    timed_server.advance(4.999)
    got = info(tc)
    assert (got["msgs"], got["delayed_msgs"]) == (1, 1)
    timed_server.advance(0.001)
    got = info(tc)
    assert (got["msgs"], got["delayed_msgs"]) == (2, 0)
    assert pop(tc) == (2, b"delayed")
    assert pop(tc) == (1, b"waiting")


def test_delayed_message_becomes_ackable(timed_server, tc):
    valq(tc, "CREATE", "q")
    valq(tc, "PUSH", "q", "d", "3")
    valq_error(tc, ("ACK", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")
    timed_server.advance(3)
    assert valq(tc, "ACK", "q", "1") == b"ack 1"
    assert info(tc)["msgs"] == 0


# -- POP -------------------------------------------------------------------------------------

def test_pop_reply_shape(client):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "hello")
    reply = valq(client, "POP", "q")
    if client.connection_pool.connection_kwargs.get("protocol") == 3:
        assert isinstance(reply, dict)
        assert list(reply.items()) == [(b"body", b"hello"), (b"id", b"1")]
    else:
        assert reply == [b"body", b"hello", b"id", b"1"]


def test_pop_nothing_is_empty_bulk(client):
    valq(client, "CREATE", "q")
    reply = valq(client, "POP", "q")
    assert reply == b"" and reply is not None
    valq(client, "PUSH", "q", "m", "100")
    assert valq(client, "POP", "q") == b""


def test_pop_fifo(client):
    valq(client, "CREATE", "q")
    for i in range(1, 21):
        valq(client, "PUSH", "q", f"m{i}")
    assert [pop(client) for _ in range(20)] == [(i, f"m{i}".encode()) for i in range(1, 21)]
    assert pop(client) is None


def test_pop_lease_makes_invisible(client):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "a")
    valq(client, "PUSH", "q", "b")
    assert pop(client) == (1, b"a")
    assert pop(client) == (2, b"b")
    assert pop(client) is None
    assert info(client)["msgs"] == 2  # still counted while in flight


def test_pop_missing_queue(client):
    valq_error(client, ("POP", "nope"), "NOQUEUE", "no such queue 'nope'")


def test_pop_lease_expiry_keeps_place(timed_server, tc):
    valq(tc, "CREATE", "q", "10")
    for body in ("a", "b", "c"):
        valq(tc, "PUSH", "q", body)
    assert pop(tc) == (1, b"a")
    timed_server.advance(9.999)
    assert pop(tc) == (2, b"b")
    timed_server.advance(0.001)  # a's lease ran out; b's has 0.001 s less to go
    assert pop(tc) == (1, b"a")
    assert pop(tc) == (3, b"c")
    assert pop(tc) is None
    timed_server.advance(9.999)
    assert pop(tc) == (2, b"b")
    assert pop(tc) is None
    got = info(tc)
    assert (got["msgs"], got["dlq_msgs"], got["id_sequence"]) == (3, 0, 3)


def test_pop_goes_to_dlq_after_max_attempts(timed_server, tc):
    valq(tc, "CREATE", "q", "10", "3", "60")
    valq(tc, "PUSH", "q", "poison")
    for attempt in range(3):
        assert pop(tc) == (1, b"poison"), attempt
        assert pop(tc) is None
        timed_server.advance(10)
    got = info(tc)
    assert (got["msgs"], got["dlq_msgs"], got["delayed_msgs"]) == (0, 1, 0)
    assert pop(tc) is None
    valq_error(tc, ("ACK", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")
    valq_error(tc, ("EXTEND", "q", "1", "5"), "NOMSG", "no message with id 1 in queue 'q'")
    # entered the DLQ when its last lease ran out; dropped retention_period later, on time
    timed_server.advance(59.999)
    assert info(tc)["dlq_msgs"] == 1
    timed_server.advance(0.001)
    got = info(tc)
    assert (got["msgs"], got["dlq_msgs"], got["id_sequence"]) == (0, 0, 1)
    assert valq(tc, "PURGE", "q", "dlq") == 0


def test_dlq_moves_exactly_once_and_others_stay(timed_server, tc):
    valq(tc, "CREATE", "q", "5", "1", "60")
    for body in ("a", "b", "c"):
        valq(tc, "PUSH", "q", body)
    assert pop(tc) == (1, b"a")
    assert pop(tc) == (2, b"b")
    assert valq(tc, "ACK", "q", "2") == b"ack 2"
    timed_server.advance(5)
    got = info(tc)
    assert (got["msgs"], got["dlq_msgs"]) == (1, 1)
    assert pop(tc) == (3, b"c")
    timed_server.advance(5)
    got = info(tc)
    assert (got["msgs"], got["dlq_msgs"]) == (0, 2)
    timed_server.advance(55)  # a entered at t=5, c at t=10
    assert info(tc)["dlq_msgs"] == 1
    timed_server.advance(5)
    assert info(tc)["dlq_msgs"] == 0


# -- ACK -------------------------------------------------------------------------------------

def test_ack_after_pop(client):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "a")
    valq(client, "PUSH", "q", "b")
    assert pop(client) == (1, b"a")
    assert valq(client, "ACK", "q", "1") == b"ack 1"
    assert info(client)["msgs"] == 1
    valq_error(client, ("ACK", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")
    assert pop(client) == (2, b"b")


def test_ack_visible_without_pop(client):
    valq(client, "CREATE", "q")
    for body in ("a", "b", "c"):
        valq(client, "PUSH", "q", body)
    assert valq(client, "ACK", "q", "2") == b"ack 2"
    assert pop(client) == (1, b"a")
    assert pop(client) == (3, b"c")
    assert pop(client) is None


def test_ack_delayed_and_unknown(client):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "later", "60")
    valq_error(client, ("ACK", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")
    valq_error(client, ("ACK", "q", "99"), "NOMSG", "no message with id 99 in queue 'q'")
    valq_error(client, ("ACK", "q", MAX_U64), "NOMSG",
               f"no message with id {MAX_U64} in queue 'q'")
    assert info(client)["delayed_msgs"] == 1


def test_ack_dlq_message(timed_server, tc):
    valq(tc, "CREATE", "q", "1", "1", "60")
    valq(tc, "PUSH", "q", "m")
    assert pop(tc) == (1, b"m")
    timed_server.advance(1)
    assert info(tc)["dlq_msgs"] == 1
    valq_error(tc, ("ACK", "q", "1"), "NOMSG", "no message with id 1 in queue 'q'")
    assert info(tc)["dlq_msgs"] == 1


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1.5", "01", "+1", " 1", "", "-0",
                                 "18446744073709551616"])
def test_ack_bad_id(client, bad):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "m")
    valq_error(client, ("ACK", "q", bad), "ERR", BAD_ID)
    assert info(client)["msgs"] == 1


def test_ack_missing_queue(client):
    valq_error(client, ("ACK", "nope", "1"), "NOQUEUE", "no such queue 'nope'")


# -- EXTEND ----------------------------------------------------------------------------------

def test_extend_reply(client):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "m")
    assert pop(client) == (1, b"m")
    assert valq(client, "EXTEND", "q", "1", "43200") == b"extend"
    assert valq(client, "EXTEND", "q", "1", "100") == b"extend"
    assert pop(client) is None
    assert info(client)["msgs"] == 1


def test_extend_sets_deadline_from_now(timed_server, tc):
    valq(tc, "CREATE", "q", "30")
    valq(tc, "PUSH", "q", "m")
    assert pop(tc) == (1, b"m")
    timed_server.advance(20)
    assert valq(tc, "EXTEND", "q", "1", "5") == b"extend"  # deadline t=25, not 35
    timed_server.advance(4.999)
    assert pop(tc) is None
    timed_server.advance(0.001)
    assert pop(tc) == (1, b"m")
    # and it can push the deadline past the visibility timeout
    assert valq(tc, "EXTEND", "q", "1", "100") == b"extend"
    timed_server.advance(99.999)
    assert pop(tc) is None
    timed_server.advance(0.001)
    assert pop(tc) == (1, b"m")


def test_extend_zero_makes_visible_now(timed_server, tc):
    valq(tc, "CREATE", "q", "30")
    valq(tc, "PUSH", "q", "a")
    valq(tc, "PUSH", "q", "b")
    assert pop(tc) == (1, b"a")
    assert valq(tc, "EXTEND", "q", "1", "0") == b"extend"
    assert pop(tc) == (1, b"a")
    assert pop(tc) == (2, b"b")


def test_extend_visible_message(timed_server, tc):
    valq(tc, "CREATE", "q")
    valq(tc, "PUSH", "q", "m")
    assert valq(tc, "EXTEND", "q", "1", "10") == b"extend"
    assert pop(tc) is None
    assert info(tc)["msgs"] == 1
    timed_server.advance(10)
    assert pop(tc) == (1, b"m")


@pytest.mark.parametrize("seconds, message", [
    ("43201", SECONDS_RANGE), ("-1", SECONDS_RANGE), ("99999999", SECONDS_RANGE),
    ("abc", NOT_INT), ("1.5", NOT_INT), ("+1", NOT_INT), ("01", NOT_INT), ("", NOT_INT),
])
def test_extend_bad_seconds(client, seconds, message):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "m")
    assert pop(client) == (1, b"m")
    valq_error(client, ("EXTEND", "q", "1", seconds), "ERR", message)


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1.5", "01", "18446744073709551616"])
def test_extend_bad_id(client, bad):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "m")
    valq_error(client, ("EXTEND", "q", bad, "10"), "ERR", BAD_ID)


def test_extend_missing_message(client):
    valq(client, "CREATE", "q")
    valq(client, "PUSH", "q", "later", "60")
    valq_error(client, ("EXTEND", "q", "1", "10"), "NOMSG", "no message with id 1 in queue 'q'")
    valq_error(client, ("EXTEND", "q", "7", "10"), "NOMSG", "no message with id 7 in queue 'q'")
    valq(client, "PUSH", "q", "m")
    valq(client, "ACK", "q", "2")
    valq_error(client, ("EXTEND", "q", "2", "10"), "NOMSG", "no message with id 2 in queue 'q'")


def test_extend_missing_queue(client):
    valq_error(client, ("EXTEND", "nope", "1", "10"), "NOQUEUE", "no such queue 'nope'")


# -- a program written against the module ----------------------------------------------------

def test_pipeline_push_pop_ack(client):
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("VALQ", "CREATE", "jobs", "60")
    for i in range(3):
        pipe.execute_command("VALQ", "PUSH", "jobs", f"job{i}")
    pipe.execute_command("VALQ", "POP", "jobs")
    pipe.execute_command("VALQ", "POP", "jobs")
    pipe.execute_command("VALQ", "ACK", "jobs", "1")
    pipe.execute_command("VALQ", "ACK", "jobs", "2")
    pipe.execute_command("VALQ", "POP", "jobs")
    pipe.execute_command("VALQ", "POP", "jobs")
    pipe.execute_command("VALQ", "INFO", "jobs")
    results = pipe.execute()
    assert results[:4] == [b"created jobs", b"1", b"2", b"3"]
    assert as_map(results[4], [b"body", b"id"]) == {b"body": b"job0", b"id": b"1"}
    assert as_map(results[5], [b"body", b"id"]) == {b"body": b"job1", b"id": b"2"}
    assert results[6:8] == [b"ack 1", b"ack 2"]
    assert as_map(results[8], [b"body", b"id"]) == {b"body": b"job2", b"id": b"3"}
    assert results[9] == b""
    m = as_map(results[10], INFO_KEYS)
    assert (m[b"msgs"], m[b"id_sequence"], m[b"visibility_timeout"]) == (b"1", b"3", b"60")


def test_pipeline_with_errors_keeps_going(client):
    valq(client, "CREATE", "q")
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("VALQ", "PUSH", "q", "m")
    pipe.execute_command("VALQ", "PUSH", "nope", "m")
    pipe.execute_command("VALQ", "ACK", "q", "9")
    pipe.execute_command("VALQ", "PUSH", "q", "m", "x")
    pipe.execute_command("VALQ", "PUSH")
    pipe.execute_command("VALQ", "POP", "q")
    results = pipe.execute(raise_on_error=False)
    assert results[0] == b"1"
    assert [str(r) for r in results[1:5]] == [
        "NOQUEUE no such queue 'nope'", "NOMSG no message with id 9 in queue 'q'", BAD_DELAY,
        "wrong number of arguments for 'valq|push' command"]
    assert all(isinstance(r, ResponseError) for r in results[1:5])
    assert as_map(results[5], [b"body", b"id"]) == {b"body": b"m", b"id": b"1"}
    assert valq(client, "ACK", "q", "1") == b"ack 1"
