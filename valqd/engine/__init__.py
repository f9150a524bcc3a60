"""Pure queue logic over an injected clock: no I/O, no asyncio, no wall clock."""

from .engine import (ATTEMPTS_RANGE, EXTEND_RANGE, MAX_DELAY, RETENTION_RANGE,
                     VISIBILITY_RANGE, Engine, make_settings)
from .queue import Queue, QueueSettings

__all__ = ["Engine", "Queue", "QueueSettings", "make_settings", "MAX_DELAY",
           "VISIBILITY_RANGE", "ATTEMPTS_RANGE", "RETENTION_RANGE", "EXTEND_RANGE"]
