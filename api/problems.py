"""RFC 9457 problem details: every error the API returns is ``application/problem+json`` with a stable ``type``.

>>> p = Problem("not-found", "no job 'j1' (it may belong to another tenant, or never existed)")
>>> p.status, p.type
(404, 'https://zhisuan.dev/problems/not-found')
>>> describe_errors([{"loc": ("body", "workers"), "msg": "Input should be greater than or equal to 1",
...                   "type": "greater_than_equal", "input": 0}])[0]["msg"]
'Input should be greater than or equal to 1 (got 0)'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from api.db import DatabaseUnavailable, is_unavailable
from scheduler.errors import field_path

BASE = "https://zhisuan.dev/problems/"
MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("zhisuan.api")

#: slug -> (default status, title)
SLUGS: dict[str, tuple[int, str]] = {
    "validation-error": (422, "The request is not valid"),
    "malformed-request": (400, "The request body could not be parsed"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "unauthenticated": (401, "Authentication required"),
    "forbidden": (403, "Not allowed"),
    "conflict": (409, "Conflict with the current state"),
    "idempotency-key-reused": (422, "Idempotency-Key reused with a different request"),
    "rate-limited": (429, "Too many requests"),
    "payload-too-large": (413, "Request body too large"),
    "unschedulable": (422, "No pool of the installed inventory could ever run this job"),
    "quota-exceeded": (409, "Quota exceeded"),
    "database-unavailable": (503, "The database is unavailable"),
    "internal": (500, "Internal server error"),
}


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        slug: str,
        detail: str,
        status: int | None = None,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        default_status, default_title = SLUGS.get(slug, (500, slug))
        self.slug = slug
        self.status = status or default_status
        self.title = title or default_title
        self.detail = detail
        self.headers = dict(headers or {})
        self.errors = [dict(e) for e in errors] if errors is not None else None
        self.extra = dict(extra or {})
        super().__init__(detail)

    @property
    def type(self) -> str:
        return BASE + self.slug

    def body(self, instance: str) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.errors is not None:
            doc["errors"] = self.errors
        doc.update(self.extra)
        return doc

    def response(self, instance: str) -> Response:
        return Response(
            orjson.dumps(self.body(instance)), status_code=self.status, headers=self.headers, media_type=MEDIA_TYPE
        )


def not_found(what: str, ident: str) -> Problem:
    """The one 404 for tenant-scoped things: it never says whether the thing exists in another tenant."""
    return Problem(
        "not-found", f"no {what} {ident!r} is visible to you (check the id, and that you use the right token)"
    )


def forbidden(detail: str) -> Problem:
    return Problem("forbidden", detail)


def describe_errors(errors: Sequence[Mapping[str, Any]], prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{loc, msg, type}]`` with messages that say what was given and what to do."""
    out: list[dict[str, Any]] = []
    for error in errors:
        loc = [*prefix, *[p for p in error.get("loc", ()) if not (isinstance(p, str) and p.startswith("function-"))]]
        kind = str(error.get("type", ""))
        msg = str(error.get("msg", "invalid"))
        if kind == "extra_forbidden":
            msg = "unknown field; remove it (see the schema at /docs)"
        elif kind == "missing":
            msg = "field required"
        else:
            # A validator's own message already says what is wrong ("deserved 32 is below guarantee 100");
            # pydantic's "Value error, " prefix says nothing to a user.
            msg = msg.removeprefix("Value error, ")
            given = error.get("input")
            # The value a field was given helps; a whole object (a model validator's input) repeats the form.
            if "input" in error and not isinstance(given, Mapping | list | tuple):
                shown = repr(given)
                if len(shown) <= 60:
                    msg = f"{msg} (got {shown})"
        out.append({"loc": loc, "msg": msg, "type": kind})
    return out


def validation_problem(errors: Sequence[Mapping[str, Any]], prefix: Sequence[str | int] = ()) -> Problem:
    """422 naming the first bad field (and listing all of them in ``errors``); 400 for unparsable JSON."""
    described = describe_errors(errors, prefix)
    for raw, item in zip(errors, described, strict=True):
        if raw.get("type") == "json_invalid":
            ctx = raw.get("ctx") or {}
            reason = ctx.get("error") or raw.get("msg", "")
            return Problem(
                "malformed-request",
                f"the body is not valid JSON ({reason}); send a JSON object (the CLI converts YAML specs)",
                errors=[item],
            )
    first = described[0] if described else {"loc": [], "msg": "invalid request"}
    where = field_path([p for p in first["loc"] if p != "body"]) or "body"
    count = f" ({len(described)} problems, all listed in errors)" if len(described) > 1 else ""
    return Problem("validation-error", f"{where}: {first['msg']}{count}", errors=described)


def from_pydantic(err: ValidationError, prefix: Sequence[str | int] = ("body",)) -> Problem:
    return validation_problem(err.errors(include_url=False), prefix)


def _instance(request: Request) -> str:
    return request.url.path


def install(app: FastAPI, retry_after_s: int = 2) -> None:
    """Register the handlers that turn every error into a problem document."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return exc.response(_instance(request))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(exc.errors()).response(_instance(request))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        slug = {
            400: "malformed-request",
            401: "unauthenticated",
            403: "forbidden",
            404: "not-found",
            405: "method-not-allowed",
            409: "conflict",
            413: "payload-too-large",
            422: "validation-error",
            429: "rate-limited",
            503: "database-unavailable",
        }.get(exc.status_code, "internal")
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /docs"
        problem = Problem(slug, detail, exc.status_code, headers=dict(exc.headers or {}))
        return problem.response(_instance(request))

    async def on_database(request: Request, exc: Exception) -> Response:
        if not is_unavailable(exc):
            return await on_error(request, exc)
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        problem = Problem(
            "database-unavailable",
            f"the database did not answer; nothing was changed, retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )
        return problem.response(_instance(request))

    async def on_error(request: Request, exc: Exception) -> Response:
        if is_unavailable(exc):
            return await on_database(request, exc)
        log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        problem = Problem("internal", "an internal error occurred; it was logged, and nothing was changed")
        return problem.response(_instance(request))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(sa_exc.DBAPIError, on_database)
    app.add_exception_handler(sa_exc.TimeoutError, on_database)
    app.add_exception_handler(DatabaseUnavailable, on_database)
    app.add_exception_handler(Exception, on_error)
