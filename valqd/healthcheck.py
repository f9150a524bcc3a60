"""`valqd healthcheck`: the container's HEALTHCHECK. Exit 0 when the server on this host
answers PING with PONG, after AUTH when it has a password; 1 otherwise, with the reason.

The check runs beside the server (`docker exec`), so it finds the port and the password the
way the server got them: VALQD_PORT / VALQD_REQUIREPASS / VALQD_REQUIREPASS_FILE in the
environment, else the server's own command line (`--port`, `--requirepass`,
`--requirepass-file`, read from /proc/1/cmdline: the server is the container's process 1).
"""

import os
import socket
import sys
from typing import Mapping

from .config import REQUIREPASS_ENV, read_secret_file

DEFAULT_PORT = 7400
TIMEOUT_S = 3.0
SERVER_CMDLINE = "/proc/1/cmdline"


def server_flags(path: str = SERVER_CMDLINE) -> dict[str, str]:
    """`--name value` pairs (and `--name=value`) of the server's command line; {} when it
    cannot be read."""
    try:
        with open(path, "rb") as f:
            words = f.read().decode("utf-8", "surrogateescape").split("\0")
    except OSError:
        return {}
    flags: dict[str, str] = {}
    for i, word in enumerate(words):
        if word.startswith("--") and "=" in word:
            name, _, value = word[2:].partition("=")
            flags[name] = value
        elif word.startswith("--") and i + 1 < len(words):
            flags[word[2:]] = words[i + 1]
    return flags


def target(environ: Mapping[str, str] = os.environ,
           cmdline: str = SERVER_CMDLINE) -> tuple[int, str]:
    """(port, password) of the server to check; password "" when it has none."""
    flags = server_flags(cmdline)
    port = environ.get("VALQD_PORT") or flags.get("port") or str(DEFAULT_PORT)
    secret_file = environ.get("VALQD_REQUIREPASS_FILE") or flags.get("requirepass-file")
    password = flags.get("requirepass") or (read_secret_file(secret_file) if secret_file
                                            else environ.get(REQUIREPASS_ENV, ""))
    if not port.isdigit():
        raise ValueError(f"port {port!r} is not a number: set VALQD_PORT")
    return int(port), password


def _bulk(word: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(word), word)


def check(port: int, password: str, timeout: float = TIMEOUT_S) -> str | None:
    """None when PING (after AUTH) gets PONG, else what went wrong."""
    request = b""
    if password:
        request += b"*2\r\n$4\r\nAUTH\r\n" + _bulk(password.encode("utf-8", "surrogateescape"))
    request += b"*1\r\n$4\r\nPING\r\n"
    expected = (b"+OK\r\n" if password else b"") + b"+PONG\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            answer = b""
            while answer.count(b"\r\n") < expected.count(b"\r\n"):  # one line per reply
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError as exc:
        return f"no answer on port {port}: {exc}"
    if answer != expected:
        return f"unexpected answer on port {port}: {answer[:200]!r}"
    return None


def main(args: list[str]) -> int:
    if args:
        print("Usage: valqd healthcheck", file=sys.stderr)
        return 2
    try:
        port, password = target()
        problem = check(port, password)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0
