"""Capacity-planning scenarios: a base cluster and workload, changes to them, and what to measure.

A scenario file (YAML, validated whole before anything runs; paths are relative to the file)::

    name: ascend-expansion
    cluster: ../clusters/example.yaml
    workload:
      synthetic: {jobs: 4000, load: 0.9, seed: 7}     # or: trace: {path: jobs.csv, format: native}
    demand_growth: {default: 1.0, llm-pretrain: 2.0}  # per job class; 2.0 = every job twice
    changes:
      - add: {model: Ascend910B, site: gz1, nodes: 8, devices_per_node: 8, cpu_cores: 192, memory_gib: 1536}
      - remove: {model: T4, site: sz-edge, nodes: 4}
    policy: {scorer: fgd}
    simulation: {node_mtbf_hours: 0, slo_wait_s: 60}
    economics: {pue: 1.25, electricity_price_per_kwh: 0.65, price_per_device: {H100: 250000}}
    targets: {domestic_share: 0.3, slo_attainment: 0.99, wait_p95_s: 3600}
    variants:                                          # each overrides top-level keys; compared in the report
      - {name: baseline, changes: []}
      - {name: "+64 Ascend910B"}

    >>> from simulations.scenario import parse_scenario
    >>> s = parse_scenario({"name": "x", "variants": [{"name": "a"}, {"name": "b", "policy": {"scorer": "binpack"}}]})
    >>> [v.name for v in s.expand()], s.expand()[1].policy.scorer
    (['a', 'b'], 'binpack')

**Demand growth** ``g`` for a class: every job of the class is submitted ``floor(g)`` times, plus once more with
probability ``g - floor(g)`` (seeded); ``g < 1`` keeps each job with probability ``g``. Copies share the submit
time and get ids ``<id>~<k>``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scheduler.catalog import Catalog, Tier
from scheduler.cluster import parse_cluster
from scheduler.errors import ConfigError, load_yaml_mapping, validate_model
from scheduler.model import Node
from scheduler.scoring import SCORERS
from scheduler.tenancy import check_ordering
from simulations.metrics import Economics
from simulations.schema import TraceJob
from simulations.timeline import SimConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AddPool(_Strict):
    model: str
    site: str = "default"
    region: str = "default"
    tier: Tier = Tier.CLOUD
    nodes: int = Field(ge=1, le=100_000)
    devices_per_node: int = Field(ge=1, le=64)
    cpu_cores: float = Field(ge=0)
    memory_gib: float = Field(ge=0)
    nodes_per_switch: int = Field(default=32, ge=1)


class RemovePool(_Strict):
    model: str
    site: str | None = None
    #: How many nodes to take away (the last ones of the pool); ``None`` removes the whole pool.
    nodes: int | None = Field(default=None, ge=1)


class Change(_Strict):
    add: AddPool | None = None
    remove: RemovePool | None = None

    @model_validator(mode="after")
    def _one(self) -> Change:
        if (self.add is None) == (self.remove is None):
            raise ValueError("a change is exactly one of 'add' or 'remove'")
        return self


class TraceRef(_Strict):
    path: str
    format: str = "native"


class SyntheticWorkload(_Strict):
    jobs: int = Field(default=5000, ge=1, le=10_000_000)
    load: float = Field(default=0.7, gt=0, le=10)
    seed: int = 0
    tenants: int = Field(default=20, ge=1)
    constrained_share: float = Field(default=0.3, ge=0, le=1)


class Workload(_Strict):
    trace: TraceRef | None = None
    synthetic: SyntheticWorkload | None = None


class PolicySpec(_Strict):
    scorer: str = "fgd"
    seed: int = 0
    candidates: int = Field(default=8, ge=1)
    #: The core's ordering of pending jobs (``scheduler.orderings``).
    ordering: str = "drf"

    @model_validator(mode="after")
    def _known(self) -> PolicySpec:
        if self.scorer not in SCORERS:
            raise ValueError(f"unknown scorer {self.scorer!r} (allowed: {', '.join(SCORERS)})")
        check_ordering(self.ordering)
        return self


class SimulationSpec(_Strict):
    #: Which pending jobs a pass after arrivals alone decides (``SimConfig.arrival_pass``).
    arrival_pass: Literal["all", "changed", "new"] = "all"
    incremental: bool = False
    seed: int = 0
    node_mtbf_hours: float = Field(default=0.0, ge=0)
    node_repair_hours: float = Field(default=4.0, gt=0)
    job_failure_probability: float = Field(default=0.0, ge=0, le=1)
    max_retries: int = Field(default=3, ge=0)
    slo_wait_s: float = Field(default=60.0, gt=0)
    horizon_hours: float | None = Field(default=None, gt=0)

    def config(self, economics: Economics) -> SimConfig:
        return SimConfig(
            arrival_pass=self.arrival_pass,
            incremental=self.incremental,
            seed=self.seed,
            node_mtbf_s=self.node_mtbf_hours * 3600.0,
            node_repair_s=self.node_repair_hours * 3600.0,
            job_failure_probability=self.job_failure_probability,
            max_retries=self.max_retries,
            default_slo_wait_s=self.slo_wait_s,
            horizon_s=self.horizon_hours * 3600.0 if self.horizon_hours else None,
            economics=economics,
        )


class EconomicsSpec(_Strict):
    pue: float = Field(default=1.3, ge=1.0, le=3.0)
    electricity_price_per_kwh: float = Field(default=0.6, ge=0)
    idle_power_fraction: float = Field(default=0.3, ge=0, le=1)
    default_tdp_w: float = Field(default=300.0, gt=0)
    amortisation_years: float = Field(default=5.0, gt=0)
    price_per_device: dict[str, float] = Field(default_factory=dict)
    currency: str = "CNY"

    def economics(self, catalog: Catalog) -> Economics:
        prices = {
            catalog.resolve(name, field="economics.price_per_device").model: p
            for name, p in self.price_per_device.items()
        }
        return Economics(
            pue=self.pue,
            electricity_price_per_kwh=self.electricity_price_per_kwh,
            idle_power_fraction=self.idle_power_fraction,
            default_tdp_w=self.default_tdp_w,
            amortisation_years=self.amortisation_years,
            price_per_device=prices,
            currency=self.currency,
        )


class Targets(_Strict):
    domestic_share: float | None = Field(default=None, ge=0, le=1)
    slo_attainment: float | None = Field(default=None, ge=0, le=1)
    wait_p95_s: float | None = Field(default=None, ge=0)
    utilisation: float | None = Field(default=None, ge=0, le=1)

    def check(self, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Each set target with the measured value and whether it is met."""
        out: dict[str, dict[str, Any]] = {}
        measured = {
            "domestic_share": summary.get("domestic_share_ncu"),
            "slo_attainment": summary.get("slo_attainment"),
            "wait_p95_s": summary.get("wait_s", {}).get("p95"),
            "utilisation": summary.get("utilisation"),
        }
        for name in ("domestic_share", "slo_attainment", "wait_p95_s", "utilisation"):
            target = getattr(self, name)
            if target is None:
                continue
            value = measured[name]
            ok = value is not None and not (isinstance(value, float) and math.isnan(value))
            if ok:
                assert value is not None
                ok = value <= target if name == "wait_p95_s" else value >= target
            out[name] = {"target": target, "measured": value, "met": ok}
        return out


class Variant(_Strict):
    name: str = Field(min_length=1)
    changes: list[Change] | None = None
    demand_growth: dict[str, float] | None = None
    policy: PolicySpec | None = None
    simulation: SimulationSpec | None = None
    economics: EconomicsSpec | None = None


class Scenario(_Strict):
    """One what-if question; :meth:`expand` gives the concrete runs (one per variant)."""

    name: str = Field(min_length=1)
    description: str = ""
    cluster: str | None = None
    workload: Workload = Workload()
    demand_growth: dict[str, float] = Field(default_factory=dict)
    changes: list[Change] = Field(default_factory=list)
    policy: PolicySpec = PolicySpec()
    simulation: SimulationSpec = SimulationSpec()
    economics: EconomicsSpec = EconomicsSpec()
    targets: Targets = Targets()
    variants: list[Variant] = Field(default_factory=list)
    #: Folder the file's relative paths are resolved against (set by :func:`load_scenario`).
    base_dir: str = "."

    @model_validator(mode="after")
    def _growth(self) -> Scenario:
        for growth in [self.demand_growth, *(v.demand_growth or {} for v in self.variants)]:
            for key, value in growth.items():
                if value < 0:
                    raise ValueError(f"demand_growth.{key} must be >= 0, got {value}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        return self

    def expand(self) -> list[Scenario]:
        """The concrete scenarios: this one alone, or one per variant with its overrides applied."""
        if not self.variants:
            return [self]
        out: list[Scenario] = []
        for variant in self.variants:
            update: dict[str, Any] = {"name": variant.name, "variants": []}
            for key in ("changes", "demand_growth", "policy", "simulation", "economics"):
                value = getattr(variant, key)
                if value is not None:
                    update[key] = value
            out.append(self.model_copy(update=update))
        return out

    def path(self, relative: str) -> Path:
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else Path(self.base_dir) / candidate


def parse_scenario(data: object, source: str | Path = "<scenario>") -> Scenario:
    return validate_model(Scenario, data, source)


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario file; relative paths inside it resolve against its folder."""
    data = load_yaml_mapping(path)
    data.setdefault("base_dir", str(Path(path).resolve().parent))
    return parse_scenario(data, path)


# ---------------------------------------------------------------------------------------------- applying


def apply_changes(
    nodes: list[Node], changes: Iterable[Change], catalog: Catalog, source: str = "<scenario>"
) -> list[Node]:
    """The cluster after ``changes``: added pools expand like cluster files; removals drop the last nodes."""
    result = list(nodes)
    for index, change in enumerate(changes):
        if change.add is not None:
            add = change.add
            entry = catalog.resolve(add.model, source=source, field=f"changes[{index}].add.model")
            taken = {n.id for n in result}
            prefix = f"{add.site}-{entry.model.lower()}-add{index}"
            if any(n.startswith(prefix) for n in taken):
                raise ConfigError(source, f"changes[{index}].add", f"node ids {prefix}-* already exist")
            doc = {
                "name": "change",
                "sites": {add.site: {"region": add.region, "tier": add.tier.value}},
                "pools": [
                    {
                        "model": entry.model,
                        "site": add.site,
                        "nodes": add.nodes,
                        "devices_per_node": add.devices_per_node,
                        "cpu_cores": add.cpu_cores,
                        "memory_gib": add.memory_gib,
                        "nodes_per_switch": add.nodes_per_switch,
                        "id_prefix": prefix,
                    }
                ],
            }
            result.extend(parse_cluster(doc, source, catalog).nodes)
        elif change.remove is not None:
            remove = change.remove
            entry = catalog.resolve(remove.model, source=source, field=f"changes[{index}].remove.model")
            matching = [
                i
                for i, n in enumerate(result)
                if n.model == entry.model and (remove.site is None or n.site == remove.site)
            ]
            if not matching:
                raise ConfigError(source, f"changes[{index}].remove", f"no {entry.model} nodes to remove")
            count = len(matching) if remove.nodes is None else remove.nodes
            if count > len(matching):
                raise ConfigError(
                    source, f"changes[{index}].remove.nodes", f"only {len(matching)} {entry.model} nodes exist"
                )
            drop = set(matching[len(matching) - count :])
            result = [n for i, n in enumerate(result) if i not in drop]
    return result


def grow_demand(jobs: Iterable[TraceJob], growth: dict[str, float], seed: int = 0) -> Iterator[TraceJob]:
    """Scale demand per job class (see the module docstring); streaming, order preserved.

    >>> from simulations.schema import TraceJob
    >>> jobs = [TraceJob(id=str(i), submit_time=i, duration_s=1) for i in range(3)]
    >>> [j.id for j in grow_demand(jobs, {"default": 2.0})]
    ['0', '0~1', '1', '1~1', '2', '2~1']
    """
    if not growth:
        yield from jobs
        return
    rng = random.Random(seed)
    default = growth.get("default", 1.0)
    for job in jobs:
        factor = growth.get(job.job_class.value, default)
        copies = math.floor(factor)
        if rng.random() < factor - copies:
            copies += 1
        for k in range(copies):
            if k == 0:
                yield job
            else:
                yield dataclasses.replace(job, id=f"{job.id}~{k}")
