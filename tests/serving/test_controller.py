"""The serving controller in the scheduler's cycle: scaling out and in through the core, drains, rolling updates,
replicas moved off a lost node, preemption for a production service and a free-tier service held at its quota."""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from local_executor import wait_until
from serving_stack import NODES, Stack, auth, load, make_stack, server_cmd, service_spec

from scheduler.live.serving.controller import ServeConfig
from scheduler.live.serving.store import LoadReport
from scheduler.model import Node
from scheduler.spec import JobSpec, JobState


def _call(stack: Stack, url: str, key: str) -> tuple[int, str]:
    headers = {**auth(key), "Idempotency-Key": uuid.uuid4().hex}
    answer = stack.client.post(url, json={"prompt": "the device", "max_tokens": 4}, headers=headers)
    return answer.status_code, answer.headers.get("x-zhisuan-replica", "")


def test_load_scales_a_service_out_over_both_nodes_and_back_in_with_drains(stack: Stack) -> None:
    spec = service_spec(
        min_replicas=1,
        max_replicas=4,
        target_ongoing_requests=2,
        downscale_delay_s=1.0,
        server_args=("--token-ms", "60", "--slots", "1"),
    )
    record, key = stack.deploy(spec)
    stack.wait_ready(record, 1)
    url = f"{stack.endpoint(record)}/v1/completions"
    with load(6, lambda: _call(stack, url, key)) as results:
        wait_until(lambda: len(stack.router_sees(record)) >= 3, 30, what="scale out to 3")
        replicas = stack.replicas(record, JobState.RUNNING)
        nodes = {stack.service.state.allocations[r].workers[0].node for r in replicas}
        time.sleep(1.0)
    assert nodes == set(NODES)  # spread: both nodes hold replicas
    # Without load it scales back in, one replica at a time, each drained before it is stopped.
    wait_until(
        lambda: len(stack.replicas(record, JobState.RUNNING, JobState.CANCELLING)) == 1, 40, what="scale in to 1"
    )
    codes = Counter(code for code, _ in results)
    assert codes == {200: len(results)}, codes
    assert len({replica for _, replica in results}) >= 3
    stopped = [e for e in stack.store.events if e.job_id.startswith(record.id) and e.kind == "cancelled"]
    assert stopped  # the removed replicas ended cancelled (after their drain), not failed
    assert "ready" in stack.serving.service(record.id).message


def test_a_rolling_update_under_load_answers_every_request(stack: Stack) -> None:
    record, key = stack.deploy(service_spec(replicas=2, min_replicas=2, max_replicas=2))
    old = set(stack.wait_ready(record, 2))
    url = f"{stack.endpoint(record)}/v1/completions"
    with load(4, lambda: _call(stack, url, key)) as results:
        time.sleep(0.5)
        updated = service_spec(replicas=2, min_replicas=2, max_replicas=2, server_args=("--token-ms", "3"))
        new = stack.serving.deploy(record.tenant, record.name, updated, user="ann", now=time.time())
        assert new.revision == 2
        wait_until(
            lambda: set(stack.router_sees(record)).isdisjoint(old) and len(stack.router_sees(record)) == 2,
            40,
            what="every replica on revision 2",
        )
        time.sleep(0.5)
    codes = Counter(code for code, _ in results)
    assert codes == {200: len(results)}, codes
    served = {replica for _, replica in results}
    assert served & old and served - old  # both revisions answered during the update
    assert {r.revision for r in stack.serving.replicas() if r.job_state is JobState.RUNNING} == {2}
    wait_until(
        lambda: all(stack.store.stored[j].record.state is JobState.CANCELLED for j in old),
        20,
        what="the old replicas cancelled",
    )


def test_replicas_on_a_lost_node_move_to_another(stack: Stack) -> None:
    record, key = stack.deploy(service_spec(replicas=2, min_replicas=2, max_replicas=2))
    stack.wait_ready(record, 2)
    placed = {r: stack.service.state.allocations[r].workers[0].node for r in stack.replicas(record, JobState.RUNNING)}
    lost = next(iter(placed.values()))
    node = stack.store.node_records[lost].node
    stack.store.put_node(node, usable=False)
    url = f"{stack.endpoint(record)}/v1/completions"
    with load(2, lambda: _call(stack, url, key)) as results:
        wait_until(
            lambda: (
                len(stack.router_sees(record)) == 2
                and all(_node(stack, r) not in (lost, None) for r in stack.router_sees(record))
            ),
            40,
            what="both replicas off the lost node",
        )
    assert Counter(code for code, _ in results) == {200: len(results)}


def _node(stack: Stack, job_id: str) -> str | None:
    placement = stack.service.state.allocations.get(job_id)
    return placement.workers[0].node if placement is not None else None


def _batch(name: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": name,
            "entrypoint": "sleep 600",
            "models": ["H100"],
            "devices_per_worker": 1,
            "cpus_per_worker": 0.25,
            "memory_gib_per_worker": 0.25,
            "priority": "best-effort",
        }
    )


def _report(stack: Stack, service_id: str, ongoing: float) -> None:
    """What a router writes about a busy service (the autoscaler reads nothing else)."""
    stack.serving.report([LoadReport("test-router", service_id, time.time(), ongoing=ongoing, requests=100)])


def test_a_production_service_preempts_best_effort_work_to_scale(stack: Stack) -> None:
    for i in range(8):  # every device of both nodes
        stack.store.submit(f"batch-{i}", _batch(f"fill-{i}"), tenant="batch", user="bo", now=time.time())
    wait_until(
        lambda: sum(1 for i in range(8) if stack.store.stored[f"batch-{i}"].record.state is JobState.RUNNING) == 8,
        30,
        what="the batch jobs running",
    )
    spec = service_spec("prod", max_replicas=3, target_ongoing_requests=1).model_copy(update={"devices_per_worker": 1})
    record, _ = stack.deploy(spec)
    stack.wait_ready(record, 1)
    deadline = time.monotonic() + 30
    while len(stack.router_sees(record)) < 3 and time.monotonic() < deadline:
        _report(stack, record.id, ongoing=3.0)
        time.sleep(0.1)
    assert len(stack.router_sees(record)) == 3
    preempted = [e for e in stack.store.events if e.kind == "preempted" and e.job_id.startswith("batch-")]
    assert len(preempted) == 3, preempted
    assert all("higher priority" in e.message for e in preempted)
    # The batch jobs went back to pending (as new attempts); they were not failed.
    back = [i for i in range(8) if stack.store.stored[f"batch-{i}"].record.state is JobState.PENDING]
    assert len(back) == 3


def test_a_free_tier_service_is_held_at_its_quota(stack: Stack) -> None:
    spec = service_spec("free", max_replicas=4, target_ongoing_requests=1)
    record, _ = stack.deploy(spec, tenant="lab", user="li")
    stack.wait_ready(record, 1)
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        _report(stack, record.id, ongoing=4.0)
        time.sleep(0.1)
    assert stack.serving.service(record.id).desired == 4
    # Quota: half a device, two quarter-device replicas; the others wait, and the status says why.
    assert len(stack.replicas(record, JobState.RUNNING)) == 2
    waiting = [r for r in stack.serving.replicas() if r.service_id == record.id and r.job_state is JobState.PENDING]
    assert len(waiting) == 2
    assert all(r.reasons == ("queue lab would use 0.75 H100, above its limit of 0.5",) for r in waiting)
    assert "2 waiting to be placed: queue lab would use 0.75 H100" in stack.serving.service(record.id).message


def test_deleting_a_service_drains_and_stops_every_replica(stack: Stack) -> None:
    record, key = stack.deploy(service_spec(replicas=2, min_replicas=2, max_replicas=2))
    replicas = stack.wait_ready(record, 2)
    stack.serving.delete(record.id, now=time.time())
    wait_until(lambda: record.id not in {s.id for s in stack.serving.services()}, 30, what="the service gone")
    assert all(stack.store.stored[r].record.state is JobState.CANCELLED for r in replicas)
    assert stack.client.get(f"{stack.endpoint(record)}/info", headers=auth(key)).status_code in (401, 404)


def test_replicas_of_one_service_spread_over_nodes(stack: Stack) -> None:
    record, _ = stack.deploy(service_spec(replicas=2, min_replicas=2, max_replicas=2))
    replicas = stack.wait_ready(record, 2)
    nodes = {stack.service.state.allocations[r].workers[0].node for r in replicas}
    assert nodes == set(NODES)
    assert isinstance(stack.store.node_records[NODES[0]].node, Node)
    assert server_cmd()  # the replicas run the example server


def test_replicas_that_keep_failing_are_replaced_after_a_growing_pause(tmp_path: Path) -> None:
    """A service whose replicas exit at once (a bad entrypoint) is not re-launched at every cycle for ever: each
    failure in a row doubles the pause before the next replica (crash-loop backoff), and the service's status
    says so with the job's own message."""
    serve = ServeConfig(every_s=0.1, health_every_s=0.25, crash_backoff_s=0.5, crash_backoff_max_s=8.0)
    broken = service_spec(min_replicas=1, max_replicas=1).model_copy(
        update={"entrypoint": f"{sys.executable} -c 'import sys; sys.exit(3)'"}
    )
    stacks = make_stack(tmp_path, serve=serve)
    stack = next(stacks)
    try:
        record, _ = stack.deploy(broken)
        service_id = record.id

        def launched() -> list[str]:
            jobs = stack.store.stored
            return [j for j in jobs if jobs[j].record.spec.name.startswith(broken.name)]

        wait_until(lambda: "failed in a row" in stack.serving.service(service_id).message, 30, what="the backoff")
        time.sleep(6.0)
        # 0.5, 1, 2, 4 s of pauses fit in ~7.5 s (each run takes its own start and exit too): at most 6 replicas,
        # where a replacement at every 0.1 s cycle would have made dozens (max_retries=1: two runs each).
        assert 2 <= len(launched()) <= 6, launched()
        message = stack.serving.service(service_id).message
        assert "replicas failed in a row" in message and "the next starts in" in message, message
    finally:
        stacks.close()
