"""Hostile bytes on the RESP port, each compared with what Valkey does with the same bytes:
an HTTP request from a web page (cross-protocol scripting) and a request that smuggles a
command inside another's body by mixing a non-bulk element into a multibulk request.
"""

import pytest

from support import Wire, encode_command, stats, wait_until
from valqd.commands.dispatch import CROSS_PROTOCOL_WARNING


@pytest.fixture
def wire(valqd):
    """A raw connection to the shared server, with one queue holding one message."""
    setup = Wire(valqd.port)
    assert setup.call("FLUSHALL") == b"OK"
    assert setup.call("VALQ", "CREATE", "jobs") == b"created jobs"
    assert setup.call("VALQ", "PUSH", "jobs", "keep me") == b"1"
    setup.close()
    opened = Wire(valqd.port)
    yield opened
    opened.close()


def assert_untouched(valqd) -> None:
    check = Wire(valqd.port)
    assert check.call("VALQ", "LIST") == [b"jobs"]
    assert check.call("CONFIG", "GET", "requirepass") == [b"requirepass", b""]
    assert check.call("PING") == b"PONG"
    check.close()


# -- cross-protocol scripting ----------------------------------------------------------------

BODY = b"FLUSHALL\r\nCONFIG SET requirepass attacker\r\n"
FETCH_POST = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1:7400\r\nConnection: keep-alive\r\n"
              b"Content-Type: text/plain;charset=UTF-8\r\nOrigin: http://evil.example\r\n"
              b"Content-Length: %d\r\n\r\n%b" % (len(BODY), BODY))


@pytest.mark.parametrize("request_bytes", [
    FETCH_POST,
    b"POST / HTTP/1.1\r\nFLUSHALL\r\n",  # POST, then the command in the same read
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nFLUSHALL\r\n",  # Host: stops a GET
    b"post /x HTTP/1.0\nFLUSHALL\n",
    encode_command(["POST", "/"]) + encode_command(["FLUSHALL"]),
], ids=["fetch-post", "post-then-flushall", "get-host", "lowercase-lf", "multibulk"])
def test_http_request_closes_the_connection_before_its_body_runs(valqd, wire,
                                                                 request_bytes):
    wire.send(request_bytes)
    data = b""
    while chunk := wire.sock.recv(65536):
        data += chunk
    # a GET first gets its unknown-command error; nothing after POST or Host: is answered
    assert b"OK" not in data and b"PONG" not in data
    assert data in (b"", b"-ERR unknown command 'GET', with args beginning with: '/' "
                         b"'HTTP/1.1' \r\n")
    assert_untouched(valqd)
    wait_until(lambda: CROSS_PROTOCOL_WARNING in valqd.log(), what="the warning")
    assert "Possible SECURITY ATTACK detected. It looks like somebody is sending POST or " \
        "Host: commands to valqd." in valqd.log()


def test_post_in_a_pipeline_stops_what_follows(valqd, wire):
    wire.send(b"PING\r\nPOST\r\nFLUSHALL\r\nPING\r\n")
    assert wire.reply() == b"PONG"
    assert wire.closed_by_server()
    assert_untouched(valqd)


def test_post_and_host_as_arguments_are_harmless(valqd, wire):
    assert wire.call("ECHO", "POST") == b"POST"
    assert wire.call("VALQ", "PUSH", "jobs", "Host: x\r\nPOST /") == b"2"
    assert wire.call("PING") == b"PONG"


# -- request smuggling -----------------------------------------------------------------------

def smuggling_stream() -> bytes:
    body = b"x\r\nFLUSHALL\r\nPING\r\n"
    return (encode_command(["PING"]) + b"*2\r\n$4\r\nECHO\r\n+PING\r\n" +
            encode_command(["VALQ", "PUSH", "jobs", body]) + b"FLUSHALL\r\n")


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_non_bulk_element_closes_the_connection(valqd, wire, how):
    stream = smuggling_stream()
    if how == "whole":
        wire.send(stream)
    else:
        wire.sock.setsockopt(6, 1, 1)  # TCP_NODELAY: one segment per byte, as far as it goes
        for i in range(len(stream)):
            try:
                wire.send(stream[i:i + 1])
            except OSError:  # closed by the server at the bad element
                break
    assert wire.reply() == b"PONG"
    assert wire.reply() == "ERR Protocol error: expected '$', got '+'"
    assert wire.closed_by_server()
    assert_untouched(valqd)
    with valqd.client() as client:
        assert stats(client, "jobs")["ready"] == 1


def test_post_inside_a_transaction_closes_it_unrun(valqd, wire):
    wire.send(b"MULTI\r\nFLUSHALL\r\nPOST / HTTP/1.1\r\nEXEC\r\n")
    assert wire.reply() == b"OK"
    assert wire.reply() == b"QUEUED"
    assert wire.closed_by_server()
    assert_untouched(valqd)
