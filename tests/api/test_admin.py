"""Center and tenant administration: tenants, users, tokens, queue quotas (new policy versions), usage."""

from __future__ import annotations

import time

from api_stack import JOB, Stack, assert_problem
from sqlalchemy import insert, update

from api.models import QueueOut, TenantOut, TokenCreated, TokenOut, UsageOut, UserOut, WhoAmI
from api.tables import JOBS, LEDGER, POLICY_VERSIONS


def policy_versions(stack: Stack) -> int:
    return len(stack.rows(POLICY_VERSIONS))


def test_tenant_user_token_lifecycle(stack: Stack) -> None:
    with stack.client("admin") as c:
        r = c.post("/v1/tenants", json={"id": "lab-x", "type": "university", "tier": "basic", "max_active_jobs": 2})
        assert r.status_code == 201, r.text
        tenant = TenantOut.model_validate(r.json())
        assert tenant.max_active_jobs == 2 and tenant.queues == []
        assert_problem(c.post("/v1/tenants", json={"id": "lab-x"}), 409, "conflict", "already exists")
        assert_problem(c.post("/v1/tenants", json={"id": "Bad Name!"}), 422, "validation-error", "id")
        r = c.put("/v1/queues/lab-x", json={"quota": {"ncu": {"limit": 8}}})
        assert r.status_code == 200, r.text
        assert QueueOut.model_validate(r.json()).tenant == "lab-x"
        r = c.post("/v1/users", json={"name": "prof", "tenant": "lab-x", "role": "tenant-admin"})
        assert UserOut.model_validate(r.json()).id == "prof@lab-x"
        assert_problem(c.post("/v1/users", json={"name": "prof", "tenant": "lab-x"}), 409, "conflict", "prof@lab-x")
        assert_problem(c.post("/v1/users", json={"name": "x", "tenant": "nowhere"}), 422, "validation-error", "nowhere")
        created = TokenCreated.model_validate(c.post("/v1/tokens", json={"user": "prof@lab-x", "name": "p"}).json())
        assert created.token.startswith(f"zs_{created.id}_") and created.role == "tenant-admin"
    with stack.client(token=created.token) as c:
        me = WhoAmI.model_validate(c.get("/v1/whoami").json())
        assert (me.user, me.tenant, me.role) == ("prof@lab-x", "lab-x", "tenant-admin")
        student = c.post("/v1/users", json={"name": "student"}).json()  # tenant defaults to the admin's own
        assert student["tenant"] == "lab-x" and student["role"] == "tenant-user"
        assert_problem(c.post("/v1/users", json={"name": "root", "role": "center-admin"}), 403, "forbidden")
        student_token = c.post("/v1/tokens", json={"user": "student@lab-x"}).json()["token"]
        listed = [TokenOut.model_validate(t) for t in c.get("/v1/tokens").json()["items"]]
        assert {t.tenant for t in listed} == {"lab-x"} and "token" not in c.get("/v1/tokens").text
        assert c.get("/v1/tenants/lab-x").json()["max_active_jobs"] == 2
    # The tenant's cap on active jobs.
    with stack.client(token=student_token) as c:
        assert c.post("/v1/jobs", json=JOB).status_code == 201
        assert c.post("/v1/jobs", json=JOB).status_code == 201
        before = stack.counts()
        assert_problem(c.post("/v1/jobs", json=JOB), 409, "quota-exceeded", "limit is 2")
        assert stack.counts() == before
        first = c.get("/v1/jobs").json()["items"][-1]["id"]
        assert c.post(f"/v1/jobs/{first}/cancel").status_code == 202
        assert c.post("/v1/jobs", json=JOB).status_code == 201  # a finished job frees a slot
    with stack.client("admin") as c:
        r = c.patch("/v1/tenants/lab-x", json={"max_active_jobs": None, "weight": 3})
        assert r.json()["max_active_jobs"] is None and r.json()["weight"] == 3
    with stack.client(token=student_token) as c:
        assert c.post("/v1/jobs", json=JOB).status_code == 201


def test_queue_quota_writes(stack: Stack) -> None:
    versions = policy_versions(stack)
    with stack.client("admin") as c:
        r = c.put(
            "/v1/queues/acme-research",
            json={"parent": "acme", "quota": {"H100": {"guarantee": 4, "deserved": 12}}},
        )
        assert r.status_code == 200, r.text
        queue = QueueOut.model_validate(r.json())
        assert queue.quota["H100"].deserved == 12 and queue.tenant == "acme"
        assert policy_versions(stack) == versions + 1
        in_force = queue.policy_version
        # Invalid: a child guarantee above the parent's limit, an unknown flavor, a cycle, deserved < guarantee.
        before = stack.counts()
        bad = [
            ({"parent": "acme", "quota": {"H100": {"guarantee": 100}}}, "above the parent"),
            ({"parent": "acme", "quota": {"TPUv9": {"limit": 1}}}, "unknown flavor"),
            ({"parent": "acme-research"}, "cycle"),
            ({"parent": "acme", "quota": {"H100": {"guarantee": 8, "deserved": 2}}}, "below guarantee"),
            ({"parent": "nope"}, "unknown queue"),
        ]
        for body, words in bad:
            assert_problem(c.put("/v1/queues/acme-research", json=body), 422, "validation-error", words)
        assert stack.counts() == before
        assert c.get("/v1/queues/acme-research").json()["policy_version"] == in_force
        assert c.get("/v1/queues/acme-research").json()["quota"]["H100"]["deserved"] == 12
        # A new child queue, usable at once by its tenant.
        assert c.put("/v1/queues/acme-batch", json={"parent": "acme"}).status_code == 200
    with stack.client("alice") as c:
        job = c.post("/v1/jobs", json={**JOB, "queue": "acme-batch"})
        assert job.status_code == 201
        names = [q["name"] for q in c.get("/v1/queues").json()["items"]]
        assert "acme-batch" in names and "sme-vision" not in names
    with stack.client("admin") as c:
        assert_problem(c.delete("/v1/queues/acme-batch"), 409, "conflict", "active jobs")
        assert c.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code == 202
        assert c.delete("/v1/queues/acme-batch").status_code == 204
        assert_problem(c.delete("/v1/queues/acme"), 409, "conflict", "child queues")
        assert_problem(c.get("/v1/queues/acme-batch"), 404, "not-found")
        assert_problem(c.put("/v1/queues/new-top", json={}), 422, "validation-error", "unknown tenant")


def test_usage_from_the_ledger(stack: Stack) -> None:
    now = time.time()
    with stack.client("admin") as c:
        c.post("/v1/tenants", json={"id": "metered", "tier": "standard"})
        c.put("/v1/queues/metered", json={"quota": {}})
        user = c.post("/v1/users", json={"name": "m", "tenant": "metered"}).json()["id"]
        token = c.post("/v1/tokens", json={"user": user}).json()["token"]
    with stack.client(token=token) as c:
        running = c.post("/v1/jobs", json={**JOB, "job_class": "llm-pretrain"}).json()["id"]
        done = c.post("/v1/jobs", json=JOB).json()["id"]
    common = {
        "tenant": "metered",
        "queue": "metered",
        "user": user,
        "pool": "local/H100",
        "model": "H100",
        "tier": "standard",
        "price_per_ncu_hour": 12.0,
        "domestic": False,
    }
    with stack.engine.begin() as conn:
        conn.execute(update(JOBS).where(JOBS.c.id == running).values(state="running"))
        conn.execute(update(JOBS).where(JOBS.c.id == done).values(state="succeeded"))
        conn.execute(insert(LEDGER).values(kind="start", job_id=done, devices=2, at=now - 7200, **common))
        conn.execute(
            insert(LEDGER).values(
                kind="stop",
                job_id=done,
                devices=2,
                at=now - 3600,
                seconds=3600,
                ncu_hours=6.0,
                charge=72.0,
                energy_kwh=1.4,
                cause="finished",
                **common,
            )
        )
        conn.execute(insert(LEDGER).values(kind="start", job_id=running, devices=1, at=now - 1800, **common))
    with stack.client(token=token) as c:
        usage = UsageOut.model_validate(c.get("/v1/usage", params={"start": now - 86400, "end": now + 60}).json())
        assert usage.tenant == "metered" and usage.currency == "CNY"
        relative = stack.ctx.throughput.relative("H100", "llm-pretrain")
        assert abs(usage.ncu_hours - (6.0 + 0.5 * relative)) < 0.01
        assert abs(usage.charge - (72.0 + 0.5 * relative * 12.0)) < 0.1
        assert abs(usage.device_hours - 2.5) < 0.01 and usage.by_model["H100"].ncu_hours == usage.ncu_hours
        assert usage.free_ncu_hours == 0 and usage.billable_charge == usage.charge and usage.domestic_share == 0
        # Half of the finished run lies in this window.
        half = c.get("/v1/usage", params={"start": now - 5400, "end": now - 1900}).json()
        assert abs(half["ncu_hours"] - 3.0) < 0.01
        assert_problem(c.get("/v1/usage", params={"start": now, "end": now - 1}), 422, "validation-error", "after")
        assert_problem(c.get("/v1/usage", params={"tenant": "acme"}), 404, "not-found")
        month = c.get("/v1/usage").json()
        assert month["start"] < now < month["end"]
    with stack.client("admin") as c:
        assert c.get("/v1/usage", params={"tenant": "metered", "start": now - 86400}).json()["ncu_hours"] > 6
    with stack.client("alice") as c:  # a basic-tier tenant's free hours: acme is premium, so none
        assert c.get("/v1/usage").json()["free_ncu_hours"] == 0
