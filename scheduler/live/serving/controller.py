"""The serving controller: the scheduler cycle's step that scales services, rolls updates and replaces replicas.

Every replica of a service is a job of its own (one worker, labelled with its service and revision): the
controller *submits* replica jobs and *cancels* them, and the scheduler cycle does the rest exactly as for any
job — the core places each replica (quota, fair share, domestic policy, fractional devices, preemption of
lower-priority work), the executor launches it on the node and devices the core chose, a lost node requeues it
elsewhere, the ledger meters its device-hours. Per service, each step:

1. reads the routers' load reports and turns them into a desired count (:class:`~scheduler.serving.Autoscaler`);
2. learns each replica's URL from the first lines of its log (``ZHISUAN_ENDPOINT=http://host:port``, or a
   ``serving on http://...`` line) and its health from :class:`~scheduler.live.serving.health.HealthProber`;
3. plans adds, drains and stops (:func:`~scheduler.serving.plan_replicas`: new revision ready before old drain,
   unhealthy replaced) and carries them out;
4. stops a draining replica once every router has seen it draining and none has a request in flight on it
   (or its ``drain_timeout_s`` ran out).

The controller also makes the core's placement spread replicas of one service over nodes
(:class:`~scheduler.serving.SpreadReplicas` around the engine's scorer). Wiring::

    controller = ServeController(serving_store)                                 # doctest: +SKIP
    service = SchedulerService(store, executor, config, serving=controller)     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.core import SchedulerCore
from scheduler.live.executors.base import Executor, ExecutorError
from scheduler.live.serving.health import HealthProber, Probe, ProbeResult
from scheduler.live.serving.store import LoadReport, ReplicaRecord, ServiceRecord, ServiceState, ServingStore
from scheduler.live.store import Fence, NotLeader, StoreUnavailable
from scheduler.serving import (
    SERVICE_LABEL,
    Autoscaler,
    HealthRule,
    LoadSample,
    ReplicaPhase,
    ReplicaView,
    ScalingRule,
    SpreadReplicas,
    plan_replicas,
)
from scheduler.spec import JobState
from scheduler.state import ClusterState

log = logging.getLogger("zhisuan.serving")

#: How a replica announces where it listens, in the first lines of its log.
ENDPOINT_LINE = re.compile(
    r"ZHISUAN_ENDPOINT=(https?://[^\s\"']+)|\b(?:serving|listening|running) on (https?://[^\s\"']+)", re.IGNORECASE
)


def endpoint_in(text: str) -> str | None:
    """The URL a replica's log announces, if it did.

    >>> endpoint_in("starting\\nZHISUAN_ENDPOINT=http://10.0.0.5:41234\\n")
    'http://10.0.0.5:41234'
    >>> endpoint_in("replica 0 serving on http://127.0.0.1:8080/ (ctrl-c to stop)") is None
    False
    """
    found = ENDPOINT_LINE.search(text)
    if found is None:
        return None
    url = (found.group(1) or found.group(2)).rstrip("/.,;)")
    return url


class ServingHost(Protocol):
    """What the controller uses of the scheduler service it is a step of."""

    core: SchedulerCore
    state: ClusterState
    executor: Executor

    @property
    def fence(self) -> Fence: ...


@dataclass(frozen=True)
class ServeConfig:
    """Knobs of the controller (the per-service ones are in each spec's ``serving`` block)."""

    #: The step runs at most this often.
    every_s: float = 0.5
    #: Health checks of ready replicas (and of starting ones, which are asked more often).
    health_every_s: float = 1.0
    health_starting_every_s: float = 0.2
    health_timeout_s: float = 2.0
    failure_threshold: int = 3
    #: Routers' reports older than this are not load any more (a router that stopped).
    load_fresh_s: float = 3.0
    #: How often routers re-read their routes: a drain waits this long twice before it trusts the reports.
    route_refresh_s: float = 0.5
    #: Extra replicas a rolling update may run above the desired count.
    surge: int = 1
    #: A log is read for a replica's URL at most this often.
    discover_every_s: float = 0.25
    #: Replicas that keep failing (a bad entrypoint, a model that does not load) are replaced after a pause that
    #: doubles with each failure in a row from ``crash_backoff_s`` up to ``crash_backoff_max_s`` (as Kubernetes'
    #: CrashLoopBackOff), not at once for ever; a replica that gets ready ends the run.
    crash_backoff_s: float = 2.0
    crash_backoff_max_s: float = 120.0


@dataclass
class ServiceView:
    """What the controller knows of one service between steps."""

    scaler: Autoscaler
    revision: int
    message: str = ""
    desired_written: int | None = None
    #: Replicas that failed in a row (none became ready between), the last one's message, and when the next
    #: replica may be added (crash-loop backoff).
    crashes: int = 0
    crash_message: str = ""
    hold_until: float = float("-inf")


@dataclass
class ServeReport:
    """What one step did (for logs and tests)."""

    ran: bool = False
    added: list[str] = field(default_factory=list)
    draining: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    desired: dict[str, int] = field(default_factory=dict)


class ServeController:
    """The ``serve`` step of :class:`~scheduler.live.service.SchedulerService` (see the module docstring)."""

    def __init__(
        self, store: ServingStore, config: ServeConfig | None = None, prober: HealthProber | None = None
    ) -> None:
        self.store = store
        self.config = config or ServeConfig()
        self.prober = prober or HealthProber(self.config.health_every_s, self.config.health_starting_every_s)
        self._own_prober = prober is None
        self.health = HealthRule(self.config.failure_threshold)
        self._views: dict[str, ServiceView] = {}
        self._members: dict[str, set[str]] = {}
        self._last_step = float("-inf")
        self._last_read: dict[tuple[str, int], float] = {}
        self._host: ServingHost | None = None
        self.last_report = ServeReport()

    # ------------------------------------------------------------------------------------------ wiring

    def attach(self, host: ServingHost) -> None:
        """Make the host's core spread replicas of a service over nodes, and start the health checks."""
        self._host = host
        placement = host.core.placement
        if not isinstance(placement.scorer, SpreadReplicas):
            placement.scorer = SpreadReplicas(placement.scorer, self._sibling_nodes)
        if self._own_prober:
            self.prober.start()

    def close(self) -> None:
        if self._own_prober:
            self.prober.close()

    def reset(self) -> None:
        """Forget what was learned (the scheduler lost its lease): the next step starts from the records."""
        self._views.clear()
        self._last_step = float("-inf")

    def _sibling_nodes(self, service_id: str) -> Iterable[str]:
        host = self._host
        if host is None:
            return ()
        members = self._members.get(service_id)
        allocations = host.state.allocations
        if members is None:
            # Not stepped yet since a restart: find the service's replicas by their label.
            members = {
                job_id
                for job_id, running in host.state.running.items()
                if running.job.labels.get(SERVICE_LABEL) == service_id
            }
        return [w.node for job_id in members if (p := allocations.get(job_id)) is not None for w in p.workers]

    # ------------------------------------------------------------------------------------------ the step

    def step(self, host: ServingHost, now: float) -> ServeReport:
        """Scale every service, roll updates, replace unhealthy replicas, finish drains (at most every
        ``every_s``)."""
        report = ServeReport()
        if now - self._last_step < self.config.every_s:
            return report
        self._last_step = now
        report.ran = True
        try:
            self._step(host, now, report)
        except (NotLeader, StoreUnavailable):
            raise
        except Exception:
            # A fault in serving must not stop batch scheduling: log it, and try again next step.
            log.exception("serving step failed; retrying")
        self.last_report = report
        return report

    def _step(self, host: ServingHost, now: float, report: ServeReport) -> None:
        fence = host.fence
        services = {s.id: s for s in self.store.services()}
        by_service: dict[str, list[ReplicaRecord]] = {}
        for replica in self.store.replicas():
            by_service.setdefault(replica.service_id, []).append(replica)
        self._members = {sid: {r.job_id for r in rs} for sid, rs in by_service.items()}
        loads = _aggregate(self.store.loads(now - self.config.load_fresh_s))
        results = self.prober.results()
        probes: dict[tuple[str, int], Probe] = {}
        for service_id in set(by_service) - set(services):
            # Replicas of a service that is gone (deleted meanwhile): stop them.
            for replica in by_service[service_id]:
                self._retire(fence, replica, now, "its service was deleted", report)
        for service in services.values():
            self._service(host, fence, service, by_service.get(service.id, []), loads, results, probes, now, report)
        self._views = {sid: v for sid, v in self._views.items() if sid in services}
        self.prober.watch(probes)

    def _service(
        self,
        host: ServingHost,
        fence: Fence,
        service: ServiceRecord,
        replicas: list[ReplicaRecord],
        loads: dict[str, _Load],
        results: dict[tuple[str, int], ProbeResult],
        probes: dict[tuple[str, int], Probe],
        now: float,
        report: ServeReport,
    ) -> None:
        serving = service.serving
        view = self._views.get(service.id)
        rule = ScalingRule.of(service.spec)
        if view is None:
            start = service.desired if service.desired is not None else service.spec.workers
            view = self._views[service.id] = ServiceView(
                Autoscaler(rule, start, last_change_at=now), service.revision, desired_written=service.desired
            )
        elif view.revision != service.revision:
            view.scaler.rule = rule
            view.scaler.replicas = min(rule.max_replicas, max(rule.min_replicas, view.scaler.replicas))
            view.revision = service.revision
        load = loads.get(service.id)
        # No report at all is no load (no router has a request for it).
        view.scaler.observe(load.sample(now) if load is not None else LoadSample(at=now))
        deleting = service.state is ServiceState.DELETING
        decision = view.scaler.decide(now)
        desired = 0 if deleting else decision.desired
        if decision.changed:
            log.info("service %s/%s: %d replicas (%s)", service.tenant, service.name, desired, decision.reason)
        views: list[ReplicaView] = []
        draining: list[ReplicaRecord] = []
        for replica in replicas:
            phase = self._phase(host, service, replica, results, probes, now)
            if phase is None:
                if replica.job_state is JobState.FAILED and replica.draining_since is None:
                    self._crashed(view, replica, now)
                continue
            if phase is ReplicaPhase.READY and view.crashes:
                view.crashes, view.crash_message, view.hold_until = 0, "", float("-inf")
            if phase is ReplicaPhase.DRAINING:
                draining.append(replica)
            views.append(ReplicaView(replica.job_id, replica.revision, phase, replica.created_at, replica.node))
        plan = plan_replicas(desired, service.revision, views, self.config.surge)
        by_id = {r.job_id: r for r in replicas}
        for job_id in plan.stop:
            self._retire(fence, by_id[job_id], now, _why_stopped(views, job_id), report)
        for job_id in plan.drain:
            self.store.set_draining(job_id, now)
            report.draining.append(job_id)
            log.info("service %s/%s: draining replica %s", service.tenant, service.name, job_id)
        held = now < view.hold_until
        for _ in range(0 if held else plan.add):
            job_id = self.store.add_replica(fence, service, now)
            self._members.setdefault(service.id, set()).add(job_id)
            report.added.append(job_id)
        for replica in draining:
            self._finish_drain(fence, replica, serving.drain_timeout_s, loads.get(service.id), now, report)
        report.desired[service.id] = desired
        if deleting and not replicas:
            self.store.drop_service(fence, service.id)
            return
        message = self._status(desired, views, replicas, decision.reason, plan.why)
        if held and plan.add:
            message += (
                f"; {view.crashes} replicas failed in a row ({view.crash_message or 'no message'}): "
                f"the next starts in {view.hold_until - now:.0f} s"
            )
        if message != view.message or desired != view.desired_written:
            self.store.set_status(service.id, desired, message, now)
            view.message, view.desired_written = message, desired

    def _crashed(self, view: ServiceView, replica: ReplicaRecord, now: float) -> None:
        """A replica's job failed: one more in a row; the next is added after the doubled pause."""
        view.crashes += 1
        view.crash_message = replica.job_message.splitlines()[0] if replica.job_message else ""
        pause = min(self.config.crash_backoff_max_s, self.config.crash_backoff_s * 2 ** (view.crashes - 1))
        view.hold_until = now + pause

    def _phase(
        self,
        host: ServingHost,
        service: ServiceRecord,
        replica: ReplicaRecord,
        results: dict[tuple[str, int], ProbeResult],
        probes: dict[tuple[str, int], Probe],
        now: float,
    ) -> ReplicaPhase | None:
        """Where a replica is; None when it is gone (its job ended: forgotten) or being cancelled."""
        state = replica.job_state
        if state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            if replica.draining_since is None:
                log.warning("replica %s of %s/%s ended (%s)", replica.job_id, service.tenant, service.name, state)
            self.store.drop_replica(replica.job_id)
            self._last_read = {k: v for k, v in self._last_read.items() if k[0] != replica.job_id}
            return None
        if state is JobState.CANCELLING:
            return None
        if replica.draining_since is not None:
            return ReplicaPhase.DRAINING
        if state is JobState.PENDING:
            return ReplicaPhase.PENDING
        url = replica.endpoint
        if url is None and state is JobState.RUNNING:
            url = self._discover(host.executor, replica, now)
        started = replica.started_at if replica.started_at is not None else replica.created_at
        if url is None:
            return self.health.judge(started, None, 0, now)
        key = (replica.job_id, replica.attempt)
        probes[key] = Probe(url.rstrip("/") + service.serving.health_path, self.config.health_timeout_s)
        result = results.get(key)
        ready_at = result.ready_at if result is not None else replica.ready_at
        failures = result.failures if result is not None else replica.failures
        if result is not None and (ready_at, failures) != (replica.ready_at, replica.failures):
            # Routers route by what is stored: a replica is routable once its health check passed.
            self.store.set_health(replica.job_id, ready_at, failures)
        return self.health.judge(started, ready_at, failures, now)

    def _discover(self, executor: Executor, replica: ReplicaRecord, now: float) -> str | None:
        key = (replica.job_id, replica.attempt)
        if now - self._last_read.get(key, float("-inf")) < self.config.discover_every_s:
            return None
        self._last_read[key] = now
        try:
            chunk = executor.read_logs(replica.job_id, 0, 0, 16384)
        except ExecutorError:
            return None
        if chunk.attempt != replica.attempt:
            return None
        url = endpoint_in(chunk.text)
        if url is not None:
            self.store.set_endpoint(replica.job_id, url, replica.attempt)
            self.prober.check_now()
        return url

    def _finish_drain(
        self,
        fence: Fence,
        replica: ReplicaRecord,
        timeout_s: float,
        load: _Load | None,
        now: float,
        report: ServeReport,
    ) -> None:
        since = replica.draining_since
        assert since is not None
        settle = 2 * self.config.route_refresh_s
        if now - since < settle and now - since < timeout_s:
            return
        # Reports written after every router re-read its routes say whether requests are still in flight.
        busy = load is not None and load.busy(replica.job_id, since + self.config.route_refresh_s)
        if busy and now - since < timeout_s:
            return
        why = "drained" if not busy else f"drain timeout ({timeout_s:g} s) with requests still in flight"
        self._retire(fence, replica, now, why, report)

    def _retire(self, fence: Fence, replica: ReplicaRecord, now: float, why: str, report: ServeReport) -> None:
        self.store.stop_replica(fence, replica.job_id, now, why)
        report.stopped.append(replica.job_id)
        log.info("replica %s stopped: %s", replica.job_id, why)

    @staticmethod
    def _status(
        desired: int, views: list[ReplicaView], replicas: list[ReplicaRecord], reason: str, why: Iterable[str]
    ) -> str:
        ready = sum(1 for v in views if v.phase is ReplicaPhase.READY)
        parts = [f"{ready} of {desired} ready; {reason}"]
        parts.extend(why)
        by_id = {r.job_id: r for r in replicas}
        waiting = [by_id[v.job_id] for v in views if v.phase is ReplicaPhase.PENDING and by_id[v.job_id].reasons]
        if waiting:
            parts.append(f"{len(waiting)} waiting to be placed: {waiting[0].reasons[0]}")
        return "; ".join(parts)


def _why_stopped(views: list[ReplicaView], job_id: str) -> str:
    phase = next((v.phase for v in views if v.job_id == job_id), None)
    if phase is ReplicaPhase.UNHEALTHY:
        return "failed its health checks: replaced"
    return "not needed (scaled in or superseded by a new revision)"


@dataclass
class _Load:
    """The routers' latest reports about one service, added up."""

    reports: list[LoadReport]

    def sample(self, now: float) -> LoadSample:
        p99 = [r.p99_ms for r in self.reports if r.p99_ms is not None and r.requests]
        return LoadSample(
            at=now,
            ongoing=sum(r.ongoing for r in self.reports),
            queued=sum(r.queued for r in self.reports),
            requests=sum(r.requests for r in self.reports),
            p99_ms=max(p99) if p99 else None,
        )

    def busy(self, job_id: str, after: float) -> bool:
        """Whether any router still had requests in flight on a replica, or cannot have seen it drain yet."""
        for report in self.reports:
            if report.at < after:
                return True  # this router's newest word predates the drain
            if report.replicas.get(job_id) is not None and report.replicas[job_id].ongoing > 0:
                return True
        return False


def _aggregate(reports: Iterable[LoadReport]) -> dict[str, _Load]:
    out: dict[str, _Load] = {}
    for report in reports:
        out.setdefault(report.service_id, _Load([])).reports.append(report)
    return out
