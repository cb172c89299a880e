"""Properties of the cluster state and the placement engine under random sequences of place/remove.

* a gang is never partially placed: a start has exactly ``workers`` workers, each with its full request;
* no device, CPU or memory is over-allocated (``check_invariants`` recounts everything by brute force);
* releasing a job restores the exact free capacity it took;
* the indexes agree with a brute-force recount after every operation;
* the indexed engine finds a placement exactly when the full-scan oracle does.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.core import CoreConfig, SchedulerCore
from scheduler.model import MILLI, DecisionKind, DeviceHealth, Job, Node
from scheduler.naive import FullScanPlacer
from scheduler.placement import PlacementConfig
from scheduler.state import CapacityError, ClusterState

MODELS = ("A100", "H100", "Ascend910B")


@st.composite
def clusters(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(min_value=1, max_value=12))
    nodes = []
    for i in range(count):
        devices = draw(st.sampled_from([1, 2, 4, 8]))
        nodes.append(
            Node(
                id=f"n{i}",
                model=draw(st.sampled_from(MODELS)),
                devices=devices,
                cpu_milli=draw(st.integers(min_value=0, max_value=64)) * 1000,
                memory_mib=draw(st.integers(min_value=0, max_value=64)) * 1024,
                switch=f"s{draw(st.integers(min_value=0, max_value=2))}",
                island=f"i{draw(st.integers(min_value=0, max_value=3))}",
            )
        )
    return nodes


@st.composite
def jobs(draw: st.DrawFn, index: int) -> Job:
    devices = draw(st.sampled_from([0, 0.1, 0.25, 0.5, 0.75, 1, 1, 2, 4, 8]))
    return Job(
        id=f"j{index}",
        workers=draw(st.integers(min_value=1, max_value=4)),
        devices_per_worker=devices,
        cpu_milli_per_worker=draw(st.integers(min_value=0, max_value=16)) * 1000,
        memory_mib_per_worker=draw(st.integers(min_value=0, max_value=16)) * 1024,
        models=draw(st.sampled_from([(), ("A100",), ("H100", "Ascend910B")])),
    )


def free_snapshot(state: ClusterState) -> dict[str, tuple[tuple[int, ...], int, int]]:
    return {node_id: (tuple(ns.free), ns.cpu_free, ns.mem_free) for node_id, ns in state.nodes.items()}


operations = st.lists(
    st.tuples(st.sampled_from(["place", "place", "place", "remove", "unhealthy"]), st.integers(0, 10_000)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=clusters(),
    ops=operations,
    scorer=st.sampled_from(["fgd", "binpack", "spread", "random"]),
    data=st.data(),
)
def test_random_place_remove_sequences_keep_every_invariant(
    nodes: list[Node], ops: list[tuple[str, int]], scorer: str, data: st.DataObject
) -> None:
    state = ClusterState(nodes)
    core = SchedulerCore(CoreConfig(placement=PlacementConfig(scorer=scorer, seed=3)))
    running: list[str] = []
    for step, (op, pick) in enumerate(ops):
        if op == "place":
            job = data.draw(jobs(step))
            decision = core.decide(state, job, now=float(step))
            if decision.kind is DecisionKind.START:
                placement = decision.placement
                assert placement is not None
                assert len(placement.workers) == job.workers, "gang partially placed"
                for worker in placement.workers:
                    if job.whole_devices:
                        assert len(worker.devices) == job.whole_devices and worker.milli == MILLI
                    elif job.device_milli:
                        assert len(worker.devices) == 1 and worker.milli == job.device_milli
                    else:
                        assert worker.devices == ()
                running.append(job.id)
            else:
                assert decision.reasons, "a rejection must say why"
        elif op == "remove" and running:
            job_id = running.pop(pick % len(running))
            before_release = free_snapshot(state)
            placement = state.release(job_id)
            after = free_snapshot(state)
            # Exactly the job's own capacity came back.
            for worker in placement.workers:
                free_before, cpu_before, mem_before = before_release[worker.node]
                free_after, cpu_after, mem_after = after[worker.node]
                assert cpu_after - cpu_before >= worker.cpu_milli
                assert mem_after - mem_before >= worker.memory_mib
                for d in worker.devices:
                    assert free_after[d] - free_before[d] >= worker.milli
            on_unhealthy = any(not state.nodes[w.node].healthy[d] for w in placement.workers for d in w.devices)
            if on_unhealthy:
                # A device went bad while the job ran: taking it again must be refused, leaving state unchanged.
                with pytest.raises(CapacityError):
                    state.allocate(placement)
                assert free_snapshot(state) == after
            else:
                state.allocate(placement)
                assert free_snapshot(state) == before_release, "release + allocate must be an exact round trip"
                state.release(job_id)
        elif op == "unhealthy":
            ns = list(state.nodes.values())[pick % len(state.nodes)]
            if ns.node.devices:
                state.set_device_health(ns.id, pick % ns.node.devices, DeviceHealth.UNHEALTHY)
        state.check_invariants()
    for job_id in list(running):
        state.release(job_id)
    state.check_invariants()
    # With everything released only device health can differ from the empty cluster.
    for ns in state.nodes.values():
        assert ns.free == [MILLI] * ns.node.devices
        assert ns.cpu_free == ns.node.cpu_milli and ns.mem_free == ns.node.memory_mib


@settings(max_examples=200, deadline=None)
@given(nodes=clusters(), data=st.data())
def test_indexed_engine_finds_a_placement_exactly_when_full_scan_does(nodes: list[Node], data: st.DataObject) -> None:
    state = ClusterState(nodes)
    core = SchedulerCore(CoreConfig(placement=PlacementConfig(scorer="binpack")))
    oracle = FullScanPlacer()
    for step in range(25):
        job = data.draw(jobs(step))
        expected = oracle.place(state, job) is not None
        decision = core.decide(state, job, now=0.0)
        assert (decision.kind is DecisionKind.START) == expected, (job, decision.reasons)
    state.check_invariants()


@settings(max_examples=50, deadline=None)
@given(nodes=clusters())
def test_copy_is_independent_and_equal(nodes: list[Node]) -> None:
    state = ClusterState(nodes)
    core = SchedulerCore()
    core.step(state, [Job(id=f"j{i}", devices_per_worker=[0.5, 1, 2][i % 3]) for i in range(10)], now=0.0)
    twin = state.copy()
    twin.check_invariants()
    assert free_snapshot(twin) == free_snapshot(state)
    for job_id in list(twin.allocations):
        twin.release(job_id)
    assert free_snapshot(twin) != free_snapshot(state) or not state.allocations
    state.check_invariants()
