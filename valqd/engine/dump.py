"""The canonical dump: one text line per queue, message and dedup key, the format every
store produces so that two stores can be compared line by line (the differential test runs
the same operations on the embedded engine and on the Valkey Functions library and
compares their replies and their dumps).

A queue dumps as, in this order:

    queue NAME visibility_timeout=30 max_delivery_attempts=5 retention_period=86400
          backoff=none backoff_base=0 backoff_max=0 dedup_window=300 maxlen=0 paused=0
          id_sequence=N promote_seq=N lease_seq=N                     (one line)
    message NAME ID state=STATE at=T attempts=A priority=P enqueued_at=T promote_seq=N
          lease_no=N [reason=TEXT] body=BODY                            (one line each)
    dedup NAME KEY id=ID expires_at=T                                   (one line each)

Messages come by state (ready, inflight, delayed, dlq), each state in its own order: ready
in delivery order, inflight by (lease deadline, id), delayed by (due time, id), dlq by
(dead_at, id). `at` is the lease deadline, the due time or dead_at; 0 for a ready message.
`reason=` appears only for a message with a NACK reason. Dedup keys come by (expires_at,
key). Counters are not part of the dump: they are figures since start-up, not state.

Byte strings (NAME, BODY, TEXT, KEY) are escaped so that a line is printable ASCII with no
space: bytes 0x21..0x7E but `%` stay as they are, every other byte is `%XX` (upper-case hex).
Numbers are decimal integers. Queues come in name order (byte order).
"""

from typing import Mapping

from . import record
from .queue import Queue
from .record import ID_MASK

STATES = ("ready", "inflight", "delayed", "dlq")
_KEPT = frozenset(range(0x21, 0x7F)) - {ord("%")}
_ESCAPES = [chr(b) if b in _KEPT else "%%%02X" % b for b in range(256)]


def escape(raw: bytes | memoryview) -> str:
    """A byte string as one printable ASCII word."""
    return "".join([_ESCAPES[b] for b in bytes(raw)])


def dump_queue(q: Queue) -> list[str]:
    """The canonical lines of one queue (see the module docstring)."""
    s, name = q.settings, escape(q.name)
    lines = [f"queue {name} visibility_timeout={s.visibility_timeout} "
             f"max_delivery_attempts={s.max_delivery_attempts} "
             f"retention_period={s.retention_period} backoff={s.backoff} "
             f"backoff_base={s.backoff_base} backoff_max={s.backoff_max} "
             f"dedup_window={s.dedup_window} maxlen={s.maxlen} paused={int(q.paused)} "
             f"id_sequence={q.id_sequence} promote_seq={q.promote_seq} "
             f"lease_seq={q.lease_seq}"]
    for index in (q.ready, q.lease_order, q.delayed_order, q.dead_order):
        for key in index:
            message_id = key & ID_MASK
            rec = q.records[message_id]
            enqueued_at, promote_seq, lease_no, attempts, priority = record.unpack(rec)
            state, at = q.state_at(message_id)
            reason = q.reasons.get(message_id)
            lines.append(
                f"message {name} {message_id} state={state} at={at} attempts={attempts} "
                f"priority={priority} enqueued_at={enqueued_at} promote_seq={promote_seq} "
                f"lease_no={lease_no} "
                + ("" if reason is None else f"reason={escape(reason)} ")
                + f"body={escape(record.body_of(rec))}")
    for expires_at, key in q.dedup_order:
        lines.append(f"dedup {name} {escape(key)} id={q.dedup[key][0]} "
                     f"expires_at={expires_at}")
    return lines


def dump(queues: Mapping[bytes, Queue]) -> list[str]:
    """The canonical lines of every queue of `queues` (name -> Queue), in name order."""
    lines: list[str] = []
    for name in sorted(queues):
        lines += dump_queue(queues[name])
    return lines
