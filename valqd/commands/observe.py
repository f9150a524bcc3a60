"""SLOWLOG and the Prometheus text exposition of queue and process figures."""

import collections
import os
import resource
import time

from .. import __version__
from ..errors import CommandError
from ..resp import encode
from .args import subcommand_syntax_error
from .context import ServerState, Session, SlowLogEntry

SLOWLOG_MAX_ARGS = 32
SLOWLOG_MAX_ARG_LEN = 128


class SlowLog:
    """The commands that took longer than `slowlog-log-slower-than` microseconds."""

    def __init__(self, max_len: int = 128) -> None:
        self.entries: collections.deque[SlowLogEntry] = collections.deque(maxlen=max_len)
        self.next_id = 0

    def resize(self, max_len: int) -> None:
        self.entries = collections.deque(self.entries, maxlen=max_len)

    def record(self, session: Session, argv: list[bytes], duration_us: int) -> None:
        shown = [a if len(a) <= SLOWLOG_MAX_ARG_LEN else
                 a[:SLOWLOG_MAX_ARG_LEN] + b"... (%d more bytes)" % (len(a) - SLOWLOG_MAX_ARG_LEN)
                 for a in argv[:SLOWLOG_MAX_ARGS]]
        if len(argv) > SLOWLOG_MAX_ARGS:
            shown[-1] = b"... (%d more arguments)" % (len(argv) - SLOWLOG_MAX_ARGS + 1)
        self.entries.appendleft((self.next_id, int(time.time()), duration_us, shown,
                                 session.addr.encode(), session.name))
        self.next_id += 1


def slowlog_get(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """SLOWLOG GET [count] -> the newest entries (10 by default, -1 for all): id, unix time,
    microseconds, arguments, client address, client name."""
    count = 10
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    if len(argv) == 3:
        try:
            count = int(argv[2])
        except ValueError:
            count = -2
        if count < -1:
            raise CommandError("count should be greater than or equal to -1")
    entries = list(state.slowlog.entries)
    if count != -1:
        entries = entries[:count]
    return encode.array([encode.array([
        encode.integer(entry_id), encode.integer(at), encode.integer(duration),
        encode.bulk_array(args), encode.bulk(addr), encode.bulk(name)])
        for entry_id, at, duration, args, addr, name in entries])


def slowlog_len(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """SLOWLOG LEN -> how many entries the slow log holds."""
    return encode.integer(len(state.slowlog.entries))


def slowlog_reset(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """SLOWLOG RESET -> +OK; the slow log is emptied."""
    state.slowlog.entries.clear()
    return encode.OK


# -- Prometheus ----------------------------------------------------------------------------

def rss_bytes() -> int:
    """Resident memory of this process, read cheaply from /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


QUEUE_GAUGES = (
    ("ready", "Visible messages waiting for a consumer.", lambda q, s: len(q.ready)),
    ("inflight", "Messages leased to a consumer.", lambda q, s: len(q.leases)),
    ("delayed", "Messages waiting for their due time.", lambda q, s: len(q.delayed)),
    ("dlq", "Messages in the dead-letter queue.", lambda q, s: len(q.dead)),
    ("paused", "1 while the queue is paused.", lambda q, s: int(q.paused)),
    ("blocked_consumers", "Clients blocked in a pop on the queue.",
     lambda q, s: s.blocked_consumers(q.name)),
)
COUNTER_HELP = {
    "pushed": "Messages pushed.", "delivered": "Deliveries (pops).", "acked": "Messages acked.",
    "nacked": "Deliveries given back with NACK.", "expired": "Leases that ran out.",
    "dead_lettered": "Messages moved to the dead-letter queue.",
    "dropped": "DLQ messages dropped after the retention period.",
    "deduplicated": "Pushes answered from the dedup window.",
    "redriven": "DLQ messages moved back by REDRIVE.", "cancelled": "Messages cancelled.",
}


def _label(value: bytes) -> str:
    text = value.decode("utf-8", "backslashreplace")
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(metric: str, kind: str, help_text: str, samples: list[str]) -> list[str]:
    return [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}", *samples]


def render_metrics(state: ServerState, extra: dict[str, tuple[str, str, float]],
                   with_queues: bool = True) -> str:
    """The Prometheus text format (version 0.0.4). `extra` holds process figures:
    name -> (type, help, value).

    Totals over every queue always; series per queue only for the first
    `metrics-queue-series` queues in name order, so that a scrape costs the same with
    100,000 queues as with 100 (`valqd_queues_without_series` says how many were left out).
    Without `with_queues` (a store that is not the embedded engine): the process figures
    only.
    """
    if not with_queues:
        return "\n".join(_process_metrics(extra)) + "\n"
    engine = state.engine
    totals = engine.totals
    lines = _family("valqd_queues", "gauge", "Queues.", [f"valqd_queues {len(engine.queues)}"])
    lines += _family("valqd_messages", "gauge", "Messages of every queue, by state.", [
        f'valqd_messages{{state="{name}"}} {value}' for name, value in (
            ("ready", totals.ready), ("inflight", totals.inflight),
            ("delayed", totals.delayed), ("dlq", totals.dead))])
    for counter, help_text in COUNTER_HELP.items():
        metric = f"valqd_{counter}_total"
        lines += _family(metric, "counter", f"{help_text} Every queue, since the server "
                         "started.", [f"{metric} {engine.counters[counter]}"])
    limit = max(0, state.config.int("metrics-queue-series"))
    queues = list(engine.queues.values()[:limit]) if limit else []
    lines += _family("valqd_queues_without_series", "gauge",
                     "Queues left out of the per-queue series (metrics-queue-series).",
                     [f"valqd_queues_without_series {len(engine.queues) - len(queues)}"])
    for name, help_text, get in QUEUE_GAUGES:
        metric = f"valqd_queue_{name}"
        lines += _family(metric, "gauge", help_text, [
            f'{metric}{{queue="{_label(q.name)}"}} {get(q, state)}' for q in queues])
    metric = "valqd_queue_oldest_ready_age_seconds"
    lines += _family(metric, "gauge", "Age of the next message to be delivered.", [
        f'{metric}{{queue="{_label(q.name)}"}} {q.next_ready_age_ms(state.now) / 1000}'
        for q in queues])
    for counter, help_text in COUNTER_HELP.items():
        metric = f"valqd_queue_{counter}_total"  # text format 0.0.4: TYPE names the sample
        lines += _family(metric, "counter", f"{help_text} Since the server started.", [
            f'{metric}{{queue="{_label(q.name)}"}} {q.counters[counter]}' for q in queues])
    return "\n".join(lines + _process_metrics(extra)) + "\n"


def _process_metrics(extra: dict[str, tuple[str, str, float]]) -> list[str]:
    lines = _family("valqd_info", "gauge", "Build information.",
                    [f'valqd_info{{version="{__version__}"}} 1'])
    for metric, (kind, help_text, value) in extra.items():
        lines += _family(metric, kind, help_text, [f"{metric} {value}"])
    return lines
