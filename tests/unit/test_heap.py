"""scheduler.live.heap: what survives a cycle is frozen; a full collection now and then frees frozen cycles."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from scheduler.live.heap import LongLivedHeap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_survivors_are_frozen_and_a_frozen_cycle_is_freed_by_the_next_full_collection() -> None:
    now = [0.0]
    heap = LongLivedHeap(full_every_s=60.0, clock=lambda: now[0])
    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    heap.after_cycle()
    assert gc.get_freeze_count() > 0
    del a, b  # a garbage cycle now, but frozen: young and ordinary collections leave it
    gc.collect()
    now[0] = 30.0
    heap.after_cycle()
    assert alive() is not None
    now[0] = 61.0
    heap.after_cycle()  # the hourly (here: minutely) full collection
    assert alive() is None
