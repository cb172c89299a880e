"""The service endpoint: one router process answers ``/v1/services/{tenant}/{name}/...`` for every service.

An ASGI application (Starlette, served by uvicorn) that forwards each request to one healthy replica of its
service with aiohttp, and streams the answer back as it comes (chunked or server-sent events)::

    curl -H "Authorization: Bearer zsk_..." -d '{"prompt": "hi", "stream": true}' \\
        http://router:8100/v1/services/acme/chat/v1/completions

* **Keys.** A request carries a service key (``Authorization: Bearer zsk_...`` or ``x-api-key``), checked
  against its stored hash (cached ``key_cache_s``). No key, a wrong one or a revoked one: 401. A valid key of
  another service or tenant gets the very answer an unknown service gets (404): a key tells nothing about
  services it is not for. Each key has its own rate limit (the service's ``rate_limit``): 429 + Retry-After.
* **Routing.** Least outstanding requests over the replicas that passed their health checks and are not
  draining; a replica holds at most ``max_ongoing_requests``. With none free a request waits in the service's
  queue (at most ``max_queued_requests``) up to ``queue_timeout_s``, then gets 429 + Retry-After (overload:
  ``max_replicas`` are busy). A service with no replica ready (scaled to zero, or starting) is asked for one
  at once and the request waits up to ``cold_start_budget_s``, then gets 503 + Retry-After.
* **Retries.** A request that could not reach a replica (connection refused or reset before it was sent) is
  sent to another one whatever its method; one that failed after it was sent — the replica died or did not
  answer within ``request_timeout_s`` — is retried only when idempotent (GET, HEAD, OPTIONS, PUT, DELETE, or
  an ``Idempotency-Key`` header, or every request of a service with ``retry_post``). A replica that failed is
  left out for ``eject_s`` (the controller's health checks decide whether it is replaced).
* **Metering.** Requests, errors, tokens (``x-zhisuan-tokens``, or the ``usage`` of the last event of a stream)
  and latency per service and replica in Prometheus (``/metrics``); once a second a load report per service to
  the records (in flight, queued, p50/p99, per-replica in flight) that the autoscaler and the drains read.

If the records cannot be read, the router keeps serving with the routes and keys it last read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import uvicorn
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from scheduler.live.serving.store import (
    Endpoint,
    LoadReport,
    ReplicaLoad,
    Route,
    RouteSource,
    ServiceKey,
    check_secret,
    split_key,
)

log = logging.getLogger("zhisuan.serving.router")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Request headers that stay here: hop-by-hop ones, and the caller's key (a replica never sees it).
_DROP_REQUEST = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "authorization",
        "x-api-key",
        "content-length",
    }
)
_DROP_RESPONSE = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
)
_USAGE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class RouterConfig:
    """Knobs of one router process (the per-service ones are in each spec's ``serving`` block)."""

    router_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    #: How often the routes are read again (replicas ready, draining, gone).
    refresh_s: float = 0.5
    #: How often load reports are written.
    report_every_s: float = 1.0
    key_cache_s: float = 5.0
    #: A replica that failed a request is left out this long.
    eject_s: float = 5.0
    max_attempts: int = 3
    connect_timeout_s: float = 1.0
    max_body_bytes: int = 16 * 2**20
    #: Where per-key rate limits are counted: ``memory://`` (this process) or ``redis://host:port`` (shared by
    #: every router).
    rate_limit_storage: str = "memory://"
    #: Retry-After sent with a 503 while a service has no replica.
    unavailable_retry_after_s: int = 5


class Rejected(Exception):
    """A request answered by the router itself (status, message, Retry-After)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    def response(self) -> Response:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        body = {"type": self.code, "status": self.status, "detail": self.message}
        return JSONResponse(body, status_code=self.status, headers=headers, media_type="application/problem+json")


class _Replica:
    """A replica as this router sees it: requests in flight, and whether it is left out after a failure."""

    __slots__ = ("ejected_until", "endpoint", "failures", "ongoing")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.ongoing = 0
        self.ejected_until = 0.0
        self.failures = 0


class _Service:
    """One service: its route, its replicas here, its queue, and the figures of the current report window."""

    def __init__(self, route: Route, now: float) -> None:
        self.route = route
        self.replicas: dict[str, _Replica] = {e.job_id: _Replica(e) for e in route.endpoints}
        self.cond = asyncio.Condition()
        self.queued = 0
        self.ongoing = 0
        self._turn = 0
        self.label = f"{route.tenant}/{route.name}"
        self.reset_window(now)

    def reset_window(self, now: float) -> None:
        self.window_start = now
        self.requests = 0
        self.errors = 0
        self.rejected = 0
        self.tokens = 0
        self.latencies: list[float] = []
        self.area = 0.0
        self.area_at = now
        self.failures: dict[str, int] = {}

    def account(self, now: float) -> None:
        """Add the in-flight count so far to the window's time integral (for the average)."""
        self.area += (self.ongoing + self.queued) * (now - self.area_at)
        self.area_at = now

    def update(self, route: Route) -> bool:
        """Take a new route; True when it added replicas (waiters may go)."""
        self.route = route
        fresh = False
        kept: dict[str, _Replica] = {}
        for endpoint in route.endpoints:
            replica = self.replicas.get(endpoint.job_id)
            if replica is None or replica.endpoint.url != endpoint.url:
                replica = _Replica(endpoint)
                fresh = True
            else:
                replica.endpoint = endpoint
            kept[endpoint.job_id] = replica
        self.replicas = kept
        return fresh

    def pick(self, now: float, exclude: set[str]) -> _Replica | None:
        """The replica with the fewest requests in flight that may take one more (ties: in turn)."""
        limit = self.route.serving.max_ongoing_requests
        best: _Replica | None = None
        candidates = list(self.replicas.values())
        count = len(candidates)
        if not count:
            return None
        self._turn = (self._turn + 1) % count
        for i in range(count):
            replica = candidates[(self._turn + i) % count]
            if replica.ongoing >= limit or replica.endpoint.job_id in exclude or replica.ejected_until > now:
                continue
            if best is None or replica.ongoing < best.ongoing:
                best = replica
        return best


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "zhisuan_serving_requests",
            "Requests answered, by service, replica and status",
            ["service", "replica", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "zhisuan_serving_request_seconds",
            "Time from a request's arrival to the end of its answer, by service",
            ["service"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.replica_latency = Histogram(
            "zhisuan_serving_replica_seconds",
            "Time a replica took to answer (headers and body), by service and replica",
            ["service", "replica"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "zhisuan_serving_tokens", "Tokens the replicas reported generating", ["service", "replica"], registry=r
        )
        self.errors = Counter(
            "zhisuan_serving_replica_errors",
            "Failed attempts on a replica (connect, timeout, broken answer, 5xx), by kind",
            ["service", "replica", "kind"],
            registry=r,
        )
        self.retries = Counter(
            "zhisuan_serving_retries", "Requests sent again to another replica", ["service"], registry=r
        )
        self.rejected = Counter(
            "zhisuan_serving_rejected",
            "Requests the router answered itself, by reason",
            ["service", "reason"],
            registry=r,
        )
        self.ongoing = Gauge("zhisuan_serving_ongoing", "Requests in flight (queued included)", ["service"], registry=r)
        self.queued = Gauge("zhisuan_serving_queued", "Requests waiting for a free replica", ["service"], registry=r)


class ServiceRouter:
    """The routing state and the request path; :meth:`app` is the ASGI application around it."""

    def __init__(
        self, source: RouteSource, config: RouterConfig | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.source = source
        self.config = config or RouterConfig()
        self.clock = clock
        self.services: dict[tuple[str, str], _Service] = {}
        self._keys: dict[str, tuple[ServiceKey | None, float]] = {}
        self._client: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._report_now = asyncio.Event()
        self.metrics = _Metrics()
        self._limiter = SlidingWindowCounterRateLimiter(storage_from_string(self.config.rate_limit_storage))
        self._limits: dict[tuple[float, int], RateLimitItem] = {}
        self.ready = False

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # aiohttp, not httpx, to the replicas: httpx's pool slows down sharply with many requests in flight
        # (encode/httpx#3215); this client runs one router at a few thousand requests a second.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, enable_cleanup_closed=True)
        self._client = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._report_now = asyncio.Event()
        with contextlib.suppress(Exception):
            await self.refresh()
        self._tasks = [
            asyncio.create_task(self._every(self.config.refresh_s, self.refresh, "routes")),
            asyncio.create_task(self._reporter()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.report()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _every(self, period_s: float, work: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await work()
            except Exception as exc:  # keep serving with what was last read
                log.warning("could not refresh %s: %s", what, str(exc).splitlines()[0] if str(exc) else type(exc))

    async def _reporter(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), self.config.report_every_s)
            self._report_now.clear()
            try:
                await self.report()
            except Exception as exc:
                log.warning("could not write load reports: %s", str(exc).splitlines()[0] if str(exc) else type(exc))

    async def refresh(self) -> None:
        """Read the routes again."""
        routes = await asyncio.to_thread(self.source.routes)
        now = self.clock()
        for key, route in routes.items():
            service = self.services.get(key)
            if service is None or service.route.service_id != route.service_id:
                self.services[key] = _Service(route, now)
                continue
            if service.update(route) and service.queued:
                async with service.cond:
                    service.cond.notify_all()
        for key in [k for k in self.services if k not in routes]:
            service = self.services.pop(key)
            if service.queued:
                async with service.cond:
                    service.cond.notify_all()
        self.ready = True

    async def report(self) -> None:
        """Write one load report per service and start the next window."""
        now = self.clock()
        reports = []
        for service in self.services.values():
            service.account(now)
            window = max(now - service.window_start, 1e-6)
            lat = sorted(service.latencies)
            reports.append(
                LoadReport(
                    router=self.config.router_id,
                    service_id=service.route.service_id,
                    at=now,
                    window_s=window,
                    requests=service.requests,
                    errors=service.errors,
                    rejected=service.rejected,
                    ongoing=service.area / window,
                    queued=float(service.queued),
                    p50_ms=_percentile(lat, 0.50),
                    p99_ms=_percentile(lat, 0.99),
                    tokens=service.tokens,
                    replicas={
                        job_id: ReplicaLoad(r.ongoing, service.failures.get(job_id, 0))
                        for job_id, r in service.replicas.items()
                    }
                    | {
                        job_id: ReplicaLoad(0, n)
                        for job_id, n in service.failures.items()
                        if job_id not in service.replicas
                    },
                )
            )
            service.reset_window(now)
        if reports:
            await asyncio.to_thread(self.source.report, reports)

    # ------------------------------------------------------------------------------------------ keys

    async def _authorise(self, request: Request, tenant: str, name: str) -> tuple[_Service, ServiceKey]:
        header = request.headers.get("authorization", "")
        raw = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not raw:
            raise Rejected(401, "unauthorized", "a service key is needed: Authorization: Bearer zsk_...")
        try:
            key_id, secret = split_key(raw)
        except ValueError:
            raise Rejected(401, "unauthorized", "this is not a valid service key") from None
        key = await self._key(key_id)
        if key is None or key.revoked_at is not None or not check_secret(secret, key.secret_hash):
            raise Rejected(401, "unauthorized", "this key is not valid (unknown, wrong or revoked)")
        service = self.services.get((tenant, name))
        if service is None or key.service_id != service.route.service_id:
            # The same answer as for a service that does not exist: a key says nothing about other services.
            raise Rejected(404, "not-found", f"no service {tenant}/{name}")
        return service, key

    async def _key(self, key_id: str) -> ServiceKey | None:
        now = time.monotonic()
        cached = self._keys.get(key_id)
        if cached is not None and now - cached[1] < self.config.key_cache_s:
            return cached[0]
        try:
            key = await asyncio.to_thread(self.source.key, key_id)
        except Exception:
            if cached is not None:
                return cached[0]  # the records are down: trust what was read last
            raise Rejected(503, "unavailable", "service keys cannot be checked right now", 5) from None
        if len(self._keys) > 100_000:
            self._keys.clear()
        self._keys[key_id] = (key, now)
        return key

    def _rate_limit(self, service: _Service, key: ServiceKey) -> None:
        limit = service.route.serving.rate_limit
        if limit is None:
            return
        item = self._limits.get((limit.requests_per_s, limit.burst))
        if item is None:
            window = max(1, round(limit.burst / limit.requests_per_s)) if limit.burst else 1
            amount = limit.burst or max(1, round(limit.requests_per_s * window))
            item = self._limits[(limit.requests_per_s, limit.burst)] = RateLimitItemPerSecond(amount, window)
        if not self._limiter.hit(item, "service-key", key.id):
            stats = self._limiter.get_window_stats(item, "service-key", key.id)
            service.rejected += 1
            self.metrics.rejected.labels(service.label, "rate-limit").inc()
            raise Rejected(
                429,
                "rate-limited",
                f"this key may send {limit.requests_per_s:g} requests a second; slow down",
                max(0.0, stats.reset_time - time.time()),
            )

    # ------------------------------------------------------------------------------------------ requests

    async def handle(self, request: Request) -> Response:
        arrived = time.perf_counter()
        tenant = request.path_params["tenant"]
        name = request.path_params["name"]
        try:
            service, key = await self._authorise(request, tenant, name)
            self._rate_limit(service, key)
            body = await self._body(request)
            return await self._forward(request, service, body, arrived)
        except Rejected as rejection:
            return rejection.response()

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.config.max_body_bytes:
            raise Rejected(413, "too-large", f"the body is over {self.config.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.config.max_body_bytes:
                raise Rejected(413, "too-large", f"the body is over {self.config.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _acquire(self, service: _Service, exclude: set[str]) -> _Replica:
        """A replica with room for one more request: at once, or after waiting in the service's queue."""
        now = self.clock()
        replica = service.pick(now, exclude)
        if replica is None:
            replica = await self._wait(service, exclude)
        service.account(self.clock())
        service.ongoing += 1
        replica.ongoing += 1
        return replica

    async def _wait(self, service: _Service, exclude: set[str]) -> _Replica:
        serving = service.route.serving
        cold = not service.replicas
        budget = (serving.cold_start_budget_s or serving.queue_timeout_s) if cold else serving.queue_timeout_s
        if service.queued >= serving.max_queued_requests:
            service.rejected += 1
            if cold:
                # Waiting for a first replica is bounded like any queue: a flood at zero replicas is turned away.
                self.metrics.rejected.labels(service.label, "unavailable").inc()
                raise Rejected(
                    503,
                    "unavailable",
                    f"{service.label} is starting and {service.queued} requests wait for it already; retry shortly",
                    self.config.unavailable_retry_after_s,
                )
            self.metrics.rejected.labels(service.label, "overload").inc()
            raise Rejected(
                429,
                "overloaded",
                f"every replica of {service.label} is busy and {service.queued} requests wait already; retry later",
                serving.queue_timeout_s,
            )
        deadline = time.monotonic() + budget
        service.account(self.clock())
        service.queued += 1
        if cold:
            self._report_now.set()  # tell the autoscaler at once: a request waits for a replica
        try:
            async with service.cond:
                while True:
                    replica = service.pick(self.clock(), exclude)
                    if replica is not None:
                        return replica
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(service.cond.wait(), remaining)
                    if (service.route.tenant, service.route.name) not in self.services:
                        raise Rejected(404, "not-found", f"no service {service.label}")
        finally:
            service.account(self.clock())
            service.queued -= 1
        service.rejected += 1
        if not service.replicas:
            self.metrics.rejected.labels(service.label, "unavailable").inc()
            raise Rejected(
                503,
                "unavailable",
                f"{service.label} has no replica ready yet (starting or scaled to zero); retry shortly",
                self.config.unavailable_retry_after_s,
            )
        self.metrics.rejected.labels(service.label, "overload").inc()
        raise Rejected(
            429,
            "overloaded",
            f"every replica of {service.label} stayed busy for {budget:g} s; retry later",
            serving.queue_timeout_s,
        )

    async def _release(self, service: _Service, replica: _Replica) -> None:
        service.account(self.clock())
        service.ongoing -= 1
        replica.ongoing -= 1
        if service.queued:
            async with service.cond:
                service.cond.notify(1)

    def _fail(self, service: _Service, replica: _Replica, kind: str, eject: bool) -> None:
        job_id = replica.endpoint.job_id
        service.failures[job_id] = service.failures.get(job_id, 0) + 1
        self.metrics.errors.labels(service.label, job_id, kind).inc()
        if eject:
            replica.ejected_until = self.clock() + self.config.eject_s

    async def _forward(self, request: Request, service: _Service, body: bytes, arrived: float) -> Response:
        assert self._client is not None
        serving = service.route.serving
        idempotent = request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers or serving.retry_post
        headers = [(k, v) for k, v in request.headers.items() if k not in _DROP_REQUEST]
        client = request.client
        headers.append(("x-forwarded-for", client.host if client is not None else ""))
        headers.append(("x-zhisuan-service", service.label))
        if "x-request-id" not in request.headers:
            headers.append(("x-request-id", uuid.uuid4().hex))
        rest = request.path_params.get("rest", "")
        target = "/" + rest + (f"?{request.url.query}" if request.url.query else "")
        # A replica that accepts the connection but never answers is cut off after request_timeout_s of silence.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.config.connect_timeout_s, sock_read=serving.request_timeout_s
        )
        tried: set[str] = set()
        last_error = ""
        for attempt in range(self.config.max_attempts):
            replica = await self._acquire(service, tried)
            tried.add(replica.endpoint.job_id)
            began = time.perf_counter()
            sent = False
            upstream: aiohttp.ClientResponse | None = None
            try:
                try:
                    upstream = await self._client.request(
                        request.method,
                        replica.endpoint.url + target,
                        headers=headers,
                        data=body or None,
                        timeout=timeout,
                        allow_redirects=False,
                    )
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                    raise  # the request never left: safe to send anywhere else
                except aiohttp.ClientError:
                    sent = True
                    raise
                sent = True
                status = upstream.status
                if status in (502, 503, 504) and idempotent and attempt + 1 < self.config.max_attempts:
                    upstream.release()
                    self._fail(service, replica, f"status-{status}", eject=status == 503)
                    last_error = f"replica answered {status}"
                    await self._release(service, replica)
                    self.metrics.retries.labels(service.label).inc()
                    continue
                answer_headers = _answer_headers(upstream)
                if not _streams(upstream):
                    content = await upstream.read()
                    upstream.release()
                    await self._release(service, replica)
                    self._done(service, replica, status, arrived, began, _tokens(upstream, content))
                    return _raw_response(Response(content, status), answer_headers)
                response = StreamingResponse(
                    self._relay(service, replica, upstream, arrived, began), status_code=status
                )
                return _raw_response(response, answer_headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if upstream is not None:
                    upstream.close()
                await self._release(service, replica)
                timed_out = isinstance(exc, TimeoutError)
                kind = "timeout" if timed_out else "connect" if not sent else "broken"
                self._fail(service, replica, kind, eject=True)
                last_error = f"{type(exc).__name__} from replica {replica.endpoint.job_id}"
                if (not sent or idempotent) and attempt + 1 < self.config.max_attempts:
                    self.metrics.retries.labels(service.label).inc()
                    continue
                service.errors += 1
                code = 504 if timed_out else 502
                self.metrics.requests.labels(service.label, replica.endpoint.job_id, str(code)).inc()
                return Rejected(code, "upstream-failed", f"the replica failed: {last_error}").response()
            except BaseException:
                if upstream is not None:
                    upstream.close()
                await self._release(service, replica)
                raise
        service.errors += 1
        return Rejected(502, "upstream-failed", f"every attempt failed; last: {last_error}").response()

    async def _relay(
        self, service: _Service, replica: _Replica, upstream: aiohttp.ClientResponse, arrived: float, began: float
    ) -> AsyncIterator[bytes]:
        tail = b""
        ok = False
        try:
            async for chunk in upstream.content.iter_any():
                tail = (tail + chunk)[-2048:]
                yield chunk
            ok = True
        except (aiohttp.ClientError, TimeoutError):
            # The replica died mid-stream: the caller sees its answer cut short (nothing can be sent again).
            service.errors += 1
            self._fail(service, replica, "broken", eject=True)
            raise
        finally:
            if ok:
                upstream.release()
            else:
                upstream.close()
            await self._release(service, replica)
        self._done(service, replica, upstream.status, arrived, began, _tokens(upstream, tail))

    def _done(
        self, service: _Service, replica: _Replica, status: int, arrived: float, began: float, tokens: int
    ) -> None:
        end = time.perf_counter()
        job_id = replica.endpoint.job_id
        service.requests += 1
        if status >= 500:
            service.errors += 1
        if len(service.latencies) < 50_000:
            service.latencies.append((end - arrived) * 1000)
        service.tokens += tokens
        replica.failures = 0
        m = self.metrics
        m.requests.labels(service.label, job_id, str(status)).inc()
        m.latency.labels(service.label).observe(end - arrived)
        m.replica_latency.labels(service.label, job_id).observe(end - began)
        if tokens:
            m.tokens.labels(service.label, job_id).inc(tokens)

    # ------------------------------------------------------------------------------------------ the app

    def app(self) -> Starlette:
        async def healthz(_: Request) -> Response:
            return PlainTextResponse("ok" if self.ready else "starting", status_code=200 if self.ready else 503)

        async def metrics(_: Request) -> Response:
            for service in self.services.values():
                self.metrics.ongoing.labels(service.label).set(service.ongoing + service.queued)
                self.metrics.queued.labels(service.label).set(service.queued)
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return Starlette(
            routes=[
                StarletteRoute("/healthz", healthz),
                StarletteRoute("/metrics", metrics),
                StarletteRoute("/v1/services/{tenant}/{name}", self.handle, methods=methods),
                StarletteRoute("/v1/services/{tenant}/{name}/{rest:path}", self.handle, methods=methods),
            ],
            lifespan=lifespan,
        )


def _streams(upstream: aiohttp.ClientResponse) -> bool:
    """Stream an answer through when it is an event stream or has no length (chunked); read others whole (a
    replica that dies while sending one can then still be retried)."""
    kind = upstream.headers.get("content-type", "")
    return kind.startswith("text/event-stream") or "content-length" not in upstream.headers


def _answer_headers(upstream: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """The replica's headers as sent (repeated ones, such as set-cookie, kept), less the hop-by-hop ones."""
    return [(k.lower(), v) for k, v in upstream.raw_headers if k.lower().decode("latin-1") not in _DROP_RESPONSE]


def _raw_response(response: Response, headers: list[tuple[bytes, bytes]]) -> Response:
    # Starlette set content-length (or nothing, streaming); the replica's own headers follow as they were.
    own = [(k, v) for k, v in response.raw_headers if k in (b"content-length",)]
    response.raw_headers = own + headers
    return response


def _tokens(upstream: aiohttp.ClientResponse, tail: bytes) -> int:
    told = upstream.headers.get("x-zhisuan-tokens")
    if told is not None and told.isdigit():
        return int(told)
    found = _USAGE.findall(tail)
    return int(found[-1]) if found else 0


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def server(
    router: ServiceRouter, host: str = "127.0.0.1", port: int = 8100, log_level: str = "warning"
) -> uvicorn.Server:
    """A uvicorn server for the router (uvloop, httptools, no access log), for :func:`run` or a thread."""
    config = uvicorn.Config(
        router.app(),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        timeout_graceful_shutdown=30,
    )
    return uvicorn.Server(config)


@contextlib.contextmanager
def running(router: ServiceRouter, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``router`` from a thread of this process while the block runs; yields its base URL (``port=0``: a
    free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    srv = server(router, host, bound)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, name="serving-router", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the router did not start on {host}:{bound}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{bound}"
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()


def run(source: RouteSource, host: str, port: int, config: RouterConfig | None = None) -> None:
    """Serve the routers' endpoint until interrupted (what ``zhisuan services router`` runs)."""
    server(ServiceRouter(source, config), host, port).run()
