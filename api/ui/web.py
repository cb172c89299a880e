"""The dashboard's plumbing: templates (autoescaped), security headers, errors as pages, panels.

A page is a set of *panels*. The page route renders them all; ``?panel=NAME`` renders one (the same template the
page includes), which is what a live refresh fetches. Each panel says which events of the stream refresh it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from api.problems import Problem
from api.ui import charts, fmt
from api.ui.config import UiConfig
from api.ui.i18n import Translator, pick_language
from api.ui.session import LANG_COOKIE, CsrfRefused, LoginRequired, Viewer, login_url

#: ``Referrer-Policy: same-origin``, not ``no-referrer``: under no-referrer a browser sends ``Origin: null`` on
#: form posts, which would defeat the Origin check; cross-origin requests still get no referrer.
#: No inline script or style anywhere (so no ``hx-on``, no ``style=``); frames only for the sandboxed reports.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

STATIC = Path(__file__).resolve().parent / "static"
#: Files the pages load; anything else under static/ (licenses, the manifest) is not served.
SERVED = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
    "vendor/htmx.min.js": "text/javascript; charset=utf-8",
}


@cache
def asset_version() -> str:
    """One hash over the served files: pages ask for ``?v=<hash>``, so a new release is never served stale."""
    digest = hashlib.sha256()
    for name in sorted(SERVED):
        digest.update((STATIC / name).read_bytes())
    return digest.hexdigest()[:12]


ENV = Environment(
    loader=PackageLoader("api.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(
    ncu=fmt.ncu,
    dev=fmt.devices,
    money=fmt.money,
    pct=fmt.pct,
    num=fmt.number,
    duration=fmt.duration,
    utc=fmt.utc,
)
ENV.globals.update(charts=charts)
ENV.tests["unknown"] = lambda value: isinstance(value, fmt.Unknown)


def config() -> UiConfig:
    return UiConfig.from_env()


def language(request: Request) -> str:
    return pick_language(
        request.query_params.get("lang"), request.cookies.get(LANG_COOKIE), request.headers.get("accept-language")
    )


def secure_headers(response: Response, cache: str = "no-store") -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", cache)
    return response


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    lang = language(request)
    t = Translator(lang)
    now = time.time()
    body = ENV.get_template(template).render(
        {
            "request": request,
            "lang": lang,
            "t": t,
            "now": now,
            "ago": lambda ts: t.ago(now - ts),
            "path": request.url.path,
            "config": config(),
            "asset": asset_version(),
            "viewer": None,
            **context,
        }
    )
    response = HTMLResponse(body, status_code=status, headers=headers)
    chosen = request.query_params.get("lang")
    if chosen in ("en", "zh"):
        response.set_cookie(LANG_COOKIE, chosen, max_age=365 * 86400, path="/ui", samesite="strict", httponly=True)
    return response


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def to_toast(request: Request) -> dict[str, str]:
    """Headers that send an htmx answer to the page's message area (``#toast``). Not when the request already
    targets it (``hx-target="#toast"``, as the cancel buttons do): htmx resolves a retarget from the element that
    asked, and a live refresh may have replaced that element while the request was in flight ("Invalid re-target
    #toast"), where a target named on the element was resolved when the request left."""
    if request.headers.get("hx-target") == "toast":
        return {}
    return {"HX-Retarget": "#toast", "HX-Reswap": "innerHTML"}


def error_page(request: Request, status: int, message: str) -> Response:
    if is_htmx(request):
        # Show it in the page's message area rather than replacing the panel that asked.
        return render(
            request,
            "toast.html",
            {"message": message, "status": status, "title": "Something went wrong"},
            status,
            to_toast(request),
        )
    title = "Not found" if status == 404 else "Something went wrong"
    return render(request, "error.html", {"message": message, "status": status, "title": title}, status)


def to_login(request: Request, reason: str) -> Response:
    """Back to the login page, keeping the page the browser wanted (for a fragment: the page it came from)."""
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if is_htmx(request):
        current = request.headers.get("hx-current-url", "")
        marker = current.find("/ui")
        wanted = current[marker:] if marker >= 0 else "/ui/"
        return Response(status_code=200, headers={"HX-Redirect": login_url(wanted, reason)})
    if request.method != "GET":
        wanted = request.headers.get("hx-current-url") or "/ui/"
    return RedirectResponse(login_url(wanted, reason), status_code=303)


class UiRoute(APIRoute):
    """Routes of ``/ui``: security headers on every answer; no session -> login; errors -> a page, never JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await original(request)
            except LoginRequired as err:
                response = to_login(request, err.reason)
            except CsrfRefused as err:
                response = error_page(request, 403, str(err))
            except Problem as problem:
                response = error_page(request, problem.status, problem.detail)
            except RequestValidationError:
                response = error_page(request, 404, "no such page (check the address)")
            return secure_headers(response, response.headers.get("Cache-Control", "no-store"))

        return handler


# ----------------------------------------------------------------------------------------------- panels


@dataclass
class Page:
    """One page of panels. ``panels`` maps a panel name to a function computing that panel's context."""

    request: Request
    viewer: Viewer
    template: str
    panels: Mapping[str, Callable[[], Mapping[str, Any]]]
    title: str

    def panel_url(self, name: str, **extra: str) -> str:
        query = [(k, v) for k, v in self.request.query_params.multi_items() if k not in ("panel", "lang", *extra)]
        query += [("panel", name), *extra.items()]
        return f"{self.request.url.path}?{urlencode(query)}"

    def url(self, **changes: str | None) -> str:
        """This page's address with some query parameters changed (None removes one); never a panel's."""
        query = {k: v for k, v in self.request.query_params.items() if k not in ("panel", "upto", "lang")}
        for key, value in changes.items():
            if value:
                query[key] = value
            else:
                query.pop(key, None)
        query = {k: v for k, v in query.items() if v}
        return f"{self.request.url.path}?{urlencode(query)}" if query else self.request.url.path

    def response(self, panel: str | None, **context: Any) -> Response:
        base = {"viewer": self.viewer, "page": self, "title": self.title, **context}
        if panel is not None:
            compute = self.panels.get(panel)
            if compute is None:
                raise Problem("not-found", f"this page has no panel {panel!r}")
            return render(self.request, f"panels/{panel}.html", {**base, **compute()})
        merged: dict[str, Any] = dict(base)
        for compute in self.panels.values():
            merged.update(compute())
        return render(self.request, self.template, merged)


def require_admin(viewer: Viewer) -> None:
    """Admin pages do not exist for anyone else (404, as the API answers for things outside a scope)."""
    if not viewer.is_admin:
        raise Problem("not-found", "no such page")
