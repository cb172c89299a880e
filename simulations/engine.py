"""A tiny discrete-event engine: a virtual clock and one binary heap of timestamped events.

Every event costs O(log n) (one ``heappush``, one ``heappop``); nothing is scanned per tick, so a replay of
millions of jobs stays fast. Events at the same time run in a fixed order of their *kind* (finishes and
failures free capacity before arrivals ask for it, and the scheduling pass runs last), then in the order they
were scheduled, so a run is fully deterministic::

    >>> from simulations.engine import Engine, EventKind
    >>> engine = Engine()
    >>> seen = []
    >>> engine.on(EventKind.ARRIVAL, lambda ev: seen.append((ev.time, ev.kind.name, ev.payload)))
    >>> engine.on(EventKind.FINISH, lambda ev: seen.append((ev.time, ev.kind.name, ev.payload)))
    >>> _ = engine.schedule(5.0, EventKind.ARRIVAL, "b")
    >>> _ = engine.schedule(5.0, EventKind.FINISH, "a")
    >>> engine.run()
    2
    >>> seen
    [(5.0, 'FINISH', 'a'), (5.0, 'ARRIVAL', 'b')]

Cancelling is lazy: :meth:`Engine.cancel` marks the event and the loop drops it when it surfaces (still
O(log n)). Handlers may schedule further events, but never in the past.

Like SimPy, generator *processes* are supported for small models and tests: a process yields delays and is
resumed that much later (:meth:`Engine.process`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class EventKind(IntEnum):
    """Kinds of event; the value is the tie-break order among events that share a timestamp.

    Capacity is returned (finish, failure, preemption, node failure) before it is asked for (arrival), and the
    scheduling pass (``SCHEDULE``) comes after everything else at that instant so that one pass sees them all.
    """

    FINISH = 0
    FAILURE = 1
    PREEMPTION = 2
    NODE_FAILURE = 3
    NODE_REPAIR = 4
    CHECKPOINT = 5
    ARRIVAL = 6
    START = 7
    #: The replay's own clock: reports seen at the live service's next cycle, wake-ups, forecasts.
    TICK = 8
    PROCESS = 9
    SCHEDULE = 10


@dataclass(slots=True, eq=False)
class Event:
    """One scheduled event. The heap holds ``(time, kind, seq, event)`` tuples: ``seq`` is unique, so the
    (C-speed) tuple comparison never reaches the event itself."""

    time: float
    kind: EventKind
    seq: int
    payload: Any = None
    cancelled: bool = False


Handler = Callable[[Event], None]
Process = Generator[float, None, None]


class SimulationError(RuntimeError):
    """The model asked the engine for something impossible (an event in the past, an unhandled kind)."""


class Engine:
    """Virtual clock plus event heap. ``run(until)`` pops events in order and calls their kind's handler."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Event]] = []
        self._seq = 0
        self._handlers: dict[EventKind, Handler] = {}
        self.processed = 0
        self._stopped = False
        self.on(EventKind.PROCESS, self._resume)

    def on(self, kind: EventKind, handler: Handler) -> None:
        """Register the one handler for ``kind`` (a second registration replaces the first)."""
        self._handlers[kind] = handler

    def schedule(self, time: float, kind: EventKind, payload: Any = None) -> Event:
        """Put an event on the heap; ``time`` must not be earlier than the clock."""
        if time < self.now or math.isnan(time):
            raise SimulationError(f"cannot schedule {kind.name} at {time} before now={self.now}")
        self._seq += 1
        event = Event(time, kind, self._seq, payload)
        heapq.heappush(self._heap, (time, kind, self._seq, event))
        return event

    def schedule_in(self, delay: float, kind: EventKind, payload: Any = None) -> Event:
        return self.schedule(self.now + delay, kind, payload)

    @staticmethod
    def cancel(event: Event) -> None:
        """Lazy delete: the event stays on the heap but is skipped when popped."""
        event.cancelled = True

    def peek(self) -> float | None:
        """Time of the next live event, or ``None`` when nothing is left."""
        heap = self._heap
        while heap and heap[0][3].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def step(self) -> Event | None:
        """Pop and handle one live event; returns it (``None`` when the heap is empty)."""
        heap = self._heap
        while heap:
            event = heapq.heappop(heap)[3]
            if event.cancelled:
                continue
            self.now = event.time
            handler = self._handlers.get(event.kind)
            if handler is None:
                raise SimulationError(f"no handler for {event.kind.name} events")
            handler(event)
            self.processed += 1
            return event
        return None

    def stop(self) -> None:
        """End :meth:`run` after the current event (the clock stays at that event's time)."""
        self._stopped = True

    def run(self, until: float | None = None) -> int:
        """Handle events until the heap is empty, :meth:`stop` is called or the next event is later than
        ``until``; returns how many ran."""
        count = 0
        self._stopped = False
        heap = self._heap
        handlers = self._handlers
        pop = heapq.heappop
        while heap:
            event = heap[0][3]
            if event.cancelled:
                pop(heap)
                continue
            if until is not None and event.time > until:
                self.now = until
                break
            pop(heap)
            self.now = event.time
            handler = handlers.get(event.kind)
            if handler is None:
                raise SimulationError(f"no handler for {event.kind.name} events")
            handler(event)
            count += 1
            if self._stopped:
                break
        self.processed += count
        return count

    # ------------------------------------------------------------------------------------------ processes

    def process(self, generator: Process, delay: float = 0.0) -> Event:
        """Start a generator process: each value it yields is a delay after which it resumes.

        >>> engine = Engine(); log = []
        >>> def clock(name, period):
        ...     while engine.now < 3:
        ...         log.append((engine.now, name)); yield period
        >>> _ = engine.process(clock("a", 2.0)); _ = engine.process(clock("b", 1.5))
        >>> _ = engine.run(); log
        [(0.0, 'a'), (0.0, 'b'), (1.5, 'b'), (2.0, 'a')]
        """
        return self.schedule_in(delay, EventKind.PROCESS, generator)

    def _resume(self, event: Event) -> None:
        generator: Process = event.payload
        try:
            delay = next(generator)
        except StopIteration:
            return
        if delay < 0:
            raise SimulationError(f"a process yielded a negative delay {delay}")
        self.schedule_in(delay, EventKind.PROCESS, generator)
