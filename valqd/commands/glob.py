"""Valkey's glob patterns (KEYS, SCAN MATCH, CONFIG GET, PSUBSCRIBE) on bytes.

`*` any run, `?` one byte, `[abc]`, `[^a-z]` classes, `\\x` a literal x. Patterns are
compiled to regular expressions once and cached.
"""

import functools
import re
from typing import Callable


@functools.lru_cache(maxsize=256)
def compile_glob(pattern: bytes, nocase: bool = False) -> re.Pattern[bytes]:
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            out += b".*"
        elif c == b"?":
            out += b"."
        elif c == b"\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i:i + 1])
        elif c == b"[":
            end = i + 1
            if end < n and pattern[end:end + 1] == b"^":
                end += 1
            while end < n and pattern[end:end + 1] != b"]":
                end += 2 if pattern[end:end + 1] == b"\\" else 1
            if end >= n:  # no closing bracket: Valkey matches up to the end of the pattern
                end = n
            body = pattern[i + 1:end]
            negate = body.startswith(b"^")
            if negate:
                body = body[1:]
            cls = bytearray()
            j = 0
            while j < len(body):
                ch = body[j:j + 1]
                if ch == b"\\" and j + 1 < len(body):
                    j += 1
                    ch = body[j:j + 1]
                if j + 2 < len(body) and body[j + 1:j + 2] == b"-":
                    lo, hi = sorted((ch, body[j + 2:j + 3]))
                    cls += re.escape(lo) + b"-" + re.escape(hi)
                    j += 3
                    continue
                cls += re.escape(ch)
                j += 1
            if cls:
                out += (b"[^" if negate else b"[") + bytes(cls) + b"]"
            else:  # an empty class matches nothing; negated, any byte
                out += b"[\\x00-\\xff]" if negate else b"[^\\x00-\\xff]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    flags = re.DOTALL | (re.IGNORECASE if nocase else 0)
    return re.compile(bytes(out) + b"\\Z", flags)


def glob_match(pattern: bytes, text: bytes, nocase: bool = False) -> bool:
    if pattern == b"*":
        return True
    return compile_glob(pattern, nocase).match(text) is not None


_SPECIAL = frozenset(b"*?[\\")


def glob_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """A test of one pattern, cheapest for the common shapes: a literal name compares,
    `prefix*` checks the start, anything else runs the compiled expression."""
    if not _SPECIAL.intersection(pattern):
        return lambda text: text == pattern
    head = pattern[:-1]
    if pattern.endswith(b"*") and not _SPECIAL.intersection(head):
        return lambda text: text.startswith(head)
    regex = compile_glob(pattern)
    return lambda text: regex.match(text) is not None
