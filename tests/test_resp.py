"""The RESP codec without sockets: request parsing from one table of cases, reply encoding.

Every parser case runs twice, fed whole and fed one byte at a time (h11's tests/test_io.py):
the same commands, then the same error if any, must come out both ways. Not covered on
purpose: an inline command after a multibulk one in the same read (parser.py's documented
limitation).
"""

from dataclasses import dataclass

import hiredis
import pytest
from hypothesis import given, strategies as st

from valqd.errors import ProtocolError
from valqd.resp import NEED_DATA, RequestParser, encode
from valqd.resp.parser import (INLINE_MAX_SIZE, MAX_DIGITS, Limits, _holds_big_header,
                               _number)


@dataclass(frozen=True)
class Err:
    """The parser raises ProtocolError with exactly this message."""
    message: str


PING = b"*1\r\n$4\r\nPING\r\n"
BINARY = b"\r\n\x00\r\n$1"  # CRLF, NUL and a fake bulk header inside one bulk
BIG = b"b" * (INLINE_MAX_SIZE + 100)  # a bulk is not bound by the inline limit

# (wire bytes, what comes out: commands, then at most one Err)
CASES = [
    # multibulk
    pytest.param(PING, [[b"PING"]], id="multibulk"),
    pytest.param(b"*3\r\n$4\r\nVALQ\r\n$4\r\nPUSH\r\n$1\r\nq\r\n",
                 [[b"VALQ", b"PUSH", b"q"]], id="multibulk-3"),
    pytest.param(PING + b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n" + PING,
                 [[b"PING"], [b"ECHO", b"hi"], [b"PING"]], id="pipelined"),
    pytest.param(b"*2\r\n$4\r\nECHO\r\n$7\r\n" + BINARY + b"\r\n",
                 [[b"ECHO", BINARY]], id="binary-bulk"),
    pytest.param(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", [[b"ECHO", b""]], id="empty-bulk"),
    pytest.param(b"*2\r\n$4\r\nECHO\r\n$%d\r\n%b\r\n" % (len(BIG), BIG), [[b"ECHO", BIG]],
                 id="bulk-over-64k"),
    pytest.param(b"*0\r\n", [], id="zero-skipped"),
    pytest.param(b"*-1\r\n", [], id="null-skipped"),
    pytest.param(b"*0\r\n*-1\r\n" + PING + b"*0\r\n", [[b"PING"]], id="skipped-in-pipeline"),
    # inline
    pytest.param(b"PING\r\n", [[b"PING"]], id="inline-crlf"),
    pytest.param(b"PING\n", [[b"PING"]], id="inline-lf"),
    pytest.param(b"  ECHO \t  hello   world  \r\n", [[b"ECHO", b"hello", b"world"]],
                 id="inline-spaces"),
    pytest.param(b'ECHO "a b" "\\x41\\x4a" "1\\n2" "say \\"hi\\""\r\n',
                 [[b"ECHO", b"a b", b"AJ", b"1\n2", b'say "hi"']], id="inline-double-quotes"),
    pytest.param(b'ECHO "\\r\\t\\b\\a\\\\\\q" "\\xZZ" ""\r\n',
                 [[b"ECHO", b"\r\t\b\a\\q", b"xZZ", b""]], id="inline-escapes"),
    pytest.param(b"ECHO 'it\\'s' 'a\\nb' 'x \"y\"'\r\n",
                 [[b"ECHO", b"it's", b"a\\nb", b'x "y"']], id="inline-single-quotes"),
    pytest.param(b"\r\n\n  \r\nPING\r\n", [[b"PING"]], id="inline-empty-lines-skipped"),
    pytest.param(b"PING\r\nECHO a\r\n", [[b"PING"], [b"ECHO", b"a"]], id="inline-twice"),
    pytest.param(b"PING\r\n" + PING, [[b"PING"], [b"PING"]], id="inline-then-multibulk"),
    pytest.param(b"x" * INLINE_MAX_SIZE, [], id="inline-64k-incomplete"),
    # errors
    pytest.param(b'ECHO "abc\r\n', [Err("unbalanced quotes in request")],
                 id="unbalanced-double"),
    pytest.param(b"ECHO 'abc\r\n", [Err("unbalanced quotes in request")],
                 id="unbalanced-single"),
    # Valkey 9.1: quotes anywhere in an argument, which goes on after the closing quote
    pytest.param(b'ECHO "a"b a"b c"d \'x\'"y" ""z\r\n',
                 [[b"ECHO", b"ab", b"ab cd", b"xy", b"z"]], id="closing-quote-then-text"),
    pytest.param(b'ECHO a\x0bb\x0c \x0b c\r\n', [[b"ECHO", b"a\x0bb\x0c", b"c"]],
                 id="inline-vertical-tab-and-form-feed-inside-an-argument"),
    pytest.param(b'ECHO a\\"b\r\n', [Err("unbalanced quotes in request")],
                 id="backslash-outside-quotes-is-a-byte"),
    pytest.param(b"PING\r\nECHO \"a\r\n", [[b"PING"], Err("unbalanced quotes in request")],
                 id="unbalanced-after-good"),
    pytest.param(b"x" * (INLINE_MAX_SIZE + 1), [Err("too big inline request")],
                 id="inline-too-big"),
    pytest.param(b"*1\r\n:1\r\n", [Err("expected '$', got ':'")], id="integer-item"),
    pytest.param(b"*1\r\n-x\r\n", [Err("expected '$', got '-'")], id="error-item"),
    pytest.param(b"*1\r\n*1\r\n$1\r\na\r\n", [Err("expected '$', got '*'")], id="nested-item"),
    pytest.param(b"*2\r\n$4\r\nECHO\r\n,1.5\r\n", [Err("expected '$', got ','")],
                 id="double-item"),
    pytest.param(b"*1\r\n#t\r\n", [Err("expected '$', got '#'")], id="bool-item"),
    pytest.param(b"*1\r\n%1\r\n$1\r\na\r\n$1\r\nb\r\n", [Err("expected '$', got '%'")],
                 id="map-item"),
    pytest.param(b"*1\r\n+x\r\n", [Err("expected '$', got '+'")], id="simple-string-item"),
    pytest.param(b"*1\r\n=8\r\ntxt:PING\r\n", [Err("expected '$', got '='")],
                 id="verbatim-item"),
    pytest.param(b"*1\r\n(12\r\n", [Err("expected '$', got '('")], id="big-number-item"),
    pytest.param(b"*1\r\n_\r\n", [Err("expected '$', got '_'")], id="null-item"),
    pytest.param(PING + b"*2\r\n$4\r\nECHO\r\n+x\r\n" + PING,
                 [[b"PING"], Err("expected '$', got '+'")], id="simple-string-in-pipeline"),
    # what hiredis alone returns as a request of bulks, and Valkey reads otherwise
    pytest.param(b"*2\r\n$1\r\nxAB+y\r\n", [Err("invalid CRLF in request")],
                 id="simple-string-after-a-bulk-without-crlf"),
    pytest.param(b"*2\r\n$1\r\nxAB$1\r\ny\r\n", [Err("invalid CRLF in request")],
                 id="other-bytes-after-a-bulk"),
    pytest.param(b"*3\r\n$4\r\nECHO\r\n$1\r\nxAB", [Err("invalid CRLF in request")],
                 id="other-bytes-after-a-bulk-of-an-unfinished-request"),
    pytest.param(b"*1\rX\r\n", [Err("invalid CRLF in request")], id="count-line-cr-alone"),
    pytest.param(b"*1\r\n$2\rX\r\n", [Err("invalid CRLF in request")],
                 id="bulk-line-cr-alone"),
    pytest.param(b"*1\r\nZ2\rX", [Err("expected '$', got 'Z'")],
                 id="bulk-line-type-checked-before-its-crlf"),
    pytest.param(PING + b"~1\r\n$4\r\nPING\r\n", [[b"PING"], [b"~1"], [b"$4"], [b"PING"]],
                 id="set-after-multibulk-is-inline"),
    pytest.param(PING + b"|1\r\n$1\r\na\r\n$1\r\nb\r\n" + PING,
                 [[b"PING"], [b"|1"], [b"$1"], [b"a"], [b"$1"], [b"b"], [b"PING"]],
                 id="attribute-after-multibulk-is-inline"),
    pytest.param(b"*1\r\n$-1\r\n", [Err("invalid bulk length")], id="null-bulk-item"),
    pytest.param(b"*1\r\n$-2\r\n", [Err("invalid bulk length")], id="negative-bulk-length"),
    pytest.param(b"*abc\r\n", [Err("invalid multibulk length")], id="bad-multibulk-length"),
    pytest.param(b"*1\r\n$abc\r\n", [Err("invalid bulk length")], id="bad-bulk-length"),
    pytest.param(PING + b"*abc\r\n", [[b"PING"], Err("invalid multibulk length")],
                 id="bad-length-after-good"),
]


def feed_whole(wire: bytes) -> list:
    parser = RequestParser()
    parser.feed(wire)
    return drain(parser)


def feed_bytewise(wire: bytes) -> list:
    """Feed one byte at a time: a command comes out only when its final `\\n` arrives."""
    parser = RequestParser()
    out: list = []
    for i in range(len(wire)):
        byte = wire[i:i + 1]
        parser.feed(byte)
        before = len(out)
        out += drain(parser)
        if len(out) > before and not isinstance(out[-1], Err):
            assert byte == b"\n", f"a command came out at byte {i} ({byte!r}), not at a \\n"
        if out and isinstance(out[-1], Err):
            break
    return out


def drain(parser: RequestParser) -> list:
    """Every complete command, then Err(message) if the parser raised."""
    out: list = []
    try:
        while (command := parser.next_command()) is not NEED_DATA:
            assert type(command) is list and command
            assert all(type(arg) is bytes for arg in command)
            out.append(command)
    except ProtocolError as exc:
        out.append(Err(str(exc)))
    return out


@pytest.mark.parametrize("feed", [feed_whole, feed_bytewise], ids=["whole", "bytewise"])
@pytest.mark.parametrize("wire, expected", CASES)
def test_request_parsing(feed, wire, expected):
    assert feed(wire) == expected


def test_need_data_is_none():
    parser = RequestParser()
    assert NEED_DATA is None
    assert parser.next_command() is NEED_DATA
    parser.feed(b"*1\r\n$4\r\nPI")
    assert parser.next_command() is NEED_DATA
    parser.feed(b"NG\r\n")
    assert parser.next_command() == [b"PING"]
    assert parser.next_command() is NEED_DATA


@pytest.mark.parametrize("tail", [b":1\r\n", b"-x\r\n", b",1.5\r\n", b"#t\r\n",
                                  b"%1\r\n$1\r\na\r\n$1\r\nb\r\n", b">1\r\n$4\r\nPING\r\n",
                                  b"PING\r\n"])
def test_values_pipelined_after_multibulk_never_escape_as_other_errors(tail):
    """Whatever follows a multibulk request in one read, the parser hands out lists of bytes
    or raises ProtocolError; before the fix a `:1` here raised TypeError in the server."""
    parser = RequestParser()
    parser.feed(PING + tail)
    assert parser.next_command() == [b"PING"]
    for item in drain(parser):
        assert isinstance(item, Err) or all(type(arg) is bytes for arg in item)



_REQUESTS = [PING, b"PING\r\n", b"*3\r\n$4\r\nVALQ\r\n$3\r\nPOP\r\n$1\r\nq\r\n",
             b"ECHO 'a b'\r\n", b"*0\r\n", b"\r\n",
             b"*4\r\n$4\r\nVALQ\r\n$4\r\nPUSH\r\n$1\r\nq\r\n$300\r\n" + b"x" * 300 + b"\r\n",
             # a body that looks like a big header: the framer reads until nothing is held
             b"*4\r\n$4\r\nVALQ\r\n$4\r\nPUSH\r\n$1\r\nq\r\n$7\r\n~123456\r\n"]


@given(st.lists(st.sampled_from(_REQUESTS), min_size=1, max_size=12), st.data())
def test_any_split_of_a_stream_gives_the_same_commands(requests, data):
    """Requests cut at arbitrary points (a multibulk request that starts a read goes
    straight to hiredis, one that starts mid-read through the framer) come out unchanged."""
    wire = b"".join(requests)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=8))
                  if len(wire) > 1 else [])
    parser = RequestParser()
    out: list = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        parser.feed(wire[start:end])
        out += drain(parser)
    assert out == feed_whole(wire)


def _push(body: bytes) -> bytes:
    return b"*4\r\n$4\r\nVALQ\r\n$4\r\nPUSH\r\n$1\r\nq\r\n$%d\r\n%b\r\n" % (len(body), body)


SMUGGLED = b"x\r\nFLUSHALL\r\nPING\r\n"


@pytest.mark.parametrize("element", [b"+PING\r\n", b"=8\r\ntxt:PING\r\n", b"(12\r\n"],
                         ids=["simple", "verbatim", "big-number"])
@pytest.mark.parametrize("before", [b"", PING], ids=["first", "after-ping"])
@pytest.mark.parametrize("after_bulk", [b"\r\n", b"AB"], ids=["crlf", "not-crlf"])
def test_non_bulk_element_is_an_error_at_every_split_point(element, before, after_bulk):
    """A non-bulk element followed by a PUSH whose body holds an inline FLUSHALL: hiredis
    alone returned the element as a bulk, the positions worked out from it were 3 bytes
    off, and FLUSHALL ran from the middle of the body. Cut in two at every point, and fed
    byte by byte, the stream gives what came before, then Valkey's error, and nothing
    else; also when the bulk before the element ends in two bytes other than CRLF (which
    hiredis skips unread and Valkey refuses)."""
    kind = chr(element[0])
    wire = before + b"*2\r\n$4\r\nECHO" + after_bulk + element + _push(SMUGGLED) + \
        b"PING\r\n"
    error = "invalid CRLF in request" if after_bulk != b"\r\n" else \
        f"expected '$', got '{kind}'"
    expected = ([[b"PING"]] if before else []) + [Err(error)]
    for cut in range(1, len(wire)):
        parser = RequestParser()
        parser.feed(wire[:cut])
        out = drain(parser)
        if not out or not isinstance(out[-1], Err):
            parser.feed(wire[cut:])
            out += drain(parser)
        assert out == expected, cut
    assert feed_whole(wire) == expected
    assert feed_bytewise(wire) == expected


def _big_header_by_classes(data: bytes) -> bool:
    """What the parser must find, spelled plainly: an aggregate mark then five digits."""
    classes = bytes(b"A"[0] if c in b"*~>|" else b"1"[0] if c in b"0123456789" else
                    b"."[0] for c in data)
    return b"A11111" in classes


@given(st.binary(max_size=300) | st.lists(
    st.sampled_from([b"*", b"~", b">", b"|", b"1", b"0", b"9", b"\r", b"\n", b"+", b"=",
                     b"(", b"$", b"x", b"\xff", b"*12345", b"\r\n+"]), max_size=120
).map(b"".join))
def test_big_header_search_finds_what_the_classes_find(data):
    """The search with memchr and str.find (cheap per call) finds exactly what a
    translation of every byte into classes finds, with any number of marks (past
    _MARKS_SEARCHED of them the parser classifies instead)."""
    assert _holds_big_header(data) == _big_header_by_classes(data)


@pytest.mark.parametrize("marks", [0, 31, 32, 33, 200])
@pytest.mark.parametrize("mark", [b"*", b"~", b">", b"|"])
def test_big_header_is_found_behind_many_marks(mark, marks):
    data = (mark + b"1234x") * marks
    assert not _holds_big_header(data)
    assert _holds_big_header(data + mark + b"12345")
    assert _holds_big_header(data + mark + b"12345" + data)
    assert not _holds_big_header(data + mark + b"1234")


@pytest.mark.parametrize("header", [b"*12345\r\n", b"~12345\r\n", b">12345\r\n",
                                    b"|12345\r\n", b"*4000000000\r\n"])
@pytest.mark.parametrize("before", [b"", PING, b"PING\r\n"], ids=["first", "after-ping",
                                                                 "after-inline"])
def test_big_aggregate_header_never_reaches_hiredis_at_any_split_point(header, before):
    """hiredis allocates a list as long as any aggregate header before an element
    arrives: cut anywhere (the header split between two reads included), the parser
    turns careful before hiredis is fed the header, and answers as Valkey does."""
    wire = before + b"*2\r\n$4\r\nECHO\r\n" + header + PING
    expected = feed_whole(wire)
    assert expected[-1] in (Err(f"expected '$', got '{chr(header[0])}'"),
                            Err("invalid multibulk length"))
    for cut in range(1, len(wire)):
        for drained_between in (True, False):  # False: as for a client blocked meanwhile
            parser = RequestParser()
            parser.feed(wire[:cut])
            out = drain(parser) if drained_between else []
            if not out or not isinstance(out[-1], Err):
                parser.feed(wire[cut:])
                out += drain(parser)
            assert parser._careful, (cut, drained_between)
            assert out == expected, (cut, drained_between)
    assert feed_bytewise(wire) == expected


def test_a_request_over_two_limits_gets_the_count_error_first_as_from_valkey():
    """Valkey reads `*N` before the bulks: a request with too many elements and a bulk too
    long is refused for its count, also when it arrives whole in one read."""
    wire = b"*11\r\n" + b"$200\r\n" + b"x" * 200 + b"\r\n" + b"$1\r\ny\r\n" * 10
    for authenticated, error in ((False, "unauthenticated multibulk length"),
                                 (True, "invalid bulk length")):
        parser = RequestParser(Limits(max_bulk_len=100))
        parser.authenticated = authenticated
        parser.feed(wire)
        assert drain(parser) == [Err(error)]


def test_hiredis_reads_again_once_the_framer_has_read_everything_held():
    """A body that merely looks like a big header (`*12345`) sends that read to the framer;
    once everything held is read, the next read goes to hiredis again: the connection does
    not pay the framer's cost for the rest of its life. A header in the next read is still
    kept from hiredis."""
    parser = RequestParser()
    parser.feed(b"*2\r\n$4\r\nECHO\r\n$6\r\n*12345\r\n" + PING)
    assert parser._careful
    assert drain(parser) == [[b"ECHO", b"*12345"], [b"PING"]]
    assert not parser._careful
    parser.feed(PING)
    assert parser._reader_busy  # hiredis reads it
    assert drain(parser) == [[b"PING"]]
    parser.feed(b"*12345\r\n")
    assert parser._careful and not parser._reader_busy
    assert drain(parser) == []  # the framer waits for the elements, none allocated


@given(st.binary(max_size=24) | st.text("0123456789-+ ٣", max_size=24).map(str.encode))
def test_counts_and_lengths_are_read_as_string2ll_reads_them(raw):
    """The framer reads the numbers of its headers digit by digit: an optional `-`, ASCII
    digits, no leading zero (0 alone), at most MAX_DIGITS of them."""
    digits = raw[1:] if raw[:1] == b"-" else raw
    plain = digits.isdigit() and len(digits) <= MAX_DIGITS and not (
        digits[0] == 48 and (len(digits) > 1 or digits is not raw))
    assert _number(raw) == (int(raw) if plain else None)


# -- encoding --------------------------------------------------------------------------

def _info_pairs() -> list[bytes]:
    return [encode.bulk(b"msgs"), encode.bulk_int(3), encode.bulk(b"id"), encode.integer(7)]


# (name, encoder taking proto, RESP2 wire, RESP3 wire, value a hiredis Reader gives for each)
ENCODINGS = [
    ("ok", lambda p: encode.OK, b"+OK\r\n", b"+OK\r\n", b"OK", b"OK"),
    ("pong", lambda p: encode.PONG, b"+PONG\r\n", b"+PONG\r\n", b"PONG", b"PONG"),
    ("simple", lambda p: encode.simple(b"RESET"), b"+RESET\r\n", b"+RESET\r\n",
     b"RESET", b"RESET"),
    ("integer", lambda p: encode.integer(-42), b":-42\r\n", b":-42\r\n", -42, -42),
    ("bulk", lambda p: encode.bulk(b"a\r\nb\x00"), b"$5\r\na\r\nb\x00\r\n",
     b"$5\r\na\r\nb\x00\r\n", b"a\r\nb\x00", b"a\r\nb\x00"),
    ("bulk-memoryview", lambda p: encode.bulk(memoryview(b"xyz")[1:]), b"$2\r\nyz\r\n",
     b"$2\r\nyz\r\n", b"yz", b"yz"),
    ("empty-bulk", lambda p: encode.EMPTY_BULK, b"$0\r\n\r\n", b"$0\r\n\r\n", b"", b""),
    ("bulk-str", lambda p: encode.bulk_str("é"), b"$2\r\n\xc3\xa9\r\n", b"$2\r\n\xc3\xa9\r\n",
     "é".encode(), "é".encode()),
    ("bulk-int", lambda p: encode.bulk_int(1234), b"$4\r\n1234\r\n", b"$4\r\n1234\r\n",
     b"1234", b"1234"),
    ("array", lambda p: encode.array([encode.integer(1), encode.bulk(b"a")]),
     b"*2\r\n:1\r\n$1\r\na\r\n", b"*2\r\n:1\r\n$1\r\na\r\n", [1, b"a"], [1, b"a"]),
    ("empty-array", lambda p: encode.EMPTY_ARRAY, b"*0\r\n", b"*0\r\n", [], []),
    ("bulk-array", lambda p: encode.bulk_array([b"q1", b""]),
     b"*2\r\n$2\r\nq1\r\n$0\r\n\r\n", b"*2\r\n$2\r\nq1\r\n$0\r\n\r\n", [b"q1", b""],
     [b"q1", b""]),
    ("map", lambda p: encode.map_(_info_pairs(), p),
     b"*4\r\n$4\r\nmsgs\r\n$1\r\n3\r\n$2\r\nid\r\n:7\r\n",
     b"%2\r\n$4\r\nmsgs\r\n$1\r\n3\r\n$2\r\nid\r\n:7\r\n",
     [b"msgs", b"3", b"id", 7], {b"msgs": b"3", b"id": 7}),
    ("empty-map", lambda p: encode.map_([], p), b"*0\r\n", b"%0\r\n", [], {}),
    ("set", lambda p: encode.set_([encode.simple(b"write")], p), b"*1\r\n+write\r\n",
     b"~1\r\n+write\r\n", [b"write"], [b"write"]),
    ("null", lambda p: encode.null(p), b"$-1\r\n", b"_\r\n", None, None),
    ("null-array", lambda p: encode.null_array(p), b"*-1\r\n", b"_\r\n", None, None),
    ("double", lambda p: encode.double(1.5, p), b"$3\r\n1.5\r\n", b",1.5\r\n", b"1.5", 1.5),
    ("double-negative", lambda p: encode.double(-0.25, p), b"$5\r\n-0.25\r\n", b",-0.25\r\n",
     b"-0.25", -0.25),
    ("double-inf", lambda p: encode.double(float("inf"), p), b"$3\r\ninf\r\n", b",inf\r\n",
     b"inf", float("inf")),
    ("verbatim", lambda p: encode.verbatim(b"id=1\r\nx", p), b"$7\r\nid=1\r\nx\r\n",
     b"=11\r\ntxt:id=1\r\nx\r\n", b"id=1\r\nx", b"id=1\r\nx"),
    ("push", lambda p: encode.push([encode.bulk(b"message"), encode.integer(1)], p),
     b"*2\r\n$7\r\nmessage\r\n:1\r\n", b">2\r\n$7\r\nmessage\r\n:1\r\n", [b"message", 1],
     [b"message", 1]),
]


@pytest.mark.parametrize("name, encoder, resp2, resp3, value2, value3", ENCODINGS,
                         ids=[e[0] for e in ENCODINGS])
def test_encoding(name, encoder, resp2, resp3, value2, value3):
    assert encoder(2) == resp2
    assert encoder(3) == resp3


def test_push_is_a_push_frame_under_resp3_only():
    reader = hiredis.Reader()
    reader.feed(encode.push([encode.bulk(b"m")], 3) + encode.push([encode.bulk(b"m")], 2))
    assert type(reader.gets()) is hiredis.PushNotification
    assert type(reader.gets()) is list


@pytest.mark.parametrize("code, message, wire", [
    ("ERR", "unknown command 'x'", b"-ERR unknown command 'x'\r\n"),
    ("NOQUEUE", "no such queue 'q'", b"-NOQUEUE no such queue 'q'\r\n"),
    ("ERR", "line\r\nbreak\rcr\nlf", b"-ERR line  break cr lf\r\n"),
    ("ERR", "caf\u00e9 \ud800", b"-ERR caf\xc3\xa9 \\ud800\r\n"),
])
def test_error_is_one_line(code, message, wire):
    assert encode.error(code, message) == wire


def test_encoded_replies_are_valid_resp():
    """Everything above, under both protocols, back to back: a hiredis Reader reads exactly
    these values and nothing is left over, so every length and terminator is right."""
    wire = b""
    expected = []
    for _, encoder, _, _, value2, value3 in ENCODINGS:
        wire += encoder(2) + encoder(3)
        expected += [value2, value3]
    wire += encode.error("ERR", "a\r\nb") + b"+x" + encode.CRLF
    reader = hiredis.Reader()
    reader.feed(wire)
    got = []
    while (reply := reader.gets()) is not False:
        got.append(reply)
    assert not reader.has_data()
    error, simple = got[-2:]
    assert got[:-2] == expected
    assert isinstance(error, hiredis.ReplyError) and str(error) == "ERR a  b"
    assert simple == b"x"


@pytest.mark.parametrize("proto", [2, 3])
def test_body_id_map_is_the_map_of_body_and_id(proto):
    for body, message_id in [(b"", 1), (b"x" * 300, 2**64 - 1), (b"job", 42),
                             (b"y" * 1023, 9), (b"z" * 1024, 10)]:
        assert encode.bulk(body) == b"$%d\r\n%b\r\n" % (len(body), body)
        assert encode.body_id_map(body, message_id, proto) == encode.map_(
            [encode.bulk(b"body"), encode.bulk(body), encode.bulk(b"id"),
             encode.bulk_int(message_id)], proto)


@pytest.mark.parametrize("prefix", [b"", b"ack ", b"x" * 70])
def test_bulk_int_counts_the_digits_it_formats(prefix):
    """bulk_int counts digits instead of formatting the length: right at every boundary
    between digit counts, for negative values and past the lengths it keeps ready."""
    values = [0, -1, 2**63 - 1, -2**63, 2**64 - 1, 10**70, -10**70]
    for power in range(1, 22):
        values += [10**power - 1, 10**power, 10**power + 1, -10**power]
    for value in values:
        text = prefix + b"%d" % value
        assert encode.bulk_int(value, prefix) == encode.bulk(text) == \
            b"$%d\r\n%b\r\n" % (len(text), text), value
