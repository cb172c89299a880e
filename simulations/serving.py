"""Replaying a request trace against the serving autoscaler: SLO attainment and device-hours.

The live controller and this replay run the very same rule (:class:`scheduler.serving.Autoscaler`); what is
modelled here is what the cluster does around it:

* **requests** arrive as the trace says (the public Azure LLM inference trace: arrival time, prompt tokens,
  generated tokens) and take ``prefill_ms_per_token`` × prompt + ``token_ms`` × generated on a replica, each
  request already running there slowing it by ``batch_slowdown`` (a batched decode step takes longer with more
  sequences in it);
* **replicas** take ``max_ongoing`` requests at once (a batch), the router sends each request to the replica
  with the fewest in flight, queues the rest (at most ``max_queued``) and refuses what waited
  ``queue_timeout_s`` (429, counted as an SLO miss);
* **the autoscaler** sees a load report every ``report_every_s`` (time-averaged in-flight count, p99 of what
  finished) and its decision is carried out: a new replica serves ``startup_s`` later (placement, launch, model
  load); a removed one stops taking requests at once and is gone when its last request finished (a drain);
* **device-hours** add up the time every replica held its ``devices`` (from its placement to the end of its
  drain) — what the ledger would bill.

Compared with a fixed fleet sized for the trace's peak, and one sized for its mean::

    python -m simulations.serving tests/fixtures/traces/azure-llm-inference/AzureLLMInferenceTrace_conv.csv.gz
    python -m simulations.serving TRACE --json --rate-scale 2 --token-ms 8 --target 4 --slo-ms 8000
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.serving import Autoscaler, LoadSample, ScalingRule
from simulations.loaders.base import RowSkip, TraceError, open_text, parse_timestamp

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class Request:
    at: float
    prompt_tokens: int
    output_tokens: int


def load_requests(path: str | Path, limit: int | None = None) -> list[Request]:
    """The requests of an Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``; ``.gz`` read as
    it streams), times from the first arrival; a clear :class:`TraceError` for a file of another shape."""
    out: list[Request] = []
    with open_text(path) as f:
        header = f.readline().strip().split(",")
        if tuple(header[:3]) != AZURE_COLUMNS:
            raise TraceError(path, f"expected the columns {', '.join(AZURE_COLUMNS)}, found {', '.join(header)}")
        first: float | None = None
        for row, line in enumerate(f, start=2):
            parts = line.strip().split(",")
            if len(parts) < 3:
                continue
            try:
                at = parse_timestamp(parts[0], "TIMESTAMP")
                prompt, output = int(parts[1]), int(parts[2])
            except (RowSkip, ValueError):
                raise TraceError(path, f"row {row} is not a request: {line.strip()!r}") from None
            first = at if first is None else first
            out.append(Request(at - first, max(0, prompt), max(1, output)))
            if limit is not None and len(out) >= limit:
                break
    out.sort(key=lambda r: r.at)
    return out


@dataclass(frozen=True)
class ServingModel:
    """How requests cost and how the fleet behaves (the service's ``serving`` block and the cluster)."""

    token_ms: float = 8.0
    prefill_ms_per_token: float = 0.2
    max_ongoing: int = 8
    max_queued: int = 256
    queue_timeout_s: float = 10.0
    startup_s: float = 20.0
    report_every_s: float = 1.0
    devices: float = 0.25
    slo_ms: float = 8000.0
    batch_slowdown: float = 0.15

    def service_s(self, request: Request, batch: int = 0) -> float:
        """Seconds ``request`` takes on a replica already running ``batch`` others."""
        base = (request.prompt_tokens * self.prefill_ms_per_token + request.output_tokens * self.token_ms) / 1000
        return base * (1 + self.batch_slowdown * batch)


@dataclass
class _Replica:
    id: int
    placed_at: float
    ready_at: float
    ongoing: int = 0
    draining: bool = False
    gone_at: float | None = None


@dataclass
class ServingResult:
    """What one replay measured."""

    name: str
    requests: int
    served: int
    rejected: int
    slo_ms: float
    within_slo: int
    p50_ms: float
    p99_ms: float
    device_hours: float
    max_replicas: int
    mean_replicas: float
    scale_events: int
    #: (time, replicas alive) at every change.
    timeline: list[tuple[float, int]] = field(default_factory=list)

    @property
    def slo_attainment(self) -> float:
        return self.within_slo / self.requests if self.requests else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.requests,
            "served": self.served,
            "rejected": self.rejected,
            "slo_ms": self.slo_ms,
            "slo_attainment": round(self.slo_attainment, 5),
            "p50_ms": round(self.p50_ms, 1),
            "p99_ms": round(self.p99_ms, 1),
            "device_hours": round(self.device_hours, 4),
            "max_replicas": self.max_replicas,
            "mean_replicas": round(self.mean_replicas, 3),
            "scale_events": self.scale_events,
        }


class ServingReplay:
    """An event-driven replay of one service: arrivals, completions, load reports, replicas starting."""

    def __init__(self, model: ServingModel, rule: ScalingRule | None, fixed: int | None = None, name: str = "") -> None:
        if (rule is None) == (fixed is None):
            raise ValueError("give either an autoscaling rule or a fixed replica count")
        self.model = model
        self.rule = rule
        self.fixed = fixed
        self.name = name or ("autoscaled" if rule is not None else f"fixed {fixed}")

    def run(self, requests: Sequence[Request]) -> ServingResult:
        model = self.model
        seq = itertools.count()
        events: list[tuple[float, int, str, Any]] = []
        replicas: list[_Replica] = []
        ids = itertools.count()
        start = self.fixed if self.fixed is not None else max(1, self.rule.min_replicas if self.rule else 1)
        for _ in range(start):
            replicas.append(_Replica(next(ids), 0.0, 0.0))
        scaler = Autoscaler(self.rule, start, last_change_at=0.0) if self.rule is not None else None
        queue: deque[tuple[Request, float]] = deque()
        latencies: list[float] = []
        window: list[float] = []
        rejected = 0
        area = 0.0
        area_at = 0.0
        in_flight = 0
        timeline: list[tuple[float, int]] = [(0.0, len(replicas))]
        scale_events = 0
        for request in requests:
            heapq.heappush(events, (request.at, next(seq), "arrive", request))
        end_of_trace = requests[-1].at if requests else 0.0
        if scaler is not None:
            heapq.heappush(events, (model.report_every_s, next(seq), "report", None))

        def alive() -> list[_Replica]:
            return [r for r in replicas if r.gone_at is None]

        def account(now: float) -> None:
            nonlocal area, area_at
            area += (in_flight + len(queue)) * (now - area_at)
            area_at = now

        def dispatch(now: float) -> None:
            nonlocal rejected, in_flight
            while queue:
                request, arrived = queue[0]
                if now - arrived > model.queue_timeout_s:
                    queue.popleft()
                    rejected += 1
                    continue
                ready = [r for r in replicas if r.gone_at is None and not r.draining and r.ready_at <= now]
                free = [r for r in ready if r.ongoing < model.max_ongoing]
                if not free:
                    return
                target = min(free, key=lambda r: (r.ongoing, r.id))
                queue.popleft()
                took = model.service_s(request, target.ongoing)
                target.ongoing += 1
                in_flight += 1
                heapq.heappush(events, (now + took, next(seq), "done", (target, arrived)))

        while events:
            now, _, kind, data = heapq.heappop(events)
            account(now)
            if kind == "arrive":
                if len(queue) >= model.max_queued:
                    rejected += 1
                else:
                    queue.append((data, now))
                    dispatch(now)
            elif kind == "done":
                replica, arrived = data
                replica.ongoing -= 1
                in_flight -= 1
                latency = (now - arrived) * 1000
                latencies.append(latency)
                window.append(latency)
                if replica.draining and replica.ongoing == 0 and replica.gone_at is None:
                    replica.gone_at = now
                    timeline.append((now, len(alive())))
                dispatch(now)
            elif kind == "ready":
                timeline.append((now, len(alive())))
                dispatch(now)
            elif kind == "report" and scaler is not None:
                window.sort()
                p99 = window[min(len(window) - 1, math.ceil(0.99 * len(window)) - 1)] if window else None
                scaler.observe(LoadSample(now, area / model.report_every_s, float(len(queue)), len(window), p99))
                area = 0.0
                window = []
                decision = scaler.decide(now)
                serving = [r for r in replicas if r.gone_at is None and not r.draining]
                if decision.desired > len(serving):
                    for _ in range(decision.desired - len(serving)):
                        replica = _Replica(next(ids), now, now + model.startup_s)
                        replicas.append(replica)
                        heapq.heappush(events, (replica.ready_at, next(seq), "ready", replica))
                    scale_events += 1
                    timeline.append((now, len(alive())))
                elif decision.desired < len(serving):
                    # Drain the replicas not yet serving first, then the least busy ones.
                    for replica in sorted(serving, key=lambda r: (r.ready_at <= now, r.ongoing, -r.id))[
                        : len(serving) - decision.desired
                    ]:
                        replica.draining = True
                        if replica.ongoing == 0:
                            replica.gone_at = now
                    scale_events += 1
                    timeline.append((now, len(alive())))
                if now < end_of_trace + 60 or in_flight or queue:
                    heapq.heappush(events, (now + model.report_every_s, next(seq), "report", None))
        finish = max(area_at, end_of_trace)
        device_s = sum(((r.gone_at if r.gone_at is not None else finish) - r.placed_at) for r in replicas)
        ordered = sorted(latencies)
        within = sum(1 for lat in ordered if lat <= model.slo_ms)
        counts = [count for _, count in timeline]
        mean = _time_mean(timeline, finish)
        return ServingResult(
            self.name,
            len(requests),
            len(latencies),
            rejected,
            model.slo_ms,
            within,
            _pct(ordered, 0.50),
            _pct(ordered, 0.99),
            device_s * model.devices / 3600,
            max(counts) if counts else 0,
            mean,
            scale_events,
            timeline,
        )


def _pct(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _time_mean(timeline: Sequence[tuple[float, int]], end: float) -> float:
    if not timeline or end <= 0:
        return float(timeline[-1][1]) if timeline else 0.0
    total = 0.0
    for (t0, n), (t1, _) in itertools.pairwise([*timeline, (end, 0)]):
        total += n * max(0.0, t1 - t0)
    return total / end


def scaled(requests: Iterable[Request], rate: float) -> list[Request]:
    """The same requests arriving ``rate`` times as fast."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    return [Request(r.at / rate, r.prompt_tokens, r.output_tokens) for r in requests]


def compare(requests: Sequence[Request], model: ServingModel, rule: ScalingRule) -> list[ServingResult]:
    """The autoscaled service against fixed fleets sized for the trace's peak (``rule.max_replicas``) and for
    its mean load."""
    mean_load = sum(model.service_s(r) for r in requests) / max(requests[-1].at, 1.0) if requests else 0.0
    mean_fleet = max(1, math.ceil(mean_load / rule.target_ongoing))
    return [
        ServingReplay(model, rule).run(requests),
        ServingReplay(model, None, fixed=rule.max_replicas, name=f"fixed at peak ({rule.max_replicas})").run(requests),
        ServingReplay(model, None, fixed=mean_fleet, name=f"fixed at mean ({mean_fleet})").run(requests),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", help="Azure LLM inference trace (csv or csv.gz)")
    parser.add_argument("--limit", type=int, default=None, help="first N requests only")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="arrivals this many times as fast")
    parser.add_argument("--token-ms", type=float, default=8.0)
    parser.add_argument("--prefill-ms-per-token", type=float, default=0.2)
    parser.add_argument("--max-ongoing", type=int, default=8)
    parser.add_argument("--startup-s", type=float, default=20.0)
    parser.add_argument("--devices", type=float, default=0.25, help="devices per replica")
    parser.add_argument("--slo-ms", type=float, default=8000.0)
    parser.add_argument("--batch-slowdown", type=float, default=0.15, help="per request already on a replica")
    parser.add_argument("--target", type=float, default=4.0, help="target requests in flight per replica")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=16)
    parser.add_argument("--upscale-delay-s", type=float, default=3.0)
    parser.add_argument("--downscale-delay-s", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        requests = scaled(load_requests(args.trace, args.limit), args.rate_scale)
    except TraceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = ServingModel(
        token_ms=args.token_ms,
        prefill_ms_per_token=args.prefill_ms_per_token,
        max_ongoing=args.max_ongoing,
        startup_s=args.startup_s,
        devices=args.devices,
        slo_ms=args.slo_ms,
        batch_slowdown=args.batch_slowdown,
    )
    rule = ScalingRule(
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing=args.target,
        slo_p99_ms=args.slo_ms,
        upscale_delay_s=args.upscale_delay_s,
        downscale_delay_s=args.downscale_delay_s,
    )
    results = compare(requests, model, rule)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
        return 0
    span = requests[-1].at if requests else 0.0
    print(f"{len(requests)} requests over {span / 60:.1f} min ({len(requests) / max(span, 1):.2f}/s)")
    header = f"{'fleet':<26} {'SLO met':>8} {'p50 ms':>8} {'p99 ms':>8} {'refused':>8} {'dev-h':>8} {'mean rep':>9}"
    print(header)
    for r in results:
        print(
            f"{r.name:<26} {r.slo_attainment:>8.2%} {r.p50_ms:>8.0f} {r.p99_ms:>8.0f} {r.rejected:>8d} "
            f"{r.device_hours:>8.3f} {r.mean_replicas:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
