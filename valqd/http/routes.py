"""Every route of the HTTP listener, described once: method, path, handler, request and
reply schemas, the error codes it may answer. The same table routes requests and builds the
OpenAPI document served at /api/openapi.json.
"""

from dataclasses import dataclass
from typing import Any, Callable

from .. import __version__
from . import api

# Error codes (as RESP clients see them) and the HTTP status that carries each.
STATUS_BY_CODE = {
    "ERR": 400, "NOAUTH": 401, "WRONGPASS": 401, "NOPERM": 403, "NOQUEUE": 404, "NOMSG": 404,
    "BUSYQUEUE": 409, "NOLEASE": 409, "QUEUEFULL": 409, "MISCONF": 503, "LOADING": 503,
    "OOM": 507,
}


def _int(minimum: int | None = None, maximum: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


STR = {"type": "string"}
INT = _int()
BOOL = {"type": "boolean"}


def _object(properties: dict[str, Any], required: tuple[str, ...] = (),
            closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


COUNTERS = ("pushed", "delivered", "acked", "nacked", "expired", "dead_lettered", "dropped",
            "deduplicated", "redriven", "cancelled")
QUEUE_NUMBERS = ("ready", "inflight", "delayed", "dlq", "oldest_ready_age_ms", "paused",
                 "blocked", "id_sequence", "visibility_timeout", "max_delivery_attempts",
                 "retention_period", "dedup_window", "maxlen", *COUNTERS)
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _object({"error": {"type": "string", "description": "the code a RESP client "
                                "sees: ERR, NOQUEUE, NOMSG, NOLEASE, ..."},
                      "message": STR}, ("error", "message")),
    "Health": _object({"status": {"const": "ok"}}, ("status",)),
    "Queue": _object({"name": {"type": "string", "description": "the name as text "
                               "(bytes that are not UTF-8 shown as U+FFFD)"},
                      "path": {"type": "string", "description": "the name as a URL path "
                               "segment, percent-encoded byte for byte"},
                      "backoff": {"type": "string", "description": "none | fixed S | "
                                  "exponential BASE MAX"},
                      **{key: INT for key in QUEUE_NUMBERS}},
                     ("name", "path", "backoff", *QUEUE_NUMBERS), closed=False),
    "QueuePage": _object({"queues": {"type": "array", "items": _ref("Queue")},
                          "cursor": {"type": "string", "description": "pass as ?cursor= "
                                     "for the next page; \"0\" when the scan is complete"}},
                         ("queues", "cursor")),
    "Message": _object({
        "id": _int(1), "body": STR,
        "encoding": {"enum": ["utf-8", "base64"], "description": "base64 when the body "
                     "is not valid UTF-8"},
        "state": {"enum": ["ready", "inflight", "delayed", "dlq"]},
        "attempts": INT, "priority": INT, "enqueued_at": INT,
        "last_reason": {"type": ["string", "null"], "description": "the last NACK's reason"},
        "lease": {"type": "string", "description": "receipt for ack, nack and extend"},
        "lease_deadline": INT, "due_at": INT, "dead_at": INT},
        ("id", "body", "encoding")),
    "Messages": _object({"messages": {"type": "array", "items": _ref("Message")}},
                        ("messages",)),
    "Id": _object({"id": _int(1)}, ("id",)),
    "Moved": _object({"moved": INT}, ("moved",)),
    "Removed": _object({"removed": INT}, ("removed",)),
    "Paused": _object({"paused": BOOL}, ("paused",)),
    "Deleted": _object({"deleted": {"const": True}}, ("deleted",)),
    # request bodies
    "QueueSettings": _object({"visibility": INT, "maxattempts": INT, "retention": INT,
                              "backoff": STR, "dedup_window": INT, "maxlen": INT}),
    "NewMessage": _object({"body": STR, "encoding": {"enum": ["utf-8", "base64"]},
                           "delay": _int(0), "priority": INT, "dedup": STR}, ("body",)),
    "PopRequest": _object({"count": _int(1, 1000), "block_ms": _int(0), "noack": BOOL}),
    "AckRequest": _object({"lease": STR}),
    "NackRequest": _object({"lease": STR, "delay": _int(0), "reason": STR}),
    "ExtendRequest": _object({"seconds": _int(0), "lease": STR}, ("seconds",)),
    "RescheduleRequest": _object({"delay": _int(0)}, ("delay",)),
    "RedriveRequest": _object({"count": _int(1), "to": STR}),
    "PurgeRequest": _object({"part": {"enum": ["main", "dlq", "delayed"]}}),
    "Empty": _object({}),
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # segments in braces are parameters: {queue} (bytes), {id} (message id)
    summary: str
    handler: Callable[..., Any] | None = None  # None: served by the app itself
    body: str | None = None  # schema of the JSON body
    reply: str | None = None  # schema of the JSON reply
    ok: tuple[int, ...] = (200,)  # success statuses
    codes: tuple[str, ...] = ()  # error codes beyond those every route may answer
    media: str = "application/json"
    query: tuple[tuple[str, dict[str, Any], str], ...] = ()  # (name, schema, description)
    auth: bool = True

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/")) if self.path != "/" else ()


Q, M = "/api/queues/{queue}", "/api/queues/{queue}/messages/{id}"
ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", "the process is up and its data loaded (no authentication)",
          reply="Health", auth=False),
    Route("GET", "/", "the dashboard", media="text/html"),
    Route("GET", "/dashboard.js", "the dashboard's script", media="text/javascript"),
    Route("GET", "/dashboard.css", "the dashboard's style sheet", media="text/css"),
    Route("GET", "/metrics", "Prometheus metrics", media="text/plain"),
    Route("GET", "/api/openapi.json", "this document"),
    Route("GET", "/api/queues", "a page of queues with their counts and counters",
          api.list_queues, reply="QueuePage", query=(
              ("cursor", INT, "where the previous page ended (default 0: the start)"),
              ("count", _int(1, 1000), "queues per page (default 100)"),
              ("match", STR, "only names matching this glob pattern"))),
    Route("GET", Q, "the queue's counts, settings and lifetime counters", api.get_queue,
          reply="Queue", codes=("NOQUEUE",)),
    Route("PUT", Q, "create the queue (201), or change the settings given (200)",
          api.put_queue, "QueueSettings", "Queue", (201, 200), ("NOQUEUE",)),
    Route("DELETE", Q, "delete the queue and its messages", api.delete_queue, "Empty",
          "Deleted", codes=("NOQUEUE",)),
    Route("POST", f"{Q}/messages", "push a message", api.push, "NewMessage", "Id", (201,),
          ("NOQUEUE", "QUEUEFULL", "OOM", "MISCONF")),
    Route("GET", M, "one message, wherever it is", api.get_message, reply="Message",
          codes=("NOQUEUE", "NOMSG")),
    Route("GET", f"{Q}/peek", "the next messages of one part of the queue, changing nothing",
          api.peek, reply="Messages", codes=("NOQUEUE",), query=(
              ("state", {"enum": list(api.PEEK_STATES)}, "which part (default ready)"),
              ("count", _int(1, 1000), "how many (default 10)"))),
    Route("POST", f"{Q}/pop", "lease messages (with block_ms, wait for one)", api.pop,
          "PopRequest", "Messages", codes=("NOQUEUE",)),
    Route("POST", f"{M}/ack", "acknowledge a delivery", api.ack, "AckRequest", "Id",
          codes=("NOQUEUE", "NOMSG", "NOLEASE")),
    Route("POST", f"{M}/nack", "give a delivery back (or to the DLQ after the last attempt)",
          api.nack, "NackRequest", "Id", codes=("NOQUEUE", "NOMSG", "NOLEASE")),
    Route("POST", f"{M}/extend", "keep a message invisible for seconds more", api.extend,
          "ExtendRequest", "Id", codes=("NOQUEUE", "NOMSG", "NOLEASE")),
    Route("POST", f"{M}/cancel", "remove a message in any state", api.cancel, "Empty", "Id",
          codes=("NOQUEUE", "NOMSG")),
    Route("POST", f"{M}/reschedule", "a ready or delayed message falls due delay s from now",
          api.reschedule, "RescheduleRequest", "Id", codes=("NOQUEUE", "NOMSG")),
    Route("POST", f"{Q}/redrive", "move DLQ messages back to this queue or another",
          api.redrive, "RedriveRequest", "Moved", codes=("NOQUEUE",)),
    Route("POST", f"{Q}/purge", "remove the messages of one part of the queue", api.purge,
          "PurgeRequest", "Removed", codes=("NOQUEUE",)),
    Route("POST", f"{Q}/pause", "stop delivering (pushes and acks go on)", api.pause,
          "Empty", "Paused", codes=("NOQUEUE",)),
    Route("POST", f"{Q}/resume", "deliver again", api.resume, "Empty", "Paused",
          codes=("NOQUEUE",)),
)

# What any route may answer besides its own codes, by status.
COMMON_ERRORS = {
    400: "a malformed request, query or JSON body, or a bad value (ERR)",
    401: "no or wrong credentials (NOAUTH, WRONGPASS)",
    403: "refused by the ACL (NOPERM), protected mode, or a Host or Origin that is not "
         "allowed",
    405: "another method is served at this path",
    408: "the request took longer than http-timeout to arrive",
    413: "the body is larger than http-max-request-size",
    415: "a POST, PUT or DELETE without Content-Type: application/json",
    431: "the request head is too large",
    500: "a bug (internal error)",
    503: "maxclients reached, or the AOF is still loading (LOADING)",
}


def _shape(schema_name: str) -> str:
    """A reply schema in a few words: `{id}`, `{messages: [Message]}`, `Queue`."""
    schema = SCHEMAS[schema_name]
    if schema.get("additionalProperties") is not False:
        return schema_name
    fields = []
    for name, value in schema["properties"].items():
        item = value.get("items", {}).get("$ref", "").rpartition("/")[2]
        fields.append(f"{name}: [{item}]" if item else name)
    return "`{" + ", ".join(fields) + "}`"


def reference() -> str:
    """The README's table of routes, in Markdown."""
    lines = ["| method | path | JSON body | reply | what |", "|---|---|---|---|---|"]
    for route in ROUTES:
        body = ""
        if route.body is not None:
            properties = SCHEMAS[route.body]["properties"]
            required = SCHEMAS[route.body]["required"]
            body = ", ".join(f"`{name}`" if name in required else f"[`{name}`]"
                             for name in properties)
        reply = _shape(route.reply) if route.reply else route.media
        query = " ".join(f"[`{name}`]" for name, _, _ in route.query)
        path = f"`{route.path}`" + (f" ?{query}" if query else "")
        lines.append(f"| {route.method} | {path} | {body} | {'/'.join(map(str, route.ok))} "
                     f"{reply} | {route.summary} |")
    return "\n".join(lines)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ROUTES."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        responses: dict[str, Any] = {}
        content: dict[str, Any] = {route.media: {}}
        if route.reply is not None:
            content = {route.media: {"schema": _ref(route.reply)}}
        for status in route.ok:
            responses[str(status)] = {"description": route.summary, "content": content}
        codes_by_status: dict[int, list[str]] = {}
        for code in ("ERR", "NOPERM", "LOADING",
                     *(("NOAUTH", "WRONGPASS") if route.auth else ()), *route.codes):
            codes_by_status.setdefault(STATUS_BY_CODE[code], []).append(code)
        for status, text in COMMON_ERRORS.items():
            if status == 401 and not route.auth:
                continue
            if status == 415 and route.method in ("GET", "HEAD"):
                continue
            codes_by_status.setdefault(status, [])
        for status, codes in sorted(codes_by_status.items()):
            text = COMMON_ERRORS.get(status, "")
            responses[str(status)] = {
                "description": "; ".join(filter(None, [", ".join(codes), text])) or "error",
                "content": {"application/json": {"schema": _ref("Error")}},
                "x-error-codes": codes}
        operation: dict[str, Any] = {"summary": route.summary, "responses": responses}
        parameters = [{"name": name, "in": "path", "required": True, "schema": schema}
                      for name, schema in (("queue", STR), ("id", _int(1)))
                      if "{" + name + "}" in route.path]
        parameters += [{"name": name, "in": "query", "required": False, "schema": schema,
                        "description": text} for name, schema, text in route.query]
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            operation["requestBody"] = {"required": False, "content": {
                "application/json": {"schema": _ref(route.body)}}}
        if not route.auth:
            operation["security"] = []
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "valqd", "version": __version__,
                 "description": "valqd's queues over HTTP. Every call goes through the same "
                 "commands as RESP clients; errors carry the same codes."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "password": {"type": "http", "scheme": "bearer",
                         "description": "Authorization: Bearer <requirepass>"},
            "user": {"type": "http", "scheme": "basic",
                     "description": "an ACL user and password (default: requirepass)"}}},
        "security": [{"password": []}, {"user": []}],
    }
