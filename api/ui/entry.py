"""Login, logout, the event stream and the static files of ``/ui``."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from api.auth import AuthError
from api.deps import AppContext
from api.problems import Problem
from api.ui.events import TooManyStreams, hub_of, stream
from api.ui.session import (
    COOKIE,
    CsrfRefused,
    LoginRequired,
    Viewer,
    check_origin,
    exchange_async,
    is_loopback,
    login_url,
    resolve,
    revoke,
    safe_next,
)
from api.ui.web import SERVED, STATIC, UiRoute, config, render

router = APIRouter(route_class=UiRoute)


@router.get("/static/{name:path}")
def static(name: str) -> Response:
    media = SERVED.get(name)
    if media is None:
        raise Problem("not-found", "no such file")
    return Response(
        (STATIC / name).read_bytes(), media_type=media, headers={"Cache-Control": "public, max-age=86400, immutable"}
    )


@router.get("/login")
def login_form(request: Request, next: str | None = None, expired: str | None = None) -> Response:
    return render(
        request, "login.html", {"next": safe_next(next), "expired": bool(expired), "error": None, "title": "Sign in"}
    )


@router.post("/login")
async def login(
    request: Request,
    token: Annotated[str, Form(max_length=400)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/ui/",
) -> Response:
    ctx: AppContext = request.app.state.ctx
    destination = safe_next(next)
    try:
        check_origin(request)
    except CsrfRefused as err:
        raise Problem("forbidden", str(err)) from None
    if not ctx.ready:
        raise Problem("database-unavailable", "the database is not ready yet; try again in a few seconds")
    try:
        created = await exchange_async(ctx, token, config().session_s)
    except AuthError as err:
        return render(
            request, "login.html", {"next": destination, "expired": False, "error": str(err), "title": "Sign in"}, 401
        )
    response = RedirectResponse(destination, status_code=303)
    host = request.headers.get("host", "")
    response.set_cookie(
        COOKIE,
        created.token,
        # The token expires on the server; the cookie outlives it by an hour so the server can tell an expired
        # session ("sign in again to go back") from no session at all.
        max_age=max(1, int(created.expires_at - time.time())) + 3600,
        path="/ui",
        httponly=True,
        samesite="strict",
        # Secure everywhere but plain http on this machine (a browser drops Secure cookies over http).
        secure=request.url.scheme == "https" or not is_loopback(host),
    )
    return response


@router.post("/logout")
async def logout(request: Request, viewer: Annotated[Viewer, Depends(resolve)]) -> Response:
    ctx: AppContext = request.app.state.ctx
    from fastapi.concurrency import run_in_threadpool

    await run_in_threadpool(revoke, ctx, viewer.principal.token_id)
    response: Response = RedirectResponse("/ui/login", status_code=303)
    if request.headers.get("hx-request") == "true":
        response = Response(status_code=200, headers={"HX-Redirect": "/ui/login"})
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


@router.get("/events")
async def events(request: Request, viewer: Annotated[Viewer, Depends(resolve)]) -> Response:
    ctx: AppContext = request.app.state.ctx
    hub = hub_of(ctx)
    try:
        subscriber = hub.subscribe(viewer.scope.tenant, viewer.principal.token_id, config().max_streams)
    except TooManyStreams as err:
        raise Problem("rate-limited", str(err), headers={"Retry-After": "30"}) from None

    async def still_valid() -> bool:
        try:
            await resolve(request)
        except (LoginRequired, Problem):
            return False
        return True

    return StreamingResponse(
        stream(hub, subscriber, still_valid),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/session")
async def session_state(request: Request, next: str | None = None) -> Response:
    """For the page's script: is the session still good, and if not, where to sign in again (keeping the page)."""
    try:
        await resolve(request)
    except (LoginRequired, Problem) as err:
        wanted = safe_next(next)
        reason = err.reason if isinstance(err, LoginRequired) else err.detail
        return Response(
            orjson.dumps({"ok": False, "login": login_url(wanted, reason or "expired")}), media_type="application/json"
        )
    return Response(orjson.dumps({"ok": True}), media_type="application/json")
