"""The endpoint, over HTTP: routing over replicas, streaming, keys, limits, overload, cold start, failures."""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from local_executor import wait_until
from serving_stack import Stack, auth, load, service_spec

from scheduler.spec import JobState


def test_one_endpoint_answers_through_every_replica(stack: Stack) -> None:
    record, key = stack.deploy(service_spec(replicas=2, min_replicas=2))
    ready = stack.wait_ready(record, 2)
    seen: Counter[str] = Counter()
    for i in range(40):
        answer = stack.client.post(f"{stack.endpoint(record)}/predict", json={"inputs": [[i, 1]]}, headers=auth(key))
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == [float(i + 1)]
        seen[answer.headers["x-zhisuan-replica"]] += 1
    assert set(seen) == set(ready), seen


def test_streamed_answers_arrive_as_they_are_generated_and_tokens_are_counted(stack: Stack) -> None:
    record, key = stack.deploy(service_spec(server_args=("--token-ms", "50")))
    stack.wait_ready(record, 1)
    arrivals: list[float] = []
    body = {"prompt": "the router", "max_tokens": 8, "stream": True}
    began = time.perf_counter()
    with stack.client.stream(
        "POST", f"{stack.endpoint(record)}/v1/completions", json=body, headers=auth(key)
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in answer.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter() - began)
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 8
    # Eight tokens 50 ms apart: the first arrived long before the last (nothing was buffered whole).
    assert arrivals[-1] - arrivals[0] > 0.25, arrivals
    time.sleep(0.1)
    metrics = stack.client.get(f"{stack.url}/metrics").text
    assert 'zhisuan_serving_tokens_total{replica="' in metrics
    assert re.search(r'zhisuan_serving_tokens_total\{replica="[^"]+",service="acme/chat"\} 8\.0', metrics), metrics


def test_keys_are_checked_and_tell_nothing_about_other_services(stack: Stack) -> None:
    chat, chat_key = stack.deploy(service_spec("chat"))
    other, other_key = stack.deploy(service_spec("vision"), tenant="lab", user="li")
    stack.wait_ready(chat, 1)
    stack.wait_ready(other, 1)
    url = f"{stack.endpoint(chat)}/predict"
    payload = {"inputs": [[1]]}
    assert stack.client.post(url, json=payload).status_code == 401
    assert stack.client.post(url, json=payload, headers=auth("zs_not_a_service_key")).status_code == 401
    key_id = chat_key.split("_")[1]
    assert stack.client.post(url, json=payload, headers=auth(f"zsk_{key_id}_wrong")).status_code == 401
    # Another tenant's key on this service, and this key on a service that does not exist: the same 404.
    foreign = stack.client.post(url, json=payload, headers=auth(other_key))
    missing = stack.client.post(f"{stack.url}/v1/services/acme/nothing/predict", json=payload, headers=auth(chat_key))
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["detail"].replace("chat", "X") == missing.json()["detail"].replace("nothing", "X")
    assert stack.client.post(url, json=payload, headers={"x-api-key": chat_key}).status_code == 200
    stack.serving.revoke_key(key_id, now=time.time())
    time.sleep(0.6)  # the router's key cache (0.5 s here)
    assert stack.client.post(url, json=payload, headers=auth(chat_key)).status_code == 401


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(stack: Stack) -> None:
    record, key = stack.deploy(service_spec(rate_limit={"requests_per_s": 5}))
    _, other_key = stack.serving.create_key(record.id, now=time.time())
    stack.wait_ready(record, 1)
    url = f"{stack.endpoint(record)}/predict"
    codes = [stack.client.post(url, json={"inputs": [[1]]}, headers=auth(key)) for _ in range(12)]
    limited = [a for a in codes if a.status_code == 429]
    assert limited and all(int(a.headers["Retry-After"]) >= 1 for a in limited)
    assert sum(1 for a in codes if a.status_code == 200) <= 6
    # Limits are per key: another key of the same service is not slowed down.
    assert stack.client.post(url, json={"inputs": [[1]]}, headers=auth(other_key)).status_code == 200


def test_overload_beyond_max_replicas_is_answered_429_at_once_never_a_hang(stack: Stack) -> None:
    # One replica that takes one request at a time, each 0.5 s, and a queue of 2.
    spec = service_spec(
        max_replicas=1,
        max_ongoing_requests=1,
        max_queued_requests=2,
        queue_timeout_s=1.0,
        target_ongoing_requests=1,
        server_args=("--token-ms", "500"),
    )
    record, key = stack.deploy(spec)
    stack.wait_ready(record, 1)
    url = f"{stack.endpoint(record)}/predict"

    def call() -> tuple[int, float, str | None]:
        began = time.perf_counter()
        answer = stack.client.post(url, json={"inputs": [[1]]}, headers=auth(key))
        return answer.status_code, time.perf_counter() - began, answer.headers.get("Retry-After")

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: call(), range(12)))
    codes = Counter(code for code, _, _ in results)
    assert codes[200] >= 2 and codes[429] >= 6, codes
    assert set(codes) <= {200, 429}, codes
    for code, seconds, retry_after in results:
        if code == 429:
            assert retry_after is not None and int(retry_after) >= 1
            assert seconds < 2.5  # the queue timeout (1 s), never the request timeout


def test_a_scaled_to_zero_service_starts_on_the_first_request_within_its_budget(stack: Stack) -> None:
    spec = service_spec(
        "scaled",
        min_replicas=0,
        max_replicas=2,
        cold_start_budget_s=20,
        idle_before_zero_s=4.0,
        downscale_delay_s=0.5,
    )
    record, key = stack.deploy(spec, tenant="lab", user="li")
    # Nobody calls: it goes to zero after idle_before_zero_s, and nothing runs.
    stack.wait_ready(record, 1)
    idle = (JobState.RUNNING, JobState.STARTING, JobState.PENDING, JobState.CANCELLING)
    wait_until(lambda: stack.replicas(record, *idle) == [], 30, what="scale to zero")
    stack.wait_ready(record, 0)
    began = time.perf_counter()
    answer = stack.client.post(f"{stack.endpoint(record)}/predict", json={"inputs": [[2, 3]]}, headers=auth(key))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == [5.0]
    cold_start = time.perf_counter() - began
    assert cold_start < 20
    # Idle again: back to zero after idle_before_zero_s.
    wait_until(
        lambda: stack.replicas(record, JobState.RUNNING, JobState.STARTING, JobState.PENDING) == [],
        30,
        what="scale back to zero",
    )


def test_a_request_to_a_zero_service_past_its_budget_gets_503_with_retry_after(stack: Stack) -> None:
    # Free tier with its quota used up by another service: the cold start cannot happen in time.
    hog, _ = stack.deploy(service_spec("hog", replicas=2, min_replicas=2, max_replicas=2), tenant="lab", user="li")
    stack.wait_ready(hog, 2)
    spec = service_spec("late", min_replicas=0, max_replicas=1, cold_start_budget_s=1.5)
    record, key = stack.deploy(spec, tenant="lab", user="li")
    wait_until(lambda: (record.tenant, record.name) in stack.router.services, 10, what="the route")
    time.sleep(0.5)
    assert stack.router_sees(record) == []  # its first replica waits for quota
    began = time.perf_counter()
    answer = stack.client.post(f"{stack.endpoint(record)}/predict", json={"inputs": [[1]]}, headers=auth(key))
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) >= 1
    assert 1.4 < time.perf_counter() - began < 5
    # Its replica waits for quota, and says so.
    reasons = [r for rep in stack.serving.replicas() if rep.service_id == record.id for r in rep.reasons]
    assert reasons == ["queue lab would use 0.75 H100, above its limit of 0.5"]
    assert "waiting to be placed: queue lab would use 0.75 H100" in stack.serving.service(record.id).message


def test_a_replica_killed_mid_load_fails_no_idempotent_request(stack: Stack) -> None:
    record, key = stack.deploy(service_spec(replicas=3, min_replicas=3, max_replicas=3))
    ready = stack.wait_ready(record, 3)
    url = f"{stack.endpoint(record)}/v1/completions"

    def call() -> int:
        headers = {**auth(key), "Idempotency-Key": uuid.uuid4().hex}
        return stack.client.post(url, json={"prompt": "a", "max_tokens": 4}, headers=headers).status_code

    with load(6, call) as results:
        time.sleep(1.0)
        stack.executor.kill(ready[0], signal.SIGKILL)
        time.sleep(2.0)
    assert len(results) > 50
    assert Counter(results) == {200: len(results)}, Counter(results)
    # The killed replica's job failed; it is retried (a new attempt) and the service is back to 3.
    stack.wait_ready(record, 3, timeout_s=30)


def test_a_hung_replica_is_timed_out_retried_elsewhere_and_replaced(stack: Stack) -> None:
    record, key = stack.deploy(service_spec(replicas=2, min_replicas=2, max_replicas=2, request_timeout_s=1.0))
    ready = stack.wait_ready(record, 2)
    hung = ready[0]
    stack.executor.kill(hung, signal.SIGSTOP)
    url = f"{stack.endpoint(record)}/predict"
    for _ in range(6):
        answer = stack.client.get(f"{stack.endpoint(record)}/info", headers=auth(key))
        assert answer.status_code == 200 and answer.headers["x-zhisuan-replica"] != hung
    # Not idempotent, sent to the hung replica before the router left it out: 504, not a hang.
    began = time.perf_counter()
    stack.router.services[(record.tenant, record.name)].replicas[hung].ejected_until = 0.0
    codes = [stack.client.post(url, json={"inputs": [[1]]}, headers=auth(key)).status_code for _ in range(2)]
    assert time.perf_counter() - began < 5
    assert set(codes) <= {200, 504}
    # Its health checks fail: it is stopped and replaced by a new replica.
    wait_until(
        lambda: hung not in stack.replicas(record, JobState.RUNNING, JobState.STARTING),
        20,
        what="the hung replica stopped",
    )
    wait_until(
        lambda: len(stack.router_sees(record)) == 2 and hung not in stack.router_sees(record),
        30,
        what="a new replica in its place",
    )


def test_routers_report_load_per_service_and_replica(stack: Stack) -> None:
    record, key = stack.deploy(service_spec(replicas=1, server_args=("--token-ms", "200")))
    (replica,) = stack.wait_ready(record, 1)
    url = f"{stack.endpoint(record)}/predict"
    with load(3, lambda: stack.client.post(url, json={"inputs": [[1]]}, headers=auth(key)).status_code):
        time.sleep(1.0)
        reports = [r for r in stack.serving.loads(time.time() - 1) if r.service_id == record.id]
    assert reports
    latest = max(reports, key=lambda r: r.at)
    assert latest.ongoing > 1.5 and latest.p99_ms is not None and latest.p99_ms > 150
    assert latest.replicas[replica].ongoing >= 1
