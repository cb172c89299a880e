"""The SDK's own logic without a server: problem parsing, retries and backoff, cursors, log following, waiting.

The transport is httpx's MockTransport so that each answer (and each dropped connection) is exactly scripted;
the same client against the real server is in ``test_cli_integration.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from api.client import ApiError, Unreachable, ZhisuanClient
from api.models import JobOut, QueueOut
from scheduler.errors import ConfigError

PROBLEM = "application/problem+json"
SPEC = {"name": "t", "entrypoint": "echo hi"}


def job(job_id: str = "j1", state: str = "pending", **extra: object) -> dict[str, object]:
    """A job answer in the server's full shape (``JobOut``)."""
    return {
        "id": job_id,
        "name": "t",
        "tenant": "acme",
        "user": "ann",
        "queue": "acme",
        "kind": "training",
        "state": state,
        "priority": "training",
        "attempt": 0,
        "spec": SPEC,
        "submitted_at": 1.0,
        "started_at": None,
        "finished_at": None,
        "updated_at": 1.0,
        "placement": None,
        "reasons": [],
        "estimated_start": None,
        "estimated_finish": None,
        "message": "",
        "exit_code": None,
        **extra,
    }


def problem(status: int, slug: str, detail: str = "", **extra: object) -> httpx.Response:
    body = {"type": f"https://zhisuan.dev/problems/{slug}", "title": slug.replace("-", " "), "status": status}
    body.update(detail=detail, **extra)
    return httpx.Response(status, json=body, headers={"content-type": PROBLEM})


class Recorder:
    """A scripted server: each request gets the next answer (a response, or an exception to raise)."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)


def client(recorder: Recorder, sleeps: list[float] | None = None, **kwargs: object) -> ZhisuanClient:
    waits = sleeps if sleeps is not None else []
    return ZhisuanClient(
        "http://zs.test/v1/",
        "zs_t_secret",
        transport=httpx.MockTransport(recorder),
        sleep=waits.append,
        **kwargs,  # type: ignore[arg-type]
    )


def test_problem_json_becomes_one_line_api_error() -> None:
    errors = [{"loc": ["body", "workers"], "msg": "must be >= 1"}, {"loc": ["body", "name"], "msg": "required"}]
    rec = Recorder(problem(422, "validation-error", "the job spec is not valid", errors=errors))
    with client(rec) as zs, pytest.raises(ApiError) as info:
        zs.get_job("j1")
    err = info.value
    assert (err.status, err.slug, err.detail) == (422, "validation-error", "the job spec is not valid")
    assert err.errors == errors
    assert "\n" not in str(err)
    assert str(err) == (
        "validation error: the job spec is not valid — workers: must be >= 1; name: required (HTTP 422)"
    )
    assert rec.requests[0].headers["Authorization"] == "Bearer zs_t_secret"
    assert rec.requests[0].url == "http://zs.test/v1/jobs/j1"


def test_non_problem_errors_still_parse() -> None:
    rec = Recorder(httpx.Response(502, text="<html>bad gateway</html>\nmore"))
    with client(rec) as zs, pytest.raises(ApiError) as info:
        zs.whoami()
    assert (info.value.status, info.value.detail) == (502, "<html>bad gateway</html>")


def test_503_and_429_are_retried_after_retry_after() -> None:
    sleeps: list[float] = []
    rec = Recorder(
        problem(503, "database-unavailable", "try again", retry_after=None),
        httpx.Response(
            429,
            json={"type": "https://zhisuan.dev/problems/rate-limited", "title": "rate limited"},
            headers={"Retry-After": "2"},
        ),
        httpx.Response(200, json=job()),
    )
    rec.answers[0].headers["Retry-After"] = "1"
    with client(rec, sleeps) as zs:
        assert zs.get_job("j1").id == "j1"
    assert sleeps == [1.0, 2.0]
    assert len(rec.requests) == 3


def test_retry_after_is_capped_and_backoff_grows() -> None:
    sleeps: list[float] = []
    rec = Recorder(
        httpx.Response(503, headers={"Retry-After": "3600"}),
        httpx.Response(503),
        httpx.Response(503),
        httpx.Response(200, json=job()),
    )
    with client(rec, sleeps, backoff_s=1.0, max_backoff_s=5.0) as zs:
        zs.get_job("j1")
    assert sleeps[0] == 5.0
    assert 1.0 <= sleeps[1] <= 2.0 and 2.0 <= sleeps[2] <= 4.0  # after attempts 2 and 3: 2 s and 4 s, jittered


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_other_4xx_are_never_retried(status: int) -> None:
    rec = Recorder(problem(status, "x"), httpx.Response(200, json=job()))
    with client(rec) as zs, pytest.raises(ApiError):
        zs.get_job("j1")
    assert len(rec.requests) == 1


def test_gives_up_after_retries_with_the_last_problem() -> None:
    rec = Recorder(problem(503, "database-unavailable", "the database does not answer"))
    with client(rec, retries=2) as zs, pytest.raises(ApiError) as info:
        zs.queues()
    assert info.value.slug == "database-unavailable"
    assert len(rec.requests) == 3


def test_connection_refused_is_unreachable_after_retries() -> None:
    rec = Recorder(httpx.ConnectError("connection refused"))
    with client(rec, retries=2) as zs, pytest.raises(Unreachable) as info:
        zs.whoami()
    assert len(rec.requests) == 3
    assert info.value.status == 0 and "cannot reach the Zhisuan API at http://zs.test" in str(info.value)


def test_submit_retries_a_dropped_connection_with_the_same_key() -> None:
    rec = Recorder(httpx.RemoteProtocolError("server disconnected"), httpx.Response(200, json=job()))
    with client(rec) as zs:
        created = zs.submit(SPEC)
    assert created.id == "j1"
    keys = [r.headers["Idempotency-Key"] for r in rec.requests]
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 36
    assert json.loads(rec.requests[0].content) == SPEC  # what the user wrote, no defaults added


def test_each_submit_gets_a_fresh_key_unless_given() -> None:
    rec = Recorder(httpx.Response(201, json=job()))
    with client(rec) as zs:
        zs.submit(SPEC)
        zs.submit(SPEC)
        zs.submit(SPEC, idempotency_key="mine")
    keys = [r.headers["Idempotency-Key"] for r in rec.requests]
    assert keys[0] != keys[1] and keys[2] == "mine"


def test_a_dropped_cancel_is_not_repeated() -> None:
    # The cancel may have reached the server; repeating it would answer a misleading 409 conflict.
    rec = Recorder(httpx.ReadError("reset"), httpx.Response(202, json=job(state="cancelled")))
    with client(rec) as zs, pytest.raises(Unreachable):
        zs.cancel("j1")
    assert len(rec.requests) == 1


def test_invalid_spec_is_rejected_before_any_request() -> None:
    rec = Recorder(httpx.Response(201, json=job()))
    with client(rec) as zs, pytest.raises(ConfigError, match="workers"):
        zs.submit({"name": "t", "entrypoint": "x", "workers": 0})
    assert rec.requests == []


def test_list_jobs_follows_cursors_and_stops_at_limit() -> None:
    def pages(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        start = int(cursor) if cursor else 0
        size = int(request.url.params["limit"])
        ids = list(range(start, min(start + size, 7)))
        nxt = str(ids[-1] + 1) if ids and ids[-1] < 6 else None
        return httpx.Response(200, json={"items": [job(f"j{i}") for i in ids], "next_cursor": nxt})

    rec = Recorder(pages)
    with client(rec) as zs:
        assert [j.id for j in zs.list_jobs(state="pending", page_size=3)] == [f"j{i}" for i in range(7)]
        assert len(rec.requests) == 3
        assert rec.requests[0].url.params["state"] == "pending"
        assert "queue" not in rec.requests[0].url.params
        rec.requests.clear()
        assert [j.id for j in zs.list_jobs(limit=4, page_size=3)] == ["j0", "j1", "j2", "j3"]
        assert [r.url.params["limit"] for r in rec.requests] == ["3", "1"]


def test_follow_logs_reads_until_complete_and_restarts_on_a_new_attempt() -> None:
    def chunk(attempt: int, offset: int, text: str, complete: bool = False) -> httpx.Response:
        body = {
            "job_id": "j1",
            "attempt": attempt,
            "rank": 0,
            "offset": offset,
            "next_offset": offset + len(text.encode()),
            "text": text,
            "complete": complete,
        }
        return httpx.Response(200, json=body)

    sleeps: list[float] = []
    rec = Recorder(
        chunk(0, 0, "a\n"),
        chunk(0, 2, ""),
        chunk(1, 2, ""),  # requeued: the new attempt's log starts again
        chunk(1, 0, "b\n"),
        chunk(1, 2, "c\n", complete=True),
    )
    with client(rec, sleeps) as zs:
        assert list(zs.follow_logs("j1", poll_s=0.1)) == ["a\n", "--- attempt 1 ---\n", "b\n", "c\n"]
    assert [r.url.params["offset"] for r in rec.requests] == ["0", "2", "2", "0", "2"]
    assert sleeps == [0.1]


def test_wait_until_running_reports_every_poll_and_times_out() -> None:
    rec = Recorder(
        httpx.Response(200, json=job(state="pending")),
        httpx.Response(200, json=job(state="starting")),
        httpx.Response(200, json=job(state="running")),
    )
    seen: list[str] = []
    with client(rec) as zs:
        done = zs.wait("j1", until="running", on_update=lambda j: seen.append(j.state), poll_s=0)
    assert done.state == "running" and seen == ["pending", "starting", "running"]

    rec = Recorder(httpx.Response(200, json=job(state="pending")))
    with client(rec) as zs, pytest.raises(TimeoutError, match="still pending"):
        zs.wait("j1", timeout=0.0)


def test_models_ignore_unknown_fields_but_keep_them_for_output() -> None:
    raw = job(
        future_field={"x": 1},
        placement={
            "model": "H100",
            "pool": "bj/H100",
            "topology": "node",
            "workers": [{"rank": 0, "node": "n1", "devices": [0, 1], "milli": 1000}],
        },
    )
    info = JobOut.from_api(raw)
    assert info.placement is not None and info.placement.workers[0].devices == [0, 1]
    assert info.to_dict()["future_field"] == {"x": 1}
    assert not info.terminal and JobOut.from_api(job(state="failed")).terminal


def test_queue_spec_keeps_weight_and_domestic_for_a_put_back() -> None:
    q = QueueOut.from_api(
        {
            "name": "acme",
            "tenant": "acme",
            "parent": None,
            "weight": 2.0,
            "domestic": "preferred",
            "quota": {"H100": {"guarantee": 0, "deserved": 8, "limit": None, "borrowing_limit": None}},
            "usage": {"H100": 3},
            "pending": 1,
            "running": 2,
            "policy_version": 3,
        }
    )
    assert q.spec() == {
        "parent": None,
        "tenant": "acme",
        "weight": 2.0,
        "domestic": "preferred",
        "quota": {"H100": {"guarantee": 0.0, "deserved": 8.0}},
    }


def test_tls_context_only_for_https() -> None:
    import ssl

    from api.client import _tls, _verified_context

    assert _tls("https://zs.example.cn", True) is _verified_context()  # loaded once per process
    plain = _tls("http://127.0.0.1:8000", True)
    assert isinstance(plain, ssl.SSLContext) and plain.verify_mode == ssl.CERT_REQUIRED  # fails closed if used
    custom = ssl.create_default_context()
    assert _tls("https://zs.example.cn", custom) is custom


def test_a_problem_message_never_repeats_its_title() -> None:
    err = ApiError(422, "https://zhisuan.dev/problems/unschedulable", "No pool could run this job",
                   "no pool could run this job: a worker needs 16 devices.")  # fmt: skip
    assert err.message == "No pool could run this job: a worker needs 16 devices. (HTTP 422)"
