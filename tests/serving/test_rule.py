"""The pure half of serving: the autoscaling rule, the rollout plan, spread, the spec's bad-input messages, and
the replay of the public Azure LLM inference trace against the same rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.core import SchedulerCore
from scheduler.errors import ConfigError
from scheduler.model import Job, Node
from scheduler.serving import (
    SERVICE_LABEL,
    Autoscaler,
    LoadSample,
    ReplicaPhase,
    ReplicaView,
    ScalingRule,
    SpreadReplicas,
    plan_replicas,
)
from scheduler.spec import parse_spec
from scheduler.state import ClusterState
from simulations.serving import ServingModel, ServingReplay, compare, load_requests, main, scaled

TRACE = Path(__file__).resolve().parents[1] / "fixtures" / "traces" / "azure-llm-inference"
AZURE = TRACE / "AzureLLMInferenceTrace_conv.csv.gz"


def run(scaler: Autoscaler, loads: list[tuple[float, float]], p99: float | None = None) -> list[int]:
    """Feed (time, load) reports; the desired count after each."""
    out = []
    for at, load in loads:
        scaler.observe(LoadSample(at, load, 0.0, 10 if load else 0, p99))
        out.append(scaler.decide(at).desired)
    return out


def test_a_burst_shorter_than_the_upscale_delay_starts_nothing() -> None:
    scaler = Autoscaler(ScalingRule(max_replicas=8, target_ongoing=2, upscale_delay_s=3, look_back_s=1), 1)
    assert run(scaler, [(0, 8), (1, 8), (2, 0), (3, 0)]) == [1, 1, 1, 1]


def test_a_sustained_load_scales_out_to_what_it_needs_at_once() -> None:
    scaler = Autoscaler(ScalingRule(max_replicas=8, target_ongoing=2, upscale_delay_s=2, look_back_s=1), 1)
    assert run(scaler, [(t, 9.0) for t in range(5)]) == [1, 1, 5, 5, 5]


def test_scale_in_waits_its_delay_goes_one_at_a_time_and_holds_in_the_band() -> None:
    rule = ScalingRule(max_replicas=8, target_ongoing=2, downscale_delay_s=3, look_back_s=1, tolerance=0.1)
    scaler = Autoscaler(rule, 4)
    # 7.5 in flight fits 4 at 2 each (within the band): steady, never flapping to 3 and back.
    assert run(scaler, [(t, 7.5) for t in range(6)]) == [4] * 6
    assert run(scaler, [(t, 1.0) for t in range(6, 16)]) == [4, 4, 4, 3, 3, 3, 3, 2, 2, 2]


def test_a_p99_over_the_slo_adds_a_replica_and_one_near_it_holds_scale_in() -> None:
    rule = ScalingRule(
        max_replicas=8, target_ongoing=4, slo_p99_ms=100, upscale_delay_s=1, downscale_delay_s=1, look_back_s=1
    )
    scaler = Autoscaler(rule, 2)
    assert run(scaler, [(0, 6.0), (1, 6.0)], p99=150) == [2, 3]
    assert run(scaler, [(t, 1.0) for t in range(2, 6)], p99=90) == [3, 3, 3, 3]  # 90 > 0.8 * SLO: hold
    assert run(scaler, [(t, 1.0) for t in range(6, 9)], p99=20)[-1] == 2


def test_zero_only_after_an_idle_spell_and_a_cold_start_at_once() -> None:
    rule = ScalingRule(
        min_replicas=0, max_replicas=4, target_ongoing=2, idle_before_zero_s=10, downscale_delay_s=1, look_back_s=1
    )
    scaler = Autoscaler(rule, 1, last_change_at=0.0)
    assert run(scaler, [(t, 0.0) for t in range(1, 10)]) == [1] * 9  # never to zero by the scale-in rule
    assert run(scaler, [(10, 0.0)]) == [0]
    scaler.observe(LoadSample(11, 0.0, 1.0, 0))  # one request waits at zero replicas
    decision = scaler.decide(11)
    assert decision.desired == 1 and decision.changed and "cold start" in decision.reason


def test_bounds_hold_whatever_the_load() -> None:
    scaler = Autoscaler(ScalingRule(min_replicas=2, max_replicas=3, target_ongoing=1, upscale_delay_s=0), 2)
    assert max(run(scaler, [(t, 100.0) for t in range(3)])) == 3
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        ScalingRule(min_replicas=3, max_replicas=2)


def view(job_id: str, revision: int, phase: ReplicaPhase, at: float = 0.0, node: str = "n1") -> ReplicaView:
    return ReplicaView(job_id, revision, phase, at, node)


def test_a_rollout_never_drops_below_what_is_ready_and_surges_by_one() -> None:
    old = [view("a", 1, ReplicaPhase.READY, 1), view("b", 1, ReplicaPhase.READY, 2)]
    first = plan_replicas(2, 2, old)
    assert (first.add, first.drain, first.stop) == (1, (), ())
    starting = [*old, view("n1", 2, ReplicaPhase.STARTING, 3)]
    assert plan_replicas(2, 2, starting).empty  # nothing drains before the new one is ready
    ready = [*old, view("n1", 2, ReplicaPhase.READY, 3)]
    second = plan_replicas(2, 2, ready)
    assert second.drain == ("a",) and second.add == 0
    third = plan_replicas(2, 2, [old[1], view("n1", 2, ReplicaPhase.READY, 3)])
    assert third.add == 1 and third.drain == ()


def test_unhealthy_replicas_are_stopped_and_replaced_and_scale_in_takes_idle_ones_first() -> None:
    plan = plan_replicas(2, 1, [view("a", 1, ReplicaPhase.READY), view("b", 1, ReplicaPhase.UNHEALTHY)])
    assert plan.stop == ("b",) and plan.add == 1
    crowded = [
        view("a", 1, ReplicaPhase.READY, 1, "n1"),
        view("b", 1, ReplicaPhase.READY, 2, "n1"),
        view("c", 1, ReplicaPhase.READY, 3, "n2"),
        view("d", 1, ReplicaPhase.PENDING, 4, "n3"),
    ]
    plan = plan_replicas(2, 1, crowded)
    assert plan.stop == ("d",)  # not serving: stopped, nothing to drain
    assert plan.drain == ("b",)  # then the newest on the most crowded node


def test_replicas_of_a_service_spread_over_nodes_through_the_core() -> None:
    nodes = [Node(id=f"n{i}", model="H100", devices=4, cpu_milli=16000, memory_mib=65536) for i in range(3)]
    state = ClusterState(nodes)
    core = SchedulerCore()
    placed: dict[str, str] = {}

    def siblings(service: str) -> list[str]:
        return [state.allocations[j].workers[0].node for j in placed if j in state.allocations]

    core.placement.scorer = SpreadReplicas(core.placement.scorer, siblings)
    for i in range(3):
        job = Job(id=f"r{i}", kind="inference", devices_per_worker=0.25, models=("H100",), labels={SERVICE_LABEL: "s1"})
        (decision,) = core.step(state, [job], now=float(i))
        assert decision.placement is not None
        placed[job.id] = decision.placement.workers[0].node
    assert sorted(placed.values()) == ["n0", "n1", "n2"]
    # Work that is not a replica still packs (the default scorer), onto the same node.
    plain = [Job(id=f"p{i}", kind="inference", devices_per_worker=0.25, models=("H100",)) for i in range(2)]
    decisions = core.step(state, plain, now=10.0)
    assert len({d.placement.workers[0].node for d in decisions if d.placement is not None}) == 1


@pytest.mark.parametrize(
    ("serving", "words"),
    [
        ("{min_replicas: 3, max_replicas: 2}", "min_replicas (3) is more than max_replicas (2)"),
        ("{max_replicas: 2, target_ongoing_requests: 20}", "the target could never be reached"),
        ("{min_replicas: 0, max_replicas: 2}", "needs cold_start_budget_s"),
        ("{max_replicas: 2, request_timeout_s: 0.05}", "slo.p99_latency_ms (100) is longer than"),
    ],
)
def test_impossible_serving_specs_say_what_to_fix(serving: str, words: str) -> None:
    text = f"name: x\nentrypoint: serve\nkind: inference\nslo: {{p99_latency_ms: 100}}\nserving: {serving}\n"
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(text)


def test_serving_is_for_inference_and_the_start_count_within_bounds() -> None:
    with pytest.raises(ConfigError, match="inference services only"):
        parse_spec("name: x\nentrypoint: e\nserving: {max_replicas: 2}")
    with pytest.raises(ConfigError, match=r"replicas \(5\) must be between"):
        parse_spec("name: x\nentrypoint: e\nkind: inference\nreplicas: 5\nserving: {max_replicas: 2}")
    example = Path(__file__).resolve().parents[2] / "seeds" / "examples" / "inference-service.yaml"
    spec = parse_spec(example.read_text(), str(example))
    assert spec.serving is not None and spec.serving.max_replicas > spec.serving.min_replicas


def test_the_replay_of_the_azure_trace_meets_the_slo_with_fewer_device_hours_than_a_peak_fleet() -> None:
    requests = load_requests(AZURE, limit=6000)
    assert len(requests) == 6000 and requests[0].at == 0.0
    model = ServingModel(token_ms=8, max_ongoing=8, startup_s=20, slo_ms=8000)
    rule = ScalingRule(min_replicas=1, max_replicas=16, target_ongoing=4, slo_p99_ms=8000)
    auto, peak, mean = compare(requests, model, rule)
    assert auto.slo_attainment > 0.97
    assert auto.device_hours < 0.75 * peak.device_hours
    assert mean.slo_attainment < auto.slo_attainment  # a fleet sized for the mean misses at the bursts
    assert auto.scale_events > 2


def test_the_replay_reads_rates_scales_and_fixed_fleets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = load_requests(AZURE, limit=500)
    fast = scaled(requests, 2.0)
    assert fast[-1].at == pytest.approx(requests[-1].at / 2)
    fixed = ServingReplay(ServingModel(), None, fixed=2).run(fast)
    assert fixed.max_replicas == 2 and fixed.served + fixed.rejected == 500
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    assert main([str(bad)]) == 2
    assert "expected the columns TIMESTAMP" in capsys.readouterr().err
    assert main([str(AZURE), "--limit", "300", "--json"]) == 0
