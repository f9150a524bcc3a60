"""The sans-IO HTTP request parser: one table of cases, each fed whole and byte by byte."""

import pytest

from valqd.http.parser import MAX_HEAD, HttpError, RequestParser

GOOD = [
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
     [("GET", "/healthz", {}, b"", True)]),
    (b"GET /api/queues?count=5&match=j%2A HTTP/1.1\r\nHost: a\r\n\r\n",
     [("GET", "/api/queues", {"count": "5", "match": "j*"}, b"", True)]),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
     [("POST", "/x", {}, b"{}", True)]),
    (b"GET / HTTP/1.0\r\n\r\n", [("GET", "/", {}, b"", False)]),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", [("GET", "/", {}, b"", True)]),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n", [("GET", "/", {}, b"", False)]),
    (b"\r\nGET / HTTP/1.1\nHost: a\n\n", [("GET", "/", {}, b"", True)]),  # bare LF, a CRLF first
    (b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
     b"DELETE /b HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
     [("PUT", "/a", {}, b"x", True), ("DELETE", "/b", {}, b"", True)]),
]

BAD = [
    (b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
    (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/3\r\nHost: a\r\n\r\n", 505),
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"Host: a\r\n\r\n", 431),
    (b"GET /" + b"a" * MAX_HEAD + b" HTTP/1.1\r\n", 431),
]


def _run(data: bytes, byte_by_byte: bool):
    parser = RequestParser(max_body=1024)
    out = []
    for chunk in ([data[i:i + 1] for i in range(len(data))] if byte_by_byte else [data]):
        parser.feed(chunk)
        while (request := parser.next_request()) is not None:
            out.append((request.method, request.path, request.query, request.body,
                        request.keep_alive))
    return out, parser


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("data, expected", GOOD)
def test_requests(data, expected, byte_by_byte):
    out, parser = _run(data, byte_by_byte)
    assert out == expected
    assert parser.buffered() == 0


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("data, status", BAD)
def test_bad_requests(data, status, byte_by_byte):
    with pytest.raises(HttpError) as excinfo:
        _run(data, byte_by_byte)
    assert excinfo.value.status == status


def test_headers_are_case_insensitive_and_repeated_fields_join():
    parser = RequestParser(1024)
    parser.feed(b"GET / HTTP/1.1\r\nHOST: a\r\nX-Y: 1\r\nx-y:  2 \r\n\r\n")
    request = parser.next_request()
    assert request.header("host") == "a" and request.header("x-y") == "1, 2"


def test_a_body_is_awaited_whole():
    parser = RequestParser(1024)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    assert parser.next_request() is None and parser.buffered() == 2
    parser.feed(b"cd")
    assert parser.next_request().body == b"abcd"
