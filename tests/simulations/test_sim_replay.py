"""Timeline replay and packing experiment through the real core."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from sim_support import nodes, public_trace

from scheduler.model import Decision, DecisionKind, Job
from scheduler.state import ClusterState
from scheduler.throughput import JobClass, load_throughput
from simulations.loaders import LoadOptions, TraceError, load_nodes, open_trace
from simulations.packing import packing_core, run_packing
from simulations.schema import TraceJob
from simulations.synthetic import pai_like
from simulations.timeline import SimConfig, TimelineSimulation, _default_core


def _sim(cluster: list, **config: object) -> TimelineSimulation:  # type: ignore[type-arg]
    return TimelineSimulation(cluster, _default_core("binpack", 0, None, None), SimConfig(**config))  # type: ignore[arg-type]


def test_fifo_waits_and_jcts_are_exact() -> None:
    sim = _sim(nodes(count=1))
    result = sim.run(
        [
            TraceJob(id="a", submit_time=0, duration_s=100, devices_per_worker=8, duration_model="A100"),
            TraceJob(id="b", submit_time=10, duration_s=50, devices_per_worker=4, duration_model="A100"),
            TraceJob(id="c", submit_time=20, duration_s=50, devices_per_worker=4, duration_model="A100"),
        ]
    )
    s = result.summary
    assert s["jobs"]["finished"] == 3 and s["jobs"]["pending_at_end"] == 0
    assert sorted(sim.metrics.waits["generic"]) == [0.0, 80.0, 90.0]
    assert sorted(sim.metrics.jcts["generic"]) == [100.0, 130.0, 140.0]
    assert s["span_s"] == 150.0
    assert s["utilisation"] == pytest.approx((8 * 100 + 4 * 50 * 2) / (8 * 150))


def test_duration_scales_with_the_model_landed_on() -> None:
    matrix = load_throughput()
    h100 = matrix.relative("H100", "llm-pretrain")
    assert h100 > 1
    sim = _sim(nodes(model="H100", count=1))
    job = TraceJob(id="x", submit_time=0, duration_s=1000, duration_model="A100", job_class=JobClass.LLM_PRETRAIN)
    result = sim.run([job])
    assert result.summary["jct_s"]["p50"] == pytest.approx(1000 / h100)
    unscaled = _sim(nodes(model="H100", count=1)).run([TraceJob(id="y", submit_time=0, duration_s=1000)])
    assert unscaled.summary["jct_s"]["p50"] == 1000


def test_out_of_order_stream_and_unhostable_jobs_are_reported(tmp_path: Path) -> None:
    sim = TimelineSimulation(nodes(), _default_core("binpack", 0, None, None), trace_path=tmp_path / "t.csv")
    with pytest.raises(TraceError, match=r"t.csv:7: column 'submit_time'.*sort"):
        sim.run(
            [TraceJob(id="a", submit_time=5, duration_s=1, row=6), TraceJob(id="b", submit_time=1, duration_s=1, row=7)]
        )
    sim = _sim(nodes(count=1))
    result = sim.run(
        [
            TraceJob(id="big", submit_time=0, duration_s=1, workers=2, devices_per_worker=8, row=2),
            TraceJob(id="zero", submit_time=0, duration_s=0, row=3),
            TraceJob(id="ok", submit_time=1, duration_s=1, row=4),
        ]
    )
    assert result.trace_report.skipped["no node of the cluster can ever host the job"] == 1
    assert result.trace_report.first["no node of the cluster can ever host the job"].endswith(
        ":2 column devices_per_worker"
    )
    assert result.summary["jobs"]["finished"] == 1


def test_synthetic_trace_offers_the_load_asked_for() -> None:
    # Runtimes are heavy-tailed (lognormal, sigma 1.8): it takes ~100,000 jobs for the sample to settle within
    # a few percent. (The arrival rate once assumed the mean gang size regardless of worker size: 0.64 here.)
    jobs = list(pai_like(100_000, devices=2_000, seed=3, load=0.9))
    device_seconds = sum(j.workers * j.devices_per_worker * j.duration_s for j in jobs)
    assert device_seconds / (2_000 * jobs[-1].submit_time) == pytest.approx(0.9, rel=0.05)


def test_incremental_passes_match_full_passes_for_a_placement_only_core() -> None:
    # Without preemption and reservations a job rejected once stays infeasible until capacity returns.
    jobs = list(pai_like(600, devices=32, seed=5, load=1.2))
    runs = []
    for incremental in (True, False):
        sim = TimelineSimulation(nodes(count=4), packing_core("binpack", 0), SimConfig(incremental=incremental))
        runs.append(sim.run(jobs).summary)
    for key in ("wait_s", "jct_s", "jobs", "utilisation", "ncu_hours_by_tenant"):
        assert runs[0][key] == runs[1][key], key


def test_same_seed_same_result_and_failures_requeue_from_checkpoints() -> None:
    jobs = [
        TraceJob(id=f"j{i}", submit_time=i * 30.0, duration_s=4000, devices_per_worker=2, checkpoint_interval_s=600)
        for i in range(40)
    ]

    def once() -> dict:  # type: ignore[type-arg]
        sim = _sim(nodes(count=4), seed=3, node_mtbf_s=20000, node_repair_s=1800, job_failure_probability=0.2)
        return sim.run(jobs).summary

    first = once()
    assert first == once()
    assert first["jobs"]["node_failures"] > 0 and first["jobs"]["job-failure"] > 0
    assert first["jobs"]["finished"] + first["jobs"].get("gave_up", 0) == 40
    assert first["lost_device_hours"] > 0


class _PreemptingCore:
    """Wraps the real core; the first time a job named 'urgent' is pending it preempts 'low' (issue 3's shape)."""

    def __init__(self) -> None:
        self.inner = _default_core("binpack", 0, None, None)
        self.catalog, self.throughput = self.inner.catalog, self.inner.throughput
        self.fired = False

    def step(self, state: ClusterState, pending: list[Job], now: float) -> list[Decision]:
        extra = []
        if not self.fired and any(j.id == "urgent" for j in pending) and "low" in state.allocations:
            self.fired = True
            self.inner.finish(state, "low", now)
            extra.append(Decision(DecisionKind.PREEMPT, "low"))
        return extra + self.inner.step(state, pending, now)

    def finish(self, state: ClusterState, job_id: str, now: float, cause: object = None) -> None:
        self.inner.finish(state, job_id, now)

    def checkpointed(self, state: ClusterState, job_id: str, now: float) -> None:
        self.inner.checkpointed(state, job_id, now)


def test_preempt_decisions_release_and_requeue_the_victim() -> None:
    core = _PreemptingCore()
    sim = TimelineSimulation(nodes(count=1), core, SimConfig(), core.catalog, core.throughput)  # type: ignore[arg-type]
    result = sim.run(
        [
            TraceJob(id="low", submit_time=0, duration_s=1000, devices_per_worker=8),
            TraceJob(id="urgent", submit_time=100, duration_s=100, devices_per_worker=8),
        ]
    )
    s = result.summary
    assert s["jobs"]["preempted"] == 1 and s["jobs"]["finished"] == 2
    assert sorted(sim.metrics.jcts["generic"]) == [100.0, 1200.0]


def test_packing_on_a_small_cluster_fills_and_stops_at_inflation() -> None:
    pods = [
        TraceJob(id="half", submit_time=0, duration_s=0, devices_per_worker=0.5, cpu_milli_per_worker=1000),
        TraceJob(id="one", submit_time=0, duration_s=0, devices_per_worker=1, cpu_milli_per_worker=1000),
        TraceJob(id="four", submit_time=0, duration_s=0, devices_per_worker=4, cpu_milli_per_worker=1000),
        TraceJob(id="cpu", submit_time=0, duration_s=0, devices_per_worker=0, cpu_milli_per_worker=1000),
    ]
    result = run_packing(nodes(count=4), pods, packing_core("fgd", 1), inflation=1.3, seed=1)
    assert result.skipped_cpu_only == 0  # drawn, as in the paper's simulator
    gpu_only = run_packing(nodes(count=4), pods, packing_core("fgd", 1), inflation=1.3, seed=1, include_cpu_only=False)
    assert gpu_only.skipped_cpu_only == 1
    curve = result.curve
    assert curve[-1]["arrived"] >= 1.3 - 1e-9
    assert all(a["allocated"] <= b["allocated"] for a, b in itertools.pairwise(curve))
    assert 0.8 <= result.at(1.0)["allocated"] <= 1.0
    again = run_packing(nodes(count=4), pods, packing_core("fgd", 1), inflation=1.3, seed=1)
    assert again.curve == curve
    with pytest.raises(ValueError, match="never deletes pods"):
        run_packing(nodes(count=4), pods, _default_core("fgd", 1, None, None))


def test_packing_on_the_public_openb_trace() -> None:
    cluster = load_nodes(public_trace("alibaba-openb", "openb_node_list_gpu_node.csv"))
    pods = list(open_trace(public_trace("alibaba-openb", "openb_pod_list_default.csv"), "alibaba-openb", LoadOptions()))
    result = run_packing(cluster, pods, packing_core("binpack", 2), inflation=1.0, seed=2)
    assert result.cluster_gpus == 6212
    assert 0.88 <= result.at(1.0)["allocated"] <= 1.0


def test_arrival_passes_keep_reservations_unless_told_to_decide_new_jobs_alone() -> None:
    # n0: "a" holds 4 devices until t=100; n1: "d" holds all 8 until t=1000. "b" (8 devices) cannot start, so it
    # gets a reservation on n0 from t=100. "c" (4 devices for 500 s) arrives later: a full pass lets it backfill
    # only if it ends before t=100, so it waits; a pass over the new arrival alone gives it n0's free half.
    jobs = [
        TraceJob(id="a", submit_time=0, duration_s=100, devices_per_worker=4),
        TraceJob(id="d", submit_time=0, duration_s=1000, devices_per_worker=8),
        TraceJob(id="b", submit_time=1, duration_s=50, devices_per_worker=8),
        TraceJob(id="c", submit_time=2, duration_s=500, devices_per_worker=4),
    ]
    waits = {}
    handed = {}
    for mode in ("all", "changed", "new"):
        sim = _sim(nodes(count=2), arrival_pass=mode)
        seen: list[int] = []
        step = sim.core.step

        def counting(
            state: ClusterState,
            pending: Iterable[Job],
            now: float,
            step: Callable[[ClusterState, Iterable[Job], float], list[Decision]] = step,
            seen: list[int] = seen,
        ) -> list[Decision]:
            jobs = list(pending)
            seen.append(len(jobs))
            return step(state, jobs, now)

        sim.core.step = counting  # type: ignore[method-assign]
        sim.run(jobs)
        waits[mode] = sorted(sim.metrics.waits["generic"])
        handed[mode] = sum(seen)
    assert waits["all"] == waits["changed"] == [0.0, 0.0, 99.0, 148.0]  # b at 100, c after b (150)
    assert waits["new"] == [0.0, 0.0, 0.0, 501.0]  # c jumped the reservation, b waited for it
    assert handed["changed"] <= handed["all"]


def test_fgd_profile_of_the_packing_experiment_is_the_draw_itself() -> None:
    pods = [
        TraceJob(id="s", submit_time=0, duration_s=0, devices_per_worker=0.81, cpu_milli_per_worker=3152),
        TraceJob(id="w", submit_time=0, duration_s=0, devices_per_worker=1, cpu_milli_per_worker=11300),
        TraceJob(id="c", submit_time=0, duration_s=0, devices_per_worker=0, cpu_milli_per_worker=12500),
    ]
    core = packing_core("fgd", 1)
    result = run_packing(nodes(count=2), pods, core, inflation=1.0, seed=1)
    classes = {(c.milli, c.whole, c.cpu_milli): share for c, share in core.placement.scorer.profile.classes}  # type: ignore[attr-defined]
    assert classes == pytest.approx({(810, 0, 3152): 1 / 3, (0, 1, 11300): 1 / 3, (0, 0, 12500): 1 / 3})
    breakdown = result.breakdown_at_100
    assert set(breakdown) == {"free_gpus", "partial_gpus", "whole_gpus", "failed_before"}
    assert breakdown["free_gpus"] == pytest.approx(
        breakdown["partial_gpus"]["total"] + sum(breakdown["whole_gpus"].values()), abs=0.02
    )


def test_shuffled_trace_submits_every_pod_once_before_drawing_more() -> None:
    # Eight distinct 1-GPU pods on 8 GPUs: the first 100 % arrived is exactly the list, so every pod of it starts;
    # drawn with replacement, repeats crowd out others (seed 3 draws some pod twice among the first eight).
    pods = [TraceJob(id=f"p{i}", submit_time=0, duration_s=0, devices_per_worker=1) for i in range(8)]
    cluster = nodes(count=1)
    placed: dict[str, list[str]] = {}
    for arrivals in ("shuffled-trace", "with-replacement"):
        core = packing_core("binpack", 3)
        step = core.step
        seen: list[str] = []

        def recording(
            state: ClusterState,
            pending: Iterable[Job],
            now: float,
            step: Callable[[ClusterState, Iterable[Job], float], list[Decision]] = step,
            seen: list[str] = seen,
        ) -> list[Decision]:
            jobs = list(pending)
            seen.append(jobs[0].id.split("#")[0])
            return step(state, jobs, now)

        core.step = recording  # type: ignore[method-assign]
        result = run_packing(cluster, pods, core, inflation=1.25, seed=3, arrivals=arrivals)
        assert result.arrivals == arrivals and result.pods_drawn == 10
        placed[arrivals] = seen
    assert sorted(placed["shuffled-trace"][:8]) == [f"p{i}" for i in range(8)]
    assert len(set(placed["with-replacement"][:8])) < 8
    with pytest.raises(ValueError, match="unknown arrivals 'sorted'"):
        run_packing(cluster, pods, packing_core("binpack", 3), arrivals="sorted")  # type: ignore[arg-type]
