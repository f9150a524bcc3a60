"""The HTTP application, sans-IO: a parsed request in, a `Response` (or a `Waiting` pop) out.

Rules every request meets, in order: a route must exist (404, or 405 naming the methods
served); `/healthz` answers at once; a request that changes state (POST, PUT, DELETE) must
say `Content-Type: application/json` (415: an HTML form, or a page of another origin without
a CORS preflight, cannot) and may not come from another `Origin` (403); credentials from
`Authorization` (Bearer with the password, or Basic with user and password) are checked by
AUTH on the request's own session, and without them a server that needs a password answers
401 with a Basic challenge (the dashboard's login); a server that needs none answers only
requests addressed to an IP address or `localhost` (403 otherwise: a DNS-rebinding page
reaches the loopback under its own host name). Then the route's handler runs its commands.
"""

import base64
import binascii
import ipaddress
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

from ..commands.context import Blocked, Session
from . import api
from .parser import Request
from .response import Response, error_response, json_response
from .routes import ROUTES, STATUS_BY_CODE, Route, openapi

CHALLENGE = (("WWW-Authenticate", 'Basic realm="valqd", charset="UTF-8"'),)
UNSAFE_METHODS = ("POST", "PUT", "DELETE")
STATIC = {"/": "index.html", "/dashboard.js": "dashboard.js", "/dashboard.css": "dashboard.css"}


@dataclass
class Waiting:
    """A pop parked until `blocked` is served; `finish(reply)` makes its response."""

    blocked: Blocked
    finish: Callable[[bytes], Response]


def _host_is_literal(host: str) -> bool:
    """Whether a Host header names an IP address or localhost (not a DNS name that an
    attacker's page could point at the loopback)."""
    if host.startswith("["):  # [IPv6]:port
        name = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # name:port or IPv4:port
        name = host.partition(":")[0]
    else:
        name = host
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _same_origin(origin: str, host: str) -> bool:
    return origin in (f"http://{host}", f"https://{host}")


def _error(exc: api.ApiError) -> Response:
    if exc.code == "ERR" and exc.message == "internal error":
        return error_response(500, exc.code, exc.message)
    headers = CHALLENGE if exc.code in ("NOAUTH", "WRONGPASS") else ()
    return error_response(STATUS_BY_CODE.get(exc.code, 400), exc.code, exc.message, headers)


class HttpApp:
    def __init__(self, execute: Callable[[Session, list[bytes]], bytes | Blocked],
                 new_session: Callable[[str, str], Session],
                 metrics: Callable[[], str], loading: Callable[[], bool],
                 users_exist: Callable[[], bool]) -> None:
        """`users_exist`: whether ACL users other than `default` exist (every route but
        /healthz then needs credentials, even when the default user has no password)."""
        self.execute = execute
        self.loading = loading
        self.users_exist = users_exist
        self.new_session = new_session
        self.metrics = metrics
        self._openapi = json.dumps(openapi(), indent=1).encode()
        self._static: dict[str, bytes] = {}

    def handle(self, request: Request, addr: str, laddr: str) -> Response | Waiting:
        method = "GET" if request.method == "HEAD" else request.method
        found = self._match(method, request.path)
        if isinstance(found, Response):
            return found
        route, params = found
        if not route.auth:  # the health route
            if self.loading():
                return error_response(503, "LOADING", "valqd is loading the dataset in memory")
            return json_response(200, {"status": "ok"})
        if method in UNSAFE_METHODS:
            media = request.header("content-type").partition(";")[0].strip().lower()
            if media != "application/json":
                return error_response(415, "ERR", "a request that changes state needs "
                                      "Content-Type: application/json")
            origin = request.header("origin")
            if origin and not _same_origin(origin, request.header("host")):
                return error_response(403, "ERR", f"requests from origin {origin} are "
                                      "not accepted")
        session = self.new_session(addr, laddr)
        session.proto = 3
        try:
            if not self._authenticate(session, request):
                return error_response(403, "ERR", "without a password, valqd answers only "
                                      "requests addressed to an IP address or localhost; "
                                      "set requirepass to use a host name")
            return self._run(route, params, request, session)
        except api.ApiError as exc:
            return _error(exc)

    def runs_no_command(self, request: Request) -> bool:
        """Whether `request` is answered without running a command (the health route, a
        path or method served by no route): a server that runs requests in threads
        answers it at once, however many threads are busy."""
        method = "GET" if request.method == "HEAD" else request.method
        found = self._match(method, request.path)
        return isinstance(found, Response) or not found[0].auth

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, Any]] | Response:
        segments = tuple(path.strip("/").split("/")) if path != "/" else ()
        allowed = []
        for route in ROUTES:
            params = _bind(route.segments, segments)
            if params is None:
                continue
            if route.method == method:
                return route, params
            allowed.append(route.method)
        if allowed:
            return error_response(405, "ERR", f"{method} is not served at {path}",
                                  (("Allow", ", ".join(allowed)),))
        return error_response(404, "ERR", f"no such route: {path}")

    def _authenticate(self, session: Session, request: Request) -> bool:
        """Run AUTH with the request's credentials, which are needed when the default user
        has a password or other users exist. False when none are needed but the request
        names a host that is not an IP address or localhost."""
        credentials = request.header("authorization")
        open_server = session.authenticated and not self.users_exist()
        if credentials:
            scheme, _, value = credentials.partition(" ")
            if scheme.lower() == "bearer":
                argv = [b"AUTH", value.strip().encode()]
            elif scheme.lower() == "basic":
                try:
                    user, colon, password = base64.b64decode(
                        value.strip(), validate=True).partition(b":")
                except (binascii.Error, ValueError):
                    raise api.ApiError("WRONGPASS", "malformed Basic credentials") from None
                if not colon:
                    raise api.ApiError("WRONGPASS", "malformed Basic credentials")
                argv = [b"AUTH", user, password]
            else:
                raise api.ApiError("NOAUTH", "Authorization must be Bearer or Basic")
            try:
                api.Call(self.execute, session)(*argv)
            except api.ApiError as exc:
                # credentials a server without a password does not need are ignored
                if not (open_server and exc.code == "ERR"):
                    raise api.ApiError("WRONGPASS" if exc.code == "ERR" else exc.code,
                                       exc.message) from None
        if not session.authenticated or (not credentials and not open_server):
            raise api.ApiError("NOAUTH", "Authentication required.")
        return not open_server or _host_is_literal(request.header("host") or "localhost")

    def _run(self, route: Route, params: dict[str, Any], request: Request,
             session: Session) -> Response | Waiting:
        if route.handler is None:
            return self._builtin(route)
        call = api.Call(self.execute, session)
        outcome = route.handler(call, request, params, api.Body(self._json_body(request)))
        if isinstance(outcome, api.Pending):
            finish = outcome.finish

            def respond(reply: bytes) -> Response:
                try:
                    return json_response(*finish(reply))
                except api.ApiError as exc:
                    return _error(exc)

            return Waiting(outcome.blocked, respond)
        return json_response(*outcome)

    @staticmethod
    def _json_body(request: Request) -> dict[str, Any]:
        if not request.body.strip():
            return {}
        try:
            value = json.loads(request.body)
        except (ValueError, RecursionError):
            raise api.ApiError("ERR", "the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise api.ApiError("ERR", "the body must be a JSON object")
        return value

    def _builtin(self, route: Route) -> Response:
        if route.path == "/metrics":
            return Response(200, self.metrics().encode(),
                            "text/plain; version=0.0.4; charset=utf-8")
        if route.path == "/api/openapi.json":
            return Response(200, self._openapi)
        name = STATIC[route.path]
        if name not in self._static:
            self._static[name] = (resources.files(__package__) / "static" / name).read_bytes()
        return Response(200, self._static[name], f"{route.media}; charset=utf-8")


def _bind(pattern: tuple[str, ...], segments: tuple[str, ...]) -> dict[str, Any] | None:
    """The path's parameters when `segments` fit `pattern`, else None. A queue name is the
    percent-decoded bytes of its segment; a message id stays raw for VALQ to check."""
    if len(pattern) != len(segments):
        return None
    params: dict[str, Any] = {}
    for want, got in zip(pattern, segments):
        if want.startswith("{"):
            if not got:
                return None
            params[want[1:-1]] = unquote_to_bytes(got)
        elif want != got:
            return None
    return params
