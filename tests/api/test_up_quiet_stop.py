"""Stopping what ``zhisuan up`` runs (:func:`api.up.running`: API, one emulated node agent per node) prints no
agent warning: the agents are stopped, and waited for together, while the API still answers, and an agent told to
stop — even one still registering — goes quietly (issue 17). A guard: a6f5fe8 (agents waited for together before
the API stops) already kept these quiet, as a real ``zhisuan up --max-nodes 2`` stopped by SIGINT showed. No Ray:
the cluster file's nodes get agents, and no scheduler runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
from api_stack import free_port, make_settings

from api.up import running

CLUSTER = """name: quiet
sites:
  bj1: {region: north, tier: cloud}
pools:
  - {model: H100, site: bj1, nodes: 6, devices_per_node: 8, cpu_cores: 64, memory_gib: 256}
"""


@pytest.mark.parametrize("when", ["reporting", "registering"])
def test_stopping_up_prints_no_agent_warning(when: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    # The API's own heartbeat interval (5 s), as zhisuan up runs it; the cluster comes from running()'s argument.
    settings = make_settings(
        f"sqlite:///{tmp_path / 'zhisuan.db'}", tmp_path, cluster_file=None, heartbeat_interval_s=5.0
    )
    with (
        caplog.at_level(logging.INFO),
        running(
            settings,
            port=free_port(),
            ray_address="127.0.0.1:1",  # never dialled: no scheduler
            cluster_file=tmp_path / "cluster.yaml",
            scheduler=False,
            agent_interval_s=0.1,
        ) as run,
    ):
        if when == "reporting":  # every agent registered and heartbeating at 10 Hz when the stop comes
            deadline = time.monotonic() + 30
            headers = {"Authorization": f"Bearer {run.admin_token}"}
            while time.monotonic() < deadline:
                items = httpx.get(run.url + "/v1/nodes", headers=headers, timeout=10).json()["items"]
                if len(items) == 6 and all(i["last_seq"] is not None for i in items):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the agents did not all report")
            time.sleep(0.5)
    loud = [r for r in caplog.records if r.name.startswith("zhisuan") and r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
