"""Keeping CPython's cyclic garbage collector off the objects a long-running service holds.

At center scale the scheduler service holds about two million tracked objects (100,000 pending jobs with their
specs, 10,000 nodes' state, the allocations), and every step allocates about as many new ones as there are
pending jobs (decisions, reasons), many of which live until the next step. CPython runs a *full* collection,
which walks every tracked object, whenever the objects that survived into the oldest generation since the last
one reach a quarter of it: that was every other step, and it cost 1.5 s on a step of 0.7 s (10,000 nodes,
87,000 pending jobs, ``benchmarks/README.md``, issue 18).

:class:`LongLivedHeap` moves whatever survived a cycle into the permanent generation (:func:`gc.freeze`, O(1)),
so that a collection walks only what was allocated since. Reference counting still frees frozen objects the
moment nothing refers to them; only *cyclic* garbage that was frozen before it became garbage would stay, so
every ``full_every_s`` the heap is unfrozen and collected in full once (one slow cycle an hour by default)::

    >>> heap = LongLivedHeap(full_every_s=3600.0, clock=lambda: 0.0)
    >>> heap.after_cycle()
    >>> gc.get_freeze_count() > 0
    True
    >>> gc.unfreeze()
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


class LongLivedHeap:
    """Call :meth:`after_cycle` between cycles of a long-running loop."""

    def __init__(self, full_every_s: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.full_every_s = full_every_s
        self.clock = clock
        self._last_full = clock()

    def after_cycle(self) -> None:
        now = self.clock()
        if now - self._last_full >= self.full_every_s:
            gc.unfreeze()
            gc.collect()
            self._last_full = now
        else:
            # The young generations first: garbage cycles the cycle just made are freed, not frozen.
            gc.collect(1)
        gc.freeze()
