"""Synthetic workloads shaped like public traces, for benchmarks and what-if scenarios.

:func:`pai_like` streams jobs whose mix follows the published characterisation of Alibaba PAI 2020
(Weng et al., "MLaaS in the Wild", NSDI '22): most tasks ask for one GPU or a share of one (PAI shares GPUs:
``plan_gpu`` 25 or 50 percent is common), a tail of multi-GPU and multi-instance gangs, some CPU-only tasks,
heavy-tailed runtimes (median minutes, a tail of days), diurnal arrivals, and most tasks unconstrained in GPU
model. The arrival rate is set so that the offered load is ``load`` × the cluster's devices::

    >>> from simulations.synthetic import pai_like
    >>> jobs = list(pai_like(1000, devices=64, seed=1))
    >>> len(jobs), jobs[0].id, all(a.submit_time <= b.submit_time for a, b in zip(jobs, jobs[1:]))
    (1000, 'syn-0000000', True)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from scheduler.model import JobKind, PriorityClass
from scheduler.throughput import JobClass
from simulations.schema import TraceJob

#: (devices per worker, weight): PAI's GPU request mix per instance (0 = CPU-only task).
DEVICE_MIX: tuple[tuple[float, float], ...] = (
    (0.0, 0.08),
    (0.25, 0.10),
    (0.5, 0.24),
    (1.0, 0.43),
    (2.0, 0.05),
    (4.0, 0.04),
    (8.0, 0.06),
)
#: (workers low, workers high, weight): most tasks are one instance; PS/worker jobs fan out.
WORKER_MIX: tuple[tuple[int, int, float], ...] = ((1, 1, 0.86), (2, 8, 0.10), (9, 32, 0.04))
CLASS_MIX: tuple[tuple[JobClass, JobKind, float], ...] = (
    (JobClass.CV_TRAIN, JobKind.TRAINING, 0.30),
    (JobClass.RECSYS_TRAIN, JobKind.TRAINING, 0.25),
    (JobClass.LLM_FINETUNE, JobKind.TRAINING, 0.15),
    (JobClass.LLM_PRETRAIN, JobKind.TRAINING, 0.05),
    (JobClass.LLM_INFERENCE, JobKind.INFERENCE, 0.15),
    (JobClass.CV_INFERENCE, JobKind.INFERENCE, 0.10),
)
MEDIAN_RUNTIME_S = 600.0
RUNTIME_SIGMA = 1.8
MAX_RUNTIME_S = 7 * 86400.0


@dataclass(frozen=True)
class SyntheticSpec:
    """Knobs of :func:`pai_like` (also the ``workload.synthetic`` block of a scenario file)."""

    jobs: int = 10_000
    load: float = 0.65
    seed: int = 0
    tenants: int = 20
    #: Share of jobs pinned to one model of ``models`` (the rest may run anywhere).
    constrained_share: float = 0.3
    models: tuple[str, ...] = ()
    #: Share of training jobs that checkpoint (every ``checkpoint_interval_s``).
    checkpoint_share: float = 0.3
    checkpoint_interval_s: float = 1800.0


def _pick(rng: random.Random, cumulative: Sequence[float]) -> int:
    x = rng.random() * cumulative[-1]
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _cumulative(weights: Sequence[float]) -> list[float]:
    out: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def _mean_workers(per_worker: float, inference: bool) -> float:
    """Expected gang size as :func:`pai_like` draws it for a worker of ``per_worker`` devices."""
    total = 0.0
    for lo, hi, weight in WORKER_MIX:
        low, high = (lo, hi) if per_worker <= 1 else (1, max(1, hi // 4))
        sizes = [min(n, 8) if inference else n for n in range(low, high + 1)]
        total += weight * sum(sizes) / len(sizes)
    return total / sum(w for *_, w in WORKER_MIX)


def _mean_runtime() -> float:
    """Mean of ``min(lognormal(ln MEDIAN_RUNTIME_S, RUNTIME_SIGMA), MAX_RUNTIME_S)``, the runtime draw."""
    mu, sigma = math.log(MEDIAN_RUNTIME_S), RUNTIME_SIGMA
    z = (math.log(MAX_RUNTIME_S) - mu) / sigma

    def phi(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    return math.exp(mu + sigma**2 / 2) * phi(z - sigma) + MAX_RUNTIME_S * (1 - phi(z))


def mean_device_demand() -> float:
    """Expected device-seconds per job, exactly as :func:`pai_like` draws jobs (it sets the arrival rate).

    Gang sizes depend on the worker size (multi-device workers come in smaller gangs) and inference gangs are
    capped at 8, so the mean of the product is not the product of the means::

        >>> round(mean_device_demand())
        6200
    """
    inference = sum(w for _, kind, w in CLASS_MIX if kind is JobKind.INFERENCE) / sum(w for *_, w in CLASS_MIX)
    device_total = sum(w for _, w in DEVICE_MIX)
    per_job = sum(
        weight
        / device_total
        * per_worker
        * (inference * _mean_workers(per_worker, True) + (1 - inference) * _mean_workers(per_worker, False))
        for per_worker, weight in DEVICE_MIX
    )
    return per_job * _mean_runtime()


def pai_like(
    jobs: int,
    devices: int,
    seed: int = 0,
    load: float = 0.65,
    models: Sequence[str] = (),
    spec: SyntheticSpec | None = None,
) -> Iterator[TraceJob]:
    """Stream ``jobs`` synthetic jobs in submit order for a cluster of ``devices`` devices."""
    spec = spec or SyntheticSpec(jobs=jobs, load=load, seed=seed, models=tuple(models))
    rng = random.Random(spec.seed)
    rate = spec.load * devices / mean_device_demand()
    device_cum = _cumulative([w for _, w in DEVICE_MIX])
    worker_cum = _cumulative([w for *_, w in WORKER_MIX])
    class_cum = _cumulative([w for *_, w in CLASS_MIX])
    tenant_cum = _cumulative([1.0 / (i + 1) for i in range(spec.tenants)])  # Zipf-like: a few big tenants
    mu = math.log(MEDIAN_RUNTIME_S)
    now = 0.0
    for i in range(spec.jobs):
        # Diurnal arrivals: thinning of a Poisson process whose rate peaks in the afternoon.
        while True:
            now += rng.expovariate(rate * 1.5)
            if rng.random() < (1 + 0.5 * math.sin(2 * math.pi * (now / 86400.0 - 0.25))) / 1.5:
                break
        per_worker = DEVICE_MIX[_pick(rng, device_cum)][0]
        lo, hi, _ = WORKER_MIX[_pick(rng, worker_cum)]
        workers = rng.randint(lo, hi) if per_worker <= 1 else rng.randint(1, max(1, hi // 4))
        job_class, kind, _ = CLASS_MIX[_pick(rng, class_cum)]
        if kind is JobKind.INFERENCE:
            workers = min(workers, 8)
        runtime = min(rng.lognormvariate(mu, RUNTIME_SIGMA), MAX_RUNTIME_S)
        tenant = f"tenant-{_pick(rng, tenant_cum):02d}"
        pinned = ""
        if spec.models and per_worker > 0 and rng.random() < spec.constrained_share:
            pinned = spec.models[rng.randrange(len(spec.models))]
        checkpoint = (
            spec.checkpoint_interval_s if kind is JobKind.TRAINING and rng.random() < spec.checkpoint_share else 0.0
        )
        yield TraceJob(
            id=f"syn-{i:07d}",
            submit_time=round(now, 3),
            duration_s=round(max(runtime, 1.0), 3),
            workers=workers,
            devices_per_worker=per_worker,
            cpu_milli_per_worker=4000 if per_worker < 1 else int(per_worker * 8000),
            memory_mib_per_worker=16384 if per_worker < 1 else int(per_worker * 65536),
            models=(pinned,) if pinned else (),
            duration_model=pinned,
            tenant=tenant,
            user=f"{tenant}-u{rng.randrange(10)}",
            queue=tenant,
            kind=kind,
            job_class=job_class,
            priority=PriorityClass.PRODUCTION_INFERENCE if kind is JobKind.INFERENCE else PriorityClass.TRAINING,
            checkpoint_interval_s=checkpoint,
            slo_wait_s=60.0 if kind is JobKind.INFERENCE else 0.0,
        )
