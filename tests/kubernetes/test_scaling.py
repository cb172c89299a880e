"""The worker-group scaling rule: pure, in the timeline simulator (and ``zhisuan simulate --autoscale``), and
gang-aware."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.model import Job, Node
from scheduler.scaling import GroupView, ScalingRule, workers_per_node
from scheduler.state import ClusterState
from simulations.scaling import ScalingReplay, scaling_pools
from simulations.schema import TraceJob, write_native
from simulations.timeline import SimConfig, TimelineSimulation


def h100(i: int) -> Node:
    return Node(id=f"h100-{i}", model="H100", devices=8, cpu_milli=96000, memory_mib=900_000, site="bj1")


def view(replicas: int, nodes: tuple[str, ...] = (), max_replicas: int = 8, min_replicas: int = 0) -> GroupView:
    return GroupView("bj1-h100", "bj1/H100", "H100", 8, 96000, 900_000, replicas, max_replicas, nodes, min_replicas)


GANG = Job(id="gang", workers=4, devices_per_worker=8, models=("H100",), runtime_s=600)


def test_a_gang_gets_all_its_nodes_at_once_or_none() -> None:
    rule = ScalingRule(grace_s=60)
    target = rule.decide(ClusterState(), [GANG], [view(0)], now=0.0)["bj1-h100"]
    assert (target.replicas, target.added, target.serving) == (4, 4, ("gang",))
    # Only three nodes to grow into: the gang gets none of them (no partial gang).
    capped = rule.decide(ClusterState(), [GANG], [view(0, max_replicas=3)], now=0.0)["bj1-h100"]
    assert (capped.replicas, capped.added) == (0, 0)
    assert capped.reasons == ("gang needs 4 more node(s) at once; the group may grow by 3",)


def test_starting_pods_and_free_room_count_before_new_nodes() -> None:
    rule = ScalingRule()
    # Four pods already starting (replicas 4, none ready): nothing more to add.
    assert rule.decide(ClusterState(), [GANG], [view(4)], now=0.0)["bj1-h100"].added == 0
    # Two idle ready nodes and two starting pods hold the gang; a second gang needs four new nodes.
    nodes = [h100(0), h100(1)]
    second = GANG.model_copy(update={"id": "gang2"})
    target = rule.decide(ClusterState(nodes), [GANG, second], [view(4, ("h100-0", "h100-1"))], now=0.0)["bj1-h100"]
    assert (target.added, target.replicas, target.serving) == (4, 8, ("gang", "gang2"))


def test_idle_nodes_go_after_the_grace_period_but_never_one_holding_work() -> None:
    nodes = [h100(i) for i in range(4)]
    state = ClusterState(nodes)
    small = Job(id="small", workers=1, devices_per_worker=2, models=("H100",))
    rule = ScalingRule(grace_s=100)
    from scheduler.core import SchedulerCore

    core = SchedulerCore()
    assert core.step(state, [small], now=0.0)[0].kind.value == "start"
    busy = next(iter(state.allocations.values())).nodes[0]
    group = view(4, tuple(n.id for n in nodes))
    assert rule.decide(state, [], [group], now=0.0)["bj1-h100"].remove == ()
    target = rule.decide(state, [], [group], now=150.0)["bj1-h100"]
    assert busy not in target.remove and len(target.remove) == 3 and target.replicas == 1
    # min_replicas keeps nodes however long they idle.
    floor = rule.decide(state, [], [view(4, tuple(n.id for n in nodes), min_replicas=3)], now=500.0)["bj1-h100"]
    assert len(floor.remove) == 1 and busy not in floor.remove


def test_pending_demand_keeps_an_idle_node_and_reservations_hold_theirs() -> None:
    nodes = [h100(0)]
    rule = ScalingRule(grace_s=0)
    one = Job(id="one", workers=1, devices_per_worker=8, models=("H100",))
    assert rule.decide(ClusterState(nodes), [one], [view(1, ("h100-0",))], now=10.0)["bj1-h100"].remove == ()
    assert rule.decide(ClusterState(nodes), [], [view(1, ("h100-0",))], now=10.0)["bj1-h100"].remove == ("h100-0",)


def test_workers_per_node_by_devices_cpu_and_memory() -> None:
    assert workers_per_node(Job(id="a", devices_per_worker=8), 8, 96000, 10**6) == 1
    assert workers_per_node(Job(id="b", devices_per_worker=0.5), 8, 96000, 10**6) == 16
    assert workers_per_node(Job(id="c", devices_per_worker=1, memory_mib_per_worker=400_000), 8, 96000, 10**6) == 2
    assert workers_per_node(Job(id="d", devices_per_worker=16), 8, 96000, 10**6) == 0


def test_in_the_simulator_a_4_node_gang_grows_the_group_by_4_starts_and_its_nodes_go_after_the_grace() -> None:
    nodes = [h100(i) for i in range(8)]
    sim = TimelineSimulation(nodes, config=SimConfig(seed=1))
    replay = ScalingReplay(sim, scaling_pools(nodes), ScalingRule(grace_s=300), interval_s=10, startup_s=30)
    replay.attach()
    trace = [TraceJob(id="gang", submit_time=0, duration_s=600, workers=4, devices_per_worker=8, models=("H100",))]
    result = sim.run(trace)
    assert result.summary["jobs"]["finished"] == 1
    replay.drain(until=sim.engine.now + 400)
    decisions = replay.decisions
    assert decisions[0] == {"t": 0.0, "group": "bj1-h100", "added": 4, "removed": [], "for": ["gang"]}
    assert decisions[1]["removed"] and decisions[1]["added"] == 0
    assert decisions[1]["t"] >= 30 + 600 + 300
    assert sorted(decisions[1]["removed"]) == sorted(n.id for n in nodes[:4])
    capacity = [(c["replicas"], c["in_service"]) for c in replay.capacity]
    assert capacity == [(0, 0), (4, 0), (4, 4), (0, 0)]
    # The gang started when its four nodes came into service, on those four.
    assert result.summary["wait_s"]["p99"] == pytest.approx(30.0)


def test_zhisuan_simulate_autoscale_shows_capacity_over_time_in_the_json_and_the_report(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        "name: k8s\nsites:\n  bj1: {region: north, tier: cloud}\n"
        "pools:\n  - {model: H100, site: bj1, nodes: 8, devices_per_node: 8, cpu_cores: 96, memory_gib: 1024}\n"
    )
    trace = tmp_path / "trace.csv"
    write_native(
        [TraceJob(id="gang", submit_time=0, duration_s=600, workers=4, devices_per_worker=8, models=("H100",))],
        trace,
    )
    out, report = tmp_path / "run.json", tmp_path / "run.html"
    argv = [str(Path(sys.executable).parent / "zhisuan"), "simulate", "--cluster", str(cluster), "--trace"]
    argv += [str(trace), "--autoscale", "--scale-grace", "300", "--scale-startup", "30", "--json", str(out)]
    done = subprocess.run([*argv, "--report", str(report), "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "autoscaled: " in done.stderr and "node-hours in service" in done.stderr
    scaling = json.loads(out.read_text())["scaling"]
    first, last = scaling["decisions"]
    assert (first["t"], first["added"], first["for"]) == (0.0, 4, ["gang"])
    assert last["added"] == 0 and len(last["removed"]) == 4 and last["t"] >= 30 + 600 + 300
    assert [(c["replicas"], c["in_service"]) for c in scaling["capacity"]] == [(0, 0), (4, 0), (4, 4), (0, 0)]
    group = scaling["groups"]["bj1-h100"]
    assert (group["installed"], group["peak_in_service"]) == (8, 4)
    # Four nodes in service from t=30 until they go, of eight installed for the whole run.
    assert group["node_hours_in_service"] == pytest.approx(4 * (last["t"] - 30) / 3600)
    assert scaling["node_hours_in_service"] < scaling["node_hours_installed"]
    page = report.read_text()
    assert "capacity (worker groups sized by the scaling rule)" in page and "Nodes in service over time" in page
    # --autoscale is a timeline replay: the packing experiment says so and writes nothing.
    packing = subprocess.run([*argv[:-2], "--mode", "packing"], capture_output=True, text=True, timeout=300)
    assert packing.returncode == 2 and "timeline mode only" in packing.stderr
