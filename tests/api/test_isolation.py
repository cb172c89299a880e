"""The isolation matrix: every route of the app × {own tenant, other tenant, no token, bad token, node token}.

The routes come from the app's own route table, so a new endpoint that is not classified here fails the test
until someone decides who may call it. Across the whole matrix, nothing of tenant acme's (job ids, job names,
token ids) may appear in an answer to anyone but acme.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from api_stack import JOB, Stack
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

from agents.agent import AGENT_VERSION

PRINCIPALS = ("own", "other", "none", "bad", "node")
#: A served model: one quarter-device replica (the matrix only deploys it; no replica needs to run).
SERVICE = {
    "kind": "inference",
    "devices_per_worker": 0.25,
    "models": ["H100"],
    "priority": "production-inference",
    "entrypoint": "python -m http.server",
    "serving": {"max_replicas": 2},
}
BAD_TOKEN = "zs_0123456789abcdef_" + "x" * 43
PUBLIC = {p: 200 for p in PRINCIPALS}
Request = tuple[str, str, Any]


def routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """``(method, path)`` of every route, following included routers."""

    def walk(table: Any, prefix: str) -> Iterator[tuple[str, str]]:
        for route in table:
            included = getattr(route, "original_router", None)
            if included is not None:
                yield from walk(included.routes, prefix + route.include_context.prefix)
            elif isinstance(route, APIRoute | Route):
                for method in sorted((route.methods or set()) - {"HEAD"}):
                    yield method, prefix + route.path

    yield from walk(app.router.routes, "")


@dataclass
class World:
    """Resources of tenant acme (owned by alice) that the matrix reaches for."""

    stack: Stack
    marker: str
    job_id: str
    services: list[str] = field(default_factory=list)

    def new_job(self) -> str:
        with self.stack.client("alice") as c:
            r = c.post("/v1/jobs", json={**JOB, "name": self.marker})
        assert r.status_code == 201, r.text
        job_id: str = r.json()["id"]
        return job_id

    def service(self) -> str:
        """acme's service (deployed once), named with the marker."""
        if not self.services:
            with self.stack.client("alice") as c:
                r = c.post("/v1/services", json=self.service_spec())
            assert r.status_code == 201, r.text
            self.services.append(r.json()["name"])
        return self.services[0]

    def service_spec(self, name: str = "") -> dict[str, Any]:
        return {**SERVICE, "name": name or f"{self.marker}-svc", "queue": "acme"}

    def new_service(self) -> str:
        name = f"{self.marker}-{uuid.uuid4().hex[:6]}"
        with self.stack.client("alice") as c:
            assert c.post("/v1/services", json=self.service_spec(name)).status_code == 201
        return name

    def new_key_id(self) -> str:
        with self.stack.client("boss") as c:  # keys are for tenant admins
            r = c.post(f"/v1/services/{self.service()}/keys", json={"name": self.marker})
        assert r.status_code == 201, r.text
        key_id: str = r.json()["id"]
        return key_id

    def new_token_id(self) -> str:
        with self.stack.client("alice") as c:
            token_id: str = c.post("/v1/tokens", json={"name": self.marker}).json()["id"]
        return token_id


def _register_body() -> dict[str, Any]:
    return {
        "agent_version": AGENT_VERSION,
        "node": {
            "node_id": "iso-node",
            "hostname": "iso",
            "model": "H100",
            "devices": 1,
            "cpu_milli": 1000,
            "memory_mib": 1024,
            "site": "local",
        },
        "devices": [
            {
                "vendor": "nvidia",
                "index": 0,
                "uuid": "GPU-iso-0",
                "name": "NVIDIA H100 80GB HBM3",
                "model": "H100",
                "model_known": True,
            }
        ],
        "shims": [{"vendor": "nvidia", "state": "present"}],
        "sent_wall_time": 0.0,
    }


def _heartbeat_body() -> dict[str, Any]:
    return {
        "node_id": "iso-node",
        "agent_uptime_s": 1.0,
        "sent_wall_time": 0.0,
        "batches": [],
        "buffered_batches": 0,
        "dropped_batches_total": 0,
        "rejected_batches_total": 0,
    }


def expect(own: int, other: int, node: int = 403) -> dict[str, int]:
    return {"own": own, "other": other, "none": 401, "bad": 401, "node": node}


TENANT_ONLY = expect(200, 200)
ADMIN_ONLY = expect(403, 403)
#: Tenant admins only (alice and bob are tenant users: the role is refused before the service is looked up).
ADMIN_OF_TENANT = expect(403, 403)
#: The dashboard opens only with its session cookie (tests/ui checks the roles): an API token in the
#: Authorization header opens nothing there, whoever holds it — every principal is sent to the login page.
TO_LOGIN = {p: 303 for p in PRINCIPALS}


def _ui(
    method: str, path: str, expected: dict[str, int] = TO_LOGIN
) -> tuple[Callable[[World], Request], dict[str, int]]:
    url = path.replace("{job_id}", "j-iso").replace("{node_id}", "local-h100-00000").replace("{name}", "x.html")
    return (lambda w: (method, url, None)), expected


UI_PAGES = (
    "/ui/",
    "/ui/admin",
    "/ui/admin/billing",
    "/ui/admin/billing.csv",
    "/ui/admin/jobs",
    "/ui/admin/nodes",
    "/ui/admin/nodes/{node_id}",
    "/ui/admin/queues",
    "/ui/admin/reports",
    "/ui/admin/reports/file/{name}",
    "/ui/capacity",
    "/ui/events",
    "/ui/jobs",
    "/ui/jobs/{job_id}",
    "/ui/jobs/{job_id}/logs.json",
    "/ui/jobs/{job_id}/logs.txt",
    "/ui/services",
    "/ui/tokens",
    "/ui/usage",
    "/ui/usage.csv",
    "/ui/users",
)
UI_ACTIONS = (
    "/ui/admin/queues",
    "/ui/jobs/{job_id}/cancel",
    "/ui/logout",
    "/ui/tokens",
    "/ui/tokens/{token_id}/revoke",
    "/ui/users",
)
#: (method, path) -> (request builder, expected status per principal)
MATRIX: dict[tuple[str, str], tuple[Callable[[World], Request], dict[str, int]]] = {
    ("GET", "/healthz"): (lambda w: ("GET", "/healthz", None), PUBLIC),
    ("GET", "/readyz"): (lambda w: ("GET", "/readyz", None), PUBLIC),
    ("GET", "/metrics"): (lambda w: ("GET", "/metrics", None), PUBLIC),
    ("GET", "/openapi.json"): (lambda w: ("GET", "/openapi.json", None), PUBLIC),
    ("GET", "/docs"): (lambda w: ("GET", "/docs", None), PUBLIC),
    ("GET", "/docs/oauth2-redirect"): (lambda w: ("GET", "/docs/oauth2-redirect", None), PUBLIC),
    ("GET", "/redoc"): (lambda w: ("GET", "/redoc", None), PUBLIC),
    # Jobs: someone else's job is not found; a submission into acme's queue is an unknown queue to others.
    ("POST", "/v1/jobs"): (
        lambda w: ("POST", "/v1/jobs", {**JOB, "name": w.marker, "queue": "acme"}),
        expect(201, 422),
    ),
    ("GET", "/v1/jobs"): (lambda w: ("GET", "/v1/jobs", None), TENANT_ONLY),
    ("GET", "/v1/jobs/{job_id}"): (lambda w: ("GET", f"/v1/jobs/{w.job_id}", None), expect(200, 404)),
    ("POST", "/v1/jobs/{job_id}/cancel"): (
        lambda w: ("POST", f"/v1/jobs/{w.new_job()}/cancel", None),
        expect(202, 404),
    ),
    ("GET", "/v1/jobs/{job_id}/events"): (lambda w: ("GET", f"/v1/jobs/{w.job_id}/events", None), expect(200, 404)),
    ("GET", "/v1/jobs/{job_id}/logs"): (lambda w: ("GET", f"/v1/jobs/{w.job_id}/logs", None), expect(200, 404)),
    ("GET", "/v1/jobs/{job_id}/why"): (lambda w: ("GET", f"/v1/jobs/{w.job_id}/why", None), expect(200, 404)),
    ("GET", "/v1/jobs/{job_id}/eta"): (lambda w: ("GET", f"/v1/jobs/{w.job_id}/eta", None), expect(200, 404)),
    # Queues and tenants: own readable, others' not found, writes for center admins only.
    ("GET", "/v1/queues"): (lambda w: ("GET", "/v1/queues", None), TENANT_ONLY),
    ("GET", "/v1/queues/{name}"): (lambda w: ("GET", "/v1/queues/acme-research", None), expect(200, 404)),
    ("PUT", "/v1/queues/{name}"): (lambda w: ("PUT", "/v1/queues/acme-research", {"parent": "acme"}), ADMIN_ONLY),
    ("DELETE", "/v1/queues/{name}"): (lambda w: ("DELETE", "/v1/queues/acme-research", None), ADMIN_ONLY),
    ("GET", "/v1/tenants"): (lambda w: ("GET", "/v1/tenants", None), ADMIN_ONLY),
    ("POST", "/v1/tenants"): (lambda w: ("POST", "/v1/tenants", {"id": "iso-tenant"}), ADMIN_ONLY),
    ("GET", "/v1/tenants/{tenant_id}"): (lambda w: ("GET", "/v1/tenants/acme", None), expect(200, 404)),
    ("PATCH", "/v1/tenants/{tenant_id}"): (lambda w: ("PATCH", "/v1/tenants/acme", {"weight": 9}), ADMIN_ONLY),
    # Users and tokens.
    ("POST", "/v1/users"): (lambda w: ("POST", "/v1/users", {"name": "mallory", "tenant": "acme"}), ADMIN_ONLY),
    ("GET", "/v1/users"): (lambda w: ("GET", "/v1/users", None), ADMIN_ONLY),
    ("POST", "/v1/tokens"): (lambda w: ("POST", "/v1/tokens", {"user": "alice@acme"}), expect(201, 404)),
    ("GET", "/v1/tokens"): (lambda w: ("GET", "/v1/tokens", None), TENANT_ONLY),
    ("DELETE", "/v1/tokens/{token_id}"): (
        lambda w: ("DELETE", f"/v1/tokens/{w.new_token_id()}", None),
        expect(204, 404),
    ),
    ("POST", "/v1/nodes/tokens"): (lambda w: ("POST", "/v1/nodes/tokens", {"node_id": "x"}), ADMIN_ONLY),
    ("GET", "/v1/whoami"): (lambda w: ("GET", "/v1/whoami", None), TENANT_ONLY),
    ("GET", "/v1/usage"): (lambda w: ("GET", "/v1/usage", None), TENANT_ONLY),
    # Inventory: public to tenants (never names jobs); node tokens only speak the agent protocol.
    ("GET", "/v1/pools"): (lambda w: ("GET", "/v1/pools", None), TENANT_ONLY),
    ("GET", "/v1/nodes"): (lambda w: ("GET", "/v1/nodes", None), TENANT_ONLY),
    ("GET", "/v1/nodes/{node_id}"): (lambda w: ("GET", "/v1/nodes/local-h100-00000", None), TENANT_ONLY),
    ("POST", "/v1/agent/register"): (lambda w: ("POST", "/v1/agent/register", _register_body()), expect(403, 403, 200)),
    ("POST", "/v1/agent/heartbeat"): (
        lambda w: ("POST", "/v1/agent/heartbeat", _heartbeat_body()),
        expect(403, 403, 200),
    ),
    ("GET", "/v1/inventory"): (lambda w: ("GET", "/v1/inventory", None), TENANT_ONLY),
    # Services: as jobs — someone else's is not found, a deployment into acme's queue is an unknown queue.
    ("POST", "/v1/services"): (
        lambda w: ("POST", "/v1/services", w.service_spec(f"{w.marker}-new")),
        expect(201, 422),
    ),
    ("GET", "/v1/services"): (lambda w: ("GET", "/v1/services", None), TENANT_ONLY),
    ("GET", "/v1/services/{name}"): (lambda w: ("GET", f"/v1/services/{w.service()}", None), expect(200, 404)),
    ("DELETE", "/v1/services/{name}"): (
        lambda w: ("DELETE", f"/v1/services/{w.new_service()}", None),
        expect(202, 404),
    ),
    ("GET", "/v1/services/{name}/usage"): (
        lambda w: ("GET", f"/v1/services/{w.service()}/usage", None),
        expect(200, 404),
    ),
    ("GET", "/v1/services/{name}/keys"): (
        lambda w: ("GET", f"/v1/services/{w.service()}/keys", None),
        expect(200, 404),
    ),
    ("POST", "/v1/services/{name}/keys"): (
        lambda w: ("POST", f"/v1/services/{w.service()}/keys", {"name": w.marker}),
        ADMIN_OF_TENANT,
    ),
    ("DELETE", "/v1/services/{name}/keys/{key_id}"): (
        lambda w: ("DELETE", f"/v1/services/{w.service()}/keys/{w.new_key_id()}", None),
        ADMIN_OF_TENANT,
    ),
    # The dashboard: its login page, assets and session probe are public; everything else wants the cookie.
    ("GET", "/ui/login"): _ui("GET", "/ui/login", PUBLIC),
    ("POST", "/ui/login"): _ui("POST", "/ui/login", {p: 401 for p in PRINCIPALS}),
    ("GET", "/ui/static/{name:path}"): _ui("GET", "/ui/static/app.css", PUBLIC),
    ("GET", "/ui/session"): _ui("GET", "/ui/session", PUBLIC),
    **{("GET", page): _ui("GET", page) for page in UI_PAGES},
    **{("POST", action): _ui("POST", action.replace("{token_id}", "t-iso")) for action in UI_ACTIONS},
}


def test_every_route_is_classified(stack: Stack) -> None:
    found = set(routes(stack.app))
    assert found, "no routes found in the app"
    missing = sorted(found - set(MATRIX))
    assert not missing, f"routes missing from the isolation matrix (decide who may call them): {missing}"
    assert not sorted(set(MATRIX) - found), "the matrix names routes the app does not have"
    documented = {(m.upper(), p) for p, ops in stack.app.openapi()["paths"].items() for m in ops}
    assert documented <= found


def test_isolation_matrix(stack: Stack) -> None:
    marker = f"acme-secret-{uuid.uuid4().hex[:10]}"
    world = World(stack, marker, "")
    world.job_id = world.new_job()
    secrets = {marker, world.job_id}
    failures: list[str] = []
    tokens = {
        "own": stack.tokens["alice"],
        "other": stack.tokens["bob"],
        "none": None,
        "bad": BAD_TOKEN,
        "node": stack.tokens["node"],
    }
    for key, (build, expected) in sorted(MATRIX.items()):
        for principal in PRINCIPALS:
            method, url, body = build(world)
            token = tokens[principal]
            with stack.client(token=token) if token else stack.client() as c:
                r = c.request(method, url, json=body) if body is not None else c.request(method, url)
            if r.status_code != expected[principal]:
                failures.append(
                    f"{key} as {principal}: {r.status_code} (expected {expected[principal]}) {r.text[:200]}"
                )
            if r.status_code >= 400 and r.status_code != 500 and not url.startswith("/ui/"):
                assert r.headers["content-type"].startswith("application/problem+json"), (key, principal)
            if principal != "own":
                # Echoing what the caller sent (an id in its own URL) is not a leak; anything else of acme's is.
                sent = url + (json.dumps(body) if body is not None else "")
                leaked = [s for s in secrets if s in r.text and s not in sent]
                if leaked:
                    failures.append(f"{key} as {principal}: LEAK of {leaked}")
    assert not failures, "\n".join(failures)


def test_center_admin_sees_every_tenant(stack: Stack) -> None:
    with stack.client("alice") as c:
        job = c.post("/v1/jobs", json={**JOB, "name": "admin-visible"}).json()
    with stack.client("admin") as c:
        assert c.get(f"/v1/jobs/{job['id']}").status_code == 200
        assert c.get("/v1/tenants").status_code == 200
        assert c.get("/v1/tenants/sme-vision").status_code == 200
        r = c.post("/v1/jobs", json={**JOB, "name": "on-behalf", "queue": "sme-vision"})
        assert r.status_code == 201 and r.json()["tenant"] == "sme-vision"
    with stack.client("boss") as c:  # a tenant admin: its tenant only
        assert c.get(f"/v1/jobs/{job['id']}").status_code == 200
        assert c.get("/v1/tenants/sme-vision").status_code == 404
        users = c.get("/v1/users").json()["items"]
        assert {u["tenant"] for u in users} == {"acme"}
        r = c.post("/v1/users", json={"name": "eve", "tenant": "sme-vision"})
        assert r.status_code == 404


@pytest.mark.parametrize("who", ["bob", "node"])
def test_nothing_listed_across_tenants(stack: Stack, who: str) -> None:
    with stack.client("alice") as c:
        mine = c.post("/v1/jobs", json={**JOB, "name": "list-leak-check"}).json()["id"]
        tokens = [t["id"] for t in c.get("/v1/tokens").json()["items"]]
    if who == "node":
        return
    with stack.client(who) as c:
        for path in ("/v1/jobs?limit=500", "/v1/queues", "/v1/tokens", "/v1/usage", "/v1/nodes", "/v1/pools"):
            text = c.get(path).text
            assert mine not in text and not any(t in text for t in tokens), path
