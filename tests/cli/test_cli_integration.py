"""The CLI and the SDK against a real server (uvicorn on 127.0.0.1, SQLite): every command, output and exit code."""

from __future__ import annotations

import json
import stat
import threading
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_server import SEEDS, Server, finish_job, set_forecast, start_job, write_log
from dropping_proxy import DroppingProxy
from sqlalchemy import func, select
from typer.testing import CliRunner, Result

from api.cli import app
from api.client import ApiError
from api.models import JobOut
from api.tables import JOBS
from scheduler.spec import load_spec

SPECS = Path(__file__).resolve().parent / "specs"
runner = CliRunner()


def zs(server: Server, *args: str, token: str | None = None) -> Result:
    """Run ``zhisuan ARGS`` against the test server as alice (tenant-admin of acme) unless told otherwise."""
    auth = ["--url", server.url, "--token", server.tenant_token if token is None else token]
    return runner.invoke(app, [*args, *auth])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def spec_file(tmp_path: Path, **fields: Any) -> Path:
    """A small job spec with a unique name (the server is shared by all tests)."""
    body = {"name": f"t-{uuid.uuid4().hex[:10]}", "entrypoint": "python train.py", "job_class": "cv-train"}
    body.update(fields)
    path = tmp_path / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def submitted(server: Server, tmp_path: Path, **fields: Any) -> Any:
    return as_json(zs(server, "submit", str(spec_file(tmp_path, **fields)), "-o", "json"))


def count_jobs(server: Server, name: str) -> int:
    with server.engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(JOBS.c.name == name)).scalar_one())


class Later(threading.Thread):
    """Run ``action`` after ``delay`` seconds in a thread; ``join()`` re-raises what it raised."""

    def __init__(self, delay: float, action: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.delay, self.action = delay, action
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            time.sleep(self.delay)
            self.action()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float | None = 30) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def later(delay: float, action: Callable[[], None]) -> Later:
    return Later(delay, action)


# ------------------------------------------------------------------------------------------------- login


def test_login_verifies_and_stores_the_profile_0600(server: Server, _isolated_config: Path) -> None:
    result = ok(runner.invoke(app, ["login", "--url", server.url, "--token", server.tenant_token]))
    assert "alice@acme" in result.stdout and "tenant-admin" in result.stdout
    path = _isolated_config / "zhisuan" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tomllib.loads(path.read_text())["profiles"]["default"] == {"url": server.url, "token": server.tenant_token}
    # Later commands need no flags.
    me = as_json(runner.invoke(app, ["whoami", "-o", "json"]))
    assert me == {"user": "alice@acme", "tenant": "acme", "role": "tenant-admin", "token_id": me["token_id"]}
    # A second profile keeps the first; --profile and ZHISUAN_PROFILE select it.
    ok(runner.invoke(app, ["login", "--url", server.url, "--token", server.admin_token, "--profile", "ops"]))
    assert as_json(runner.invoke(app, ["whoami", "-o", "json", "--profile", "ops"]))["role"] == "center-admin"
    assert as_json(runner.invoke(app, ["whoami", "-o", "json"], env={"ZHISUAN_PROFILE": "ops"}))["user"] == "center"
    assert set(tomllib.loads(path.read_text())["profiles"]) == {"default", "ops"}
    ok(runner.invoke(app, ["logout", "--profile", "ops"]))
    assert set(tomllib.loads(path.read_text())["profiles"]) == {"default"}


def test_login_with_a_bad_token_stores_nothing(server: Server, _isolated_config: Path) -> None:
    result = runner.invoke(app, ["login", "--url", server.url, "--token", "zs_0123456789abcdef_nope"])
    assert result.exit_code == 1
    assert "401" in result.stderr and "zhisuan login" in result.stderr
    assert not (_isolated_config / "zhisuan" / "config.toml").exists()


def test_env_vars_replace_the_config_file(server: Server) -> None:
    env = {"ZHISUAN_URL": server.url, "ZHISUAN_TOKEN": server.user_token}
    assert as_json(runner.invoke(app, ["whoami", "-o", "json"], env=env))["user"] == "bob@acme"


# ------------------------------------------------------------------------------------------------- jobs


@pytest.mark.parametrize("name", ["resnet-ddp.yaml", "chat-svc.json"])
def test_submit_our_specs_and_read_them_back(server: Server, name: str) -> None:
    path = SPECS / name
    job = as_json(zs(server, "submit", str(path), "-o", "json"))
    assert job["state"] == "pending" and job["tenant"] == "acme" and job["queue"] == "acme"
    assert job["user"] == "alice@acme"
    assert job["spec"] == load_spec(path).model_dump(mode="json")
    # status -o json is the same document, key for key (the API's keys).
    again = as_json(zs(server, "status", job["id"], "-o", "json"))
    assert again.keys() == job.keys() and again["spec"] == job["spec"] and again["id"] == job["id"]
    assert yaml.safe_load(ok(zs(server, "status", job["id"], "-o", "yaml")).stdout)["id"] == job["id"]
    # JobOut parses what the CLI printed.
    assert JobOut.from_api(again).spec.name == load_spec(path).name


@pytest.mark.parametrize("path", sorted(p for p in (SEEDS / "examples").glob("*.yaml") if p.name != "demo-jobs.yaml"))
def test_submit_the_seed_examples(server: Server, path: Path) -> None:
    job = as_json(zs(server, "submit", str(path), "-o", "json", "--queue", "acme-research"))
    assert job["queue"] == "acme-research" and job["name"] == load_spec(path).name


def test_submit_table_output_and_queue_option(server: Server, tmp_path: Path) -> None:
    path = spec_file(tmp_path)
    result = ok(zs(server, "submit", str(path), "--queue", "acme-serving"))
    assert "Submitted j" in result.stdout and "acme-serving" in result.stdout and "pending" in result.stdout


def test_list_filters_and_json_round_trip(server: Server, tmp_path: Path) -> None:
    first = submitted(server, tmp_path, name="listed-a")
    second = submitted(server, tmp_path, name="listed-b", kind="inference", devices_per_worker=0.5)
    jobs = as_json(zs(server, "list", "-o", "json", "--limit", "500"))
    ids = [j["id"] for j in jobs]
    assert ids.index(second["id"]) < ids.index(first["id"])  # newest first
    assert [j["id"] for j in as_json(zs(server, "list", "--name", "listed-b", "-o", "json"))] == [second["id"]]
    inference = as_json(zs(server, "list", "--kind", "inference", "-o", "json", "--limit", "500"))
    assert second["id"] in [j["id"] for j in inference] and first["id"] not in [j["id"] for j in inference]
    assert len(as_json(zs(server, "list", "--limit", "1", "-o", "json"))) == 1
    table = ok(zs(server, "list", "--state", "pending", "--queue", "acme"))
    assert first["id"] in table.stdout and "listed-a" in table.stdout


def test_list_all_tenants_is_for_center_admins(server: Server, tmp_path: Path) -> None:
    submitted(server, tmp_path)
    result = zs(server, "list", "--all-tenants")
    assert result.exit_code == 2 and "center admins" in result.stderr
    table = ok(zs(server, "list", "--all-tenants", "--limit", "5", token=server.admin_token))
    assert "tenant" in table.stdout and "acme" in table.stdout


def test_list_follows_cursors_past_one_page(server: Server) -> None:
    with server.client() as client:
        for _ in range(3):
            client.submit({"name": "paged", "entrypoint": "x"})
        pages = list(client.list_jobs(name="paged", page_size=1))
    assert len(pages) == 3 and len({j.id for j in pages}) == 3


def test_status_shows_placement_reasons_and_events(server: Server, tmp_path: Path) -> None:
    job = submitted(server, tmp_path)
    reason = {"code": "quota", "message": "queue acme is at its H100 limit", "pool": "bj1/H100", "detail": {}}
    set_forecast(server.engine, job["id"], [reason], time.time() + 720, time.time() + 4000)
    pending = ok(zs(server, "status", job["id"])).stdout
    assert "queue acme is at its H100 limit" in pending and "starts" in pending and "submitted" in pending
    start_job(server.engine, job["id"])
    running = ok(zs(server, "status", job["id"])).stdout
    assert "running" in running and "H100 in bj1/H100" in running and "bj1-h100-0" in running
    assert "started" in running  # the events table


def test_status_by_name_finds_the_newest_job(server: Server, tmp_path: Path) -> None:
    name = f"named-{uuid.uuid4().hex[:6]}"
    submitted(server, tmp_path, name=name)
    newest = submitted(server, tmp_path, name=name)
    assert as_json(zs(server, "status", name, "-o", "json"))["id"] == newest["id"]


def test_why_and_eta_in_human_words(server: Server, tmp_path: Path) -> None:
    job = submitted(server, tmp_path)
    fresh = ok(zs(server, "why", job["id"])).stdout
    assert "has not given a reason yet" in fresh
    assert "no estimate yet" in ok(zs(server, "eta", job["id"])).stdout
    reasons = [
        {"code": "insufficient-devices", "message": "only 3 free H100 in bj1/H100", "pool": "bj1/H100", "detail": {}},
        {"code": "quota", "message": "queue acme is at its limit", "pool": None, "detail": {"flavor": "H100"}},
    ]
    start = time.time() + 12 * 60 + 20
    set_forecast(server.engine, job["id"], reasons, start, start + 3600)
    why = ok(zs(server, "why", job["id"])).stdout
    assert (
        "insufficient-devices" in why and "only 3 free H100 in bj1/H100" in why and "queue acme is at its limit" in why
    )
    assert as_json(zs(server, "why", job["id"], "-o", "json"))["reasons"] == reasons
    eta = ok(zs(server, "eta", job["id"])).stdout
    # The band the forecasts' measured errors allow (scheduler.eta.EtaBand), then the most likely start.
    assert "starts between " in eta and "most likely in 12 min (" in eta and "UTC)" in eta, eta
    assert "finishes in 1 h 12 min" in eta, eta
    data = as_json(zs(server, "eta", job["id"], "-o", "json"))
    assert data["estimated_start"] == pytest.approx(start) and data["state"] == "pending"
    assert data["start_earliest"] < start < data["start_latest"], data
    start_job(server.engine, job["id"])
    assert "is running: it is not waiting" in ok(zs(server, "why", job["id"])).stdout
    assert "running; finishes in 10 min" in ok(zs(server, "eta", job["id"])).stdout


def test_cancel_pending_then_again_is_a_conflict(server: Server, tmp_path: Path) -> None:
    job = submitted(server, tmp_path)
    assert as_json(zs(server, "cancel", job["id"], "-o", "json"))["state"] == "cancelled"
    again = zs(server, "cancel", job["id"])
    assert again.exit_code == 1 and "already cancelled" in again.stderr and "409" in again.stderr


def test_cancel_running_goes_through_cancelling(server: Server, tmp_path: Path) -> None:
    job = submitted(server, tmp_path)
    start_job(server.engine, job["id"])
    assert "cancelling" in ok(zs(server, "cancel", job["id"])).stdout


def test_logs_and_follow_until_the_job_ends(server: Server, tmp_path: Path) -> None:
    job = submitted(server, tmp_path)
    start_job(server.engine, job["id"])
    write_log(server.engine, job["id"], "epoch 1 loss 2.31\n")
    write_log(server.engine, job["id"], "epoch 2 loss 1.87 智算\n")
    write_log(server.engine, job["id"], "rank 1 here\n", rank=1)
    assert ok(zs(server, "logs", job["id"])).stdout == "epoch 1 loss 2.31\nepoch 2 loss 1.87 智算\n"
    assert ok(zs(server, "logs", job["id"], "--rank", "1")).stdout == "rank 1 here\n"
    chunk = as_json(zs(server, "logs", job["id"], "-o", "json"))
    assert chunk["text"] == "epoch 1 loss 2.31\nepoch 2 loss 1.87 智算\n" and chunk["offset"] == 0
    assert chunk["next_offset"] == len(chunk["text"].encode()) and chunk["complete"] is False
    assert zs(server, "logs", job["id"], "-f", "-o", "json").exit_code == 2

    def finish() -> None:
        write_log(server.engine, job["id"], "epoch 3 loss 1.02\n")
        time.sleep(0.3)
        write_log(server.engine, job["id"], "done\n")
        finish_job(server.engine, job["id"])

    writer = later(0.5, finish)
    started = time.monotonic()
    result = ok(zs(server, "logs", job["id"], "-f", "--poll", "0.1"))
    writer.join()
    assert result.stdout == "epoch 1 loss 2.31\nepoch 2 loss 1.87 智算\nepoch 3 loss 1.02\ndone\n"
    assert time.monotonic() - started < 15  # it stopped by itself when the job ended


def test_follow_logs_of_a_finished_job_returns_at_once(server: Server, tmp_path: Path) -> None:
    job = submitted(server, tmp_path)
    start_job(server.engine, job["id"])
    write_log(server.engine, job["id"], "only line\n")
    finish_job(server.engine, job["id"], "failed", exit_code=3, message="worker 0 exited with 3")
    with server.client() as client:
        assert list(client.follow_logs(job["id"])) == ["only line\n"]


def test_submit_wait_until_running(server: Server, tmp_path: Path) -> None:
    path = spec_file(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]

    def start_when_submitted() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with server.engine.connect() as conn:
                found = conn.execute(select(JOBS.c.id).where(JOBS.c.name == name)).scalar()
            if found:
                time.sleep(0.3)
                start_job(server.engine, found)
                return
            time.sleep(0.05)

    starter = later(0, start_when_submitted)
    result = ok(zs(server, "submit", str(path), "--wait", "--until", "running"))
    starter.join()
    assert "Submitted j" in result.stderr and "running on H100" in result.stderr


def test_submit_wait_exits_with_the_job_exit_code_when_it_fails(server: Server, tmp_path: Path) -> None:
    path = spec_file(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]

    def fail_when_submitted() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with server.engine.connect() as conn:
                found = conn.execute(select(JOBS.c.id).where(JOBS.c.name == name)).scalar()
            if found:
                finish_job(server.engine, found, "failed", exit_code=2, message="image pull failed")
                return
            time.sleep(0.05)

    thread = later(0, fail_when_submitted)
    result = zs(server, "submit", str(path), "--wait", "-o", "json")
    thread.join()
    assert result.exit_code == 2  # the job's own exit code, as sbatch --wait does
    assert json.loads(result.stdout)["state"] == "failed"


def test_submit_wait_prints_rank_0_log_until_the_end(server: Server, tmp_path: Path) -> None:
    path = spec_file(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]

    def run_when_submitted() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with server.engine.connect() as conn:
                found = conn.execute(select(JOBS.c.id).where(JOBS.c.name == name)).scalar()
            if found:
                start_job(server.engine, found)
                write_log(server.engine, found, "epoch 1 loss 0.9\n")
                time.sleep(0.5)
                write_log(server.engine, found, "epoch 2 loss 0.4\n")
                write_log(server.engine, found, "not rank 0\n", rank=1)
                finish_job(server.engine, found, "succeeded")
                return
            time.sleep(0.05)

    thread = later(0, run_when_submitted)
    result = ok(zs(server, "submit", str(path), "--wait"))
    thread.join()
    assert result.stdout == "epoch 1 loss 0.9\nepoch 2 loss 0.4\n"
    assert "succeeded" in result.stderr.splitlines()[-1]


def test_submit_wait_timeout_exits_1(server: Server, tmp_path: Path) -> None:
    result = zs(server, "submit", str(spec_file(tmp_path)), "--wait", "--timeout", "0.5")
    assert result.exit_code == 1 and "still pending" in result.stderr and "zhisuan why" in result.stderr


# --------------------------------------------------------------------------------------------- failures


def test_unknown_job_exits_1_with_the_problem(server: Server) -> None:
    result = zs(server, "status", "j0000000000000000000")
    assert result.exit_code == 1
    assert "not found" in result.stderr.lower() and "404" in result.stderr
    assert result.stdout == ""
    # Another tenant's job is just as unknown (404, never 403).
    with server.client(server.admin_token) as admin:
        other = admin.submit({"name": "gov-job", "entrypoint": "x", "queue": "gov-bureau", "models": ["Ascend910B"]})
    hidden = zs(server, "status", other.id)
    assert hidden.exit_code == 1 and "404" in hidden.stderr
    assert zs(server, "cancel", "no-such-name").exit_code == 1


def test_bad_spec_is_rejected_locally_and_nothing_is_written(server: Server, tmp_path: Path) -> None:
    path = spec_file(tmp_path, workers=-2)
    name = yaml.safe_load(path.read_text())["name"]
    result = zs(server, "submit", str(path))
    assert result.exit_code == 2 and "workers" in result.stderr
    assert count_jobs(server, name) == 0


def test_every_problem_of_a_job_file_is_reported_at_once(server: Server, tmp_path: Path) -> None:
    path = spec_file(tmp_path, workers=-2, cpus_per_worker="lots", colour="blue")
    result = zs(server, "submit", str(path))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 3, result.stderr
    assert [e.split(": ")[2] for e in errors] == ["workers", "cpus_per_worker", "colour"]
    assert "unknown field" in errors[2]


def test_spec_the_server_rejects_exits_1_with_what_to_fix(server: Server, tmp_path: Path) -> None:
    result = zs(server, "submit", str(spec_file(tmp_path, queue="no-such-queue")))
    assert result.exit_code == 1 and "not one of your queues" in result.stderr and "422" in result.stderr
    huge = zs(server, "submit", str(spec_file(tmp_path, workers=400, devices_per_worker=8, models=["H100"])))
    assert huge.exit_code == 1 and "No pool" in huge.stderr and "has 64 in all" in huge.stderr
    assert huge.stderr.lower().count("no pool") == 1  # the reason, not the title twice


def test_tenant_users_cannot_administer(server: Server) -> None:
    result = zs(server, "admin", "tenant", "list", token=server.user_token)
    assert result.exit_code == 1 and "403" in result.stderr


# ------------------------------------------------------------------------------------------ idempotency


def test_a_dropped_connection_is_retried_with_the_same_key_and_creates_one_job(server: Server) -> None:
    name = f"dropped-{uuid.uuid4().hex[:6]}"
    with DroppingProxy(server.port, drop=1) as proxy, server.client(url=proxy.url) as client:
        job = client.submit({"name": name, "entrypoint": "x"})
        assert proxy.dropped == 1 and proxy.connections == 2  # the first answer was lost, the retry got one
    assert count_jobs(server, name) == 1
    with server.client() as client:
        assert [j.id for j in client.list_jobs(name=name)] == [job.id]


def test_cli_submit_through_a_dropping_connection_creates_one_job(server: Server, tmp_path: Path) -> None:
    path = spec_file(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]
    with DroppingProxy(server.port, drop=2) as proxy:
        result = runner.invoke(
            app, ["submit", str(path), "-o", "json", "--url", proxy.url, "--token", server.tenant_token]
        )
        assert proxy.dropped == 2
    job = json.loads(ok(result).stdout)
    assert count_jobs(server, name) == 1 and job["name"] == name


def test_same_idempotency_key_same_job_different_body_refused(server: Server, tmp_path: Path) -> None:
    key = uuid.uuid4().hex
    path = spec_file(tmp_path)
    first = as_json(zs(server, "submit", str(path), "--idempotency-key", key, "-o", "json"))
    second = as_json(zs(server, "submit", str(path), "--idempotency-key", key, "-o", "json"))
    assert first["id"] == second["id"]
    other = zs(server, "submit", str(spec_file(tmp_path)), "--idempotency-key", key)
    assert other.exit_code == 1 and "Idempotency-Key" in other.stderr and first["id"] in other.stderr


# ------------------------------------------------------------------------------ queues, usage, inventory


def test_queues_usage_nodes_and_pools(server: Server, tmp_path: Path) -> None:
    queues = as_json(zs(server, "queues", "-o", "json"))
    assert {q["name"] for q in queues} == {"acme", "acme-research", "acme-serving"}
    table = ok(zs(server, "queues")).stdout
    assert "acme-research" in table and "deserved 16" in table
    month = time.strftime("%Y-%m", time.gmtime())
    usage = as_json(zs(server, "usage", "--month", month, "-o", "json"))
    assert usage["tenant"] == "acme" and usage["end"] > usage["start"] and "by_model" in usage
    assert "NCU-hours" in ok(zs(server, "usage")).stdout
    pools = as_json(zs(server, "nodes", "--pools", "-o", "json"))
    assert {p["model"] for p in pools} >= {"H100", "Ascend910B"}
    assert "Ascend910B" in ok(zs(server, "nodes", "--pools")).stdout
    nodes = as_json(zs(server, "nodes", "-o", "json"))
    assert len(nodes) == 56
    one = as_json(zs(server, "nodes", nodes[0]["id"], "-o", "json"))
    assert one["id"] == nodes[0]["id"]
    assert nodes[0]["id"] in ok(zs(server, "nodes")).stdout


# ------------------------------------------------------------------------------------------------- admin


def test_admin_tenant_user_token_lifecycle(server: Server) -> None:
    admin = server.admin_token
    tenant = f"lab{uuid.uuid4().hex[:6]}"
    created = as_json(
        zs(
            server,
            "admin",
            "tenant",
            "create",
            tenant,
            "--type",
            "university",
            "--tier",
            "basic",
            "--max-active-jobs",
            "5",
            "-o",
            "json",
            token=admin,
        )
    )
    assert created["id"] == tenant and created["type"] == "university" and created["max_active_jobs"] == 5
    assert tenant in ok(zs(server, "admin", "tenant", "list", token=admin)).stdout
    assert as_json(zs(server, "admin", "tenant", "show", tenant, "-o", "json", token=admin))["tier"] == "basic"
    dup = zs(server, "admin", "tenant", "create", tenant, token=admin)
    assert dup.exit_code == 1 and "already exists" in dup.stderr

    ok(zs(server, "admin", "queue", "create", tenant, "--tenant", tenant, token=admin))
    user = as_json(zs(server, "admin", "user", "create", "carol", "--tenant", tenant, "-o", "json", token=admin))
    assert user["id"] == f"carol@{tenant}" and user["role"] == "tenant-user"
    assert f"carol@{tenant}" in ok(zs(server, "admin", "user", "list", "--tenant", tenant, token=admin)).stdout

    made = ok(
        zs(
            server,
            "admin",
            "token",
            "create",
            "--user",
            f"carol@{tenant}",
            "--name",
            "laptop",
            "--expires-in",
            "30d",
            token=admin,
        )
    )
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("zs_") and "Shown once" in made.stdout
    me = as_json(zs(server, "whoami", "-o", "json", token=secret))
    assert me["user"] == f"carol@{tenant}"
    listed = as_json(zs(server, "admin", "token", "list", "-o", "json", token=admin))
    mine = [t for t in listed if t["id"] == me["token_id"]]
    assert mine and "token" not in mine[0] and mine[0]["expires_at"] > time.time() + 29 * 86400
    ok(zs(server, "admin", "token", "revoke", me["token_id"], token=admin))
    revoked = zs(server, "whoami", token=secret)
    assert revoked.exit_code == 1 and "401" in revoked.stderr

    node = as_json(zs(server, "admin", "node-token", "--node", "edge-7", "-o", "json", token=admin))
    assert node["role"] == "node-agent" and node["node_id"] == "edge-7" and node["token"].startswith("zs_")


def test_admin_quota_set_changes_one_flavor_and_keeps_the_rest(server: Server) -> None:
    admin = server.admin_token
    with server.client(admin) as client:
        before = client.queue("acme")
    assert before.quota["H100"].deserved == 32 and before.quota["ncu"].limit == 400
    after = as_json(
        zs(
            server,
            "admin",
            "quota",
            "set",
            "acme",
            "--flavor",
            "H100",
            "--deserved",
            "40",
            "--borrowing-limit",
            "8",
            "-o",
            "json",
            token=admin,
        )
    )
    assert after["quota"]["H100"] == {"guarantee": 16, "deserved": 40, "limit": 64, "borrowing_limit": 8}
    assert after["quota"]["ncu"]["limit"] == 400 and after["weight"] == before.weight
    cleared = as_json(
        zs(
            server,
            "admin",
            "quota",
            "set",
            "acme",
            "--flavor",
            "H100",
            "--borrowing-limit",
            "none",
            "--deserved",
            "32",
            "-o",
            "json",
            token=admin,
        )
    )
    assert cleared["quota"]["H100"] == before.to_dict()["quota"]["H100"]
    # The whole policy is validated: a limit under the guarantee is refused and nothing changes.
    bad = zs(server, "admin", "quota", "set", "acme", "--flavor", "H100", "--limit", "4", token=admin)
    assert bad.exit_code == 1 and "below guarantee" in bad.stderr
    with server.client(admin) as client:
        assert client.queue("acme").quota["H100"].limit == 64
    nothing = zs(server, "admin", "quota", "set", "acme", "--flavor", "H100", token=admin)
    assert nothing.exit_code == 2


def test_sdk_errors_are_typed(server: Server) -> None:
    with server.client() as client, pytest.raises(ApiError) as info:
        client.get_job("j0000000000000000000")
    assert info.value.status == 404 and info.value.slug == "not-found"
