"""The real node agent (emulated devices) against the real server: register, heartbeat, health; nodes and pools."""

from __future__ import annotations

import time

import httpx
import pytest
from api_stack import JOB, Stack, assert_problem
from sqlalchemy import update

from agents.agent import Agent, AgentConfig, AgentStopped
from agents.protocol import PROTOCOL_2_FIELDS, HeartbeatRequest, HeartbeatResponse
from agents.shims.emulated import EmulatedShim
from api.models import NodeOut, PoolOut
from api.tables import DEVICE_HEALTH_EVENTS, DEVICES, JOBS, NODES


def make_agent(stack: Stack, node_id: str, token: str | None = None, model: str = "H100", devices: int = 4) -> Agent:
    config = AgentConfig(
        api_url=stack.url,
        node_token=token or stack.tokens["node"],
        node_id=node_id,
        site="local",
        island=f"{node_id}-nvlink",
        cpu_milli=32000,
        memory_mib=65536,
        backoff_initial_s=0.05,
        backoff_jitter_s=0.0,
    )
    agent = Agent(config, [EmulatedShim(model, devices=devices, node=node_id)])
    agent.discover()
    return agent


def run_on(stack: Stack, job_id: str, model: str, node: str, devices: list[int]) -> None:
    """Mark a job running on ``devices`` of ``node`` (as the scheduler service would)."""
    placement = {
        "model": model,
        "pool": f"local/{model}",
        "topology": "node",
        "workers": [{"rank": 0, "node": node, "devices": devices, "milli": 1000}],
    }
    with stack.engine.begin() as conn:
        conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(state="running", placement=placement))


def test_register_heartbeat_and_read_back(stack: Stack) -> None:
    agent = make_agent(stack, "agent-h100-1")
    try:
        reply = agent.register()
        assert reply.node_id == "agent-h100-1" and reply.heartbeat_interval_s == stack.ctx.settings.heartbeat_interval_s
        shim = agent.shims[0]
        assert isinstance(shim, EmulatedShim)
        shim.set_load(0, 80.0, 1000.0)
        agent.tick()
        agent.tick()
        assert agent.flush() and agent.buffered == 0  # both batches acknowledged
        [node] = stack.rows(NODES, NODES.c.id == "agent-h100-1")
        assert node["source"] == "agent" and node["pool"] == "local/H100" and node["devices"] == 4
        assert node["last_seq"] == 1 and node["agent_version"]
        devices = stack.rows(DEVICES, DEVICES.c.node_id == "agent-h100-1")
        assert len(devices) == 4 and all(d["healthy"] for d in devices)
        busy = next(d for d in devices if d["index"] == 0)
        assert busy["telemetry"]["utilization_pct"] == 80.0 and busy["telemetry"]["received_at"] > 0
        # A fatal XID turns the device unhealthy, with the reason.
        shim.inject_xid(1, 79)
        agent.tick()
        assert agent.flush()
        [bad] = stack.rows(DEVICES, DEVICES.c.node_id == "agent-h100-1", DEVICES.c.index == 1)
        assert not bad["healthy"] and "79" in bad["health_reason"]
        with stack.client("bob") as c:  # any tenant may read capacity
            node_out = NodeOut.model_validate(c.get("/v1/nodes/agent-h100-1").json())
            assert node_out.state == "ready" and node_out.devices_healthy == 3
            assert node_out.devices[0].telemetry and node_out.devices[0].telemetry["utilization_pct"] == 80.0
            listed = {n["id"]: n for n in c.get("/v1/nodes").json()["items"]}
            assert listed["agent-h100-1"]["devices"][0]["telemetry"] is None  # telemetry only per node
            assert listed["local-h100-00000"]["source"] == "file"
            pools = {p["pool"]: PoolOut.model_validate(p) for p in c.get("/v1/pools").json()["items"]}
            h100 = pools["local/H100"]
            assert h100.nodes >= 3 and h100.devices >= 20 and not h100.domestic
            assert pools["local/Ascend910B"].domestic and pools["local/Ascend910B"].devices == 16
    finally:
        agent.close()


def test_registered_nodes_join_the_inventory(stack: Stack) -> None:
    with stack.client("alice") as c:
        too_big = {**JOB, "workers": 5, "devices_per_worker": 8, "models": ["MLU590"]}
        assert_problem(c.post("/v1/jobs", json=too_big), 422, "unschedulable")
    agent = make_agent(stack, "agent-mlu-1", model="MLU590", devices=8)
    try:
        agent.register()
    finally:
        agent.close()
    with stack.client("alice") as c:  # now 4 + 8 MLU590 devices... still not 40
        assert_problem(c.post("/v1/jobs", json=too_big), 422, "unschedulable", "12")
        fits = {**JOB, "workers": 1, "devices_per_worker": 8, "models": ["MLU590"]}
        assert c.post("/v1/jobs", json=fits).status_code == 201


def test_silent_node_is_down_and_comes_back(stack: Stack) -> None:
    agent = make_agent(stack, "agent-h100-quiet")
    try:
        agent.register()
        old = time.time() - 10 * stack.ctx.settings.heartbeat_interval_s
        with stack.engine.begin() as conn:  # its lease ran out: nothing else says it is down
            conn.execute(
                update(NODES).where(NODES.c.id == "agent-h100-quiet").values(last_heartbeat=old, lease_expires_at=old)
            )
        with stack.client("alice") as c:
            assert c.get("/v1/nodes/agent-h100-quiet").json()["state"] == "down"
        agent.tick()
        assert agent.flush()
        with stack.client("alice") as c:
            assert c.get("/v1/nodes/agent-h100-quiet").json()["state"] == "ready"
    finally:
        agent.close()


def test_devices_held_by_running_jobs_are_not_free(stack: Stack) -> None:
    with stack.client("alice") as c:
        free_before = {p["pool"]: p["devices_free"] for p in c.get("/v1/pools").json()["items"]}
        job = c.post("/v1/jobs", json={**JOB, "devices_per_worker": 2, "models": ["Ascend910B"]}).json()
    run_on(stack, job["id"], "Ascend910B", "local-ascend910b-00000", [0, 1])
    with stack.client("bob") as c:
        pools = {p["pool"]: p for p in c.get("/v1/pools").json()["items"]}
        assert pools["local/Ascend910B"]["devices_free"] == free_before["local/Ascend910B"] - 2
        assert job["id"] not in c.get("/v1/nodes/local-ascend910b-00000").text
        queue = c.get("/v1/queues/sme-vision").json()
        assert queue["running"] == 0
    with stack.client("alice") as c:
        acme = c.get("/v1/queues/acme").json()
        assert acme["running"] >= 1 and acme["usage"]["Ascend910B"] >= 2 and acme["usage"]["ncu"] > 0


def test_unknown_node_is_asked_to_register_again(stack: Stack) -> None:
    body = {
        "node_id": "never-registered",
        "agent_uptime_s": 1.0,
        "sent_wall_time": 0.0,
        "batches": [],
        "buffered_batches": 0,
        "dropped_batches_total": 0,
        "rejected_batches_total": 0,
    }
    with stack.client("node") as c:
        r = c.post("/v1/agent/heartbeat", json=body)
    reply = HeartbeatResponse.model_validate(r.json())
    assert r.status_code == 200 and reply.reregister and reply.acked_seq == -1


def test_unknown_model_and_wrong_node_are_refused(stack: Stack) -> None:
    agent = make_agent(stack, "agent-odd")
    body = agent.node_descriptor().model_dump(mode="json")
    request = {
        "agent_version": "0.1.0",
        "node": {**body, "model": "TPUv9"},
        "devices": [],
        "shims": [],
        "sent_wall_time": 0.0,
    }
    before = stack.counts()
    with stack.client("node") as c:
        assert_problem(c.post("/v1/agent/register", json=request), 422, "validation-error", "TPUv9")
        request["node"] = {**body, "model": None}
        assert_problem(c.post("/v1/agent/register", json=request), 422, "validation-error", "no catalog model")
    with stack.client("admin") as c:
        bound = c.post("/v1/nodes/tokens", json={"node_id": "only-this-node"}).json()["token"]
    assert stack.counts()["nodes"] == before["nodes"]
    other = make_agent(stack, "agent-someone-else", token=bound)
    try:
        with pytest.raises(AgentStopped, match="403"):
            other.register()
    finally:
        other.close()
        agent.close()
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.tokens['alice']}"}) as c:
        assert_problem(c.post("/v1/agent/register", json=request), 403, "forbidden", "node-agent")


def test_emulated_telemetry_follows_the_jobs_placed_on_the_node(stack: Stack) -> None:
    agent = make_agent(stack, "agent-h100-work", devices=4)
    try:
        agent.register()
        with stack.client("alice") as c:
            job = c.post("/v1/jobs", json={**JOB, "devices_per_worker": 2}).json()
        run_on(stack, job["id"], "H100", "agent-h100-work", [1, 2])
        shim = agent.shims[0]
        assert isinstance(shim, EmulatedShim)

        def busy_after_heartbeat() -> list[float | None]:
            time.sleep(0.6)  # the API's table of work is refreshed at most every half interval (≤ 1 s)
            agent.tick()
            assert agent.flush()
            return [s.utilization_pct for s in shim.sample()]

        utilization = busy_after_heartbeat()
        assert utilization == [0.0, 100.0, 100.0, 0.0]
        sample = shim.sample()[1]
        assert sample.memory_used_mib == sample.memory_total_mib and sample.power_w == shim.spec.tdp_w  # type: ignore[union-attr]
        agent.tick()
        assert agent.flush()
        [row] = stack.rows(DEVICES, DEVICES.c.node_id == "agent-h100-work", DEVICES.c.index == 1)
        assert row["telemetry"]["utilization_pct"] == 100.0  # the API sees what the job does
        with stack.engine.begin() as conn:
            conn.execute(update(JOBS).where(JOBS.c.id == job["id"]).values(state="succeeded"))
        assert busy_after_heartbeat() == [0.0, 0.0, 0.0, 0.0]
    finally:
        agent.close()


def test_heartbeats_carry_only_what_changed(stack: Stack) -> None:
    """Protocol 2: a lease renewal every interval, health the API has not acknowledged, a sample when due."""
    agent = make_agent(stack, "agent-h100-delta")
    sent: list[HeartbeatRequest] = []
    original = agent.heartbeat_request

    def recording(now: float) -> HeartbeatRequest:
        request = original(now)
        sent.append(request)
        return request

    agent.heartbeat_request = recording  # type: ignore[method-assign]
    try:
        reply = agent.register()
        assert reply.telemetry_interval_s and reply.lease_s == 3 * reply.heartbeat_interval_s  # type: ignore[operator]
        assert agent.changes_only
        agent.tick()
        assert agent.flush()
        first = sent[-1]
        assert len(first.batches) == 1 and len(first.device_health) == 4  # everything, once
        agent.tick()
        assert agent.flush()
        renewal = sent[-1]
        assert renewal.batches == [] and renewal.device_health == {}  # nothing changed: a renewal only
        [node] = stack.rows(NODES, NODES.c.id == "agent-h100-delta")
        assert node["lease_expires_at"] > time.time() + reply.heartbeat_interval_s  # type: ignore[operator]
        shim = agent.shims[0]
        assert isinstance(shim, EmulatedShim)
        shim.inject_xid(2, 79)
        agent.tick()
        assert agent.heartbeat_due(agent.clock())  # a health change does not wait for the interval
        assert agent.flush()
        change = sent[-1]
        assert list(change.device_health) == [agent.devices[2].uuid] and len(change.batches) == 1
        history = stack.rows(DEVICE_HEALTH_EVENTS, DEVICE_HEALTH_EVENTS.c.node_id == "agent-h100-delta")
        assert [(h["index"], h["healthy"]) for h in history] == [(2, False)] and "79" in history[0]["reason"]
    finally:
        agent.close()


def test_a_protocol_1_agent_gets_answers_in_its_own_words(stack: Stack) -> None:
    agent = make_agent(stack, "agent-h100-old")
    try:
        body = agent.registration().model_dump(mode="json") | {"protocol_version": 1}
        with stack.client("node") as c:
            registered = c.post("/v1/agent/register", json=body).json()
            assert registered["heartbeat_interval_s"] and not PROTOCOL_2_FIELDS & set(registered)
            heartbeat = agent.heartbeat_request(agent.clock()).model_dump(mode="json") | {"protocol_version": 1}
            answered = c.post("/v1/agent/heartbeat", json=heartbeat).json()
            assert answered["acked_seq"] == -1 and not PROTOCOL_2_FIELDS & set(answered)
            refused = c.post("/v1/agent/register", json=body | {"protocol_version": 9})
            assert_problem(refused, 422, "validation-error", "protocols 1, 2")
    finally:
        agent.close()
