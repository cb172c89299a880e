"""The submission fast path: ``POST /v1/jobs`` served straight from ASGI, skipping FastAPI's routing and
dependency solving (about 150 µs a request on the 2-core target machine, a third of the budget at 1,500/s).

It runs exactly the code of the documented route (:func:`api.routers.jobs.submit`) with the same
authentication (:func:`api.deps.authenticate`) and the same problem documents, so the two cannot disagree;
``ZHISUAN_FAST_SUBMIT=0`` turns it off and lets FastAPI serve the route.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from api.db import is_unavailable
from api.deps import AppContext, authenticate
from api.problems import MEDIA_TYPE, Problem
from api.routers.jobs import submit

log = logging.getLogger("zhisuan.api")
PATH = "/v1/jobs"


class _Route:
    """What the metrics middleware reads from ``scope["route"]``."""

    path_format = PATH
    path = PATH


ROUTE = _Route()


class FastSubmit:
    def __init__(self, app: ASGIApp, ctx: AppContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = ROUTE
        authorization = key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"idempotency-key":
                key = value.decode("latin-1")
        try:
            principal = await authenticate(self.ctx, authorization, PATH)
            if key is not None and not 1 <= len(key) <= 200:
                raise Problem(
                    "validation-error",
                    "Idempotency-Key: must be 1 to 200 characters",
                    errors=[{"loc": ["header", "idempotency-key"], "msg": "1 to 200 characters", "type": "string"}],
                )
            chunks = []
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            status, body, headers = await submit(self.ctx, principal, b"".join(chunks), key)
            await _send(send, status, orjson.dumps(body), "application/json", headers)
        except Problem as raised:
            await _send(send, raised.status, orjson.dumps(raised.body(PATH)), MEDIA_TYPE, raised.headers)
        except HTTPException as err:  # the body limit (api.metrics.BodyTooLarge)
            problem = Problem("payload-too-large" if err.status_code == 413 else "malformed-request", str(err.detail))
            await _send(send, problem.status, orjson.dumps(problem.body(PATH)), MEDIA_TYPE, problem.headers)
        except Exception as err:
            if not is_unavailable(err):
                log.exception("internal error on POST %s", PATH)
                problem = Problem("internal", "an internal error occurred; it was logged, and nothing was changed")
            else:
                log.warning("database unavailable on POST %s: %s", PATH, err)
                retry = self.ctx.settings.retry_after_s
                problem = Problem(
                    "database-unavailable",
                    f"the database did not answer; nothing was changed, retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )
            await _send(send, problem.status, orjson.dumps(problem.body(PATH)), MEDIA_TYPE, problem.headers)


async def _send(send: Send, status: int, body: bytes, media_type: str, headers: dict[str, str]) -> None:
    raw: list[Any] = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
