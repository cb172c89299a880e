"""The event engine: golden order of events, determinism, cancellation, processes."""

from __future__ import annotations

import pytest

from simulations.engine import Engine, Event, EventKind, SimulationError


def _recording_engine() -> tuple[Engine, list[tuple[float, str, object]]]:
    engine = Engine()
    log: list[tuple[float, str, object]] = []
    for kind in EventKind:
        if kind is not EventKind.PROCESS:
            engine.on(kind, lambda ev: log.append((ev.time, ev.kind.name, ev.payload)))
    return engine, log


def test_golden_order_same_instant_by_kind_then_fifo() -> None:
    engine, log = _recording_engine()
    engine.schedule(5.0, EventKind.SCHEDULE, "pass")
    engine.schedule(5.0, EventKind.ARRIVAL, "a1")
    engine.schedule(5.0, EventKind.NODE_REPAIR, "n1")
    engine.schedule(5.0, EventKind.ARRIVAL, "a2")
    engine.schedule(5.0, EventKind.FINISH, "j1")
    engine.schedule(1.0, EventKind.CHECKPOINT, "j2")
    engine.schedule(5.0, EventKind.PREEMPTION, "j3")
    engine.schedule(5.0, EventKind.FAILURE, "j4")
    engine.schedule(5.0, EventKind.NODE_FAILURE, "n2")
    assert engine.run() == 9
    assert log == [
        (1.0, "CHECKPOINT", "j2"),
        (5.0, "FINISH", "j1"),
        (5.0, "FAILURE", "j4"),
        (5.0, "PREEMPTION", "j3"),
        (5.0, "NODE_FAILURE", "n2"),
        (5.0, "NODE_REPAIR", "n1"),
        (5.0, "ARRIVAL", "a1"),
        (5.0, "ARRIVAL", "a2"),
        (5.0, "SCHEDULE", "pass"),
    ]


def test_handlers_scheduling_at_now_run_in_the_same_instant() -> None:
    engine = Engine()
    log: list[str] = []

    def arrival(ev: Event) -> None:
        log.append(f"arrive {ev.payload}")
        engine.schedule(engine.now, EventKind.SCHEDULE, ev.payload)

    engine.on(EventKind.ARRIVAL, arrival)
    engine.on(EventKind.SCHEDULE, lambda ev: log.append(f"pass {ev.payload}"))
    engine.schedule(2.0, EventKind.ARRIVAL, "x")
    engine.schedule(2.0, EventKind.ARRIVAL, "y")
    engine.run()
    assert log == ["arrive x", "arrive y", "pass x", "pass y"]


def test_cancel_until_stop_and_peek() -> None:
    engine, log = _recording_engine()
    doomed = engine.schedule(1.0, EventKind.FINISH, "gone")
    engine.schedule(2.0, EventKind.FINISH, "kept")
    engine.schedule(9.0, EventKind.FINISH, "late")
    Engine.cancel(doomed)
    assert engine.peek() == 2.0
    engine.run(until=5.0)
    assert log == [(2.0, "FINISH", "kept")]
    assert engine.now == 5.0
    engine.on(EventKind.FINISH, lambda ev: engine.stop())
    engine.schedule(10.0, EventKind.FINISH, "after")
    engine.run()
    assert engine.now == 9.0 and len(engine) == 1


def test_no_events_in_the_past_and_unhandled_kinds() -> None:
    engine = Engine()
    engine.on(EventKind.FINISH, lambda ev: None)
    engine.schedule(3.0, EventKind.FINISH)
    engine.run()
    with pytest.raises(SimulationError, match="before now"):
        engine.schedule(1.0, EventKind.FINISH)
    engine.schedule(4.0, EventKind.ARRIVAL)
    with pytest.raises(SimulationError, match="no handler"):
        engine.run()


def test_processes_resume_after_their_delays() -> None:
    engine = Engine()
    log: list[tuple[float, str]] = []

    def ticker(name: str, period: float, times: int):  # type: ignore[no-untyped-def]
        for _ in range(times):
            log.append((engine.now, name))
            yield period

    engine.process(ticker("a", 2.0, 3))
    engine.process(ticker("b", 1.5, 3))
    engine.run()
    assert log == [(0.0, "a"), (0.0, "b"), (1.5, "b"), (2.0, "a"), (3.0, "b"), (4.0, "a")]


def test_deterministic_for_many_random_events() -> None:
    import random

    def trace(seed: int) -> list[tuple[float, str, object]]:
        engine, log = _recording_engine()
        rng = random.Random(seed)
        for i in range(2000):
            engine.schedule(float(rng.randrange(50)), rng.choice([EventKind.FINISH, EventKind.ARRIVAL]), i)
        engine.run()
        return log

    first = trace(3)
    assert first == trace(3)
    times = [t for t, _, _ in first]
    assert times == sorted(times)
