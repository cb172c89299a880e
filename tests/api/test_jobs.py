"""Job lifecycle over HTTP: submit, idempotent replay, list with cursors, get, cancel, events, why, eta, logs."""

from __future__ import annotations

import time
import uuid
from typing import Any

from api_stack import JOB, Stack, assert_problem
from sqlalchemy import insert, update

from api.models import EtaOut, EventOut, JobOut, JobPage, LogChunk, WhyOut
from api.tables import JOB_LOGS, JOBS


def submit(stack: Stack, who: str = "alice", key: str | None = None, **spec: Any) -> dict[str, Any]:
    headers = {"Idempotency-Key": key} if key else {}
    with stack.client(who) as c:
        r = c.post("/v1/jobs", json={**JOB, **spec}, headers=headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    JobOut.model_validate(body)
    assert r.headers["location"] == f"/v1/jobs/{body['id']}"
    return body


def test_submit_get_and_defaults(stack: Stack) -> None:
    job = submit(stack, name="defaults")
    assert job["state"] == "pending" and job["tenant"] == "acme" and job["queue"] == "acme"
    assert job["user"] == "alice@acme" and job["priority"] == "training" and job["attempt"] == 0
    assert job["spec"]["entrypoint"] == "python train.py"
    with stack.client("alice") as c:
        got = c.get(f"/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.json() == job
    [row] = stack.rows(JOBS, JOBS.c.id == job["id"])
    assert row["version"] == 0 and row["state"] == "pending"


def test_submit_to_child_queue_and_inference_fraction(stack: Stack) -> None:
    job = submit(
        stack,
        name="chat",
        kind="inference",
        replicas=2,
        devices_per_worker=0.5,
        queue="acme-serving",
        models=["H100"],
        slo={"p99_latency_ms": 200},
    )
    assert job["queue"] == "acme-serving" and job["kind"] == "inference" and job["spec"]["workers"] == 2


def test_idempotent_replay(stack: Stack) -> None:
    key = f"key-{uuid.uuid4()}"
    first = submit(stack, key=key, name="idem")
    before = stack.counts()
    with stack.client("alice") as c:
        # Same body (keys in another order, an alias spelled out): the same job, 200, nothing written.
        again = c.post(
            "/v1/jobs", json={"entrypoint": "python train.py", **JOB, "name": "idem"}, headers={"Idempotency-Key": key}
        )
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first["id"]
        other = c.post("/v1/jobs", json={**JOB, "name": "idem", "workers": 2}, headers={"Idempotency-Key": key})
    body = assert_problem(other, 422, "idempotency-key-reused", key, "different body")
    assert body["job_id"] == first["id"]
    assert stack.counts() == before
    # The same key in another tenant is another key.
    with stack.client("bob") as c:
        r = c.post("/v1/jobs", json={**JOB, "name": "idem"}, headers={"Idempotency-Key": key})
    assert r.status_code == 201 and r.json()["id"] != first["id"]


def test_list_filters_and_cursor_pagination(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    made = [submit(stack, name=f"page-{tag}")["id"] for _ in range(23)]
    submit(stack, name=f"other-{tag}", kind="inference", devices_per_worker=0.25)
    seen: list[str] = []
    cursor = None
    with stack.client("alice") as c:
        while True:
            params: dict[str, Any] = {"name": f"page-{tag}", "limit": 5}
            if cursor:
                params["cursor"] = cursor
            r = c.get("/v1/jobs", params=params)
            assert r.status_code == 200, r.text
            page = JobPage.model_validate(r.json())
            seen += [j.id for j in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == sorted(made, reverse=True)  # newest first, no duplicates, no omissions
        r = c.get("/v1/jobs", params={"kind": "inference", "name": f"other-{tag}"})
        assert [j["kind"] for j in r.json()["items"]] == ["inference"]
        r = c.get("/v1/jobs", params={"state": "pending,running", "limit": 500})
        assert r.status_code == 200 and all(j["state"] in ("pending", "running") for j in r.json()["items"])
        r = c.get("/v1/jobs", params={"queue": "acme-research"})
        assert all(j["queue"] == "acme-research" for j in r.json()["items"])
        assert_problem(c.get("/v1/jobs", params={"state": "sleeping"}), 422, "validation-error", "sleeping")
        assert_problem(c.get("/v1/jobs", params={"limit": 0}), 422, "validation-error", "limit")
    with stack.client("bob") as c:  # another tenant sees none of them
        assert c.get("/v1/jobs", params={"name": f"page-{tag}"}).json()["items"] == []
    with stack.client("admin") as c:
        r = c.get("/v1/jobs", params={"name": f"page-{tag}", "tenant": "acme", "limit": 100})
        assert len(r.json()["items"]) == 23
        assert c.get("/v1/jobs", params={"name": f"page-{tag}", "tenant": "sme-vision"}).json()["items"] == []


def test_cancel_pending_running_and_finished(stack: Stack) -> None:
    job = submit(stack, name="to-cancel")
    with stack.client("alice") as c:
        r = c.post(f"/v1/jobs/{job['id']}/cancel")
        assert r.status_code == 202, r.text
        assert r.json()["state"] == "cancelled" and r.json()["finished_at"] is not None
        assert_problem(c.post(f"/v1/jobs/{job['id']}/cancel"), 409, "conflict", "already cancelled")
        events = c.get(f"/v1/jobs/{job['id']}/events").json()["items"]
        assert [e["kind"] for e in events] == ["submitted", "cancelled"]
        for e in events:
            EventOut.model_validate(e)
    [row] = stack.rows(JOBS, JOBS.c.id == job["id"])
    assert row["version"] == 1
    running = submit(stack, name="running")
    with stack.engine.begin() as conn:  # what the scheduler service would have written
        conn.execute(update(JOBS).where(JOBS.c.id == running["id"]).values(state="running", version=3))
    with stack.client("alice") as c:
        r = c.post(f"/v1/jobs/{running['id']}/cancel")
        assert r.status_code == 202 and r.json()["state"] == "cancelling"
        r = c.post(f"/v1/jobs/{running['id']}/cancel")  # again: still cancelling, no new version
        assert r.status_code == 202 and r.json()["state"] == "cancelling"
    [row] = stack.rows(JOBS, JOBS.c.id == running["id"])
    assert row["version"] == 4 and row["state"] == "cancelling"


def test_why_and_eta_read_what_the_service_wrote(stack: Stack) -> None:
    job = submit(stack, name="waiting")
    with stack.client("alice") as c:
        eta = c.get(f"/v1/jobs/{job['id']}/eta").json()
        assert eta["estimated_start"] is None and eta["computed_at"] is None
    reasons = [{"code": "no-capacity", "message": "local/H100 has 0 devices free", "pool": "local/H100", "detail": {}}]
    now = time.time()
    with stack.engine.begin() as conn:
        conn.execute(
            update(JOBS)
            .where(JOBS.c.id == job["id"])
            .values(reasons=reasons, estimated_start=now + 600, estimated_finish=now + 4200, updated_at=now)
        )
    with stack.client("alice") as c:
        why = WhyOut.model_validate(c.get(f"/v1/jobs/{job['id']}/why").json())
        assert why.state == "pending" and why.reasons[0].code == "no-capacity" and why.updated_at == now
        eta = EtaOut.model_validate(c.get(f"/v1/jobs/{job['id']}/eta").json())
        assert eta.estimated_start == now + 600 and eta.estimated_finish == now + 4200 and eta.computed_at == now
        assert c.get(f"/v1/jobs/{job['id']}").json()["reasons"] == reasons


def test_logs_by_offset(stack: Stack) -> None:
    job = submit(stack, name="logs")
    lines = ["epoch 1 loss 0.9\n", "epoch 2 loss 0.5 ✓\n", "epoch 3 loss 0.2\n"]
    offset = 0
    with stack.engine.begin() as conn:
        for text in lines:
            conn.execute(insert(JOB_LOGS).values(job_id=job["id"], attempt=0, rank=0, offset=offset, text=text))
            offset += len(text.encode())
        conn.execute(insert(JOB_LOGS).values(job_id=job["id"], attempt=0, rank=1, offset=0, text="rank one\n"))
    whole = "".join(lines)
    with stack.client("alice") as c:
        chunk = LogChunk.model_validate(c.get(f"/v1/jobs/{job['id']}/logs").json())
        assert chunk.text == whole and chunk.next_offset == len(whole.encode()) and not chunk.complete
        # Read in small pieces: the pieces add up to the log, and no character is cut in half.
        pieces, at = [], 0
        while True:
            part = c.get(f"/v1/jobs/{job['id']}/logs", params={"offset": at, "limit": 7}).json()
            if part["next_offset"] == at:
                break
            pieces.append(part["text"])
            at = part["next_offset"]
        assert "".join(pieces) == whole
        assert c.get(f"/v1/jobs/{job['id']}/logs", params={"rank": 1}).json()["text"] == "rank one\n"
    with stack.engine.begin() as conn:
        conn.execute(update(JOBS).where(JOBS.c.id == job["id"]).values(state="succeeded"))
    with stack.client("alice") as c:
        end = c.get(f"/v1/jobs/{job['id']}/logs", params={"offset": len(whole.encode())}).json()
        assert end["text"] == "" and end["complete"] is True
