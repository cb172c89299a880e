"""The FastAPI application: ``create_app(settings)`` wires the database, caches, writer, routers and errors.

    uvicorn --factory api.app:create_app          # settings from ZHISUAN_* variables
    python -m api.app --port 8000                 # the same, with the fast-path server options
    python -m api.app --port 8000 --workers 4     # four processes on one port (rate limits in ZHISUAN_REDIS_URL)

At start (lifespan) the database is migrated to the newest revision and bootstrapped (:mod:`api.bootstrap`).
If the database does not answer, the server still starts: it answers 503 ``database-unavailable`` (and
``/readyz`` says why) and keeps retrying in the background until the database is back.

Several processes may serve one database (``--workers N``, or several machines): each follows the change feed
(:class:`api.store.Follower`), so a token revoked through one is refused by all within a second and their
snapshots of policy, inventory and device work stay current; per-token rate limits then live in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.auth import Authenticator, RateLimiter, RedisRateLimiter
from api.bootstrap import bootstrap
from api.db import is_sqlite, is_unavailable, make_engine, migrate
from api.deps import AppContext
from api.fastpath import FastSubmit
from api.metrics import ApiMiddleware, Metrics
from api.problems import install as install_problems
from api.routers import ROUTERS
from api.routers.agent import AgentAdmission
from api.routers.inventory import router as inventory_router
from api.service_store import ChangeFeed
from api.settings import Settings
from api.store import Follower, LeaseWriter, Snapshots, Submitter
from api.ui import router as ui_router
from scheduler.catalog import load_catalog
from scheduler.throughput import load_throughput

log = logging.getLogger("zhisuan.api")
VERSION = "0.1.0"


def _start(ctx: AppContext) -> None:
    """Migrate, bootstrap, load the snapshots (blocking)."""
    migrate(ctx.engine)
    result = bootstrap(ctx.engine, ctx.settings, ctx.catalog)
    ctx.snapshots.refresh(force=True)
    ctx.ready = True
    follower = ctx.follower
    if follower is not None:
        follower.start()
    ctx.startup_error = None
    if result.admin_token is not None:
        ctx.bootstrap_token = result.admin_token
        where = f" (also written to {ctx.settings.admin_token_file})" if ctx.settings.admin_token_file else ""
        log.warning(
            "created the center admin %r; its token, shown once%s: %s", result.admin_user, where, result.admin_token
        )


async def _maintain(ctx: AppContext) -> None:
    """Retry the start until the database answers, then keep the snapshots fresh."""
    while True:
        await asyncio.sleep(ctx.settings.cache_refresh_s)
        try:
            if not ctx.ready:
                await asyncio.to_thread(_start, ctx)
                log.warning("database available again; serving")
            elif ctx.follower is None:
                await asyncio.to_thread(ctx.snapshots.refresh)
        except Exception as err:
            if not ctx.ready:
                ctx.startup_error = f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.debug("refresh failed: %s", err)


def make_limiter(settings: Settings) -> RateLimiter | RedisRateLimiter:
    """Per-token rate limits: in Redis when several processes share them, else in this process."""
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url, settings.rate_per_s, settings.rate_burst)
    if settings.workers > 1 and settings.rate_per_s > 0:
        raise ValueError(
            f"{settings.workers} API processes must share their per-token rate limits: set ZHISUAN_REDIS_URL "
            "(redis://127.0.0.1:6379/0), or turn them off with ZHISUAN_RATE_LIMIT=off"
        )
    return RateLimiter(settings.rate_per_s, settings.rate_burst)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    engine = make_engine(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    catalog = load_catalog()
    throughput = load_throughput(catalog=catalog)
    submitter = Submitter(engine, linger_s=settings.batch_linger_ms / 1000, max_batch=settings.batch_max)
    ctx = AppContext(
        settings=settings,
        engine=engine,
        catalog=catalog,
        throughput=throughput,
        auth=Authenticator(engine, settings.token_cache_s),
        limiter=make_limiter(settings),
        snapshots=Snapshots(engine, catalog, throughput),
        submitter=submitter,
        metrics=Metrics(engine, lambda: (submitter.batches, submitter.written)),
    )
    leases = ctx.leases = LeaseWriter(engine)
    feed = ChangeFeed(engine)
    ctx.follower = Follower(feed.read, None if is_sqlite(engine) else feed.watch, ctx.auth.invalidate, ctx.snapshots)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The job writer thread needs the GIL back promptly after each database call; with the default 5 ms
        # switch interval a busy event loop holds it for up to 5 ms each time, a few times per batch.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        submitter.start()
        leases.start()
        try:
            await asyncio.to_thread(_start, ctx)
        except Exception as err:
            if not is_unavailable(err):
                submitter.stop()
                raise
            ctx.startup_error = f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.error("database unavailable at start (%s); answering 503 and retrying", ctx.startup_error)
        # What start-up built (modules, the app, the first snapshots) lives as long as the process: out of the
        # collector's sight, a full collection walks only what requests allocate (each one walked ~200,000
        # objects and paused a request ~80 ms: benchmarks/dashboard.py).
        gc.collect()
        gc.freeze()
        maintainer = asyncio.create_task(_maintain(ctx))
        try:
            yield
        finally:
            maintainer.cancel()
            if ctx.follower is not None:
                ctx.follower.stop()
            submitter.stop()
            leases.stop()
            if isinstance(ctx.limiter, RedisRateLimiter):
                await ctx.limiter.close()
            engine.dispose()

    app = FastAPI(
        title="Zhisuan API",
        version=VERSION,
        summary="Jobs, queues, quotas, usage and inventory of an intelligent computing center (智算中心).",
        lifespan=lifespan,
        separate_input_output_schemas=False,
        # Prometheus (api.metrics) does the metrics; FastAPI's native OpenTelemetry hooks cost per request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.ctx = ctx
    install_problems(app, settings.retry_after_s)
    if settings.fast_submit:
        app.add_middleware(FastSubmit, ctx=ctx)
    app.add_middleware(AgentAdmission, limit=settings.agent_in_flight)
    app.add_middleware(ApiMiddleware, metrics=ctx.metrics, max_body_bytes=settings.max_body_bytes)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(ui_router)  # the dashboard under /ui (api/ui)
    app.include_router(inventory_router)  # GET /v1/inventory: sources and their staleness
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
            separate_input_output_schemas=False,
        )
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "zs_<id>_<secret> (tenant, admin or node-agent token)",
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


#: How long the server keeps an idle connection. Longer than the clients' own expiry (httpx: 5 s), so a client
#: always drops an idle connection first: with both at 5 s, an agent heartbeating every 5 s sent on a connection
#: the server was closing at that moment ("Server disconnected without sending a response").
KEEP_ALIVE_S = 15


def run(
    settings: Settings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    workers: int = 1,
) -> None:
    """Serve with the options the load target was measured with (uvloop, httptools with one write per
    response, no access log). ``workers > 1``: that many processes accept on one socket (uvicorn's supervisor
    restarts one that dies); each builds its app from the ``ZHISUAN_*`` variables, so ``settings`` must be
    None then (the database is migrated and bootstrapped once, here, before they start)."""
    import uvicorn

    from api.coalescing import CoalescingHttpToolsProtocol

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": False,
        "loop": "uvloop",
        "http": CoalescingHttpToolsProtocol,
        "lifespan": "on",
        "timeout_keep_alive": KEEP_ALIVE_S,
    }
    if workers <= 1:
        uvicorn.run(create_app(settings), **options)
        return
    if settings is not None:
        raise ValueError("several workers read their settings from ZHISUAN_* variables; pass settings=None")
    os.environ["ZHISUAN_WORKERS"] = str(workers)
    shared = Settings.from_env()
    make_limiter(shared)  # the error about Redis, once, before any process starts
    prepare_database(shared)
    uvicorn.run("api.app:create_app", factory=True, workers=workers, **options)


def prepare_database(settings: Settings) -> None:
    """Migrate and bootstrap once before several processes start (each would, serialised, but the first admin
    token is then logged by whichever process made it)."""
    from api.bootstrap import prepare

    result = prepare(settings)
    if result.admin_token is not None:
        where = f" (also written to {settings.admin_token_file})" if settings.admin_token_file else ""
        log.warning("created the center admin; its token, shown once%s: %s", where, result.admin_token)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Zhisuan API server (settings from ZHISUAN_* variables).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--workers", type=int, default=1, help="API processes on the one port (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(host=args.host, port=args.port, log_level=args.log_level, workers=args.workers)


if __name__ == "__main__":
    main()
