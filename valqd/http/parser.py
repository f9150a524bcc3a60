"""HTTP/1.1 requests, sans-IO: `feed(bytes)`, then `next_request()` until it returns
`NEED_DATA`. No sockets.

Only what valqd's listener needs: origin-form targets, `Content-Length` bodies (a
`Transfer-Encoding` is refused: browsers, curl and HTTP libraries send a length for a JSON
body), keep-alive and pipelining (requests come out one at a time, in order). Everything
buffered is bounded: the head by `MAX_HEAD` bytes and `MAX_HEADERS` fields, the body by
`max_body`, checked at the `Content-Length` header before the body arrives. A malformed
request raises `HttpError` with the status to answer; the caller answers and closes the
connection, since what follows can no longer be framed.
"""

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

NEED_DATA = None  # next_request() has nothing complete yet
MAX_HEAD = 16 * 1024  # request line and headers, as h11's default
MAX_HEADERS = 100
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")


class HttpError(Exception):
    """A request that cannot be served as sent; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str  # still percent-encoded: a queue name is bytes, decoded per path segment
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated field's values joined by ", "
    body: bytes
    keep_alive: bool

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


class RequestParser:
    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._buffer = bytearray()
        self._head: tuple[str, str, dict[str, str], bool] | None = None  # parsed, body due
        self._body_length = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def buffered(self) -> int:
        """Bytes of requests not returned yet: nonzero while a request is arriving."""
        return len(self._buffer)

    def next_request(self) -> Request | None:
        if self._head is None:
            while self._buffer[:2] == b"\r\n" or self._buffer[:1] == b"\n":
                del self._buffer[:2 if self._buffer[:1] == b"\r" else 1]  # RFC 9112 2.2
            end = _END_OF_HEAD.search(self._buffer, 0, MAX_HEAD + 4)
            if end is None:
                if len(self._buffer) > MAX_HEAD:
                    raise HttpError(431, f"request head larger than {MAX_HEAD} bytes")
                return NEED_DATA
            head = bytes(self._buffer[:end.start()])
            del self._buffer[:end.end()]
            self._head = self._parse_head(head)
        if len(self._buffer) < self._body_length:
            return NEED_DATA
        method, target, headers, keep_alive = self._head
        body = bytes(self._buffer[:self._body_length])
        del self._buffer[:self._body_length]
        self._head, self._body_length = None, 0
        path, _, query = target.partition("?")
        return Request(method, path, dict(parse_qsl(query, keep_blank_values=True)),
                       headers, body, keep_alive)

    def _parse_head(self, head: bytes) -> tuple[str, str, dict[str, str], bool]:
        lines = head.split(b"\n")
        words = lines[0].rstrip(b"\r").split(b" ")
        if len(words) != 3 or not _TOKEN.match(words[0]):
            raise HttpError(400, "malformed request line")
        method, target, version = words
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise HttpError(505, "only HTTP/1.1 and HTTP/1.0 are served")
        if not _TARGET.match(target):
            raise HttpError(400, "the request target must be a path")
        if len(lines) - 1 > MAX_HEADERS:
            raise HttpError(431, f"more than {MAX_HEADERS} header fields")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.rstrip(b"\r").partition(b":")
            if not colon or not _TOKEN.match(name):  # also obsolete line folding
                raise HttpError(400, "malformed header field")
            if _CONTROL.search(value):
                raise HttpError(400, "control character in a header field")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if "transfer-encoding" in headers:
            raise HttpError(501, "Transfer-Encoding is not supported: send Content-Length")
        length = headers.get("content-length")
        if length is not None:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1 or not _DIGITS.match(values.pop().encode()):
                raise HttpError(400, "malformed Content-Length")
            self._body_length = int(length.split(",")[0])
            if self._body_length > self.max_body:
                raise HttpError(413, f"request body larger than {self.max_body} bytes")
        if version == b"HTTP/1.1" and "host" not in headers:
            raise HttpError(400, "an HTTP/1.1 request needs a Host header")
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "close" not in tokens if version == b"HTTP/1.1" else "keep-alive" in tokens
        return method.decode("ascii"), target.decode("ascii"), headers, keep_alive
