"""Crash tests: the scheduler service runs in its own process (``service_runner.py``) and is ``kill -9`` -ed while
the API, the agents and the Ray cluster stay up. What a restarted (or standby) service finds in the database and
on the cluster must converge: no job lost, none run twice, no two attempts of one job alive at once.

Every worker appends ``start``/``end`` records (job, attempt, rank, time) to one file; those records are the
ground truth of what ran, independent of what the database says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    LEASE_S,
    Deployment,
    ServiceProcess,
    assert_attempts_never_overlap,
    event_kinds,
    probe_cmd,
    read_records,
    runs_of,
    spec,
    wait_for,
    wait_started,
    wait_state,
    wait_until,
)
from sqlalchemy import select

from api.db import make_engine
from api.tables import LEADER_LOCK

pytestmark = pytest.mark.slow


@pytest.fixture
def external(deployment: Deployment) -> Iterator[Deployment]:
    """The deployment without its in-process scheduler (tests start their own processes); restored after."""
    deployment.run.stop_scheduler()
    try:
        yield deployment
    finally:
        for runner in deployment.runners:
            runner.kill9()
        deployment.runners.clear()
        deployment.run.start_scheduler()


def lock_holder(deployment: Deployment) -> tuple[str, float, int] | None:
    engine = make_engine(deployment.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(LEADER_LOCK)).first()
    finally:
        engine.dispose()
    return None if row is None else (row.holder, row.expires_at, row.term)


def test_kill_9_with_jobs_in_every_state_loses_none_and_runs_none_twice(external: Deployment, tmp_path: Path) -> None:
    dep, acme, record = external, external.acme, tmp_path / "records.jsonl"
    gen1 = ServiceProcess(dep, "gen1", "--freeze-before-launch", "crash-starting")

    done = acme.submit(spec("done", probe_cmd(record), devices_per_worker=1))
    wait_state(acme, done.id, "succeeded", timeout_s=60)
    running = acme.submit(spec("running", probe_cmd(record, sleep=20), models=["Ascend910B"], devices_per_worker=4))
    wait_state(acme, running.id, "running")
    doomed = acme.submit(spec("to-cancel", probe_cmd(record, sleep=300), devices_per_worker=1))
    wait_state(acme, doomed.id, "running")
    wait_started(record, doomed.id, 0, ranks=1)
    waiting = acme.submit(spec("waiting", probe_cmd(record, sleep=1), models=["Ascend910B"], devices_per_worker=2))
    wait_for(acme, waiting.id, lambda j: j.state == "pending" and bool(j.reasons), "pending with reasons")
    # Two workers of three devices: across both H100 nodes. gen1 commits its start, then freezes before launching.
    starting = acme.submit(spec("crash-starting", probe_cmd(record, sleep=1), workers=2, devices_per_worker=3))
    wait_until(lambda: any("frozen" in line for line in gen1.lines()), "gen1 to freeze before the launch")
    assert acme.get_job(starting.id).state == "starting"
    acme.cancel(doomed.id)  # the frozen service cannot carry it out

    before = {job.id: acme.get_job(job.id).state for job in (done, running, doomed, waiting, starting)}
    assert before == {
        done.id: "succeeded",
        running.id: "running",
        doomed.id: "cancelling",
        waiting.id: "pending",
        starting.id: "starting",
    }
    gen1.kill9()
    killed_at = time.time()

    gen2 = ServiceProcess(dep, "gen2")
    # gen1 died holding the lock: gen2 waits for the lease to run out, then adopts what gen1 left.
    wait_state(acme, doomed.id, "cancelled", timeout_s=60)
    wait_until(lambda: any(line.get("leader") for line in gen2.lines()), "gen2 to report its first cycle as leader")
    assert min(line["term"] for line in gen2.lines() if line.get("leader")) >= 2, "gen2 took the lock over"
    starting_after = wait_state(acme, starting.id, "succeeded", timeout_s=60)
    running_after = wait_state(acme, running.id, "succeeded", timeout_s=60)
    waiting_after = wait_state(acme, waiting.id, "succeeded", timeout_s=60)
    assert acme.get_job(done.id).state == "succeeded"
    # 0 lost: every job is there and reached the state it should, in its first attempt.
    for job in (starting_after, running_after, waiting_after):
        assert job.attempt == 0, f"{job.name} was requeued ({event_kinds(acme, job.id)})"
    assert event_kinds(acme, doomed.id)[-1] == "cancelled"
    assert {j.id for j in acme.list_jobs()} >= set(before)

    # 0 run twice: the workers' own records.
    records = read_records(record)
    runs = runs_of(records)  # raises if any (job, attempt, rank) started twice
    assert set(runs) == {
        (done.id, 0, 0),
        (running.id, 0, 0),
        (doomed.id, 0, 0),
        (waiting.id, 0, 0),
        (starting.id, 0, 0),
        (starting.id, 0, 1),
    }
    # The job that was running across the crash kept running: it started before the kill and was not restarted.
    started_running = runs[(running.id, 0, 0)]["start"]
    assert started_running is not None and started_running < killed_at
    # The cancelled job's process was stopped, and the job that waited for devices started after they freed.
    assert all(r["end"] is not None for r in runs.values())
    running_end = runs[(running.id, 0, 0)]["end"]
    waiting_start = runs[(waiting.id, 0, 0)]["start"]
    assert running_end is not None and waiting_start is not None and running_end <= waiting_start
    assert_attempts_never_overlap(records)
    gen2.terminate()
    assert not gen2.alive()


def test_a_second_service_waits_and_takes_over_when_the_leader_is_killed(external: Deployment, tmp_path: Path) -> None:
    dep, acme, record = external, external.acme, tmp_path / "records.jsonl"
    a, b = ServiceProcess(dep, "twin-a"), ServiceProcess(dep, "twin-b")
    first = acme.submit(spec("under-the-first-leader", probe_cmd(record, sleep=300), devices_per_worker=1))
    wait_state(acme, first.id, "running", timeout_s=60)
    wait_started(record, first.id, 0, ranks=1)
    holder = lock_holder(dep)
    assert holder is not None and holder[0] in ("twin-a", "twin-b")
    leader, standby = (a, b) if holder[0] == "twin-a" else (b, a)
    wait_until(lambda: standby.lines() != [], "the standby to start")
    time.sleep(2 * 0.1 + 0.5)  # a few of the standby's cycles
    assert first.id in {s for line in leader.lines() for s in line.get("started", [])}
    assert not any(line.get("leader") for line in standby.lines()), "the standby never leads while the lock is held"

    leader.kill9()
    at_kill = lock_holder(dep)
    assert at_kill is not None and at_kill[0] == leader.holder
    lease_end = at_kill[1]
    second = acme.submit(spec("under-the-standby", probe_cmd(record, sleep=0.5), devices_per_worker=1))
    second = wait_state(acme, second.id, "succeeded", timeout_s=LEASE_S + 30)
    took_over = [line for line in standby.lines() if line.get("leader")]
    assert took_over and second.id in {s for line in took_over for s in line.get("started", [])}
    # The standby waited for the dead leader's lease to run out, and took over promptly after.
    assert second.started_at is not None
    assert lease_end <= second.started_at <= lease_end + 5.0, (second.started_at, lease_end)
    after = lock_holder(dep)
    assert after is not None and after[0] == standby.holder and after[2] > holder[2]

    # The standby adopted the job the dead leader had started: still attempt 0, never launched again.
    assert acme.get_job(first.id).state == "running" and acme.get_job(first.id).attempt == 0
    acme.cancel(first.id)
    wait_state(acme, first.id, "cancelled", timeout_s=30)
    runs = runs_of(read_records(record))
    assert set(runs) == {(first.id, 0, 0), (second.id, 0, 0)}
    standby.terminate()
