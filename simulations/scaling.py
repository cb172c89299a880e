"""Replaying the worker-group scaling rule (:mod:`scheduler.scaling`) in the timeline simulation.

On Kubernetes a node takes Zhisuan work only while a Ray worker pod of its group runs there; the scheduler
service sizes the groups with :class:`~scheduler.scaling.ScalingRule`. Here every installed node starts out of
service (unschedulable, as a node without a worker pod is to the core), and a :class:`ScalingReplay` runs the
same rule every ``interval_s`` of virtual time, on the simulation's own state, pending jobs and reservations:

* a node the rule adds comes into service ``startup_s`` later (the pod starting) and a pass follows;
* a node the rule removes leaves service at once — the rule only removes nodes that hold nothing, and the
  replay checks it again (:class:`ScalingViolation` if it ever would not be so);
* ``capacity`` records, at every change, each group's replicas and nodes in service (capacity over time).

Plugging it in (the simulator's files are unchanged)::

    sim = TimelineSimulation(nodes, core=core, config=config)
    replay = ScalingReplay(sim, pools=scaling_pools(nodes), rule=ScalingRule(grace_s=600))
    replay.attach()                  # before sim.run: take nodes out of service, start the periodic rule
    result = sim.run(jobs)
    replay.drain(until=sim.engine.now + 2 * 600)   # optional: let idle nodes go after the last job
    result.summary["scaling"] = replay.summary()

From the command line: ``zhisuan simulate --cluster C --trace T --autoscale [--scale-grace S] [--scale-startup S]
[--scale-interval S]`` (the runner does the above with the core's own acceptable models; the JSON gets
``scaling``, the HTML report a capacity section).

The replay reaches into :class:`~simulations.timeline.TimelineSimulation` for four things only: its engine (to
schedule its own process), its state, its pending jobs and ``_request_pass`` (to run a pass when capacity grows).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scheduler.model import Node
from scheduler.scaling import GroupTarget, GroupView, ScalingRule
from simulations.timeline import TimelineSimulation


class ScalingViolation(AssertionError):
    """The rule asked to remove a node that holds work (it must never)."""


@dataclass(frozen=True)
class PoolGroup:
    """One worker group of the replay: the installed nodes of one pool and its replica bounds."""

    name: str
    pool: str
    model: str
    nodes: tuple[str, ...]
    devices: int
    cpu_milli: int
    memory_mib: int
    min_replicas: int = 0
    max_replicas: int | None = None


def scaling_pools(nodes: Iterable[Node], min_replicas: int = 0) -> list[PoolGroup]:
    """One group per pool, its node shape the smallest node of the pool (a pod must fit on any of them)."""
    by_pool: dict[str, list[Node]] = {}
    for node in nodes:
        by_pool.setdefault(node.pool, []).append(node)
    return [
        PoolGroup(
            name=pool.replace("/", "-").lower(),
            pool=pool,
            model=members[0].model,
            nodes=tuple(n.id for n in members),
            devices=min(n.devices for n in members),
            cpu_milli=min(n.cpu_milli for n in members),
            memory_mib=min(n.memory_mib for n in members),
            min_replicas=min_replicas,
        )
        for pool, members in sorted(by_pool.items())
    ]


@dataclass
class _GroupState:
    spec: PoolGroup
    replicas: int = 0
    active: list[str] = field(default_factory=list)
    starting: list[str] = field(default_factory=list)


class ScalingReplay:
    """Drives :class:`ScalingRule` inside a :class:`TimelineSimulation` (see the module docstring)."""

    def __init__(
        self,
        sim: TimelineSimulation,
        pools: Sequence[PoolGroup],
        rule: ScalingRule | None = None,
        *,
        interval_s: float = 10.0,
        startup_s: float = 60.0,
    ) -> None:
        self.sim = sim
        self.rule = rule or ScalingRule()
        self.interval_s = interval_s
        self.startup_s = startup_s
        self.groups = {p.name: _GroupState(p) for p in pools}
        self.capacity: list[dict[str, Any]] = []
        self.decisions: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------ driving

    def attach(self) -> None:
        """Take every group's nodes out of service (except ``min_replicas``), and start the periodic rule."""
        state = self.sim.state
        for group in self.groups.values():
            keep = list(group.spec.nodes[: group.spec.min_replicas])
            for node_id in group.spec.nodes:
                if node_id not in keep:
                    state.set_schedulable(node_id, False)
                    self.sim.metrics.frag.refresh(state.nodes[node_id])
            group.active = keep
            group.replicas = len(keep)
        self._record(self.sim.engine.now)
        self.sim.engine.process(self._loop())

    def drain(self, until: float) -> None:
        """Go on after the last job (the simulation has stopped) so idle nodes can reach their grace period."""
        self.sim.engine.run(until=until)

    def _loop(self) -> Generator[float, None, None]:
        while True:
            self.step(self.sim.engine.now)
            yield self.interval_s

    def views(self) -> list[GroupView]:
        return [
            GroupView(
                name=name,
                pool=g.spec.pool,
                model=g.spec.model,
                devices=g.spec.devices,
                cpu_milli=g.spec.cpu_milli,
                memory_mib=g.spec.memory_mib,
                replicas=g.replicas,
                max_replicas=g.spec.max_replicas if g.spec.max_replicas is not None else len(g.spec.nodes),
                nodes=tuple(g.active),
                min_replicas=g.spec.min_replicas,
            )
            for name, g in self.groups.items()
        ]

    def step(self, now: float) -> dict[str, GroupTarget]:
        """Run the rule once and carry its targets out."""
        sim = self.sim
        pending = [p.job for p in sim.pending.values()]
        reservations = getattr(sim.core, "reservations", None)
        targets = self.rule.decide(sim.state, pending, self.views(), now, reservations)
        changed = False
        for name, target in targets.items():
            group = self.groups[name]
            if target.remove:
                self._remove(group, target.remove)
                changed = True
            if target.added:
                self._add(group, target.added, now)
                changed = True
            if target.added or target.remove:
                self.decisions.append(
                    {
                        "t": now,
                        "group": name,
                        "added": target.added,
                        "removed": list(target.remove),
                        "for": list(target.serving),
                    }
                )
            group.replicas = target.replicas
        if changed:
            self._record(now)
        return targets

    def _add(self, group: _GroupState, count: int, now: float) -> None:
        spare = [n for n in group.spec.nodes if n not in group.active and n not in group.starting]
        chosen = spare[:count]
        group.starting.extend(chosen)
        self.sim.engine.process(self._start_later(group, chosen), delay=self.startup_s)

    def _start_later(self, group: _GroupState, nodes: list[str]) -> Generator[float, None, None]:
        state = self.sim.state
        for node_id in nodes:
            if node_id in group.starting:
                group.starting.remove(node_id)
                group.active.append(node_id)
                state.set_schedulable(node_id, True)
                self.sim.metrics.frag.refresh(state.nodes[node_id])
        self._record(self.sim.engine.now)
        self.sim._request_pass(full=True)
        return
        yield 0.0  # a generator process that ends at once

    def _remove(self, group: _GroupState, nodes: Iterable[str]) -> None:
        state = self.sim.state
        for node_id in nodes:
            holding = [j for j, p in state.allocations.items() if any(w.node == node_id for w in p.workers)]
            if holding:
                raise ScalingViolation(f"the rule removed {node_id}, which holds {', '.join(holding)}")
            group.active.remove(node_id)
            state.set_schedulable(node_id, False)
            self.sim.metrics.frag.refresh(state.nodes[node_id])

    # ------------------------------------------------------------------------------------------ report

    def _record(self, now: float) -> None:
        for name, group in self.groups.items():
            point = {"t": now, "group": name, "replicas": group.replicas, "in_service": len(group.active)}
            last = next((c for c in reversed(self.capacity) if c["group"] == name), None)
            if last is None or (last["replicas"], last["in_service"]) != (point["replicas"], point["in_service"]):
                self.capacity.append(point)

    def summary(self, until: float | None = None) -> dict[str, Any]:
        """Capacity over time and the rule's decisions, for the run's report; with ``until`` (the end of the run),
        also the node-hours each group had in service against the node-hours installed, and its peak.

            >>> from scheduler.model import Node
            >>> from simulations.timeline import SimConfig, TimelineSimulation
            >>> nodes = [Node(id=f"n{i}", model="H100", devices=8, cpu_milli=96000, memory_mib=900000, site="bj1")
            ...          for i in range(2)]
            >>> replay = ScalingReplay(TimelineSimulation(nodes, config=SimConfig()), scaling_pools(nodes))
            >>> replay.attach()
            >>> hours = replay.summary(until=3600.0)
            >>> hours["node_hours_in_service"], hours["node_hours_installed"]
            (0.0, 2.0)
        """
        out: dict[str, Any] = {
            "grace_s": self.rule.grace_s,
            "interval_s": self.interval_s,
            "startup_s": self.startup_s,
            "capacity": list(self.capacity),
            "decisions": list(self.decisions),
        }
        if until is None:
            return out
        groups: dict[str, dict[str, Any]] = {}
        for name, group in self.groups.items():
            points = [c for c in self.capacity if c["group"] == name]
            served = 0.0
            for point, following in zip(points, [*points[1:], None], strict=True):
                end = until if following is None else following["t"]
                served += point["in_service"] * max(0.0, end - point["t"]) / 3600.0
            start = points[0]["t"] if points else until
            groups[name] = {
                "pool": group.spec.pool,
                "installed": len(group.spec.nodes),
                "peak_in_service": max((c["in_service"] for c in points), default=0),
                "peak_replicas": max((c["replicas"] for c in points), default=0),
                "node_hours_in_service": served,
                "node_hours_installed": len(group.spec.nodes) * max(0.0, until - start) / 3600.0,
            }
        out["groups"] = groups
        out["node_hours_in_service"] = sum(g["node_hours_in_service"] for g in groups.values())
        out["node_hours_installed"] = sum(g["node_hours_installed"] for g in groups.values())
        return out
