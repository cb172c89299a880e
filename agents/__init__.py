"""The Zhisuan node agent: accelerator discovery, telemetry, health and Prometheus export on every node.

* :mod:`agents.shims` — one adapter per vendor behind one interface (NVML, npu-smi, cnmon, amdsmi, hy-smi,
  xpu-smi, ixsmi, mx-smi, mthreads-gmi) plus emulated devices for machines without accelerators;
* :mod:`agents.health` — fatal XIDs, uncorrectable ECC, row-remap failure → device unhealthy;
* :mod:`agents.protocol` — the register/heartbeat wire contract the API implements;
* :mod:`agents.agent` — the loop (sampling, bounded buffering, backoff);
* :mod:`agents.exporter` — ``zhisuan_device_*`` and dcgm-compatible ``DCGM_FI_DEV_*`` metrics;
* :mod:`agents.cli` — ``zhisuan agent run | discover | ray-spec``.

The names below are the public surface; they load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.agent import Agent, AgentConfig
    from agents.exporter import TelemetryStore, start_exporter
    from agents.protocol import DeviceInfo, DeviceSample, Health
    from agents.shims import VENDORS, make_shim
    from agents.shims.base import Shim
    from agents.shims.emulated import EmulatedShim

_EXPORTS = {
    "Agent": "agents.agent",
    "AgentConfig": "agents.agent",
    "DeviceInfo": "agents.protocol",
    "DeviceSample": "agents.protocol",
    "Health": "agents.protocol",
    "Shim": "agents.shims.base",
    "make_shim": "agents.shims",
    "VENDORS": "agents.shims",
    "EmulatedShim": "agents.shims.emulated",
    "TelemetryStore": "agents.exporter",
    "start_exporter": "agents.exporter",
}
__all__ = [
    "VENDORS",
    "Agent",
    "AgentConfig",
    "DeviceInfo",
    "DeviceSample",
    "EmulatedShim",
    "Health",
    "Shim",
    "TelemetryStore",
    "make_shim",
    "start_exporter",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
