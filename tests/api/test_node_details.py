"""What an agent reports about its vendors and devices, stored and shown (issues 14 and 17): the real agent with
the NVIDIA shim on the recorded NVML answers of an A100-SXM4-80GB in MIG mode (7 x 1g.10gb), ``cnmon`` replaying
a real capture of 3 x MLU370-X4 (a part the catalog does not have) and an absent ``npu-smi``, against the real
server on SQLite and PostgreSQL; then ``GET /v1/nodes/{id}``, the list, and ``zhisuan nodes <id>``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from alembic import command
from api_stack import Stack
from sqlalchemy import Column, Engine, MetaData, Table, func, insert, inspect, select
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agents"))  # the agents' fakes and capture replays

from agent_fakes import recorded_nvml
from captures import CAPTURES, FIXTURES, write_replay_tool

from agents.agent import Agent, AgentConfig
from agents.protocol import Health
from agents.shims.ascend import AscendShim
from agents.shims.cambricon import CambriconShim
from agents.shims.nvml import NvmlShim
from api.cli import app
from api.db import alembic_config, make_engine, migrate
from api.models import NodeOut
from api.tables import CHANGES, DEVICES, NODES
from scheduler.catalog import load_catalog

MLU370 = next(c for c in CAPTURES if c.name == "paddle-docs-cnmon-4.20.11-mlu370-x4.txt")
GPU_UUID = "GPU-7fdaf0a5-179b-f636-d15d-daf243e3ff16"
#: The tables as revision 0004 left them, for rows written before 0005 (only the columns the test writes).
_OLD = MetaData()
NODES_0004 = Table("nodes", _OLD, *(Column(c.name, c.type) for c in NODES.c if c.name != "shims"))
DEVICES_0004 = Table(
    "devices",
    _OLD,
    *(
        Column(c.name, c.type)
        for c in DEVICES.c
        if c.name
        in {"node_id", "index", "uuid", "healthy", "health_reason", "telemetry", "updated_at", "model", "memory_mib"}
    ),
)


def _agent(stack: Stack, node_id: str, cnmon: str) -> Agent:
    config = AgentConfig(
        api_url=stack.url,
        node_token=stack.tokens["node"],
        node_id=node_id,
        site="local",
        cpu_milli=32000,
        memory_mib=65536,
        backoff_jitter_s=0.0,
    )
    nvml = NvmlShim(nvml=recorded_nvml(FIXTURES / "nvml/a100-sxm4-80gb-mig-7x1g.json"), catalog=load_catalog())
    shims = [nvml, CambriconShim(binary=cnmon, timeout_s=5), AscendShim(binary="npu-smi-absent-here", timeout_s=5)]
    agent = Agent(config, shims)
    agent.discover_with_retry()
    return agent


@pytest.fixture
def cnmon(tmp_path: Path) -> str:
    return write_replay_tool(tmp_path, "cnmon", MLU370)


def test_vendors_mig_devices_and_unknown_parts_are_stored_and_shown(stack: Stack, cnmon: str) -> None:
    node_id = "agent-a100-mig"
    agent = _agent(stack, node_id, cnmon)
    try:
        assert agent.register().node_id == node_id
        agent.tick()
        assert agent.flush()
        [node] = stack.rows(NODES, NODES.c.id == node_id)
        assert node["model"] == "A100" and node["devices"] == 7  # the MIG devices; not the GPU, not the MLUs
        assert [s["vendor"] for s in node["shims"]] == ["nvidia", "cambricon", "huawei"]
        rows = sorted(stack.rows(DEVICES, DEVICES.c.node_id == node_id), key=lambda r: r["index"])
        assert [r["index"] for r in rows] == list(range(10))  # MIG devices carry their GPU's index: renumbered
        migs, mlus = rows[:7], rows[7:]
        assert {r["parent_uuid"] for r in migs} == {GPU_UUID} and {r["profile"] for r in migs} == {"1g.10gb"}
        assert all(r["fraction"] == pytest.approx(1 / 7) and r["model"] == "A100" for r in migs)
        assert {(r["vendor"], r["name"], r["model"], r["model_known"]) for r in mlus} == {
            ("cambricon", "MLU370-X4", None, False)
        }
        assert all(r["health"] == Health.HEALTHY.value for r in rows)

        with stack.client("bob") as c:  # capacity is public to every tenant
            detail = c.get(f"/v1/nodes/{node_id}")
            assert detail.status_code == 200, detail.text
            one = NodeOut.model_validate(detail.json())
            listed = {n["id"]: n for n in c.get("/v1/nodes").json()["items"]}[node_id]
        assert one.device_count == 7 and one.devices_healthy == 7  # an MLU370-X4 is no A100
        shims = {s.vendor: s for s in one.shims or []}
        assert (shims["nvidia"].state, shims["nvidia"].tool_version) == ("present", "535.216.01")
        assert shims["nvidia"].driver_version == "535.216.01" and shims["nvidia"].command == "NVML"
        assert (shims["cambricon"].state, shims["cambricon"].tool_version) == ("present", "4.20.11")
        assert shims["huawei"].state == "absent" and "not found" in shims["huawei"].reason
        mlu = one.devices[7]
        assert mlu.name == "MLU370-X4" and mlu.model_known is False and mlu.other_names == []
        assert any("device model unknown" in note for note in mlu.notes or [])
        assert one.devices[0].parent_uuid == GPU_UUID and one.devices[0].telemetry
        # The list stays light: no telemetry, nothing of discovery, no vendors.
        assert "shims" not in listed and listed["devices"][0]["telemetry"] is None
        assert "name" not in listed["devices"][0] and listed["devices"][0]["health"] == "healthy"

        shown = CliRunner().invoke(app, ["nodes", node_id, "--url", stack.url, "--token", stack.tokens["bob"]])
        assert shown.exit_code == 0, shown.stdout + shown.stderr
        out = " ".join(shown.stdout.split())
        assert "7 of 7 healthy" in out
        assert "nvidia present NVML 535.216.01 535.216.01" in out
        assert "cambricon present cnmon 4.20.11 4.20.11" in out
        assert "huawei absent - - npu-smi-absent-here not found on PATH" in out
        assert f"NVIDIA A100-SXM4-80GB MIG 1g.10gb; MIG device of {GPU_UUID}, 14% of it" in out
        assert "MLU370-X4; not in the catalog cambricon-index0" in out
        assert "devices 7, 8, 9: device model unknown: catalog has no model for 'MLU370-X4'" in out
    finally:
        agent.close()


def test_unknown_health_is_stored_and_shown_with_its_reason(stack: Stack, tmp_path: Path) -> None:
    """cnmon answers discovery, then stops answering: its devices are ``unknown`` (still placeable), with the
    reason, in the database, in GET /v1/nodes/{id} and in zhisuan nodes; a heartbeat of health changes only
    keeps the reason."""
    runs = tmp_path / "runs"
    script = tmp_path / "cnmon"
    script.write_text(
        "#!/bin/sh\n"
        '[ -z "$*" ] || { echo "cnmon: unrecognized option" >&2; exit 2; }\n'
        f'n=$(cat "{runs}" 2>/dev/null || echo 0); echo $((n + 1)) > "{runs}"\n'
        f'[ "$n" -lt 1 ] && exec cat "{FIXTURES / MLU370.main}"\n'
        'echo "Error: MLU driver is not responding" >&2; exit 1\n'
    )
    script.chmod(0o755)
    node_id = "agent-a100-unknown"
    agent = _agent(stack, node_id, str(script))
    try:
        agent.register()
        agent.tick()
        assert agent.flush()
        rows = sorted(stack.rows(DEVICES, DEVICES.c.node_id == node_id), key=lambda r: r["index"])
        mlu = rows[7]
        assert mlu["health"] == "unknown" and mlu["healthy"] is True
        assert "not responding" in mlu["health_reason"] and mlu["health_reason"].startswith("cnmon 4.20.11")
        # A renewal with nothing new keeps the reason; so does a report of the same health without a sample.
        agent.tick()
        assert agent.flush()
        [again] = stack.rows(DEVICES, DEVICES.c.node_id == node_id, DEVICES.c.index == 7)
        assert again["health_reason"] == mlu["health_reason"]

        shown = CliRunner().invoke(app, ["nodes", node_id, "--url", stack.url, "--token", stack.tokens["bob"]])
        assert shown.exit_code == 0, shown.stdout + shown.stderr
        out = " ".join(shown.stdout.split())
        assert "unknown: cnmon 4.20.11" in out and "not responding" in out
    finally:
        agent.close()


def _migrate_to(engine: Engine, revision: str, down: bool = False) -> None:
    with engine.connect() as connection:
        config = alembic_config(engine.url.render_as_string(hide_password=False))
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)
        connection.commit()


def test_migration_0005_keeps_what_rows_showed_and_goes_back_with_the_change_feed(fresh_url: str) -> None:
    engine = make_engine(fresh_url)
    try:
        _migrate_to(engine, "0004")
        node = {
            **{k: "" for k in ("hostname", "vendor", "island", "switch")},
            **{k: "default" for k in ("site", "region")},
            **{"id": "n1", "model": "H100", "pool": "local/H100", "tier": "cloud", "labels": {}, "state": "ready"},
            **{"source": "agent", "registered_at": 1.0, "devices": 2, "cpu_milli": 0, "memory_mib": 0},
        }
        device = {"node_id": "n1", "uuid": "u", "health_reason": "", "telemetry": {}, "updated_at": 1.0}
        with engine.begin() as conn:
            conn.execute(insert(NODES_0004).values(node))
            conn.execute(
                insert(DEVICES_0004), [device | {"index": 0, "healthy": True}, device | {"index": 1, "healthy": False}]
            )
        _migrate_to(engine, "head")
        with engine.connect() as conn:
            [shims] = conn.execute(select(NODES.c.shims)).one()
            health = dict(conn.execute(select(DEVICES.c.index, DEVICES.c.health)).all())
            names = [tuple(r) for r in conn.execute(select(DEVICES.c.name, DEVICES.c.other_names, DEVICES.c.notes))]
        assert shims == [] and health == {0: "healthy", 1: "unhealthy"} and names == [("", [], [])] * 2
        _migrate_to(engine, "0004", down=True)
        with engine.begin() as conn:
            assert "shims" not in {c["name"] for c in inspect(conn).get_columns("nodes")}
            assert conn.execute(select(func.count()).select_from(DEVICES_0004)).scalar_one() == 2  # rows kept
            before = conn.execute(select(func.count()).select_from(CHANGES)).scalar_one()
            conn.execute(insert(NODES_0004).values(node | {"id": "n2"}))
            after = conn.execute(select(func.count()).select_from(CHANGES)).scalar_one()
        assert after == before + 1  # the change feed's triggers survived SQLite's table rebuild
        migrate(engine)
    finally:
        engine.dispose()
