"""HTTP: the JSON API, the dashboard, /metrics and /healthz. No sockets: the server feeds
bytes to `RequestParser` and hands each request to `HttpApp`."""

from .app import HttpApp, Waiting
from .parser import HttpError, RequestParser

__all__ = ["HttpApp", "HttpError", "RequestParser", "Waiting"]
