"""Interleaved rounds: every target measured back to back within a round, the order rotated
from round to round, several rounds.

A shared machine's load comes and goes over minutes; one sample per target taken minutes
apart compares the machine's moments more than the servers (CPython's pipelined cycle came
out 1.00, 1.28, 0.84 and 0.99x Valkey-Lua's in four such runs). Within a round the targets
are seconds apart, so a ratio between two of them in the same round is what the servers
differ by; rotating the order keeps any one target from always following the same
neighbour or always running first. Each target's figures are reported as min, median and
max over the rounds, and every ratio round by round.
"""

import statistics
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """The order of round `round_index`: the list shifted left by the round's number."""
    if not items:
        return []
    k = round_index % len(items)
    return [*items[k:], *items[:k]]


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    """{min, median, max, rounds} of one figure over the rounds (None where a round had no
    figure; those are left out of min, median and max)."""
    present = [v for v in values if v is not None]
    return {"min": min(present) if present else None,
            "median": statistics.median(present) if present else None,
            "max": max(present) if present else None, "rounds": list(values)}


def ratios(mine: Sequence[float | None], theirs: Sequence[float | None]) -> list[float | None]:
    """Round by round: mine / theirs (None where either is missing or theirs is 0)."""
    return [a / b if a is not None and b else None for a, b in zip(mine, theirs)]
