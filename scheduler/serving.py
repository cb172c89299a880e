"""Served inference, the pure half: how many replicas the load asks for, how a service rolls to a new revision,
and a placement preference that spreads a service's replicas over nodes.

The live service (:mod:`scheduler.live.serving`) and the simulator (:mod:`simulations.serving`) run the very same
rule; nothing here reads a clock — every call is given *now*.

**Autoscaling.** Routers report, about once a second, how many requests of a service were in flight (queued
ones included) and the p99 latency they saw. :class:`Autoscaler` averages the load over a short look-back and
turns it into a desired replica count::

    >>> from scheduler.serving import Autoscaler, LoadSample, ScalingRule
    >>> rule = ScalingRule(min_replicas=1, max_replicas=8, target_ongoing=2.0, upscale_delay_s=2.0)
    >>> scaler = Autoscaler(rule, replicas=1)
    >>> for t in range(4):
    ...     scaler.observe(LoadSample(at=float(t), ongoing=7.0, requests=50))
    ...     print(t, scaler.decide(float(t)).reason)
    0 load 7 in flight for 1 replica at 2 each: 4 wanted (waiting 2 s before adding)
    1 load 7 in flight for 1 replica at 2 each: 4 wanted (waiting 2 s before adding)
    2 load 7 in flight for 1 replica at 2 each: 4 wanted
    3 load 7 in flight for 4 replicas: steady

It adds replicas only once the load has asked for more for ``upscale_delay_s`` (a burst of one second does not
start a replica) and removes one at a time, only after the load asked for fewer for ``downscale_delay_s``
(hysteresis: the band between the two counts, ``tolerance``, keeps a load right at the target from flapping).
With a latency SLO a p99 over it asks for one more replica even when the in-flight count looks fine, and a p99
near it (``latency_hold``) holds every scale-in. A service allowed to reach zero does so after
``idle_before_zero_s`` without a request, and the first request that finds it at zero starts one replica at once
(its cold start).

**Rolling out and replacing.** :func:`plan_replicas` compares the replicas a service has with the count wanted
and its current revision, and says which to add, which to drain (stop sending requests, then stop) and which to
stop at once — new replicas become ready before old ones drain (one replica of surge), and a replica that failed
its health checks is replaced.

**Spread.** :class:`SpreadReplicas` wraps the placement engine's node scorer so that, among the nodes it would
consider for a replica, those already running a replica of the same service come last: losing one node then
takes as few of a service's replicas as the cluster allows.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from scheduler.model import Job
from scheduler.scoring import Scorer
from scheduler.spec import JobSpec
from scheduler.state import NodeState

#: The label every replica job carries: the id of the service it serves (spread and bookkeeping read it).
SERVICE_LABEL = "zhisuan.io/service"
#: The label with the service revision a replica runs.
REVISION_LABEL = "zhisuan.io/revision"


# ------------------------------------------------------------------------------------------------ autoscaling


@dataclass(frozen=True)
class ScalingRule:
    """The knobs of :class:`Autoscaler` (from a spec's ``serving`` block and ``slo`` with :meth:`of`)."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing: float = 2.0
    slo_p99_ms: float | None = None
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 30.0
    idle_before_zero_s: float = 300.0
    #: Seconds of reports averaged into one load figure.
    look_back_s: float = 5.0
    #: Relative band around the target inside which the count does not move.
    tolerance: float = 0.1
    #: A p99 above this share of the SLO holds every scale-in.
    latency_hold: float = 0.8

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if self.target_ongoing <= 0:
            raise ValueError(f"target_ongoing must be > 0, got {self.target_ongoing}")

    @classmethod
    def of(cls, spec: JobSpec) -> ScalingRule:
        """The rule of a served spec (a spec without ``serving`` keeps its fixed replica count)."""
        serving = spec.serving
        if serving is None:
            return cls(min_replicas=spec.workers, max_replicas=spec.workers)
        return cls(
            min_replicas=serving.min_replicas,
            max_replicas=serving.max_replicas,
            target_ongoing=serving.target_ongoing_requests,
            slo_p99_ms=spec.slo.p99_latency_ms if spec.slo is not None else None,
            upscale_delay_s=serving.upscale_delay_s,
            downscale_delay_s=serving.downscale_delay_s,
            idle_before_zero_s=serving.idle_before_zero_s,
        )


@dataclass(frozen=True)
class LoadSample:
    """What the routers saw of one service in the second before ``at``: requests in flight (queued included,
    averaged over the second), queued alone, requests finished and their p99 latency (None: none finished)."""

    at: float
    ongoing: float = 0.0
    queued: float = 0.0
    requests: int = 0
    p99_ms: float | None = None


@dataclass(frozen=True)
class ScaleDecision:
    desired: int
    reason: str
    changed: bool = False


@dataclass
class Autoscaler:
    """Load in, desired replica count out, with hysteresis and cooldowns (see the module docstring)."""

    rule: ScalingRule
    replicas: int
    samples: deque[LoadSample] = field(default_factory=deque)
    #: Since when the load has asked for more (fewer) replicas than ``replicas``, None while it does not.
    wants_more_since: float | None = None
    wants_fewer_since: float | None = None
    last_request_at: float | None = None
    last_change_at: float = float("-inf")

    def __post_init__(self) -> None:
        self.replicas = self._clamp(self.replicas)

    def observe(self, sample: LoadSample) -> None:
        """Add one report (reports older than the look-back fall out)."""
        self.samples.append(sample)
        if sample.requests > 0 or sample.ongoing > 0 or sample.queued > 0:
            self.last_request_at = sample.at if self.last_request_at is None else max(self.last_request_at, sample.at)
        while self.samples and self.samples[0].at < sample.at - self.rule.look_back_s:
            self.samples.popleft()

    def load(self) -> float:
        """Requests in flight, averaged over the look-back (0 without reports)."""
        return sum(s.ongoing for s in self.samples) / len(self.samples) if self.samples else 0.0

    def p99_ms(self) -> float | None:
        """The worst p99 reported in the look-back (None: no request finished in it)."""
        seen = [s.p99_ms for s in self.samples if s.p99_ms is not None and s.requests > 0]
        return max(seen) if seen else None

    def decide(self, now: float) -> ScaleDecision:
        """The replica count the load asks for now; ``replicas`` follows it (the caller carries it out)."""
        rule = self.rule
        load = self.load()
        current = self.replicas
        latest = self.samples[-1] if self.samples else None
        # From zero: a request waiting is a cold start, served as soon as possible (no delay).
        if current == 0:
            waiting = latest is not None and (latest.queued > 0 or latest.ongoing > 0)
            if waiting and rule.max_replicas > 0:
                wanted = self._clamp(max(1, math.ceil(load / rule.target_ongoing)))
                return self._change(now, wanted, f"cold start: {load:g} requests waiting at zero replicas")
            return ScaleDecision(0, "scaled to zero: no requests")
        raw = load / rule.target_ongoing
        up = self._clamp(math.ceil(raw)) if raw > current * (1 + rule.tolerance) else current
        p99 = self.p99_ms()
        why_up = f"load {load:g} in flight for {_n(current)} at {rule.target_ongoing:g} each: {up} wanted"
        if rule.slo_p99_ms is not None and p99 is not None and p99 > rule.slo_p99_ms and up <= current:
            up = self._clamp(current + 1)
            why_up = f"p99 {p99:.0f} ms over the SLO of {rule.slo_p99_ms:g} ms: one more replica"
        # Scale in only to a count that would still run below the target with the tolerance to spare, one at a
        # time, and never to zero: only an idle spell (below) takes a service to zero.
        down = self._clamp(max(math.ceil(raw * (1 + rule.tolerance)), current - 1, 1))
        if (
            rule.slo_p99_ms is not None
            and p99 is not None
            and p99 > rule.slo_p99_ms * rule.latency_hold
            and down < current
        ):
            down = current
        idle = self.last_request_at is None or now - self.last_request_at >= rule.idle_before_zero_s
        if rule.min_replicas == 0 and idle and load == 0:
            since = self.last_request_at if self.last_request_at is not None else self.last_change_at
            if now - max(since, self.last_change_at) >= rule.idle_before_zero_s:
                return self._change(now, 0, f"no request for {rule.idle_before_zero_s:g} s: scale to zero")
        if up > current:
            self.wants_fewer_since = None
            if self.wants_more_since is None:
                self.wants_more_since = now
            cooled = now - self.last_change_at >= rule.upscale_delay_s
            if now - self.wants_more_since >= rule.upscale_delay_s and cooled:
                return self._change(now, up, why_up)
            return ScaleDecision(current, f"{why_up} (waiting {rule.upscale_delay_s:g} s before adding)")
        self.wants_more_since = None
        if down < current:
            if self.wants_fewer_since is None:
                self.wants_fewer_since = now
            cooled = now - self.last_change_at >= rule.downscale_delay_s
            if now - self.wants_fewer_since >= rule.downscale_delay_s and cooled:
                return self._change(now, current - 1, f"load {load:g} in flight fits {_n(current - 1)}")
            return ScaleDecision(current, f"load {load:g} in flight would fit {_n(current - 1)} (holding)")
        self.wants_fewer_since = None
        return ScaleDecision(current, f"load {load:g} in flight for {_n(current)}: steady")

    def _change(self, now: float, desired: int, reason: str) -> ScaleDecision:
        desired = self._clamp(desired)
        changed = desired != self.replicas
        if changed:
            self.replicas = desired
            self.last_change_at = now
            self.wants_more_since = self.wants_fewer_since = None
        return ScaleDecision(desired, reason, changed)

    def _clamp(self, count: int) -> int:
        return min(self.rule.max_replicas, max(self.rule.min_replicas, count))


def _n(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"


# ------------------------------------------------------------------------------------------------ replicas


def replica_spec(spec: JobSpec, service_id: str, revision: int) -> JobSpec:
    """The job spec of one replica of a served spec: one worker of the same shape and entrypoint, labelled with
    its service and revision (what the core places and the executor launches like any inference job).

    >>> from scheduler.spec import JobSpec
    >>> svc = JobSpec(name="chat", kind="inference", entrypoint="serve", devices_per_worker=0.25, replicas=2,
    ...               serving={"max_replicas": 4})
    >>> one = replica_spec(svc, "s1", 3)
    >>> (one.name, one.workers, one.serving, one.labels[REVISION_LABEL])
    ('chat-r3', 1, None, '3')
    """
    labels = {**spec.labels, SERVICE_LABEL: service_id, REVISION_LABEL: str(revision)}
    name = f"{spec.name[: 100 - len(str(revision)) - 2]}-r{revision}"
    return spec.model_copy(update={"name": name, "workers": 1, "serving": None, "labels": labels})


class ReplicaPhase(StrEnum):
    """Where a replica is, as the serving controller judges it (not the job's state)."""

    #: Its job waits for the core to place it.
    PENDING = "pending"
    #: Placed and launched, not yet answering its health route.
    STARTING = "starting"
    #: Answers its health route: the routers send it requests.
    READY = "ready"
    #: Being removed: no new requests, those in flight finish.
    DRAINING = "draining"
    #: Failed its health checks (or never became ready): to be replaced.
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class ReplicaView:
    """One replica of a service, as :func:`plan_replicas` needs it."""

    job_id: str
    revision: int
    phase: ReplicaPhase
    created_at: float = 0.0
    node: str | None = None


@dataclass(frozen=True)
class ReplicaPlan:
    """What to do with a service's replicas now: ``add`` new ones of the current revision, ``drain`` these
    (stop routing to them, stop them once idle), ``stop`` these at once (not serving: nothing to drain)."""

    add: int = 0
    drain: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    why: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.drain or self.stop)


_SERVING = (ReplicaPhase.PENDING, ReplicaPhase.STARTING, ReplicaPhase.READY)


def plan_replicas(desired: int, revision: int, replicas: Sequence[ReplicaView], surge: int = 1) -> ReplicaPlan:
    """Converge a service's replicas on ``desired`` replicas of ``revision``, never below what is ready.

    A rolling update keeps at most ``desired + surge`` replicas alive and drains an old replica only once the
    ready ones exceed ``desired``; unhealthy replicas are stopped (and so replaced); removal takes replicas that
    do not serve yet first, then the newest, on the most crowded node::

        >>> old = [ReplicaView(f"r{i}", 1, ReplicaPhase.READY, float(i)) for i in range(2)]
        >>> plan_replicas(2, 2, old)
        ReplicaPlan(add=1, drain=(), stop=(), why=('rolling to revision 2: 1 new',))
        >>> plan_replicas(2, 2, [*old, ReplicaView("n0", 2, ReplicaPhase.READY, 5.0)]).drain
        ('r0',)
    """
    if surge < 0:
        raise ValueError(f"surge must be >= 0, got {surge}")
    why: list[str] = []
    stop = [r.job_id for r in replicas if r.phase is ReplicaPhase.UNHEALTHY]
    if stop:
        why.append(f"replacing {len(stop)} unhealthy")
    live = [r for r in replicas if r.phase in _SERVING]
    current = [r for r in live if r.revision == revision]
    old = [r for r in live if r.revision != revision]
    drain: list[str] = []
    # Old replicas that do not serve are stopped at once: nothing depends on them.
    old_idle = [r for r in old if r.phase is not ReplicaPhase.READY]
    stop.extend(r.job_id for r in old_idle)
    old_ready = sorted((r for r in old if r.phase is ReplicaPhase.READY), key=lambda r: (r.created_at, r.job_id))
    current_ready = [r for r in current if r.phase is ReplicaPhase.READY]
    add = max(0, min(desired - len(current), desired + surge - len(current) - len(old_ready)))
    if old_ready:
        if add:
            why.append(f"rolling to revision {revision}: {add} new")
        surplus = len(current_ready) + len(old_ready) - desired
        if surplus > 0:
            taken = old_ready[:surplus]
            drain.extend(r.job_id for r in taken)
            why.append(f"draining {len(taken)} of revision {taken[0].revision}")
    elif add:
        why.append(f"scaling out: {add} new")
    extra = len(current) - desired
    if extra > 0:
        crowd: dict[str | None, int] = {}
        for r in current:
            crowd[r.node] = crowd.get(r.node, 0) + 1
        order = sorted(
            current,
            key=lambda r: (
                r.phase is ReplicaPhase.READY,
                r.phase is ReplicaPhase.STARTING,
                -crowd[r.node],
                -r.created_at,
            ),
        )
        for r in order[:extra]:
            (drain if r.phase is ReplicaPhase.READY else stop).append(r.job_id)
        why.append(f"scaling in: {extra} fewer")
    return ReplicaPlan(add, tuple(drain), tuple(stop), tuple(why))


@dataclass(frozen=True)
class HealthRule:
    """When a replica counts as ready, and when as unhealthy (to be replaced)."""

    failure_threshold: int = 3
    startup_timeout_s: float = 300.0

    def judge(
        self, started_at: float, ready_at: float | None, failures: int, now: float, terminal: bool = False
    ) -> ReplicaPhase:
        """The phase of a launched replica: starting until its first good health answer, ready until
        ``failure_threshold`` bad answers in a row; unhealthy also when it never became ready in time.

        >>> HealthRule(startup_timeout_s=60).judge(started_at=0, ready_at=None, failures=0, now=61)
        <ReplicaPhase.UNHEALTHY: 'unhealthy'>
        """
        if terminal:
            return ReplicaPhase.UNHEALTHY
        if ready_at is None:
            return ReplicaPhase.UNHEALTHY if now - started_at > self.startup_timeout_s else ReplicaPhase.STARTING
        return ReplicaPhase.UNHEALTHY if failures >= self.failure_threshold else ReplicaPhase.READY


# ------------------------------------------------------------------------------------------------ spread


class SpreadReplicas:
    """A node scorer that prefers, for a replica, nodes running no other replica of its service.

    ``siblings(service_id)`` gives the nodes where replicas of a service run now; the wrapped scorer's score
    decides among nodes with equally many siblings. Other jobs are scored by the wrapped scorer alone, so
    packing (FGD by default) is unchanged for everything that is not a replica.
    """

    #: Added per sibling on a node: larger than any score of the scorers (they are device or CPU milli counts).
    PENALTY = 1e12

    def __init__(self, inner: Scorer, siblings: Callable[[str], Iterable[str]]) -> None:
        self.inner = inner
        self.siblings = siblings
        self.name = f"{inner.name}+spread"
        self.tight_first = inner.tight_first

    def evaluate(self, ns: NodeState, job: Job) -> tuple[float, tuple[int, ...]] | None:
        scored = self.inner.evaluate(ns, job)
        service = job.labels.get(SERVICE_LABEL) if job.labels else None
        if scored is None or service is None:
            return scored
        crowd = sum(1 for node in self.siblings(service) if node == ns.id)
        return scored[0] + crowd * self.PENALTY, scored[1]

    def observe(self, job: Job) -> None:
        self.inner.observe(job)

    def __deepcopy__(self, memo: dict[int, object]) -> SpreadReplicas:
        # A forecast forks the core's scorer: the copy gets its own inner scorer and reads the same siblings
        # (a read-only view of where replicas run now).
        return SpreadReplicas(copy.deepcopy(self.inner, memo), self.siblings)
