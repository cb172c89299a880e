"""Placement engine: pool choice, topology, fractional packing, reasons, determinism."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from scheduler.core import CoreConfig, SchedulerCore
from scheduler.model import (
    DecisionKind,
    DomesticPreference,
    Job,
    Node,
    ReasonCode,
    TopologyLevel,
)
from scheduler.placement import PlacementConfig, PlacementEngine
from scheduler.state import ClusterState


def node(
    node_id: str,
    model: str = "A100",
    devices: int = 8,
    *,
    switch: str = "",
    island: str = "",
    cpu: int = 128_000,
    mem: int = 1_048_576,
    site: str = "default",
) -> Node:
    return Node(
        id=node_id,
        model=model,
        devices=devices,
        cpu_milli=cpu,
        memory_mib=mem,
        switch=switch,
        island=island,
        site=site,
    )


def engine(scorer: str = "binpack") -> PlacementEngine:
    return PlacementEngine(PlacementConfig(scorer=scorer))


def test_single_worker_goes_to_the_tightest_node() -> None:
    state = ClusterState([node("a"), node("b")])
    state.allocate(engine().place(state, Job(id="half", devices_per_worker=4)).placement)  # type: ignore[arg-type]
    result = engine().place(state, Job(id="two", devices_per_worker=2))
    assert result.placement is not None
    placed_on = result.placement.workers[0].node
    assert placed_on == state.allocations["half"].workers[0].node


def test_gang_prefers_one_node_then_one_switch() -> None:
    nodes = [node(f"s1-{i}", switch="s1") for i in range(4)] + [node(f"s2-{i}", switch="s2") for i in range(2)]
    state = ClusterState(nodes)
    small = engine().place(state, Job(id="small", workers=2, devices_per_worker=4))
    assert small.placement is not None
    assert small.placement.topology is TopologyLevel.NODE
    assert len(small.placement.nodes) == 1
    # 16 devices: two full nodes; the tightest switch that holds them is s2 (exactly two nodes).
    big = engine().place(state, Job(id="big", workers=2, devices_per_worker=8))
    assert big.placement is not None
    assert big.placement.topology is TopologyLevel.SWITCH
    assert {w.node for w in big.placement.workers} == {"s2-0", "s2-1"}


def test_gang_spans_switches_only_when_allowed() -> None:
    state = ClusterState([node("s1-0", switch="s1"), node("s2-0", switch="s2")])
    strict = Job(id="strict", workers=2, devices_per_worker=8, topology_required="switch")
    result = engine().place(state, strict)
    assert result.placement is None
    assert [r.code for r in result.reasons] == [ReasonCode.TOPOLOGY]
    loose = engine().place(state, Job(id="loose", workers=2, devices_per_worker=8))
    assert loose.placement is not None
    assert loose.placement.topology is TopologyLevel.POOL


def test_multi_node_island_is_preferred_over_switch() -> None:
    nodes = [node(f"n{i}", switch="s1", island="isl-a" if i < 2 else f"solo{i}") for i in range(4)]
    state = ClusterState(nodes)
    # Fill n0 partly so that the island is not simply "the first nodes".
    result = engine().place(state, Job(id="g", workers=2, devices_per_worker=8))
    assert result.placement is not None
    assert result.placement.topology is TopologyLevel.ISLAND
    assert set(result.placement.nodes) == {"n0", "n1"}


def test_fractional_workers_share_a_device() -> None:
    state = ClusterState([node("a", devices=2), node("b", devices=2)])
    core = SchedulerCore(CoreConfig(placement=PlacementConfig(scorer="fgd")))
    jobs = [Job(id=f"inf{i}", kind="inference", devices_per_worker=0.5) for i in range(4)]
    decisions = core.step(state, jobs, now=0.0)
    assert all(d.kind is DecisionKind.START for d in decisions)
    used_devices = {(w.node, w.devices) for d in decisions for w in d.placement.workers}  # type: ignore[union-attr]
    assert len(used_devices) == 2, "four halves should pack onto two devices"
    state.check_invariants()


def test_fgd_keeps_whole_devices_free_for_whole_device_jobs() -> None:
    state = ClusterState([node("a", devices=2), node("b", devices=2)])
    core = SchedulerCore(CoreConfig(placement=PlacementConfig(scorer="fgd")))
    core.placement.scorer.profile.seed(  # type: ignore[attr-defined]
        [Job(id="w", devices_per_worker=2)] * 5 + [Job(id="f", devices_per_worker=0.3)] * 5
    )
    core.step(state, [Job(id="f1", devices_per_worker=0.3), Job(id="f2", devices_per_worker=0.3)], now=0)
    # Both fractions land on the same node, leaving the other whole for a 2-device job.
    nodes = {state.allocations[j].workers[0].node for j in ("f1", "f2")}
    assert len(nodes) == 1
    assert core.decide(state, Job(id="w2", devices_per_worker=2), now=0).kind is DecisionKind.START


def test_heterogeneous_choice_prefers_the_fastest_model_and_respects_domestic() -> None:
    state = ClusterState([node("h", model="H100"), node("a", model="A100"), node("asc", model="Ascend910B")])
    anywhere = engine().place(state, Job(id="any", devices_per_worker=8, job_class="llm-pretrain"))
    assert anywhere.placement is not None and anywhere.placement.model == "H100"
    domestic = engine().place(
        state,
        Job(id="gov", devices_per_worker=8, job_class="llm-pretrain", domestic=DomesticPreference.REQUIRED),
    )
    assert domestic.placement is not None and domestic.placement.model == "Ascend910B"
    preferred = engine().place(
        state, Job(id="pref", devices_per_worker=8, job_class="llm-pretrain", domestic="preferred")
    )
    assert preferred.placement is not None and preferred.placement.model == "Ascend910B"


def test_estimated_finish_uses_relative_throughput() -> None:
    state = ClusterState([node("h", model="H100")])
    core = SchedulerCore()
    decision = core.decide(state, Job(id="j", job_class="llm-pretrain", runtime_s=3600), now=100.0)
    relative = core.throughput.relative("H100", "llm-pretrain")
    assert decision.estimated_finish == pytest.approx(100.0 + 3600 / relative)


@pytest.mark.parametrize(
    ("job", "setup", "code"),
    [
        (Job(id="m", models=("MLU590",)), [], ReasonCode.MODEL_MISMATCH),
        (Job(id="u", devices_per_worker=16), [], ReasonCode.UNSCHEDULABLE),
        (Job(id="c", devices_per_worker=8), ["fill"], ReasonCode.NO_CAPACITY),
        (Job(id="f", devices_per_worker=8), ["scatter"], ReasonCode.FRAGMENTATION),
        (Job(id="cpu", devices_per_worker=1, cpu_milli_per_worker=999_000), [], ReasonCode.NO_CAPACITY),
    ],
)
def test_rejections_carry_structured_reasons(job: Job, setup: list[str], code: ReasonCode) -> None:
    state = ClusterState([node("a", devices=8), node("b", devices=8)])
    place = engine()
    if "fill" in setup:
        for i in range(2):
            state.allocate(place.place(state, Job(id=f"fill{i}", devices_per_worker=8)).placement)  # type: ignore[arg-type]
    if "scatter" in setup:
        for i in range(2):
            spread = engine("spread")
            state.allocate(spread.place(state, Job(id=f"s{i}", devices_per_worker=4)).placement)  # type: ignore[arg-type]
    result = place.place(state, job)
    assert result.placement is None
    assert result.reasons and result.reasons[0].code is code
    assert result.reasons[0].message


def test_cpu_only_job_is_placed_by_cpu() -> None:
    state = ClusterState([node("a", cpu=8_000), node("b", cpu=64_000)])
    result = engine().place(state, Job(id="etl", devices_per_worker=0, cpu_milli_per_worker=16_000))
    assert result.placement is not None
    assert result.placement.workers[0].node == "b"
    assert result.placement.workers[0].devices == ()


def test_step_orders_by_priority_then_submit_time() -> None:
    state = ClusterState([node("a", devices=8)])
    jobs = [
        Job(id="late-high", devices_per_worker=8, priority="production-inference", submit_time=5),
        Job(id="early-low", devices_per_worker=8, priority="best-effort", submit_time=0),
    ]
    decisions = SchedulerCore().step(state, jobs, now=10)
    assert [(d.job_id, d.kind.value) for d in decisions] == [("late-high", "start"), ("early-low", "reject")]


@pytest.mark.parametrize("scorer", ["fgd", "binpack", "spread", "random"])
def test_step_is_deterministic(scorer: str) -> None:
    def run() -> list[tuple[str, str, tuple[str, ...]]]:
        state = ClusterState([node(f"n{i}", devices=4, switch=f"s{i % 2}") for i in range(6)])
        core = SchedulerCore(CoreConfig(placement=PlacementConfig(scorer=scorer, seed=7)))
        jobs = [
            Job(id=f"j{i}", devices_per_worker=[0.25, 1, 2, 0.5][i % 4], workers=1 + (i % 3 == 0)) for i in range(20)
        ]
        return [(d.job_id, d.kind.value, d.placement.nodes if d.placement else ()) for d in core.step(state, jobs, 0)]

    assert run() == run()


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"devices_per_worker": 1.5}, "a fraction is only allowed below one device"),
        ({"devices_per_worker": 0.0005}, "multiple of 0.001"),
        ({"workers": -1}, "greater than or equal to 1"),
        ({"topology_required": "rack"}, "allowed: node, island, switch, pool"),
        ({"priority": "urgent"}, "unknown priority class"),
    ],
)
def test_bad_job_specs_are_rejected_with_a_clear_message(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        Job(id="bad", **fields)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_copies_recompute_derived_sizes() -> None:
    job = Job(id="j", devices_per_worker=0.5)
    assert job.placement_shape[2] is DomesticPreference.ANY and job.device_milli == 500
    copy = job.model_copy(update={"domestic": DomesticPreference.REQUIRED, "devices_per_worker": 2})
    assert copy.placement_shape[2] is DomesticPreference.REQUIRED
    assert copy.device_milli == 2000 and copy.whole_devices == 2


def test_score_mode_picks_the_best_node_across_pools() -> None:
    # The half-used A100 node is the tightest fit; throughput mode would pick the (faster) empty H100 node.
    state = ClusterState([node("h", model="H100", devices=1), node("a", model="A100", devices=1)])
    state.allocate(engine().place(state, Job(id="half", devices_per_worker=0.5, models=("A100",))).placement)  # type: ignore[arg-type]
    fastest = PlacementEngine(PlacementConfig(scorer="binpack"))
    assert fastest.place(state, Job(id="x", devices_per_worker=0.5)).placement.model == "H100"  # type: ignore[union-attr]
    packing = PlacementEngine(PlacementConfig(scorer="binpack", pool_choice="score"))
    assert packing.place(state, Job(id="y", devices_per_worker=0.5)).placement.model == "A100"  # type: ignore[union-attr]
