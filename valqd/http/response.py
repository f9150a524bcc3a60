"""HTTP responses: what a route answers, and its bytes on the wire."""

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

# Sent with every response. No CORS header ever: a page of another origin can neither read
# an answer nor send the JSON that changes state (that needs a preflight nobody grants).
SECURITY_HEADERS = (
    b"Cache-Control: no-store\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"X-Frame-Options: DENY\r\n"
    b"Referrer-Policy: no-referrer\r\n"
    b"Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    b"form-action 'none'\r\n")
JSON = "application/json"


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, keep_alive: bool, head_only: bool = False) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        head = (f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}\r\n"
                f"Content-Type: {self.content_type}\r\n"
                f"Content-Length: {len(self.body)}\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n{extra}").encode()
        return head + SECURITY_HEADERS + b"\r\n" + (b"" if head_only else self.body)


def json_response(status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()
                  ) -> Response:
    return Response(status, json.dumps(value, ensure_ascii=False).encode(), JSON, headers)


def error_response(status: int, code: str, message: str,
                   headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """Errors carry the code a RESP client would see (`NOQUEUE`, `NOLEASE`, ...)."""
    return json_response(status, {"error": code, "message": message}, headers)
