"""Prometheus metrics of the API and the ASGI middleware that records them and enforces the body limit.

``/metrics`` exposes, in a registry of its own per app:

* ``zhisuan_http_requests_total{method,route,status}`` and ``zhisuan_http_request_duration_seconds`` (histogram,
  same labels) — ``route`` is the route *template* (``/v1/jobs/{job_id}``), so ids never explode the series;
* ``zhisuan_job_submissions_total{outcome}`` (created, replayed, rejected ...);
* ``zhisuan_jobs{state}`` — jobs per state, counted in the database when scraped;
* ``zhisuan_job_writer_batches_total`` and ``zhisuan_job_writer_jobs_total`` — the group commit at work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import Problem
from api.tables import JOBS
from scheduler.spec import JobState

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _JobsByState(Collector):
    def __init__(self, engine: Engine, writer_stats: Callable[[], tuple[int, int]]) -> None:
        self.engine = engine
        self.writer_stats = writer_stats

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("zhisuan_database_up", "1 when the database answered the last scrape")
        try:
            with self.engine.connect() as conn:
                counts: dict[str, int] = dict(
                    conn.execute(select(JOBS.c.state, func.count()).group_by(JOBS.c.state)).all()
                )
        except Exception:
            up.add_metric([], 0.0)
            yield up
        else:
            up.add_metric([], 1.0)
            yield up
            jobs = GaugeMetricFamily("zhisuan_jobs", "Jobs per state (counted at scrape)", labels=["state"])
            for state in JobState:
                jobs.add_metric([state.value], float(counts.get(state.value, 0)))
            yield jobs
        batches, written = self.writer_stats()
        yield CounterMetricFamily("zhisuan_job_writer_batches", "Group-commit transactions", value=batches)
        yield CounterMetricFamily("zhisuan_job_writer_jobs", "Jobs written by the group commit", value=written)

    def describe(self) -> Iterator[Any]:
        return iter(())


#: Routes that hold a response open (server-sent events): counted, but left out of the latency histogram.
STREAMS = frozenset({"/ui/events"})


class Metrics:
    def __init__(self, engine: Engine, writer_stats: Callable[[], tuple[int, int]] = lambda: (0, 0)) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "zhisuan_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "zhisuan_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.submissions = Counter(
            "zhisuan_job_submissions", "Job submissions by outcome", ["outcome"], registry=self.registry
        )
        self.registry.register(_JobsByState(engine, writer_stats))
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = self._children[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        children[0].inc()
        if route not in STREAMS:  # a stream open for an hour is not an hour-long request
            children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes; send a smaller body")


class ApiMiddleware:
    """Pure ASGI (no per-request task or body copy): request metrics, and the body limit (declared and streamed)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        limit = self.max_body

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            for name, value in scope["headers"]:
                if name == b"content-length":
                    try:
                        declared = int(value)
                    except ValueError:
                        declared = 0
                    if declared > limit:
                        problem = Problem(
                            "payload-too-large",
                            f"the request body ({declared} bytes) is over the limit of {limit} bytes",
                        )
                        await _send_problem(problem, scope, send_status)
                        return
                    break
            seen = 0

            async def receive_limited() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise BodyTooLarge(limit)
                return message

            await self.app(scope, receive_limited, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], template, status, time.perf_counter() - start)


async def _send_problem(problem: Problem, scope: Scope, send: Send) -> None:
    response = problem.response(scope.get("path", ""))
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
