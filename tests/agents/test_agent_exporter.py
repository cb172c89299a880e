"""Prometheus exporter scraped over real HTTP; the Grafana dashboard only uses exported metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agent_fakes import FakeGpu, FakeNvml
from prometheus_client.parser import text_string_to_metric_families

from agents.agent import Agent, AgentConfig, export_to
from agents.exporter import TelemetryStore, start_exporter
from agents.shims.emulated import EmulatedShim
from agents.shims.nvml import NvmlShim
from scheduler.catalog import Catalog


@pytest.fixture
def scrape(catalog: Catalog) -> Iterator[tuple[str, Agent]]:
    """An agent with an emulated Ascend node plus two fake-NVML GPUs, its exporter on a free loopback port."""
    gpus = [FakeGpu(uuid="GPU-a", util_gpu=87, power_mw=412_500), FakeGpu(uuid="GPU-b", bus_id="00000000:19:00.0")]
    gpus[1].not_supported = {"nvmlDeviceGetPowerUsage"}
    fake = FakeNvml(gpus)
    npu = EmulatedShim("Ascend910B", devices=2, catalog=catalog, node="n1")
    store = TelemetryStore(node="n1", hostname="host-1")
    agent = Agent(
        AgentConfig(api_url="http://127.0.0.1:9", node_token="t", node_id="n1"),
        [NvmlShim(nvml=fake, catalog=catalog), npu],
        on_tick=export_to(store),
    )
    agent.discover()
    npu.set_load(0, 60, 32_768)
    fake.events.append((0, 48))
    agent.tick()
    server, _thread, _registry = start_exporter(store, port=0, addr="127.0.0.1")
    try:
        body = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).text
        yield body, agent
    finally:
        server.shutdown()
        server.server_close()


def _families(body: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _value(families: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [v for lab, v in families[name] if all(lab.get(k) == val for k, val in labels.items())]
    assert len(matches) == 1, (name, labels, families.get(name))
    return matches[0]


def test_neutral_family_for_every_vendor(scrape: tuple[str, Agent]) -> None:
    families = _families(scrape[0])
    assert _value(families, "zhisuan_device_utilization_percent", vendor="huawei", device="0") == 60
    assert _value(families, "zhisuan_device_memory_used_bytes", vendor="huawei", device="0") == 32_768 * 2**20
    assert _value(families, "zhisuan_device_utilization_percent", vendor="nvidia", uuid="GPU-a") == 87
    assert _value(families, "zhisuan_device_power_watts", uuid="GPU-a") == 412.5
    labels = next(lab for lab, _ in families["zhisuan_device_power_watts"] if lab["uuid"] == "GPU-a")
    assert labels == {"node": "n1", "device": "0", "uuid": "GPU-a", "model": "H100", "vendor": "nvidia"}
    # unreadable power is absent, never 0, and the gap itself is exported
    assert not [lab for lab, _ in families["zhisuan_device_power_watts"] if lab["uuid"] == "GPU-b"]
    assert _value(families, "zhisuan_device_field_unavailable", uuid="GPU-b", field="power_w") == 1
    assert _value(families, "zhisuan_device_health", uuid="GPU-a", state="unhealthy") == 1  # XID 48
    assert _value(families, "zhisuan_device_xid_events_total", uuid="GPU-a") == 1
    assert _value(families, "zhisuan_agent_buffered_batches", node="n1") == 1


def test_dcgm_compatible_names_for_nvidia(scrape: tuple[str, Agent]) -> None:
    families = _families(scrape[0])
    assert _value(families, "DCGM_FI_DEV_GPU_UTIL", UUID="GPU-a") == 87
    assert _value(families, "DCGM_FI_DEV_POWER_USAGE", UUID="GPU-a") == 412.5
    assert _value(families, "DCGM_FI_DEV_FB_USED", UUID="GPU-a") == 512
    assert _value(families, "DCGM_FI_DEV_FB_FREE", UUID="GPU-a") == 80 * 1024 - 512
    assert _value(families, "DCGM_FI_DEV_GPU_TEMP", UUID="GPU-a") == 33
    assert _value(families, "DCGM_FI_DEV_XID_ERRORS", UUID="GPU-a") == 48
    assert _value(families, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", UUID="GPU-a") == 123_456_789  # mJ
    labels = next(lab for lab, _ in families["DCGM_FI_DEV_GPU_UTIL"] if lab["UUID"] == "GPU-a")
    assert labels["gpu"] == "0" and labels["modelName"] == "NVIDIA H100 80GB HBM3" and labels["Hostname"] == "host-1"
    assert all(lab["vendor"] == "nvidia" for lab, _ in families["DCGM_FI_DEV_GPU_UTIL"])  # none for the NPUs


def test_dashboard_queries_only_exported_metrics(scrape: tuple[str, Agent]) -> None:
    exported = set(_families(scrape[0]))
    dashboard = json.loads(Path("deploy/grafana/zhisuan-devices.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    used = {m for e in exprs for m in re.findall(r"\b((?:zhisuan|DCGM)_[A-Za-z_]+)\b", e)}
    assert used and used <= exported, used - exported
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"node", "vendor", "model"}
