"""The Zhisuan Python SDK: a small typed client of the REST API (``api/README.md`` is the contract).

Every method mirrors one endpoint and answers the server's own wire model (:mod:`api.models`; fields a model does
not know are kept, so a newer server stays readable); ``model.to_dict()`` gives back exactly what the server sent. A
problem answer (RFC 9457) raises :class:`ApiError`, whose ``str()`` says what to fix; a server that cannot be
reached raises :class:`Unreachable` (a subclass). Submissions carry an ``Idempotency-Key`` (a fresh UUID unless
given), so the client retries them safely after a dropped connection; ``429`` and ``503`` are retried after the
server's ``Retry-After``. Example (not run as a doctest: it needs a server)::

    from api.client import ZhisuanClient

    with ZhisuanClient("http://127.0.0.1:8000", token="zs_...") as zs:
        job = zs.submit({"name": "resnet", "workers": 2, "devices_per_worker": 4, "job_class": "cv-train",
                         "entrypoint": "python train.py", "walltime_s": 3600})
        print(job.id, job.state)                        # j0193f2c4a1b7e0d5c3a9 pending
        for reason in zs.why(job.id).reasons:           # why is it waiting?
            print(reason.code, reason.message)
        print(zs.eta(job.id).estimated_start)           # epoch seconds, or None
        job = zs.wait(job.id, until="running", timeout=600)
        for text in zs.follow_logs(job.id):             # until the job ends and the log is read
            print(text, end="")
        for queued in zs.list_jobs(state="pending"):    # follows cursors
            print(queued.id, queued.name)
"""

from __future__ import annotations

import functools
import random
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self

import httpx
from pydantic import BaseModel
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from api.models import (
    EtaOut,
    EventOut,
    JobOut,
    LogChunk,
    NodeOut,
    PoolOut,
    QueueOut,
    TenantOut,
    TokenCreated,
    TokenOut,
    UsageOut,
    UserOut,
    WhoAmI,
    WhyOut,
)
from scheduler.errors import validate_model
from scheduler.spec import JobSpec

__all__ = [
    "ApiError",
    "Unreachable",
    "ZhisuanClient",
]

PROBLEM_BASE = "https://zhisuan.dev/problems/"
_RETRY_STATUSES = frozenset({429, 503})
_USER_AGENT = "zhisuan-client/0.1"


class ApiError(Exception):
    """A problem answered by the server (RFC 9457 ``application/problem+json``), or no answer at all.

    ``status`` is the HTTP status, ``type`` the stable problem URI (``slug`` its last part, e.g. ``not-found``),
    ``detail`` what to fix, ``errors`` the ``[{loc, msg}]`` list of a validation error.
    """

    def __init__(
        self,
        status: int,
        type: str,
        title: str,
        detail: str = "",
        errors: list[dict[str, Any]] | None = None,
        *,
        instance: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = list(errors or [])
        self.instance = instance
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def slug(self) -> str:
        """The problem type without its base URI: ``not-found``, ``validation-error``, ..."""
        return self.type.rsplit("/", 1)[-1]

    @property
    def message(self) -> str:
        """One line: the title, what to fix, the first field errors and the status."""
        text = self.title.rstrip(".")
        detail = self.detail
        if detail.lower().startswith(text.lower()):  # a server that repeats its title in the detail
            detail = detail[len(text) :].lstrip(" .:;-")
        if detail:
            text = f"{text}: {detail}"
        extra = []
        for error in self.errors[:3]:
            loc = error.get("loc", ())
            where = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list | tuple) else str(loc)
            msg = str(error.get("msg", ""))
            item = f"{where}: {msg}" if where else msg
            if item and item not in text:
                extra.append(item)
        if extra:
            more = f" (+{len(self.errors) - 3} more)" if len(self.errors) > 3 else ""
            text = f"{text} — {'; '.join(extra)}{more}"
        if self.status:
            text = f"{text} (HTTP {self.status})"
        return " ".join(text.split())

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Parse a problem+json answer; anything else becomes a problem with the body's first line as detail."""
        body: Any = None
        try:
            body = response.json()
        except ValueError:
            body = None
        retry_after = _retry_after(response.headers.get("Retry-After"))
        if isinstance(body, Mapping) and ("type" in body or "title" in body):
            errors = body.get("errors")
            return cls(
                status=int(body.get("status") or response.status_code),
                type=str(body.get("type") or "about:blank"),
                title=str(body.get("title") or response.reason_phrase or "error"),
                detail=str(body.get("detail") or ""),
                errors=[e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else None,
                instance=body.get("instance"),
                retry_after=retry_after,
            )
        if isinstance(body, Mapping) and "detail" in body:  # a plain FastAPI/Starlette error
            detail = body["detail"]
            return cls(
                response.status_code,
                "about:blank",
                response.reason_phrase or "error",
                detail if isinstance(detail, str) else str(detail),
                retry_after=retry_after,
            )
        first_line = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        return cls(
            response.status_code, "about:blank", response.reason_phrase or "error", first_line, retry_after=retry_after
        )


class Unreachable(ApiError):
    """The server could not be reached, or dropped the connection on every attempt."""

    def __init__(self, url: str, cause: BaseException) -> None:
        what = type(cause).__name__
        reason = str(cause) or what
        super().__init__(
            0,
            PROBLEM_BASE + "unreachable",
            f"cannot reach the Zhisuan API at {url}",
            f"{reason}; check the URL (--url, ZHISUAN_URL or `zhisuan login`) and that the server is running",
        )
        self.url = url
        self.cause = cause


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------- client

Until = Literal["terminal", "running"]


@functools.cache
def _verified_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~0.2 s; one context serves every client of the process.
    return httpx.create_ssl_context()


def _tls(url: str, verify: ssl.SSLContext | bool) -> ssl.SSLContext | bool:
    if verify is not True:
        return verify
    if url.startswith("https://"):
        return _verified_context()
    # Plain HTTP never uses TLS (redirects are not followed); a context without trust roots would fail closed.
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _epoch(value: float | datetime | None) -> float | None:
    if value is None or isinstance(value, float | int):
        return value
    return value.timestamp()


class ZhisuanClient:
    """A client of one Zhisuan API server.

    ``retries`` bounds the extra attempts after a connection failure, ``429`` or ``503``; waits grow from
    ``backoff_s`` (with jitter) up to ``max_backoff_s``, or follow the server's ``Retry-After``. A request that
    may have reached the server is retried only where repeating it is harmless (reads, PUT/DELETE, a submission
    with its idempotency key). ``verify`` is an :class:`ssl.SSLContext` for a private CA (or False: no TLS
    verification); ``transport`` replaces httpx's network transport (tests, proxies).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        retries: int = 4,
        backoff_s: float = 0.25,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        base = url.strip().rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        if "://" not in base:
            base = f"http://{base}"
        self.url = base
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base, headers=headers, timeout=timeout, transport=transport, verify=_tls(base, verify)
        )

    # -- plumbing ------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _wait_s(self, state: RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_backoff_s)
        base: float = min(self.backoff_s * 2.0 ** (state.attempt_number - 1), self.max_backoff_s)
        return base * random.uniform(0.5, 1.0)

    @staticmethod
    def _retryable(exc: BaseException, idempotent: bool) -> bool:
        if isinstance(exc, ApiError):
            return exc.status in _RETRY_STATUSES
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return True  # the request never left: repeating it is always safe
        return idempotent and isinstance(exc, httpx.TransportError)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Send one request (with retries) and answer its decoded JSON body (``None`` for an empty body)."""
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        query = {k: v for k, v in (params or {}).items() if v is not None}
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=self._wait_s,
            retry=retry_if_exception(lambda e: self._retryable(e, bool(idempotent))),
            sleep=self._sleep,
            reraise=True,
        )

        def once() -> httpx.Response:
            response = self._http.request(method, path, params=query, json=json, headers=headers)
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            return response

        try:
            response = retrying(once)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, exc) from exc
        if not response.content:
            return None
        return response.json()

    def _get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    # -- jobs ----------------------------------------------------------------------------------------------
    def submit(self, spec: JobSpec | Mapping[str, Any], idempotency_key: str | None = None) -> JobOut:
        """Submit a job. The spec is validated here first (a :class:`~scheduler.errors.ConfigError` that says
        what to fix, before any request). Retries reuse one ``Idempotency-Key`` (a fresh UUID unless given), so
        a job is created at most once however often the connection drops."""
        if not isinstance(spec, JobSpec):
            spec = validate_model(JobSpec, dict(spec), "<spec>")
        key = idempotency_key or str(uuid.uuid4())
        body = spec.model_dump(mode="json", exclude_unset=True)
        data = self.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}, idempotent=True)
        return JobOut.from_api(data)

    def get_job(self, job_id: str) -> JobOut:
        return JobOut.from_api(self._get(f"/v1/jobs/{job_id}"))

    def list_jobs(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        name: str | None = None,
        tenant: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> Iterator[JobOut]:
        """Jobs, newest first, following the cursors; ``limit`` bounds how many are yielded (None: all).
        ``tenant`` filters by tenant (center admins only)."""
        yielded = 0
        cursor: str | None = None
        while True:
            size = min(page_size, 500) if limit is None else max(1, min(limit - yielded, page_size, 500))
            page = self._get(
                "/v1/jobs", state=state, queue=queue, kind=kind, name=name, tenant=tenant, limit=size, cursor=cursor
            )
            for item in page.get("items", []):
                yield JobOut.from_api(item)
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> JobOut:
        """Ask for a job to stop: a pending job is cancelled at once, a running one goes to ``cancelling``."""
        return JobOut.from_api(self.request("POST", f"/v1/jobs/{job_id}/cancel", idempotent=False))

    def events(self, job_id: str) -> list[EventOut]:
        return [EventOut.from_api(e) for e in self._get(f"/v1/jobs/{job_id}/events").get("items", [])]

    def logs(self, job_id: str, rank: int = 0, offset: int = 0, limit: int | None = None) -> LogChunk:
        """One chunk of a worker's log, from byte ``offset``."""
        return LogChunk.from_api(self._get(f"/v1/jobs/{job_id}/logs", rank=rank, offset=offset, limit=limit))

    def follow_logs(self, job_id: str, rank: int = 0, poll_s: float = 0.5, offset: int = 0) -> Iterator[str]:
        """Yield a worker's log text as it is written, until the job has ended and everything was read.
        A requeued job (a new attempt) starts its log again; a marker line says so."""
        attempt: int | None = None
        while True:
            chunk = self.logs(job_id, rank=rank, offset=offset)
            if attempt is not None and chunk.attempt != attempt:
                yield f"--- attempt {chunk.attempt} ---\n"
                if offset:
                    offset = 0
                    attempt = chunk.attempt
                    continue
            attempt = chunk.attempt
            if chunk.text:
                yield chunk.text
            offset = max(offset, chunk.next_offset)
            if chunk.complete:
                return
            if not chunk.text:
                self._sleep(poll_s)

    def why(self, job_id: str) -> WhyOut:
        return WhyOut.from_api(self._get(f"/v1/jobs/{job_id}/why"))

    def eta(self, job_id: str) -> EtaOut:
        return EtaOut.from_api(self._get(f"/v1/jobs/{job_id}/eta"))

    def wait(
        self,
        job_id: str,
        until: Until = "terminal",
        timeout: float | None = None,
        on_update: Callable[[JobOut], None] | None = None,
        poll_s: float = 1.0,
    ) -> JobOut:
        """Poll a job until it is terminal (``until="terminal"``) or has started (``"running"``: running or
        already ended). ``on_update`` sees the job after every poll. Raises :class:`TimeoutError` after
        ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job.terminal or (until == "running" and job.state in ("running", "cancelling")):
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.state} after {timeout:g} s")
            pause = poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic()))
            self._sleep(pause)

    # -- queues and tenants ------------------------------------------------------------------------------
    def queues(self) -> list[QueueOut]:
        return [QueueOut.from_api(q) for q in self._get("/v1/queues").get("items", [])]

    def queue(self, name: str) -> QueueOut:
        return QueueOut.from_api(self._get(f"/v1/queues/{name}"))

    def put_queue(self, name: str, spec: Mapping[str, Any] | BaseModel) -> QueueOut:
        """Create or replace a queue (center-admin); ``spec`` is a ``scheduler.tenancy.QueueSpec`` or its dict."""
        body = spec.model_dump(mode="json", exclude_none=True) if isinstance(spec, BaseModel) else dict(spec)
        return QueueOut.from_api(self.request("PUT", f"/v1/queues/{name}", json=body))

    def delete_queue(self, name: str) -> None:
        self.request("DELETE", f"/v1/queues/{name}")

    def tenants(self) -> list[TenantOut]:
        return [TenantOut.from_api(t) for t in self._get("/v1/tenants").get("items", [])]

    def tenant(self, tenant_id: str) -> TenantOut:
        return TenantOut.from_api(self._get(f"/v1/tenants/{tenant_id}"))

    def create_tenant(self, tenant_id: str, **fields: Any) -> TenantOut:
        """Create a tenant (center-admin): ``type``, ``tier``, ``weight``, ``domestic``, ``max_active_jobs``."""
        body = {"id": tenant_id, **{k: v for k, v in fields.items() if v is not None}}
        return TenantOut.from_api(self.request("POST", "/v1/tenants", json=body))

    def update_tenant(self, tenant_id: str, **fields: Any) -> TenantOut:
        body = {k: v for k, v in fields.items() if v is not None}
        return TenantOut.from_api(self.request("PATCH", f"/v1/tenants/{tenant_id}", json=body, idempotent=True))

    # -- users and tokens ----------------------------------------------------------------------------------
    def users(self, tenant: str | None = None) -> list[UserOut]:
        """Users of your tenant (tenant admins), or of every tenant or one (center admins)."""
        return [UserOut.from_api(u) for u in self._get("/v1/users", tenant=tenant).get("items", [])]

    def create_user(self, name: str, tenant: str | None = None, role: str = "tenant-user") -> UserOut:
        """Create a user (tenant admins: in their tenant; center admins: any). Its id is ``name@tenant``."""
        body: dict[str, Any] = {"name": name, "role": role}
        if tenant is not None:
            body["tenant"] = tenant
        return UserOut.from_api(self.request("POST", "/v1/users", json=body))

    def create_token(self, user: str | None = None, name: str = "", expires_in_s: float | None = None) -> TokenCreated:
        """A new API token for user id ``user`` (default: yourself); the secret (``.token``) is in this answer
        only."""
        body = {"user": user, "name": name, "expires_in_s": expires_in_s}
        return TokenCreated.from_api(self.request("POST", "/v1/tokens", json=body))

    def tokens(self, user: str | None = None) -> list[TokenOut]:
        """Tokens you may manage (no secrets), optionally of one user."""
        return [TokenOut.from_api(t) for t in self._get("/v1/tokens", user=user).get("items", [])]

    def revoke_token(self, token_id: str) -> None:
        self.request("DELETE", f"/v1/tokens/{token_id}")

    def node_token(self, node_id: str | None = None, name: str = "", expires_in_s: float | None = None) -> TokenCreated:
        """A node-agent token (center-admin) for ``zhisuan agent run --token``; bound to ``node_id`` if given."""
        body = {"node_id": node_id, "name": name, "expires_in_s": expires_in_s}
        return TokenCreated.from_api(self.request("POST", "/v1/nodes/tokens", json=body))

    def whoami(self) -> WhoAmI:
        return WhoAmI.from_api(self._get("/v1/whoami"))

    # -- usage and inventory -------------------------------------------------------------------------------
    def usage(
        self, tenant: str | None = None, start: float | datetime | None = None, end: float | datetime | None = None
    ) -> UsageOut:
        """UsageOut and bill over ``[start, end)``; default: the current calendar month (UTC)."""
        return UsageOut.from_api(self._get("/v1/usage", tenant=tenant, start=_epoch(start), end=_epoch(end)))

    def pools(self) -> list[PoolOut]:
        return [PoolOut.from_api(p) for p in self._get("/v1/pools").get("items", [])]

    def nodes(self) -> list[NodeOut]:
        return [NodeOut.from_api(n) for n in self._get("/v1/nodes").get("items", [])]

    def node(self, node_id: str) -> NodeOut:
        return NodeOut.from_api(self._get(f"/v1/nodes/{node_id}"))

    def health(self) -> bool:
        """Whether the server answers ``/healthz`` (no retries, no token needed)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False
