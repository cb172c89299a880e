"""Bad input: every refusal is a 4xx problem+json whose detail says what to fix, and nothing is written."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_stack import JOB, Server, Stack, assert_problem, make_settings

from api.app import create_app
from api.tables import API_TOKENS


@pytest.fixture
def unchanged(stack: Stack) -> Iterator[None]:
    """Fails the test if any table gained or lost a row."""
    before = stack.counts()
    yield
    assert stack.counts() == before, "a refused request wrote to the database"


def post_job(stack: Stack, body: Any, who: str = "alice", **kwargs: Any) -> httpx.Response:
    with stack.client(who) as c:
        if isinstance(body, bytes | str):
            return c.post("/v1/jobs", content=body, headers={"Content-Type": "application/json", **kwargs})
        return c.post("/v1/jobs", json=body, headers=kwargs)


@pytest.mark.usefixtures("unchanged")
class TestSubmissionRefused:
    def test_malformed_json(self, stack: Stack) -> None:
        assert_problem(post_job(stack, b'{"name": "x", '), 400, "malformed-request", "not valid JSON")

    def test_yaml_is_not_json(self, stack: Stack) -> None:
        r = post_job(stack, "name: x\nentrypoint: echo hi\n")
        assert_problem(r, 400, "malformed-request", "JSON", "YAML")

    def test_empty_body(self, stack: Stack) -> None:
        assert_problem(post_job(stack, b""), 400, "malformed-request", "empty")

    def test_not_an_object(self, stack: Stack) -> None:
        assert_problem(post_job(stack, [1, 2]), 422, "validation-error")

    def test_unknown_field(self, stack: Stack) -> None:
        body = assert_problem(post_job(stack, {**JOB, "gpus": 8}), 422, "validation-error", "gpus", "unknown field")
        assert body["errors"][0]["loc"] == ["body", "gpus"]

    def test_missing_field(self, stack: Stack) -> None:
        body = {k: v for k, v in JOB.items() if k != "entrypoint"}
        assert_problem(post_job(stack, body), 422, "validation-error", "entrypoint", "required")

    @pytest.mark.parametrize(
        ("field", "value", "words"),
        [
            ("workers", -1, ("workers", "greater than or equal to 1")),
            ("workers", 10**9, ("workers", "less than or equal")),
            ("devices_per_worker", -2, ("devices_per_worker",)),
            ("devices_per_worker", 1000, ("devices_per_worker", "less than or equal")),
            ("memory_gib_per_worker", 1e12, ("memory_gib_per_worker",)),
            ("walltime_s", 0, ("walltime_s", "greater than 0")),
        ],
    )
    def test_negative_or_absurd_resources(self, stack: Stack, field: str, value: Any, words: tuple[str, ...]) -> None:
        body = assert_problem(post_job(stack, {**JOB, field: value}), 422, "validation-error", *words)
        assert body["errors"][0]["loc"][:2] == ["body", field]

    def test_fraction_for_training(self, stack: Stack) -> None:
        r = post_job(stack, {**JOB, "devices_per_worker": 0.5})
        assert_problem(r, 422, "validation-error", "training workers take whole devices")

    def test_unknown_model(self, stack: Stack) -> None:
        body = assert_problem(post_job(stack, {**JOB, "models": ["H100", "TPUv9"]}), 422, "validation-error", "TPUv9")
        assert body["errors"][0]["loc"] == ["body", "models", 1]

    def test_unknown_queue(self, stack: Stack) -> None:
        r = post_job(stack, {**JOB, "queue": "nope"})
        assert_problem(r, 422, "validation-error", "nope", "acme-research")  # lists the caller's own queues

    def test_other_tenants_queue(self, stack: Stack) -> None:
        body = assert_problem(post_job(stack, {**JOB, "queue": "sme-vision"}), 422, "validation-error", "sme-vision")
        assert "acme" in body["detail"] and "univ-a" not in body["detail"]  # never lists other tenants' queues

    def test_unschedulable(self, stack: Stack) -> None:
        r = post_job(stack, {**JOB, "workers": 20, "devices_per_worker": 8, "models": ["H100"]})
        body = assert_problem(r, 422, "unschedulable", "local/H100", "16")
        assert body["reasons"] and body["reasons"][0]["code"] == "unschedulable"
        # The detail says what the title does not: the reasons and what to change, each once.
        assert body["detail"].lower().count("could ever run") == 0 and body["detail"].count("Ask for") == 1
        r = post_job(stack, {**JOB, "devices_per_worker": 16})
        assert_problem(r, 422, "unschedulable", "at most 8")

    def test_oversize_body_declared(self, stack: Stack) -> None:
        limit = stack.ctx.settings.max_body_bytes
        huge = {**JOB, "labels": {"pad": "x" * (limit + 10)}}
        assert_problem(post_job(stack, huge), 413, "payload-too-large", str(limit))

    def test_oversize_body_streamed(self, stack: Stack) -> None:
        limit = stack.ctx.settings.max_body_bytes

        def chunks() -> Iterator[bytes]:
            yield b'{"name": "x", "labels": {"pad": "'
            for _ in range(limit // 65536 + 2):
                yield b"x" * 65536
            yield b'"}}'

        with stack.client("alice") as c:
            r = c.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert_problem(r, 413, "payload-too-large")

    def test_idempotency_key_too_long(self, stack: Stack) -> None:
        r = post_job(stack, JOB, **{"Idempotency-Key": "k" * 201})
        assert_problem(r, 422, "validation-error", "Idempotency-Key")


def test_replayed_key_with_different_body_writes_nothing(stack: Stack) -> None:
    r = post_job(stack, {**JOB, "name": "first"}, **{"Idempotency-Key": "bad-input-replay"})
    assert r.status_code == 201
    before = stack.counts()
    r = post_job(stack, {**JOB, "name": "second"}, **{"Idempotency-Key": "bad-input-replay"})
    assert_problem(r, 422, "idempotency-key-reused", "bad-input-replay", "new key")
    # Still a replay when the original would now be refused (the answer is the original job).
    r = post_job(stack, {**JOB, "name": "first"}, **{"Idempotency-Key": "bad-input-replay"})
    assert r.status_code == 200
    assert stack.counts() == before


@pytest.mark.usefixtures("unchanged")
class TestTokensRefused:
    def test_no_token(self, stack: Stack) -> None:
        with stack.client() as c:
            r = c.get("/v1/jobs")
        assert_problem(r, 401, "unauthenticated", "Authorization: Bearer")
        assert r.headers["www-authenticate"].startswith("Bearer")

    @pytest.mark.parametrize("token", ["garbage", "zs_nothing", "zs_0123456789abcdef_notthesecret"])
    def test_bad_token(self, stack: Stack, token: str) -> None:
        with stack.client(token=token) as c:
            assert_problem(c.get("/v1/jobs"), 401, "unauthenticated")
            assert_problem(c.post("/v1/jobs", json=JOB), 401, "unauthenticated")

    def test_wrong_scheme(self, stack: Stack) -> None:
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Basic {stack.tokens['alice']}"}) as c:
            assert_problem(c.get("/v1/jobs"), 401, "unauthenticated")


def test_expired_token(stack: Stack) -> None:
    with stack.client("alice") as c:
        created = c.post("/v1/tokens", json={"expires_in_s": 1, "name": "short"}).json()
    with stack.client(token=created["token"]) as c:
        assert c.get("/v1/whoami").status_code == 200
        time.sleep(1.2)
        before = stack.counts()
        assert_problem(c.get("/v1/whoami"), 401, "unauthenticated", "expired")
        assert_problem(c.post("/v1/jobs", json=JOB), 401, "unauthenticated", "expired")
    assert stack.counts() == before


def test_revoked_token(stack: Stack) -> None:
    with stack.client("alice") as c:
        created = c.post("/v1/tokens", json={"name": "to revoke"}).json()
    with stack.client(token=created["token"]) as c:
        assert c.get("/v1/whoami").json()["token_id"] == created["id"]
        assert c.delete(f"/v1/tokens/{created['id']}").status_code == 204  # a token may revoke itself
        before = stack.counts()
        assert_problem(c.get("/v1/whoami"), 401, "unauthenticated", "revoked")
        assert_problem(c.post("/v1/jobs", json=JOB), 401, "unauthenticated", "revoked")
    assert stack.counts() == before
    [row] = stack.rows(API_TOKENS, API_TOKENS.c.id == created["id"])
    assert row["revoked_at"] is not None


def test_rate_limit(tmp_path: Path) -> None:
    # The limiter lives in process memory: one database is enough.
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'rl.db'}", tmp_path, rate_per_s=1.0, rate_burst=3.0))
    with Server(app) as server:
        token = app.state.ctx.bootstrap_token or ""
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
            answers = [c.get("/v1/whoami") for _ in range(5)]
    assert [r.status_code for r in answers[:3]] == [200, 200, 200]
    limited = assert_problem(answers[-1], 429, "rate-limited", "rate limit")
    assert int(answers[-1].headers["retry-after"]) >= 1 and limited["status"] == 429


def test_validator_messages_say_what_is_wrong_without_pydantic_noise() -> None:
    """A model validator's message reaches the user as written: no "Value error, " prefix, and not the whole
    object it was given (a field's own value is still shown)."""
    from pydantic import BaseModel, ValidationError, model_validator

    from api.problems import describe_errors

    class Quota(BaseModel):
        guarantee: float = 0
        deserved: float | None = None
        limit: int = 0

        @model_validator(mode="after")
        def ordered(self) -> Quota:
            if self.deserved is not None and self.deserved < self.guarantee:
                raise ValueError(f"deserved {self.deserved:g} is below guarantee {self.guarantee:g}")
            return self

    def errors(body: dict[str, object]) -> list[dict[str, object]]:
        try:
            Quota.model_validate(body)
        except ValidationError as err:
            return describe_errors(err.errors(include_url=False), ("body",))
        raise AssertionError("valid")

    assert errors({"guarantee": 100, "deserved": 32})[0]["msg"] == "deserved 32 is below guarantee 100"
    assert errors({"limit": "lots"})[0]["msg"].endswith("(got 'lots')")
