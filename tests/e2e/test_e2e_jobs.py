"""Jobs end to end: a tenant submits through the SDK over HTTP, the scheduler service places them with the policy
core, the Ray executor runs them on a real local multi-node Ray cluster, and the tenant reads states, events
and logs back through the API. The workers themselves say where they ran (``probe.py``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from e2e_support import (
    H100_NODES,
    NPU_NODE,
    Deployment,
    assert_attempts_never_overlap,
    event_kinds,
    full_log,
    probe_cmd,
    probe_lines,
    read_records,
    runs_of,
    spec,
    wait_for,
    wait_started,
    wait_state,
)

from api.client import ApiError

pytestmark = pytest.mark.slow


def test_jobs_run_on_exactly_the_nodes_and_devices_the_core_chose(deployment: Deployment) -> None:
    acme = deployment.acme
    one = acme.submit(spec("one-worker", probe_cmd(sleep=1), models=["Ascend910B"], devices_per_worker=2))
    # Three devices per worker and four per node: the gang must span both H100 nodes.
    gang = acme.submit(spec("gang", probe_cmd(sleep=1), workers=2, devices_per_worker=3))
    one = wait_state(acme, one.id, "succeeded")
    gang = wait_state(acme, gang.id, "succeeded")

    for job, world, visibility in ((one, 1, "ASCEND_RT_VISIBLE_DEVICES"), (gang, 2, "CUDA_VISIBLE_DEVICES")):
        assert job.placement is not None and len(job.placement.workers) == world
        assert job.exit_code == 0 and job.attempt == 0
        assert event_kinds(acme, job.id) == ["submitted", "started", "running", "succeeded"]
        for worker in job.placement.workers:
            attempt, text = full_log(acme, job.id, rank=worker.rank)
            assert attempt == 0 and "probe done" in text
            (seen,) = probe_lines(text)
            # From inside the worker: the node it runs on (its Ray node label) and the devices it may see.
            assert seen["ZHISUAN_NODE"] == worker.node
            assert seen[visibility] == ",".join(map(str, worker.devices))
            assert seen["ZHISUAN_VISIBLE_DEVICES"] == seen[visibility]
            assert (seen["RANK"], seen["WORLD_SIZE"]) == (str(worker.rank), str(world))
            assert seen["ZHISUAN_JOB_ID"] == job.id and seen["ZHISUAN_ATTEMPT"] == "0"
    assert one.placement is not None and one.placement.workers[0].node == NPU_NODE
    assert len(one.placement.workers[0].devices) == 2
    assert one.placement.model == "Ascend910B"
    assert gang.placement is not None
    assert sorted(w.node for w in gang.placement.workers) == sorted(H100_NODES)
    assert all(len(w.devices) == 3 for w in gang.placement.workers)
    # The gang's two workers met: rank 1 got rank 0's master address.
    masters = {probe_lines(full_log(acme, gang.id, rank=r)[1])[0]["MASTER_PORT"] for r in (0, 1)}
    assert len(masters) == 1
    # Once the job has ended and the log is read to its end, the API says so.
    _, text = full_log(acme, gang.id, rank=1)
    last = acme.logs(gang.id, rank=1, offset=len(text.encode()))
    assert last.complete and last.text == ""


def test_cancel_stops_a_running_gang_and_frees_its_devices(deployment: Deployment, tmp_path: Path) -> None:
    acme, record = deployment.acme, tmp_path / "records.jsonl"
    hog = acme.submit(spec("hog", probe_cmd(record, sleep=300), workers=2, devices_per_worker=4))
    hog = wait_state(acme, hog.id, "running")
    wait_started(record, hog.id, 0, ranks=2)
    waiter = acme.submit(spec("waiter", probe_cmd(record, sleep=0.5), devices_per_worker=4))
    why = wait_for(acme, waiter.id, lambda j: j.state == "pending" and bool(j.reasons), "pending with reasons")
    assert why.reasons, "a waiting job says why"
    # The emulated agents' telemetry follows the work: the gang's devices report busy, the others idle.
    assert hog.placement is not None
    worker = hog.placement.workers[0]
    deadline = time.monotonic() + 15
    while True:
        devices = {d.index: d.telemetry or {} for d in acme.node(worker.node).devices}
        busy = {i for i, t in devices.items() if t.get("utilization_pct") == 100.0}
        if busy == set(worker.devices) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert busy == set(worker.devices), devices

    answered = acme.cancel(hog.id)
    assert answered.state in ("cancelling", "cancelled")
    hog = wait_state(acme, hog.id, "cancelled", timeout_s=30)
    assert event_kinds(acme, hog.id)[-1] == "cancelled"
    waiter = wait_state(acme, waiter.id, "succeeded")
    assert waiter.placement is not None and waiter.placement.workers[0].node in H100_NODES

    runs = runs_of(read_records(record))
    hog_runs = {k: v for k, v in runs.items() if k[0] == hog.id}
    assert set(hog_runs) == {(hog.id, 0, 0), (hog.id, 0, 1)}
    assert all(r["end"] is not None for r in hog_runs.values()), "the cancelled gang's processes were stopped"
    # The devices were free when the waiting job started on them: the gang had stopped by then.
    waiter_start = runs[(waiter.id, 0, 0)]["start"]
    assert waiter_start is not None
    assert max(r["end"] for r in hog_runs.values() if r["end"] is not None) <= waiter_start


def test_a_failed_worker_fails_the_gang_which_is_retried_then_failed(deployment: Deployment, tmp_path: Path) -> None:
    acme, record = deployment.acme, tmp_path / "records.jsonl"
    job = acme.submit(spec("flaky", probe_cmd(record, sleep=300, exit_rank=1, code=3, fail_after=30.0), workers=2))
    job = wait_state(acme, job.id, "failed", timeout_s=90)

    kinds = event_kinds(acme, job.id)
    assert kinds.count("started") == 2 and "retrying" in kinds and kinds[-1] == "failed"
    assert job.attempt == 1  # one retry (max_retries=1 in these tests), then it failed for good
    assert job.exit_code == 3
    assert job.message is not None
    assert "rank 1" in job.message and "exited with code 3" in job.message
    assert "the data file is corrupt" in job.message, "the last log lines are in the message"

    records = read_records(record)
    runs = runs_of(records)
    assert set(runs) == {(job.id, a, r) for a in (0, 1) for r in (0, 1)}
    # Rank 0 did not fail: the gang rule stopped it (SIGTERM) when rank 1 failed.
    rank0_ends = [rec for rec in records if rec["event"] == "end" and rec["rank"] == 0]
    assert all(rec.get("signal") == 15 for rec in rank0_ends)
    assert_attempts_never_overlap(records)


def test_a_high_priority_job_preempts_a_best_effort_gang_which_resumes_later(
    deployment: Deployment, tmp_path: Path
) -> None:
    acme, record = deployment.acme, tmp_path / "records.jsonl"
    low = acme.submit(
        spec(
            "low",
            probe_cmd(record, sleep=300),
            workers=2,
            devices_per_worker=4,
            priority="best-effort",
            preemptible=True,
        )
    )
    wait_state(acme, low.id, "running", attempt=0)
    wait_started(record, low.id, 0, ranks=2)
    high = acme.submit(spec("high", probe_cmd(record, sleep=3), devices_per_worker=4, priority="training"))
    high = wait_state(acme, high.id, "running", "succeeded")

    low_now = wait_state(acme, low.id, "pending", attempt=1, timeout_s=10)
    assert "preempted" in event_kinds(acme, low.id)
    assert low_now.placement is None
    preempted = next(e for e in acme.events(low.id) if e.kind == "preempted")
    assert preempted.message == f"preempted by {high.id} (higher priority)"

    wait_state(acme, high.id, "succeeded")
    low_again = wait_state(acme, low.id, "running", attempt=1, timeout_s=60)
    assert low_again.placement is not None
    assert sorted(w.node for w in low_again.placement.workers) == sorted(H100_NODES)
    wait_started(record, low.id, 1, ranks=2)
    acme.cancel(low.id)
    wait_state(acme, low.id, "cancelled", timeout_s=30)

    records = read_records(record)
    runs = runs_of(records)
    assert {k for k in runs if k[0] == low.id} == {(low.id, a, r) for a in (0, 1) for r in (0, 1)}
    # Devices are never shared: the victim had stopped before the high-priority job started, and its next
    # attempt started after the high-priority job had ended.
    high_run = runs[(high.id, 0, 0)]
    low0_end = max(runs[(low.id, 0, r)]["end"] or float("inf") for r in (0, 1))
    assert high_run["start"] is not None and low0_end <= high_run["start"]
    low1_start = min(runs[(low.id, 1, r)]["start"] or 0.0 for r in (0, 1))
    assert high_run["end"] is not None and high_run["end"] <= low1_start
    assert_attempts_never_overlap(records)


def test_bad_jobs_end_with_a_clear_reason_and_the_service_keeps_running(deployment: Deployment) -> None:
    acme = deployment.acme
    walltime = acme.submit(spec("too-long", probe_cmd(sleep=300), walltime_s=2))
    instant = acme.submit(spec("fails-at-once", "echo 'cannot open config.yaml' >&2; exit 7"))
    missing = acme.submit(spec("needs-a-package", probe_cmd(), runtime_env={"pip": ["surely-not-installed-zz>=1.0"]}))

    walltime = wait_state(acme, walltime.id, "failed", timeout_s=60)
    assert walltime.message is not None and "exceeded walltime" in walltime.message
    assert walltime.attempt == 0, "a job stopped for its walltime is not retried"

    instant = wait_state(acme, instant.id, "failed", timeout_s=60)
    assert instant.exit_code == 7 and instant.attempt == 1, "an ordinary failure is retried (max_retries=1)"
    assert instant.message is not None
    assert "exited with code 7" in instant.message and "cannot open config.yaml" in instant.message

    missing = wait_state(acme, missing.id, "failed", timeout_s=60)
    assert missing.message is not None and "surely-not-installed-zz is not installed" in missing.message
    assert missing.attempt == 0, "a missing package is not retried: it would fail the same way"

    # The service survived all of it: it still schedules.
    assert deployment.run.service is not None
    after = acme.submit(spec("after-the-bad-ones", "echo still scheduling"))
    after = wait_state(acme, after.id, "succeeded", timeout_s=60)
    assert "still scheduling" in full_log(acme, after.id)[1]


def test_a_tenant_cannot_see_another_tenants_job(deployment: Deployment) -> None:
    acme, other = deployment.acme, deployment.other
    job = acme.submit(spec("private", "echo acme-secret"))
    wait_state(acme, job.id, "succeeded")

    for call in (other.get_job, other.events, other.logs, other.why, other.cancel):
        with pytest.raises(ApiError) as err:
            call(job.id)
        assert err.value.status == 404, call.__name__
    assert job.id not in {j.id for j in other.list_jobs()}
    assert job.id in {j.id for j in deployment.admin.list_jobs()}
    assert acme.get_job(job.id).state == "succeeded"
