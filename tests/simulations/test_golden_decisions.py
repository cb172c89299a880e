"""Golden decision logs: small seeded traces replayed through the simulator must decide exactly as recorded.

Every ``start`` and ``preempt`` the core returns (the virtual time, the job, the model, and every worker's node,
devices and milli) is compared line by line with ``tests/fixtures/decisions/<scenario>.jsonl``; every other
decision (the rejects, with their reasons) is folded into one digest per scenario, so that a change of what a
waiting job is told is caught too. Speed work on the policy core (issue 21) must leave these files as they are;
a change that means to decide differently regenerates them and says why in its commit::

    .venv/bin/python tests/simulations/test_golden_decisions.py --write

The traces are synthetic (:func:`simulations.synthetic.pai_like`, seeded), the clusters a fraction of the
PAI-like cluster of ``benchmarks/simulator.py``, congested (load 0.9) so that preemption, reclaim, backfill and
reservations all take part.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scheduler.catalog import load_catalog
from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.model import Decision, DecisionKind, Job, Node
from scheduler.placement import PlacementConfig
from scheduler.state import ClusterState
from scheduler.tenancy import QueuePolicy, parse_policy
from scheduler.throughput import load_throughput
from simulations.synthetic import pai_like
from simulations.timeline import SimConfig, TimelineSimulation

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "decisions"

#: The PAI-like pools of ``benchmarks/simulator.py``: (model, nodes, devices, cores, memory GiB).
PAI_POOLS = [
    ("V100-16G", 200, 8, 96, 512),
    ("V100-32G", 50, 8, 96, 512),
    ("T4", 500, 2, 64, 256),
    ("P100", 250, 2, 64, 256),
    ("A10", 312, 8, 128, 1024),
]


@dataclass(frozen=True)
class Scenario:
    """One golden replay: the trace's size and seed, the cluster's scale, and the core's policy and ordering."""

    name: str
    jobs: int
    seed: int
    scale: float
    load: float = 0.9
    ordering: str = "drf"
    policy: dict[str, Any] | None = None
    #: Node failures and repairs (mean time between failures of a node, s; 0: none) and failing job runs.
    node_mtbf_s: float = 0.0
    job_failure_probability: float = 0.0


def _quota_policy() -> dict[str, Any]:
    """Deserved shares with borrowing limits and a guarantee for the big tenants, so that reclaim and the
    quota's refusals take part; the small tenants fall into the unlimited default queue."""
    return {
        "tenants": {f"tenant-{i:02d}": {"weight": 1.0 + i % 3} for i in range(4)},
        "queues": {
            "tenant-00": {
                "tenant": "tenant-00",
                "quota": {
                    "A10": {"guarantee": 8, "deserved": 16, "limit": 24},
                    "V100-16G": {"deserved": 8, "limit": 16},
                },
            },
            "tenant-01": {
                "tenant": "tenant-01",
                "quota": {"A10": {"deserved": 8, "borrowing_limit": 8}, "ncu": {"deserved": 10, "borrowing_limit": 10}},
            },
            "tenant-02": {"tenant": "tenant-02", "quota": {"T4": {"deserved": 2, "limit": 4}}},
            "tenant-03": {"tenant": "tenant-03", "quota": {"V100-16G": {"guarantee": 8, "deserved": 8}}},
        },
    }


def _mixed_policy() -> dict[str, Any]:
    """Queues ordering differently (strict FIFO, SRTF, LAS, SJF): the walk takes the queues in turns."""
    orderings = ["fifo-strict", "srtf", "las", "sjf"]
    return {
        "tenants": {f"tenant-{i:02d}": {} for i in range(4)},
        "queues": {f"tenant-{i:02d}": {"tenant": f"tenant-{i:02d}", "ordering": o} for i, o in enumerate(orderings)},
    }


SCENARIOS = [
    Scenario("drf-congested", jobs=1200, seed=3, scale=0.04),
    Scenario("quota-reclaim", jobs=1000, seed=5, scale=0.04, load=1.0, policy=_quota_policy()),
    Scenario("mixed-orderings", jobs=800, seed=7, scale=0.04, policy=_mixed_policy()),
    Scenario("las", jobs=600, seed=11, scale=0.03, ordering="las"),
    Scenario("failures", jobs=800, seed=13, scale=0.04, node_mtbf_s=3 * 86400.0, job_failure_probability=0.05),
]


def _nodes(scale: float) -> list[Node]:
    return [
        Node(
            id=f"{model.lower()}-{i:04d}",
            model=model,
            devices=devices,
            cpu_milli=cores * 1000,
            memory_mib=mem_gib * 1024,
            switch=f"{model.lower()}-sw{i // 8:03d}",
        )
        for model, count, devices, cores, mem_gib in PAI_POOLS
        for i in range(max(1, int(count * scale)))
    ]


class _Recorder:
    """Wraps a core's ``step`` and writes down every decision it returns."""

    def __init__(self, core: SchedulerCore) -> None:
        self.lines: list[str] = []
        self.digest = hashlib.sha256()
        self.rejects = 0
        #: How many rejects gave each reason code first (``reservation`` etc. show which paths ran).
        self.codes: dict[str, int] = {}
        step = core.step

        def recording(state: ClusterState, pending: Iterable[Job], now: float) -> list[Decision]:
            decisions = step(state, pending, now)
            for decision in decisions:
                self._note(decision, now)
            return decisions

        core.step = recording  # type: ignore[method-assign]

    def _note(self, decision: Decision, now: float) -> None:
        if decision.kind is DecisionKind.REJECT:
            self.rejects += 1
            if decision.reasons:
                code = decision.reasons[0].code.value
                self.codes[code] = self.codes.get(code, 0) + 1
            reasons = [(r.code.value, r.message, r.pool, sorted(r.detail.items())) for r in decision.reasons]
            self.digest.update(json.dumps([now, decision.job_id, reasons], default=str).encode())
            return
        line: dict[str, Any] = {"t": now, "kind": decision.kind.value, "job": decision.job_id}
        if decision.placement is not None:
            line["model"] = decision.placement.model
            line["workers"] = [[w.node, list(w.devices), w.milli] for w in decision.placement.workers]
        self.lines.append(json.dumps(line, separators=(",", ":")))


def replay(scenario: Scenario) -> tuple[list[str], dict[str, Any]]:
    """Replay ``scenario``; returns its start/preempt lines and a summary (counts, the reject digest)."""
    catalog = load_catalog()
    throughput = load_throughput()
    nodes = _nodes(scenario.scale)
    devices = sum(n.devices for n in nodes)
    policy: QueuePolicy | None = (
        parse_policy(scenario.policy, f"<{scenario.name}>", catalog) if scenario.policy is not None else None
    )
    core = SchedulerCore(
        CoreConfig(
            placement=PlacementConfig(scorer="fgd", seed=scenario.seed),
            queueing=QueueingConfig(ordering=scenario.ordering),  # type: ignore[arg-type]
        ),
        catalog,
        throughput,
        policy,
    )
    recorder = _Recorder(core)
    models = [p[0] for p in PAI_POOLS]
    trace = list(pai_like(scenario.jobs, devices, seed=scenario.seed, load=scenario.load, models=models))
    config = SimConfig(
        seed=scenario.seed,
        node_mtbf_s=scenario.node_mtbf_s,
        node_repair_s=3600.0,
        job_failure_probability=scenario.job_failure_probability,
    )
    result = TimelineSimulation(nodes, core, config, catalog, throughput).run(trace)
    kinds: dict[str, int] = {}
    for line in recorder.lines:
        kind = json.loads(line)["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    summary = {
        "scenario": scenario.name,
        "jobs": scenario.jobs,
        "devices": devices,
        "decisions": {**kinds, "reject": recorder.rejects},
        "reject_codes": dict(sorted(recorder.codes.items())),
        "finished": result.summary["jobs"].get("finished", 0),
        "reject_digest": recorder.digest.hexdigest(),
    }
    return recorder.lines, summary


def _paths(scenario: Scenario) -> tuple[Path, Path]:
    return FIXTURES / f"{scenario.name}.jsonl", FIXTURES / f"{scenario.name}.summary.json"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_replay_decides_as_the_golden_log(scenario: Scenario) -> None:
    log_path, summary_path = _paths(scenario)
    assert log_path.exists(), f"{log_path} is missing: run this file with --write (see its docstring)"
    lines, summary = replay(scenario)
    golden = log_path.read_text().splitlines()
    for i, (got, want) in enumerate(zip(lines, golden, strict=False)):
        assert got == want, f"{scenario.name}: decision {i} differs\n got  {got}\n want {want}"
    assert len(lines) == len(golden), f"{scenario.name}: {len(lines)} starts/preemptions, golden {len(golden)}"
    assert summary == json.loads(summary_path.read_text())


def test_scenarios_exercise_preemption_and_reservations() -> None:
    """The golden logs are only worth their bytes if the policy's harder paths ran in them."""
    kinds = [json.loads(_paths(s)[1].read_text())["decisions"] for s in SCENARIOS]
    assert all(k.get("start", 0) > 100 and k["reject"] > 1000 for k in kinds)
    assert sum(k.get("preempt", 0) for k in kinds) > 20


def _write() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for scenario in SCENARIOS:
        lines, summary = replay(scenario)
        log_path, summary_path = _paths(scenario)
        log_path.write_text("\n".join(lines) + "\n")
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"{scenario.name}: {summary['decisions']} {summary['reject_codes']}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_golden_decisions.py --write   (regenerates tests/fixtures/decisions)")
    _write()
