"""Browser sessions: the long-lived API token never reaches the browser's storage.

* ``POST /ui/login`` takes a pasted token (or the single-use token of a ``zhisuan dashboard`` link), checks it
  with the API's own :class:`~api.auth.Authenticator`, and mints a *new* token for the same user, named
  ``ui-session``, that expires after ``ZHISUAN_UI_SESSION_S`` (never later than the token it came from). The
  browser gets it only as an ``HttpOnly; SameSite=Strict`` cookie on ``Path=/ui``: no script can read it, no other
  site's request carries it, and ``/v1`` never sees it (the API stays bearer-only, with no CSRF surface). A link
  token (``ui-link``) is revoked the moment it is exchanged.
* Every ``/ui`` request resolves the cookie through :func:`api.deps.authenticate` — the same cache, revocation,
  expiry, node-token rule and rate limit as a bearer token — and :func:`api.deps.tenant_scope`, the one tenant
  filter of the API.
* Every POST/PUT/DELETE needs ``X-CSRF-Token`` (or a ``csrf`` form field) equal to an HMAC of the session token,
  and an ``Origin`` naming this server. The value is derived, not stored, so every API process agrees on it.

    >>> csrf_token("zs_abc_secret") == csrf_token("zs_abc_secret") != csrf_token("zs_abc_other")
    True
    >>> same_origin("http://127.0.0.1:8000", "http", "127.0.0.1:8000"), same_origin("https://evil", "http", "x")
    (True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select, update

from api.auth import AuthError, Principal, issue_token, parse_token
from api.db import write_session
from api.deps import AppContext, TenantScope, authenticate, tenant_scope
from api.problems import Problem
from api.tables import API_TOKENS

COOKIE = "zs_ui"
LANG_COOKIE = "zs_lang"
SESSION_NAME = "ui-session"
LINK_NAME = "ui-link"
_CSRF_LABEL = b"zhisuan-ui-csrf"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class LoginRequired(Exception):
    """No valid session: send the browser to the login page (keeping the page it wanted)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class CsrfRefused(Exception):
    """A state-changing request without the session's CSRF token or from another origin."""


def csrf_token(session_token: str) -> str:
    """HMAC-SHA256 of a fixed label keyed by the session token (the secret only the cookie holder has)."""
    return hmac.new(session_token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def same_origin(origin: str, scheme: str, host: str) -> bool:
    """Whether an ``Origin`` header names this server (scheme and host:port as the request reached it)."""
    parts = urlsplit(origin)
    return parts.scheme == scheme and parts.netloc.lower() == host.lower()


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return name in ("127.0.0.1", "localhost", "[::1]")


def safe_next(target: str | None) -> str:
    """Only a path under ``/ui`` may be a post-login destination (no open redirect to another site).

    >>> safe_next("/ui/jobs?state=pending"), safe_next("https://evil/ui"), safe_next("//evil/ui"), safe_next(None)
    ('/ui/jobs?state=pending', '/ui/', '/ui/', '/ui/')
    """
    if not target or not target.startswith("/ui") or target.startswith("//") or "\\" in target:
        return "/ui/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/ui/"
    return target


def login_url(next_path: str, reason: str = "") -> str:
    url = "/ui/login?next=" + quote(safe_next(next_path), safe="")
    return url + ("&expired=1" if reason else "")


@dataclass(frozen=True)
class Viewer:
    """Who is looking at the dashboard: the API principal and scope of the session, and its CSRF token."""

    principal: Principal
    scope: TenantScope
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.principal.is_center_admin

    @property
    def can_manage_users(self) -> bool:
        return self.principal.is_center_admin or self.principal.is_tenant_admin


async def resolve(request: Request) -> Viewer:
    """The session of this request, or :class:`LoginRequired`; checks CSRF and Origin on unsafe methods."""
    ctx: AppContext = request.app.state.ctx
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired()
    try:
        principal = await authenticate(ctx, f"Bearer {token}", request.url.path)
    except Problem as problem:
        if problem.slug in ("unauthenticated", "forbidden"):
            raise LoginRequired(problem.detail) from None
        raise
    if principal.is_node:
        raise LoginRequired("node-agent tokens cannot open the dashboard")
    csrf = csrf_token(token)
    if request.method in UNSAFE_METHODS:
        await check_csrf(request, csrf)
    return Viewer(principal, tenant_scope(principal), csrf)


def check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if origin is not None and not same_origin(origin, request.url.scheme, host):
        raise CsrfRefused(f"the request came from {origin}, not from this dashboard")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is not None and not same_origin(referer, request.url.scheme, host):
            raise CsrfRefused("the request came from another site")


async def check_csrf(request: Request, expected: str) -> None:
    check_origin(request)
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = await request.form()
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent, expected):
        raise CsrfRefused("the request lacks this session's CSRF token; reload the page and try again")


# ------------------------------------------------------------------------------------------- login, logout


@dataclass(frozen=True)
class NewSession:
    token: str
    expires_at: float
    principal: Principal


def exchange(ctx: AppContext, pasted: str, session_s: float, now: float | None = None) -> NewSession:
    """Check ``pasted`` and mint a session token for its user (blocking: run in a thread).

    Raises :class:`AuthError` with a message for the login page when the token cannot open a session.
    """
    now = time.time() if now is None else now
    pasted = pasted.strip()
    if pasted.lower().startswith("bearer "):
        pasted = pasted[7:].strip()
    parsed = parse_token(pasted)
    if parsed is None:
        raise AuthError("that is not a Zhisuan token; tokens look like zs_<id>_<secret>")
    principal = ctx.auth.lookup(pasted, now)
    if principal.is_node:
        raise AuthError("node-agent tokens cannot open the dashboard; use a user's token")
    if principal.user_id is None:
        raise AuthError("this token belongs to no user; use a user's token")
    lifetime = session_s
    if principal.expires_at is not None:
        lifetime = min(lifetime, principal.expires_at - now)
    with write_session(ctx.engine) as session:
        row: Any = session.execute(select(API_TOKENS.c.name).where(API_TOKENS.c.id == principal.token_id)).first()
        single_use = row is not None and row.name == LINK_NAME
        if single_use:
            # A link token opens one session, then is dead (and a link opened twice gets nothing the second time).
            revoked = session.execute(
                update(API_TOKENS)
                .where(API_TOKENS.c.id == principal.token_id, API_TOKENS.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            if revoked.rowcount != 1:  # type: ignore[attr-defined]
                raise AuthError("this login link was already used; run zhisuan dashboard again")
            lifetime = session_s
        if lifetime <= 0:
            raise AuthError("the token has expired; create a new one")
        created = issue_token(
            session,
            role=principal.role,
            tenant=principal.tenant,
            user_id=principal.user_id,
            name=SESSION_NAME,
            expires_in_s=lifetime,
            now=now,
        )
    if single_use:
        ctx.auth.invalidate()
    return NewSession(created["token"], created["expires_at"], principal)


def revoke(ctx: AppContext, token_id: str) -> None:
    """Revoke a session token (logout); blocking."""
    with write_session(ctx.engine) as session:
        session.execute(
            update(API_TOKENS)
            .where(API_TOKENS.c.id == token_id, API_TOKENS.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
    ctx.auth.invalidate()


async def exchange_async(ctx: AppContext, pasted: str, session_s: float) -> NewSession:
    return await run_in_threadpool(exchange, ctx, pasted, session_s)
