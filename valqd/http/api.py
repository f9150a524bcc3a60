"""The JSON API's routes: each one turns a request into VALQ commands and their replies into
JSON, through the same dispatcher as RESP clients (so authentication, ACL rules, limits,
events and the AOF apply alike).

A handler takes the request's `Call` (its session's way into the command layer), the request
and the path's parameters, and returns `(status, JSON value)`, or a `Pending` when a blocking
pop has to wait. Replies come back as RESP3 and are decoded with hiredis; an error reply
raises `ApiError` with its code, which the app turns into a JSON error.
"""

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar
from urllib.parse import quote

import hiredis

from ..commands.context import Blocked, Session
from .parser import Request

Outcome = tuple[int, Any]  # (HTTP status, a JSON value)
T = TypeVar("T")


class ApiError(Exception):
    """An error reply (`code`, `message`) or a request the API refuses before any command."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode(reply: bytes) -> Any:
    """A RESP3 reply as Python values; an error reply raises ApiError."""
    reader = hiredis.Reader()
    reader.feed(reply)
    value = reader.gets()
    if isinstance(value, hiredis.ReplyError):
        code, _, message = str(value).partition(" ")
        raise ApiError(code, message)
    return value


class Call:
    """Commands on the request's session."""

    def __init__(self, execute: Callable[[Session, list[bytes]], bytes | Blocked],
                 session: Session) -> None:
        self.execute = execute
        self.session = session

    def start(self, *words: bytes | str | int) -> Any:
        """Run one command: its decoded reply, or the `Blocked` of a pop that waits."""
        argv = [w if isinstance(w, bytes) else str(w).encode() for w in words]
        reply = self.execute(self.session, argv)
        return reply if isinstance(reply, Blocked) else decode(reply)

    def __call__(self, *words: bytes | str | int) -> Any:
        reply = self.start(*words)
        assert not isinstance(reply, Blocked), "only a pop with a timeout blocks"
        return reply


@dataclass
class Pending:
    """A blocking pop that waits: `finish(reply)` makes the outcome of its RESP reply."""

    blocked: Blocked
    finish: Callable[[bytes], Outcome]


# -- values ------------------------------------------------------------------------------

def text_or_base64(raw: bytes) -> tuple[str, str]:
    """(text, "utf-8") when `raw` is valid UTF-8, else (base64, "base64")."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


_TEXT_FIELDS = {b"backoff", b"lease", b"state"}


def message_json(reply: dict[bytes, Any]) -> dict[str, Any]:
    """A message map (GET, PEEK, POP WITHMETA) as JSON: numbers as numbers, the body as text
    or base64, the last NACK reason as text (invalid UTF-8 replaced) or null."""
    out: dict[str, Any] = {}
    for key, value in reply.items():
        if key == b"body":
            out["body"], out["encoding"] = text_or_base64(value)
        elif key == b"last_reason":
            out["last_reason"] = None if value is None else value.decode("utf-8", "replace")
        elif key in _TEXT_FIELDS:
            out[key.decode()] = value.decode("utf-8", "replace")
        else:
            out[key.decode()] = int(value)
    return out


def queue_json(name: bytes, reply: dict[bytes, Any]) -> dict[str, Any]:
    """VALQ STATS as JSON, with the queue's name as text and as a URL path segment (exact
    bytes, for names that are not UTF-8)."""
    out: dict[str, Any] = {"name": name.decode("utf-8", "replace"),
                           "path": quote(name, safe="")}
    out.update(message_json(reply))
    return out


@dataclass
class Body:
    """A request's JSON object, read field by field with type checks."""

    fields: dict[str, Any]
    used: set[str] = field(default_factory=set)

    def _get(self, name: str, kind: type[T], what: str) -> T | None:
        self.used.add(name)
        value = self.fields.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                  and kind is not bool):
            raise ApiError("ERR", f"field '{name}' must be {what}")
        return value

    def required(self, value: T | None, name: str) -> T:
        if value is None:
            raise ApiError("ERR", f"field '{name}' is required")
        return value

    def finish(self) -> None:
        """Refuse fields nobody read: a misspelt option must not be ignored silently."""
        unknown = sorted(set(self.fields) - self.used)
        if unknown:
            raise ApiError("ERR", f"unknown field '{unknown[0]}'")

    # Last in the class: below these, `int`, `str` and `bool` in an annotation of the class
    # body would name the methods, not the types.
    def int(self, name: str) -> int | None:
        return self._get(name, int, "an integer")

    def bool(self, name: str) -> bool:
        return bool(self._get(name, bool, "true or false"))

    def str(self, name: str) -> str | None:
        return self._get(name, str, "a string")


def _query_int(request: Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ApiError("ERR", f"query parameter '{name}' must be a non-negative integer")
    return int(raw)


def _lease(body: Body) -> list[str]:
    lease = body.str("lease")
    return ["LEASE", lease] if lease is not None else []


# -- queues --------------------------------------------------------------------------------

Params = dict[str, Any]
LIST_COUNT = 100
MAX_LIST_COUNT = 1000


def _stats(call: Call, name: bytes) -> dict[str, Any]:
    return queue_json(name, call("VALQ", "STATS", name))


def list_queues(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    """A page of queues in creation order, each with its stats: SCAN from `cursor`
    until `count` queues (matching `match`) are found or the scan ends (cursor "0")."""
    count = _query_int(request, "count", LIST_COUNT)
    if not 1 <= count <= MAX_LIST_COUNT:
        raise ApiError("ERR", f"count must be between 1 and {MAX_LIST_COUNT}")
    cursor = str(_query_int(request, "cursor", 0)).encode()
    match = request.query.get("match")
    names: list[bytes] = []
    while True:
        argv: list[bytes | str | int] = ["SCAN", cursor, "COUNT", count - len(names)]
        if match:
            argv += ["MATCH", match.encode()]
        cursor, found = call(*argv)
        names += found
        if cursor == b"0" or len(names) >= count:
            break
    queues = []
    for name in names:
        try:
            queues.append(_stats(call, name))
        except ApiError as exc:
            if exc.code not in ("NOPERM", "NOQUEUE"):  # what this user may not see
                raise
    return 200, {"queues": queues, "cursor": cursor.decode()}


def get_queue(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    return 200, _stats(call, params["queue"])


SETTING_FIELDS = (("visibility", "VISIBILITY"), ("maxattempts", "MAXATTEMPTS"),
                  ("retention", "RETENTION"), ("dedup_window", "DEDUPWINDOW"),
                  ("maxlen", "MAXLEN"))


def put_queue(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    """Create the queue with the settings given, or change those settings of an existing
    one: 201 when created, 200 otherwise; the queue's stats either way."""
    name = params["queue"]
    words: list[str | int] = []
    for key, keyword in SETTING_FIELDS:
        value = body.int(key)
        if value is not None:
            words += [keyword, value]
    backoff = body.str("backoff")
    if backoff is not None:
        words += ["BACKOFF", *backoff.split()]
    body.finish()
    try:
        call("VALQ", "CREATE", name, *words)
        status = 201
    except ApiError as exc:
        if exc.code != "BUSYQUEUE":
            raise
        if words:
            call("VALQ", "UPDATE", name, *words)
        status = 200
    return status, _stats(call, name)


def delete_queue(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    call("VALQ", "DELETE", params["queue"])
    return 200, {"deleted": True}


def redrive(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    words: list[str | int | bytes] = []
    count, target = body.int("count"), body.str("to")
    if count is not None:
        words += ["COUNT", count]
    if target is not None:
        words += ["TO", target.encode()]
    body.finish()
    return 200, {"moved": call("VALQ", "REDRIVE", params["queue"], *words)}


def purge(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    part = body.str("part") or "main"
    body.finish()
    return 200, {"removed": call("VALQ", "PURGE", params["queue"], part)}


def pause(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    body.finish()
    call("VALQ", "PAUSE", params["queue"])
    return 200, {"paused": True}


def resume(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    body.finish()
    call("VALQ", "RESUME", params["queue"])
    return 200, {"paused": False}


# -- messages ------------------------------------------------------------------------------

def push(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    """{body, encoding, delay, priority, dedup} -> 201 {id}."""
    text = body.required(body.str("body"), "body")
    encoding = body.str("encoding") or "utf-8"
    if encoding == "base64":
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError("ERR", "body is not valid base64") from None
    elif encoding == "utf-8":
        raw = text.encode("utf-8", "surrogatepass")
    else:
        raise ApiError("ERR", "encoding must be utf-8 or base64")
    words: list[bytes | str | int] = []
    delay, priority, dedup = body.int("delay"), body.int("priority"), body.str("dedup")
    body.finish()
    if delay is not None:
        words.append(delay)
    if priority is not None:
        words += ["PRIORITY", priority]
    if dedup is not None:
        words += ["DEDUP", dedup.encode()]
    return 201, {"id": int(call("VALQ", "PUSH", params["queue"], raw, *words))}


def get_message(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    return 200, message_json(call("VALQ", "GET", params["queue"], params["id"]))


PEEK_STATES: tuple[str, ...] = ("ready", "inflight", "delayed", "dlq")


def peek(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    state = request.query.get("state", "ready")
    if state not in PEEK_STATES:
        raise ApiError("ERR", "state must be one of ready, inflight, delayed, dlq")
    count = _query_int(request, "count", 10)
    reply = call("VALQ", "PEEK", params["queue"], state.upper(), "COUNT", count)
    return 200, {"messages": [message_json(m) for m in reply]}


def pop(call: Call, request: Request, params: Params, body: Body) -> Outcome | Pending:
    """{count, block_ms, noack} -> {messages: [...]} with lease receipts; with block_ms,
    waits that long (0: forever) for a message, as VALQ POP BLOCK does."""
    count, block_ms, noack = body.int("count"), body.int("block_ms"), body.bool("noack")
    body.finish()
    words: list[str | int] = ["COUNT", count if count is not None else 1]
    if block_ms is not None:
        words += ["BLOCK", block_ms]
    words.append("WITHMETA")
    if noack:
        words.append("NOACK")
    reply = call.start("VALQ", "POP", params["queue"], *words)

    def outcome(maps: list[dict[bytes, Any]]) -> Outcome:
        return 200, {"messages": [message_json(m) for m in maps]}

    if isinstance(reply, Blocked):
        return Pending(reply, lambda raw: outcome(decode(raw)))
    return outcome(reply)


def ack(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    words = _lease(body)
    body.finish()
    call("VALQ", "ACK", params["queue"], params["id"], *words)
    return 200, {"id": int(params["id"])}


def nack(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    delay, reason = body.int("delay"), body.str("reason")
    words: list[str | int | bytes] = [] if delay is None else [delay]
    words += _lease(body)
    if reason is not None:
        words += ["REASON", reason.encode()]
    body.finish()
    call("VALQ", "NACK", params["queue"], params["id"], *words)
    return 200, {"id": int(params["id"])}


def extend(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    seconds = body.required(body.int("seconds"), "seconds")
    words = _lease(body)
    body.finish()
    call("VALQ", "EXTEND", params["queue"], params["id"], seconds, *words)
    return 200, {"id": int(params["id"])}


def cancel(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    body.finish()
    call("VALQ", "CANCEL", params["queue"], params["id"])
    return 200, {"id": int(params["id"])}


def reschedule(call: Call, request: Request, params: Params, body: Body) -> Outcome:
    delay = body.required(body.int("delay"), "delay")
    body.finish()
    call("VALQ", "RESCHEDULE", params["queue"], params["id"], delay)
    return 200, {"id": int(params["id"])}
