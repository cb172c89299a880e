"""schemathesis against the real server's ``/openapi.json`` (issue 5: "0 server errors").

A uvicorn server on 127.0.0.1 over SQLite in a temporary directory, bootstrapped like every API test stack
(``seeds/policy.yaml``, the nodes of ``seeds/clusters/local.yaml``, users alice/boss/bob and a node token). Every
operation of the schema gets a bounded number of generated requests (:data:`MAX_EXAMPLES`, positive and negative
data, derandomized so CI always sends the same requests), and each request is sent twice: with the center
admin's token and with a tenant token (``boss@acme``, tenant-admin, who may manage its tenant's users and tokens);
``/v1/agent/*`` with the node token and the tenant token instead. Every answer must pass:

* ``not_a_server_error`` — no 5xx;
* ``status_code_conformance`` — the status is one the operation documents;
* ``response_schema_conformance`` — the body matches the documented schema of that status;
* ``content_type_conformance`` — the media type is the documented one (JSON, or problem+json for errors).

Nothing is excluded. Operations that could destroy the callers themselves are pointed at throwaway objects:

* ``DELETE /v1/tokens/{token_id}`` (an earlier version of this test revoked the admin's own token and every
  later operation answered 401): each example is called with **fresh throwaway tokens** of the center admin and
  of ``boss@acme``, and on every other example the path's ``token_id`` is replaced by the caller's own throwaway
  token id, so a real revocation (204) is exercised too; a generated id that happens to name one of the shared
  tokens is replaced the same way.
* Writes to tenants, queues and users change the shared policy (a quota of 0, a queue deleted...): that is
  allowed, it is what the test is for; later requests must still answer documented statuses.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from api_stack import SSL, Server, Stack, make_settings, provision
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from api.app import create_app
from api.db import make_engine
from api.settings import Settings

MAX_EXAMPLES = 15
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
_example = itertools.count()


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    url = f"sqlite:///{tmp / 'zhisuan.db'}"
    app = create_app(make_settings(url, tmp))
    engine: Engine = make_engine(url)
    with Server(app) as server:
        stack = Stack(server.url, url, app, engine)
        provision(stack)
        with stack.client("admin") as c:  # a job of acme's, so that job ids can be found
            assert c.post("/v1/jobs", json={"name": "seed", "entrypoint": "true", "queue": "acme"}).status_code == 201
            stack.tokens["ids"] = ",".join(t["id"] for t in c.get("/v1/tokens").json()["items"])
        yield stack
    engine.dispose()


def _served_schema() -> dict[str, Any]:
    """The OpenAPI document the server serves (built by the same app factory, no database touched)."""
    unused = Path(tempfile.gettempdir()) / "zhisuan-openapi-never-opened.db"  # the engine never connects
    app = create_app(Settings(database_url=f"sqlite:///{unused}", policy_file=None))
    document: dict[str, Any] = app.openapi()
    return document


# Loaded at collection time from the app factory: schemathesis' lazy ``from_fixture`` (which would read the
# running server's /openapi.json) fails on pytest 9 (it sets ``request.node._nodeid``, gone in pytest 9), so
# ``test_served_schema_is_the_tested_one`` checks that the running server serves exactly this document.
OPENAPI = _served_schema()
schema = schemathesis.openapi.from_dict(
    OPENAPI,
    config=schemathesis.Config.from_dict(
        {"generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"}}
    ),
)


def test_served_schema_is_the_tested_one(fuzz_stack: Stack) -> None:
    with httpx.Client(base_url=fuzz_stack.url, verify=SSL) as c:
        assert c.get("/openapi.json").json() == OPENAPI


def _throwaway(stack: Stack, user: str) -> tuple[str, str]:
    """A fresh token of ``user``: ``(secret, id)``."""
    with stack.client("admin") as c:
        r = c.post("/v1/tokens", json={"user": user, "name": "schemathesis throwaway"})
        assert r.status_code == 201, r.text
        body = r.json()
        return body["token"], body["id"]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_openapi_conformance(case: schemathesis.Case, fuzz_stack: Stack) -> None:
    path = case.operation.path
    protected = set(fuzz_stack.tokens["ids"].split(","))
    if path.startswith("/v1/agent/"):
        callers = [fuzz_stack.tokens["node"], fuzz_stack.tokens["boss"]]
    elif case.method.upper() == "DELETE" and path == "/v1/tokens/{token_id}":
        own = next(_example) % 2 == 0
        generated = (case.path_parameters or {}).get("token_id")
        for user in ("center", "boss@acme"):
            secret, token_id = _throwaway(fuzz_stack, user)
            if own or generated in protected:
                case.path_parameters = {**(case.path_parameters or {}), "token_id": token_id}
            _call(case, secret, fuzz_stack.url)
        return
    else:
        callers = [fuzz_stack.tokens["admin"], fuzz_stack.tokens["boss"]]
    for token in callers:
        _call(case, token, fuzz_stack.url)


def _call(case: schemathesis.Case, token: str, base_url: str) -> None:
    headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
    case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=30)


def test_shared_tokens_survive(fuzz_stack: Stack) -> None:
    """After the run, the admin and tenant tokens still work (nothing revoked them)."""
    for who in ("admin", "boss", "alice", "bob"):
        with httpx.Client(base_url=fuzz_stack.url, verify=SSL) as c:
            r = c.get("/v1/whoami", headers={"Authorization": f"Bearer {fuzz_stack.tokens[who]}"})
            assert r.status_code == 200, (who, r.text)
