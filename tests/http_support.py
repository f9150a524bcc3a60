"""Talking HTTP to a real valqd in tests: a JSON client on http.client, raw sockets for
bytes no client library would send, and a valqd process with its HTTP listener on."""

import base64
import http.client
import json
import socket
from pathlib import Path

from support import ValqdProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_valqd(directory: Path, *args: str, **kwargs) -> tuple[ValqdProcess, int]:
    """A valqd process with its HTTP listener on a free loopback port: (process, port)."""
    for _ in range(5):  # a free port may be taken between the check and the bind
        port = free_port()
        process = ValqdProcess(directory, "--http-port", str(port), *args, **kwargs)
        try:
            return process.start(), port
        except RuntimeError:
            process.kill()
    raise RuntimeError("no free port for the HTTP listener")


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


class Api:
    """JSON requests on one keep-alive connection; `auth` is a Bearer password or a
    (user, password) pair for Basic."""

    def __init__(self, port: int, auth: str | tuple[str, str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.port = port
        self.auth = auth
        self.conn = http.client.HTTPConnection(host, port, timeout=20)

    def headers(self) -> dict[str, str]:
        if self.auth is None:
            return {}
        if isinstance(self.auth, tuple):
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {"Authorization": f"Bearer {self.auth}"}

    def request(self, method: str, path: str, body=None, headers=None,
                raw: bytes | None = None) -> Reply:
        all_headers = self.headers()
        if body is not None or method in ("POST", "PUT", "DELETE"):
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        data = raw if raw is not None else json.dumps(body).encode() if body is not None \
            else None
        self.conn.request(method, path, body=data, headers=all_headers)
        response = self.conn.getresponse()
        return Reply(response.status, response.headers, response.read())

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw) -> Reply:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body=None, **kw) -> Reply:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw) -> Reply:
        return self.request("DELETE", path, **kw)

    def close(self) -> None:
        self.conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes, read until the server closes (or `timeout`): everything it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])
