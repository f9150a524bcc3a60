"""The producer side of valqd's client library: connect by URL, create and tune queues, push
messages, read their statistics. `valqd.worker` runs handlers over what is pushed here.

It speaks nothing but the VALQ commands over RESP, through the `valkey` client library (the
`client` extra: `pip install 'valqd[client]'`), so it works against any server of those
commands. Bodies are JSON by default: `push(q, {"to": "ada"})` stores `{"to":"ada"}`; bytes
are stored as they are, so a producer that needs another encoding sends bytes. The server
never imports this module.
"""

import json
import os
from collections.abc import Iterable
from typing import Any, Protocol

try:
    import valkey
    from valkey.exceptions import ResponseError
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("valqd.client needs the valkey client library: "
                      "pip install 'valqd[client]'") from exc

DEFAULT_URL = "valkey://127.0.0.1:7400"
URL_SCHEMES = ("valkey://", "valkeys://", "redis://", "rediss://", "unix://")
SOCKET_TIMEOUT_S = 10.0

# backoff=: "none", ("fixed", seconds) or ("exponential", base, max)
Backoff = str | tuple[str, int] | tuple[str, int, int]
Reply = Any  # what valkey-py's parser made of a reply


# valkey-py's command methods are untyped: what this library and valqd.worker call is typed
# here, at the boundary (a valkey.Valkey, or one of its pipelines, is one).
class Commands(Protocol):
    def execute_command(self, *args: Any, **options: Any) -> Reply: ...


class Pipeline(Commands, Protocol):
    def execute(self, raise_on_error: bool = True) -> list[Reply]: ...


class Connection(Commands, Protocol):
    def pipeline(self, transaction: bool = True) -> Pipeline: ...

    def close(self) -> None: ...


def default_url() -> str:
    """$VALQD_URL, or the local server on valqd's port."""
    return os.environ.get("VALQD_URL") or DEFAULT_URL


def check_url(url: str) -> str:
    """`url` when its scheme is one the library connects with; ValueError otherwise."""
    if not url.lower().startswith(URL_SCHEMES):
        raise ValueError(f"valqd URL {url!r} must start with one of "
                         f"{', '.join(URL_SCHEMES)} (valkey://[user:password@]host:port/db)")
    return url


def error_code(exc: ResponseError) -> str:
    """The code of an error reply (`NOQUEUE`, `NOLEASE`, ...); valkey-py strips `ERR `."""
    word = str(exc).split(" ", 1)[0]
    return word if word.isupper() and word.isalpha() else "ERR"


def encode_body(value: Any) -> bytes:
    """bytes stay as they are; anything else becomes compact JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def reply_map(reply: Reply) -> dict[bytes, Any]:
    """A map reply as a dict: RESP3 sends a dict, RESP2 a flat [key, value, ...] list."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[0::2], reply[1::2]))


def settings_arguments(visibility: int | None = None, max_attempts: int | None = None,
                       retention: int | None = None, backoff: Backoff | None = None,
                       dedup_window: int | None = None,
                       maxlen: int | None = None) -> list[str | int]:
    """The keyword form of CREATE and UPDATE for the settings that are given."""
    args: list[str | int] = []
    for word, value in (("VISIBILITY", visibility), ("MAXATTEMPTS", max_attempts),
                        ("RETENTION", retention), ("DEDUPWINDOW", dedup_window),
                        ("MAXLEN", maxlen)):
        if value is not None:
            args += [word, value]
    if backoff is not None:
        args += ["BACKOFF", *([backoff] if isinstance(backoff, str) else backoff)]
    return args


def _stat_value(key: bytes, value: bytes) -> int | str:
    return value.decode() if key == b"backoff" else int(value)


class Client:
    """A connection pool to one server; safe to share between threads.

    `url`: valkey://[user:password@]host:port/db (valkeys:// for TLS; redis:// and rediss://
    accepted), default $VALQD_URL or valkey://127.0.0.1:7400. Other keyword arguments go to
    `valkey.Valkey` (TLS files, for example `ssl_ca_certs=`)."""

    def __init__(self, url: str | None = None, *, socket_timeout: float = SOCKET_TIMEOUT_S,
                 **options: Any) -> None:
        self.url = check_url(url or default_url())
        self.valkey = valkey.Valkey.from_url(self.url, socket_timeout=socket_timeout,
                                             **options)
        self._connection: Connection = self.valkey

    def command(self, *args: Any) -> Reply:
        """One VALQ subcommand: `command("PEEK", "q", "DLQ")`."""
        return self._connection.execute_command("VALQ", *args)

    # -- queues ------------------------------------------------------------------------

    def create(self, queue: str | bytes, *, exist_ok: bool = False, **settings: Any) -> bool:
        """Create a queue with the given settings (visibility, max_attempts, retention,
        backoff, dedup_window, maxlen; the server's defaults for the rest). True when it was
        created; False when it already existed and `exist_ok` (its settings unchanged)."""
        try:
            self.command("CREATE", queue, *settings_arguments(**settings))
        except ResponseError as exc:
            if exist_ok and error_code(exc) == "BUSYQUEUE":
                return False
            raise
        return True

    def update(self, queue: str | bytes, **settings: Any) -> None:
        """Change the given settings of a queue; the others stay as they are."""
        if not settings:
            raise ValueError("update needs at least one setting")
        self.command("UPDATE", queue, *settings_arguments(**settings))

    def delete(self, queue: str | bytes) -> None:
        """Delete a queue with every message in it."""
        self.command("DELETE", queue)

    def stats(self, queue: str | bytes) -> dict[str, int | str]:
        """VALQ STATS: counts, settings and counters, as ints (backoff as text)."""
        return {key.decode(): _stat_value(key, value)
                for key, value in reply_map(self.command("STATS", queue)).items()}

    # -- producing ---------------------------------------------------------------------

    def push(self, queue: str | bytes, body: Any, *, delay: int = 0, priority: int = 0,
             dedup: str | bytes | None = None) -> int:
        """Push one message; returns its id (for a duplicate `dedup` key, the first
        message's id). `delay` in whole seconds; higher `priority` is delivered first."""
        args: list[str | bytes | int] = ["PUSH", queue, encode_body(body)]
        if delay:
            args.append(delay)
        if priority:
            args += ["PRIORITY", priority]
        if dedup is not None:
            args += ["DEDUP", dedup]
        return int(self.command(*args))

    def push_many(self, queue: str | bytes, bodies: Iterable[Any], *, delay: int = 0,
                  priority: int = 0) -> list[int]:
        """Push several messages; returns their ids in order. Without delay and priority it
        is one MPUSH, all or nothing; with them, one pipelined PUSH each."""
        encoded = [encode_body(body) for body in bodies]
        if not encoded:
            return []
        if not delay and not priority:
            return [int(i) for i in self.command("MPUSH", queue, *encoded)]
        pipe = self._connection.pipeline(transaction=False)
        for body in encoded:
            pipe.execute_command("VALQ", "PUSH", queue, body, delay, "PRIORITY", priority)
        return [int(i) for i in pipe.execute()]

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

