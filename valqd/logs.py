"""Log levels, line formats and the handler of the `valqd` logger.

Valkey's four levels: `debug`, `verbose` (between Python's DEBUG and INFO), `notice` (INFO)
and `warning`; `nothing` turns logging off. What each level adds: `notice` the lifecycle
(start, listeners, loading, rewrites, shutdown, refused clients summed up a line a second);
`verbose` the configuration in effect at start, every refused client, protocol errors with
the peer, commands slower than `slowlog-log-slower-than`, clients connecting and leaving;
`debug` every setting at start. Lines are Valkey's shape, or JSON lines with
`--log-format json`.
"""

import json
import logging
import sys
import time
from typing import Any

VERBOSE = 15
logging.addLevelName(VERBOSE, "VERBOSE")
LEVELS = {"debug": logging.DEBUG, "verbose": VERBOSE, "notice": logging.INFO,
          "warning": logging.WARNING, "nothing": logging.CRITICAL + 1}
LEVEL_NAMES = {logging.DEBUG: "debug", VERBOSE: "verbose", logging.INFO: "notice",
               logging.WARNING: "warning", logging.ERROR: "warning",
               logging.CRITICAL: "warning"}
_MARKS = {logging.DEBUG: ".", VERBOSE: "-", logging.INFO: "*", logging.WARNING: "#",
          logging.ERROR: "#", logging.CRITICAL: "#"}


class ValkeyStyle(logging.Formatter):
    """`pid:M 23 Nov 2026 07:40:00.123 * message`, the shape of Valkey's log lines; the
    role letter is M for the server, W for a worker."""

    def __init__(self, role: str = "M") -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%d %b %Y %H:%M:%S", time.localtime(record.created))
        text = (f"{record.process}:{self.role} {stamp}.{int(record.msecs):03d} "
                f"{_MARKS.get(record.levelno, '*')} {record.getMessage()}")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonLines(logging.Formatter):
    """One JSON object a line: `ts` (UTC, ISO 8601 with milliseconds), `pid`, `role`,
    `level` (Valkey's name), `msg`, and `exc` when there is a traceback."""

    def __init__(self, role: str = "M") -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z", "pid": record.process,
            "role": self.role, "level": LEVEL_NAMES.get(record.levelno, "notice"),
            "msg": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


FORMATS = {"valkey": ValkeyStyle, "json": JsonLines}


def setup(logger_name: str, level: str, log_format: str = "valkey", logfile: str = "",
          role: str = "M") -> logging.Logger:
    """Send `logger_name`'s records at `level` and above to `logfile` (or standard error)."""
    handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATS[log_format](role))
    logger = logging.getLogger(logger_name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(LEVELS[level])
    return logger
