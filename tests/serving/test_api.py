"""Served inference on the product's records: ``/v1/services`` on the API, the controller on SQL, the router on
SQL, the CLI — on SQLite, with every replica a real process here (no Ray)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from local_executor import LocalProcessExecutor, wait_until
from serving_stack import HERE, REPO, server_cmd
from typer.testing import CliRunner

from api.cli import app as cli_app
from api.db import make_engine
from api.settings import Settings
from api.up import running
from scheduler.core import CoreConfig, QueueingConfig
from scheduler.live.service import ServiceConfig
from scheduler.live.serving.controller import ServeConfig
from scheduler.live.serving.router import RouterConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Product:
    api: str
    router: str
    tokens: dict[str, str]
    engine: Any
    executor: LocalProcessExecutor

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=30)


def spec(name: str = "chat", **serving: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "inference",
        "replicas": 1,
        "devices_per_worker": 0.25,
        "cpus_per_worker": 0.25,
        "memory_gib_per_worker": 0.25,
        "models": ["H100"],
        "priority": "production-inference",
        "entrypoint": server_cmd(),
        "slo": {"p99_latency_ms": 500},
        "serving": {"max_replicas": 2, "upscale_delay_s": 0.5, "downscale_delay_s": 2.0, **serving},
    }


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    """The product as ``zhisuan up`` composes it (:func:`api.up.running`: API, scheduler service with its serving
    controller, serving router), with replicas as processes here instead of Ray tasks."""
    tmp = tmp_path_factory.mktemp("product")
    url = f"sqlite:///{tmp / 'zhisuan.db'}"
    settings = Settings(
        database_url=url,
        policy_file=HERE / "policy.yaml",
        cluster_file=HERE / "cluster.yaml",
        rate_per_s=0.0,
        rate_burst=0.0,
        cache_refresh_s=0.2,
        admin_token_file=tmp / "admin-token",
    )
    executor = LocalProcessExecutor(tmp / "logs", REPO, stop_grace_s=3.0)
    with running(
        settings,
        port=_free_port(),
        agents=False,
        executor=executor,
        service_config=ServiceConfig(holder="serving-api-tests", interval_s=0.1, lease_s=5.0, logs_every_s=0.3),
        core_config=CoreConfig(queueing=QueueingConfig(min_runtime_s=0.0)),
        serving_port=0,
        serve_config=ServeConfig(every_s=0.2, health_every_s=0.3, health_starting_every_s=0.1, route_refresh_s=0.2),
        router_config=RouterConfig(refresh_s=0.2, report_every_s=0.3, key_cache_s=0.5),
    ) as run:
        assert run.admin_token is not None and run.serving_url is not None
        tokens = {"admin": run.admin_token}
        with httpx.Client(base_url=run.url, headers={"Authorization": f"Bearer {run.admin_token}"}) as c:
            for name, tenant, role in (
                ("boss", "acme", "tenant-admin"),
                ("ann", "acme", "tenant-user"),
                ("li", "lab", "tenant-admin"),
            ):
                assert c.post("/v1/users", json={"name": name, "tenant": tenant, "role": role}).status_code == 201
                made = c.post("/v1/tokens", json={"user": f"{name}@{tenant}"})
                tokens[name] = made.json()["token"]
        engine = make_engine(url)
        try:
            yield Product(run.url, run.serving_url, tokens, engine, executor)
        finally:
            engine.dispose()
            executor.close()


def _ready(product: Product, name: str, count: int, who: str = "boss", timeout_s: float = 40) -> dict[str, Any]:
    with product.client(who) as c:
        found: dict[str, Any] = {}

        def check() -> bool:
            found.update(c.get(f"/v1/services/{name}").json())
            return found.get("ready") == count

        wait_until(check, timeout_s, 0.2, f"{count} ready replicas of {name}")
        return found


def test_bad_specs_are_refused_with_what_to_fix(product: Product) -> None:
    with product.client("boss") as c:
        cases = [
            (spec(min_replicas=3, max_replicas=2), "min_replicas (3) is more than max_replicas (2)"),
            (spec(target_ongoing_requests=50), "target_ongoing_requests (50) is more than a replica may take"),
            (spec(min_replicas=0, cold_start_budget_s=10), "scale to zero is for free-tier (basic) services"),
            (spec(min_replicas=0), "min_replicas 0 (scale to zero) needs cold_start_budget_s"),
            ({**spec(), "serving": None}, "a service needs a serving block"),
            ({**spec(), "devices_per_worker": 8}, "a replica could never be placed"),
        ]
        for body, words in cases:
            answer = c.post("/v1/services", json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert words in answer.json()["detail"], answer.json()["detail"]
        assert c.get("/v1/services").json()["items"] == []  # nothing was written


def test_deploy_call_with_a_key_watch_and_bill(product: Product) -> None:
    with product.client("boss") as boss, product.client("ann") as ann, product.client("li") as li:
        first = boss.post("/v1/services", json=spec())
        assert first.status_code == 201 and first.json()["outcome"] == "created", first.text
        again = boss.post("/v1/services", json=spec())
        assert again.status_code == 200 and again.json()["outcome"] == "unchanged"
        status = _ready(product, "chat", 1)
        assert status["url"] == f"{product.router}/v1/services/acme/chat"
        # Keys: tenant admins make them; the secret is shown once; a tenant user may not make one.
        assert ann.post("/v1/services/chat/keys", json={"name": "x"}).status_code == 403
        made = boss.post("/v1/services/chat/keys", json={"name": "mobile"}).json()
        key = made["key"]
        listed = boss.get("/v1/services/chat/keys").json()["items"]
        assert [k["id"] for k in listed] == [made["id"]] and "key" not in listed[0]
        # Another tenant sees nothing of it.
        assert li.get("/v1/services/chat").status_code == 404
        assert li.get("/v1/services").json()["items"] == []
        lab_key = li.post("/v1/services", json=spec("vision")).json()
        assert lab_key["tenant"] == "lab"
        lab = li.post("/v1/services/vision/keys", json={}).json()["key"]
    endpoint = f"{product.router}/v1/services/acme/chat"
    with httpx.Client(timeout=30) as caller:
        for i in range(30):
            answer = caller.post(
                f"{endpoint}/v1/completions",
                json={"prompt": f"p{i}", "max_tokens": 5},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert answer.status_code == 200, answer.text
        # The tenant's API token opens nothing on the serving port; another tenant's service key neither.
        token = product.tokens["boss"]
        assert (
            caller.post(f"{endpoint}/predict", json={}, headers={"Authorization": f"Bearer {token}"}).status_code == 401
        )
        assert (
            caller.post(f"{endpoint}/predict", json={}, headers={"Authorization": f"Bearer {lab}"}).status_code == 404
        )
    with product.client("boss") as boss:

        def figures() -> bool:
            load = boss.get("/v1/services/chat").json()["load"]
            return load is not None and load["p99_ms"] is not None

        wait_until(figures, 10, 0.2, "live figures")
        wait_until(lambda: boss.get("/v1/services/chat/usage").json()["requests"] >= 30, 10, 0.2, "usage written")
        use = boss.get("/v1/services/chat/usage").json()
        assert use["requests"] >= 30 and use["tokens"] >= 150 and use["currency"] == "CNY"
        assert use["running_device_hours"] > 0
        # Revoked: the router refuses it once its key cache lapses.
        revoked = boss.delete(f"/v1/services/chat/keys/{made['id']}").json()
        assert revoked["revoked_at"] is not None
    time.sleep(0.7)
    with httpx.Client(timeout=30) as caller:
        answer = caller.post(f"{endpoint}/predict", json={"inputs": [[1]]}, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 401


def test_the_cli_lists_shows_and_reads_logs(product: Product) -> None:
    runner = CliRunner()
    auth = ["--url", product.api, "--token", product.tokens["boss"]]
    _ready(product, "chat", 1)
    listed = runner.invoke(cli_app, ["services", "list", *auth])
    assert listed.exit_code == 0, listed.output
    assert "chat" in listed.output and "1 ready" in listed.output
    shown = runner.invoke(cli_app, ["services", "status", "chat", *auth])
    assert shown.exit_code == 0 and "replicas" in shown.output and "ready" in shown.output, shown.output
    logs = runner.invoke(cli_app, ["services", "logs", "chat", *auth])
    assert logs.exit_code == 0 and "ZHISUAN_ENDPOINT=" in logs.output, logs.output
    keys = runner.invoke(cli_app, ["services", "keys", "chat", "--create", "--name", "cli", *auth])
    assert keys.exit_code == 0 and "zsk_" in keys.output, keys.output
    with product.client("boss") as boss:
        replica = boss.get("/v1/services/chat").json()["replicas"][0]["job_id"]
    status = runner.invoke(cli_app, ["status", replica, *auth])
    assert status.exit_code == 0 and "replica of" in status.output and "endpoint" in status.output, status.output
    bad = runner.invoke(cli_app, ["services", "deploy", str(REPO / "seeds" / "examples" / "train-1worker.yaml"), *auth])
    assert bad.exit_code == 2 and "serving block" in bad.output


def test_a_new_revision_rolls_and_a_deleted_service_is_billed(product: Product) -> None:
    with product.client("boss") as boss:
        _ready(product, "chat", 1)
        updated = boss.post("/v1/services", json={**spec(), "cpus_per_worker": 0.5})
        assert updated.status_code == 200 and updated.json()["outcome"] == "updated"
        assert updated.json()["revision"] == 2

        def rolled() -> bool:
            replicas = boss.get("/v1/services/chat").json()["replicas"]
            return [r["revision"] for r in replicas if r["phase"] == "ready"] == [2] and len(replicas) == 1

        wait_until(rolled, 40, 0.2, "revision 2 alone")
        assert boss.delete("/v1/services/chat").status_code == 202
        wait_until(lambda: boss.get("/v1/services/chat").status_code == 404, 40, 0.2, "the service gone")
        use = boss.get("/v1/services/chat/usage")
        assert use.status_code == 404  # the service is gone; its usage went with its name
