"""OrderIndex (valqd/engine/order.py), the sorted index of a queue's messages: the same
answers as a plain sorted list under random adds and removals, across sublist splits and
merges, and its errors."""

import random
from bisect import insort

import pytest

from valqd.engine.order import LOAD, OrderIndex


def check(index: OrderIndex, model: list[int]) -> None:
    assert len(index) == len(model)
    assert bool(index) == bool(model)
    assert list(index) == model
    if model:
        assert index.first() == model[0]
        assert index[0] == model[0] and index[-1] == model[-1]
        middle = len(model) // 2
        assert index[middle] == model[middle]
    lists, head = index._lists, index._head
    if lists:
        assert all(slot is None for slot in lists[0][:head])  # spent slots hold no key
        assert head <= len(lists[0]) - head  # compacted once as many as the live keys
    else:
        assert head == 0
    live = [len(sub) - (head if at == 0 else 0) for at, sub in enumerate(lists)]
    assert all(live)  # no empty sublist
    assert all(size <= 2 * LOAD for size in live)
    assert index._maxes == [sub[-1] for sub in lists]


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_a_sorted_list(seed: int) -> None:
    rng = random.Random(seed)
    index, model = OrderIndex(), []
    span = rng.choice([50, 5000, 10**6, 1 << 140])  # duplicates, and keys past 64 bits
    for step in range(12000):
        roll = rng.random()
        if roll < 0.45 or not model:
            key = rng.randrange(-span, span)
            index.add(key)
            insort(model, key)
        elif roll < 0.55:
            key = model[-1] + rng.randrange(0, 3)  # the usual case: after every other key
            index.add(key)
            insort(model, key)
        elif roll < 0.75:
            key = rng.choice(model)
            index.remove(key)
            model.remove(key)
        elif roll < 0.9:
            assert index.pop_first() == model.pop(0)
        else:
            start = rng.randrange(0, len(model) + 2)
            stop = start + rng.randrange(0, 30)
            assert index.islice(start, stop) == model[start:stop]
        if step % 997 == 0:
            check(index, model)
    check(index, model)
    while model:  # drain: merges down to one sublist, then none
        key = rng.choice(model)
        index.remove(key)
        model.remove(key)
    check(index, model)


def test_fifo_keys_fill_and_drain_across_sublists() -> None:
    index = OrderIndex()
    n = 5 * 2 * LOAD + 17
    for key in range(n):
        index.add(key)
    assert len(index._lists) > 4
    check(index, list(range(n)))
    assert index.islice(2 * LOAD - 1, 2 * LOAD + 2) == [2 * LOAD - 1, 2 * LOAD, 2 * LOAD + 1]
    for key in range(n // 2):
        assert index.pop_first() == key
    for key in range(n // 2, n):
        index.remove(key)
    check(index, [])


def test_head_removals_move_nothing_until_the_spent_slots_match_the_live_keys() -> None:
    """A queue at a steady length: each POP removes the head, each PUSH adds at the end.
    The first sublist is compacted only once its spent slots are as many as its keys."""
    index, model = OrderIndex(), list(range(3 * LOAD))
    for key in model:
        index.add(key)
    first = index._lists[0]
    size = len(first)
    spent = size // 2
    for step in range(spent - 1):
        assert index.pop_first() == model.pop(0)
        index.add(model[-1] + 1)
        model.append(model[-1] + 1)
        assert index._lists[0] is first and index._head == step + 1
    check(index, model)
    assert index.islice(0, 3) == model[:3] and index[LOAD] == model[LOAD]
    assert index.pop_first() == model.pop(0)  # the half of the sublist is spent: compacted
    assert index._head == 0 and index._lists[0] is first and len(first) == size - spent
    for step in range(10 * LOAD):  # steady churn at the head and both ends
        key = model[0] if step % 3 else model[len(model) // 2]
        index.remove(key)
        model.remove(key)
        index.add(model[-1] + 1)
        model.append(model[-1] + 1)
        if step % 7 == 0:
            index.add(model[0] - 1)
            model.insert(0, model[0] - 1)
        if step % 499 == 0:
            check(index, model)
    check(index, model)


def test_a_key_returning_to_the_head_takes_the_spent_slot_before_it() -> None:
    """A NACK puts its message back at the head: after a POP, the key goes into the slot
    the POP spent, and nothing moves; with no spent slot it is inserted as usual."""
    index, model = OrderIndex(), list(range(10, 3 * LOAD))
    for key in model:
        index.add(key)
    first = index._lists[0]
    index.add(5)  # no spent slot yet
    model.insert(0, 5)
    assert index._head == 0 and index._lists[0] is first
    for _ in range(3):
        key = index.pop_first()
        assert key == model.pop(0) and index._head == 1
        index.add(key)  # back where it was
        model.insert(0, key)
        assert index._head == 0 and index._lists[0] is first
    assert (index.pop_first(), index.pop_first()) == (5, 10)  # two spent slots
    del model[:2]
    index.add(model[0])  # equal to the first key: inserted after it, no spent slot taken
    model.insert(0, model[0])
    assert index._head == 2
    index.add(7)
    model.insert(0, 7)
    assert index._head == 1
    check(index, model)


def test_tuples_order_as_tuples() -> None:
    index = OrderIndex()
    for pair in [(5, b"b"), (5, b"a"), (1, b"z")]:
        index.add(pair)
    assert list(index) == [(1, b"z"), (5, b"a"), (5, b"b")]
    assert index.pop_first() == (1, b"z")


def test_errors() -> None:
    index = OrderIndex()
    with pytest.raises(IndexError):
        index.first()
    with pytest.raises(IndexError):
        index.pop_first()
    with pytest.raises(IndexError):
        index[0]
    with pytest.raises(ValueError):
        index.remove(3)
    index.add(3)
    index.add(7)
    with pytest.raises(ValueError):
        index.remove(5)  # within the range, absent
    with pytest.raises(ValueError):
        index.remove(9)  # past the last key
    with pytest.raises(IndexError):
        index[2]
    with pytest.raises(IndexError):
        index[-3]
    assert index.islice(1, 1) == [] and index.islice(5, 9) == []
    assert repr(index) == "OrderIndex([3, 7])"
    index.clear()
    check(index, [])
