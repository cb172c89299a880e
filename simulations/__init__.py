"""The simulator: traces and what-if scenarios replayed through the same policy core on a virtual clock::

    from simulations import SimConfig, TimelineSimulation, load_nodes, open_trace
    sim = TimelineSimulation(load_nodes("seeds/clusters/example.yaml"), config=SimConfig(seed=1))
    result = sim.run(open_trace("tests/fixtures/traces/philly/philly.csv.gz", "philly"))
    print(result.summary["wait_s"])

The names below are the public surface; they load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulations.loaders import LoadOptions, load_nodes, open_trace
    from simulations.packing import PackingResult, packing_core, run_packing
    from simulations.scenario import Scenario, load_scenario
    from simulations.schema import TraceJob
    from simulations.timeline import ReplayResult, SimConfig, TimelineSimulation

_EXPORTS = {
    "TimelineSimulation": "simulations.timeline",
    "SimConfig": "simulations.timeline",
    "ReplayResult": "simulations.timeline",
    "run_packing": "simulations.packing",
    "packing_core": "simulations.packing",
    "PackingResult": "simulations.packing",
    "open_trace": "simulations.loaders",
    "load_nodes": "simulations.loaders",
    "LoadOptions": "simulations.loaders",
    "TraceJob": "simulations.schema",
    "load_scenario": "simulations.scenario",
    "Scenario": "simulations.scenario",
}
__all__ = [
    "LoadOptions",
    "PackingResult",
    "ReplayResult",
    "Scenario",
    "SimConfig",
    "TimelineSimulation",
    "TraceJob",
    "load_nodes",
    "load_scenario",
    "open_trace",
    "packing_core",
    "run_packing",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'simulations' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
