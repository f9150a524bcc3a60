"""A sorted list of keys, for a queue's indexes (ready, leases, delays, DLQ, dedup keys).

The same layout as sortedcontainers' SortedList, which these indexes used before: the keys
sit in sorted sublists of at most `2 * LOAD` keys, and `maxes` holds each sublist's last key,
so that one bisect over `maxes` and one within a sublist find any key. What it keeps is what
a queue asks of an index: add, remove, the first key, iteration in order from the start.
It is compiled with mypyc with the rest of the engine (sortedcontainers is not, and was
the largest interpreted cost of a delivery and an ack); the cases a queue runs most, a key
larger than every other (a new id, a later deadline) and the first key (the head of the
queue, the earliest deadline), touch one end of one sublist.

Removing the first key moves nothing: the first sublist keeps a `head` offset, and its slots
before it are spent (set to None, so that they hold no key alive); a key smaller than every
other takes the spent slot before the head, when there is one. `del sub[0]` instead moved
every reference of the sublist, up to `2 * LOAD` of them, on every POP and every ACK (a fifth
of a pipelined POP's instructions, measured). The spent slots go in one move once they are as
many as the live ones, so a removal moves at most one reference on average.

Keys are `Any`: compiled, an `int` parameter is a machine integer, and putting one into a
list would box it into a new object, while a ready message's key is the very object that
keys its record (see Queue.add). Every operation is O(log n) plus a move of at most
`2 * LOAD` references within one sublist, except `__getitem__` and `islice`, which walk the
sublists before the position they start at.
"""

from bisect import bisect_left, bisect_right, insort
import itertools
from itertools import chain
from typing import Any, Final, Iterator

LOAD: Final = 1000  # a sublist splits past 2 * LOAD keys, and merges with a neighbour below LOAD / 2


class OrderIndex:
    """Keys in ascending order; a key may be held more than once.

    Invariants: every sublist holds at least one live key; `_maxes[i]` is `_lists[i][-1]`;
    `_lists[0][:_head]` are spent slots (None), `_head` is 0 when there is no sublist; the
    sizes that split and merge count live keys only."""

    def __init__(self) -> None:
        self._lists: list[list[Any]] = []
        self._maxes: list[Any] = []
        self._head = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Any]:
        lists = self._lists
        if not self._head:
            return chain.from_iterable(lists)
        return chain(itertools.islice(lists[0], self._head, None),
                     chain.from_iterable(lists[1:]))

    def __repr__(self) -> str:
        return f"OrderIndex({list(self)!r})"

    def first(self) -> Any:
        """The smallest key; IndexError when empty."""
        if not self._len:
            raise IndexError("first of an empty index")
        return self._lists[0][self._head]

    def __getitem__(self, index: int) -> Any:
        """The key at `index` (negative counts from the end): O(1) at either end."""
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError("index out of range")
        index += self._head  # a position in the sublists, spent slots included
        for sub in self._lists:
            if index < len(sub):
                return sub[index]
            index -= len(sub)
        raise AssertionError("unreachable: the sublists hold _len keys")

    def islice(self, start: int, stop: int) -> list[Any]:
        """The keys at positions start..stop-1 (as many as there are), in order."""
        taken: list[Any] = []
        if stop <= start:
            return taken
        start += self._head
        stop += self._head
        for sub in self._lists:
            if start >= len(sub):
                start -= len(sub)
                stop -= len(sub)
                continue
            taken.extend(sub[start:stop])
            stop -= len(sub)
            start = 0
            if stop <= 0:
                break
        return taken

    def add(self, key: Any) -> None:
        maxes = self._maxes
        self._len += 1
        if not maxes:
            self._lists.append([key])
            maxes.append(key)
            return
        last = len(maxes) - 1
        head = self._head
        if key >= maxes[last]:  # the usual case: a new id, a later deadline
            sub = self._lists[last]
            sub.append(key)
            maxes[last] = key
            pos = last
        elif head and key < self._lists[0][head]:
            # a new first key (a NACK or a lease running out puts its message back at the
            # head of the queue) takes the spent slot before the head: nothing moves
            self._head = head - 1
            self._lists[0][head - 1] = key
            return
        else:
            pos = bisect_right(maxes, key)
            sub = self._lists[pos]
            insort(sub, key, head if pos == 0 else 0)
        if len(sub) > 2 * LOAD and self._live(pos) > 2 * LOAD:
            self._split(pos)

    def remove(self, key: Any) -> None:
        """Remove one occurrence of `key`; ValueError when there is none."""
        lists = self._lists
        if lists:
            first = lists[0][self._head]
            # the usual case, the head; often the very key object (a lease's, see Queue)
            if first is key or first == key:
                self._delete_first()
                return
        pos = bisect_left(self._maxes, key)
        if pos < len(lists):
            sub = lists[pos]
            at = bisect_left(sub, key, self._head if pos == 0 else 0)
            if sub[at] == key:
                self._delete(pos, at)
                return
        raise ValueError(f"{key!r} is not in the index")

    def pop_first(self) -> Any:
        """Remove and return the smallest key; IndexError when empty."""
        if not self._len:
            raise IndexError("pop from an empty index")
        key = self._lists[0][self._head]
        self._delete_first()
        return key

    def clear(self) -> None:
        self._lists = []
        self._maxes = []
        self._head = 0
        self._len = 0

    def _live(self, pos: int) -> int:
        """How many keys the sublist at `pos` holds, spent slots not counted."""
        return len(self._lists[pos]) - (self._head if pos == 0 else 0)

    def _delete_first(self) -> None:
        """Remove the smallest key: its slot is spent, and nothing moves (see the module
        docstring) until the spent slots are as many as the live ones."""
        lists = self._lists
        sub = lists[0]
        head = self._head
        self._len -= 1
        if head + 1 == len(sub):
            del lists[0]
            del self._maxes[0]
            self._head = 0
            return
        sub[head] = None
        head += 1
        self._head = head
        live = len(sub) - head
        if live < LOAD // 2 and len(lists) > 1:
            self._merge(0)
        elif head >= live:
            self._compact()

    def _compact(self) -> None:
        """Drop the first sublist's spent slots, in one move of its live keys."""
        if self._head:
            del self._lists[0][:self._head]
            self._head = 0

    def _delete(self, pos: int, at: int) -> None:
        """Remove the key at `at` of the sublist at `pos`, which is not the first key (the
        first sublist keeps at least it: it cannot empty)."""
        lists = self._lists
        sub = lists[pos]
        del sub[at]
        self._len -= 1
        if not sub:
            del lists[pos]
            del self._maxes[pos]
            return
        if at == len(sub):
            self._maxes[pos] = sub[-1]
        if self._live(pos) < LOAD // 2 and len(lists) > 1:
            self._merge(pos)

    def _split(self, pos: int) -> None:
        """Halve the sublist at `pos`, which has grown past 2 * LOAD keys."""
        if pos == 0:
            self._compact()
        sub = self._lists[pos]
        half = len(sub) // 2
        # two new lists of exactly their size, rather than the lower half shrunk in place:
        # most sublists of a backlog are never touched again, and a shrunk list would keep
        # its spare room, or leave a hole in the heap as large as a sublist (7 bytes per
        # message in all, measured)
        lower, upper = sub[:half], sub[half:]
        self._lists[pos] = lower
        self._lists.insert(pos + 1, upper)
        self._maxes[pos] = lower[-1]
        self._maxes.insert(pos + 1, upper[-1])

    def _merge(self, pos: int) -> None:
        """Fold the short sublist at `pos` into a neighbour (and split the result again if
        it grew too long), so that the number of sublists stays about n / LOAD."""
        if pos == len(self._lists) - 1:
            pos -= 1
        if pos == 0:
            self._compact()
        lists, maxes = self._lists, self._maxes
        lists[pos].extend(lists[pos + 1])
        maxes[pos] = maxes[pos + 1]
        del lists[pos + 1]
        del maxes[pos + 1]
        if len(lists[pos]) > 2 * LOAD:
            self._split(pos)
