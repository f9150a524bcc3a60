"""Pure queue logic over an injected clock: no I/O, no asyncio, no wall clock."""

from .databases import Databases
from .engine import (ATTEMPTS_RANGE, EXTEND_RANGE, MAX_DELAY, PRIORITY_RANGE,
                     RETENTION_RANGE, TICK_BUDGET, VISIBILITY_RANGE, Delivery, Engine, Journal,
                     make_settings)
from .queue import COUNTERS, Effect, Queue, QueueSettings

__all__ = ["Databases", "Engine", "Queue", "QueueSettings", "Delivery", "make_settings", "MAX_DELAY",
           "VISIBILITY_RANGE", "ATTEMPTS_RANGE", "RETENTION_RANGE", "EXTEND_RANGE",
           "PRIORITY_RANGE", "COUNTERS", "TICK_BUDGET", "Effect", "Journal"]
