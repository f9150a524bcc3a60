"""RESP2/RESP3: request parsing (hiredis) and reply encoding. No sockets, no engine."""

from .parser import NEED_DATA, RequestParser, split_inline

__all__ = ["NEED_DATA", "RequestParser", "split_inline"]
