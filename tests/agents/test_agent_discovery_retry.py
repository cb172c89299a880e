"""Discovery that fails once is tried again (issue 17): a vendor tool that times out or NVML that does not answer
at start puts its vendor in ``error``, and the agent discovers it again with backoff — before registering, and
from its loop, registering again with the new devices — instead of registering a node without them for good.
And a GPU in MIG mode counts as its MIG devices on the node record, not as itself and them (issue 14)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pynvml  # type: ignore[import-untyped]
from agent_fakes import FakeNvml, StubApi, recorded_nvml

from agents.agent import Agent, AgentConfig, schedulable_devices
from agents.protocol import ShimState
from agents.shims.cambricon import CambriconShim
from agents.shims.moorethreads import MooreThreadsShim
from agents.shims.nvml import NvmlShim
from scheduler.catalog import load_catalog

MakeTool = Callable[[str, str], str]
S4000 = "moorethreads/gpustack-3511-mthreads-gmi-2.2.0-s4000.excerpt.txt"  # 2 x MTT S4000, mthreads-gmi 2.2.0
MLU370 = "cambricon/paddle-docs-cnmon-4.20.11-mlu370-x4.txt"  # 3 x MLU370-X4, cnmon 4.20.11


def flaky_tool(make_tool: MakeTool, tmp_path: Path, name: str, capture: Path, failures: int, hang: bool) -> str:
    """A vendor tool that, the first ``failures`` times it is run as recorded (no arguments), hangs past any
    timeout (``hang``) or exits 1 as a wedged driver makes it, and afterwards prints the real capture; other
    arguments fail as the recorded version's tool does (``write_replay_tool``)."""
    count = tmp_path / f"{name}.runs"
    fail = "exec sleep 30" if hang else 'echo "Error: driver not ready, please retry later" >&2; exit 1'
    return make_tool(
        name,
        f'[ -z "$*" ] || {{ echo "{name}: unrecognized option \'$*\'" >&2; exit 2; }}\n'
        f'n=$(cat "{count}" 2>/dev/null || echo 0); echo $((n + 1)) > "{count}"\n'
        f'if [ "$n" -lt {failures} ]; then {fail}; fi\n'
        f'cat "{capture}"',
    )


def _config(api: StubApi | None = None, **changes: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "api_url": api.url if api else "http://127.0.0.1:9",
            "node_token": api.token if api else "t",
            "node_id": "node-r",
            "backoff_jitter_s": 0.0,
            "discovery_backoff_initial_s": 0.05,
            "discovery_backoff_max_s": 0.2,
            "cpu_milli": 1000,
            "memory_mib": 1024,
            **changes,
        }
    )


def test_a_tool_that_times_out_at_start_is_discovered_again_before_registering(
    make_tool: MakeTool, tmp_path: Path, fixtures: Path, api: StubApi
) -> None:
    tool = flaky_tool(make_tool, tmp_path, "mthreads-gmi", fixtures / S4000, failures=1, hang=True)
    shim = MooreThreadsShim(binary=tool, timeout_s=0.5)
    agent = Agent(_config(api), [shim], client=httpx.Client(timeout=2.0))
    started = time.monotonic()
    devices = agent.discover_with_retry()
    assert time.monotonic() - started < 5  # the hung first run was killed at its timeout
    assert shim.status.state == ShimState.PRESENT and shim.status.tool_version == "2.2.0"
    assert [d.model for d in devices] == ["S4000", "S4000"] and agent.discoveries == 2
    agent.register_with_retry(attempts=1)
    (registration,) = api.registrations
    assert registration.node.devices == 2 and registration.node.model == "S4000"
    assert [s.state for s in registration.shims] == [ShimState.PRESENT]
    agent.close()


def test_without_any_device_discovery_goes_on_past_its_attempts_until_the_tool_answers(
    make_tool: MakeTool, tmp_path: Path, fixtures: Path
) -> None:
    tool = flaky_tool(make_tool, tmp_path, "mthreads-gmi", fixtures / S4000, failures=3, hang=False)
    shim = MooreThreadsShim(binary=tool, timeout_s=5)
    agent = Agent(_config(discovery_attempts=1), [shim])
    assert len(agent.discover_with_retry()) == 2 and agent.discoveries == 4
    assert (tmp_path / "mthreads-gmi.runs").read_text().strip() == "4"
    agent.close()


def test_a_stop_ends_the_retries_of_a_tool_that_never_answers(make_tool: MakeTool, tmp_path: Path) -> None:
    tool = make_tool("mthreads-gmi", 'echo "Error: driver not ready" >&2; exit 1')
    config = _config(discovery_backoff_initial_s=0.2, discovery_backoff_max_s=0.2)
    agent = Agent(config, [MooreThreadsShim(binary=tool)])
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    assert agent.discover_with_retry(stop) == []
    assert time.monotonic() - started < 3 and agent.failed_shims
    assert "driver not ready" in agent.failed_shims[0].status.reason


def test_a_vendor_still_failing_after_the_start_attempts_registers_again_from_the_loop(
    make_tool: MakeTool, tmp_path: Path, fixtures: Path, api: StubApi
) -> None:
    good = MooreThreadsShim(binary=make_tool("mthreads-gmi", f'cat "{fixtures / S4000}"'))
    cnmon = flaky_tool(make_tool, tmp_path, "cnmon", fixtures / MLU370, failures=2, hang=False)
    late = CambriconShim(binary=cnmon, timeout_s=5)
    agent = Agent(_config(api, interval_s=0.05, discovery_attempts=1), [good, late], client=httpx.Client(timeout=2.0))
    assert len(agent.discover_with_retry()) == 2  # the S4000s; cnmon failed once and is left to the loop
    assert agent.failed_shims == [late]
    agent.run(max_ticks=40)
    assert late.status.state == ShimState.PRESENT and not agent.failed_shims
    first, *_, last = api.registrations
    assert first.node.devices == 2 and [s.state for s in first.shims] == [ShimState.PRESENT, ShimState.ERROR]
    assert len(last.devices) == 5 and {d.vendor for d in last.devices} == {"moorethreads", "cambricon"}
    assert last.node.devices == 2  # the MLU370-X4s are reported, but the catalog has no model for them to count as
    assert api.heartbeats[-1].device_health.keys() == {d.uuid for d in last.devices}
    agent.close()


class FlakyNvml(FakeNvml):
    """NVML whose first ``failures`` initialisations fail as a driver in the middle of loading does."""

    def __init__(self, base: FakeNvml, failures: int, code: int) -> None:
        self.__dict__.update(base.__dict__)
        self.failures, self.code = failures, code

    def nvmlInit(self) -> None:
        if self.failures:
            self.failures -= 1
            raise pynvml.NVMLError(self.code)
        super().nvmlInit()


def test_nvml_that_fails_once_is_an_error_tried_again_and_a_mig_gpu_counts_as_its_mig_devices(
    fixtures: Path,
) -> None:
    recorded = recorded_nvml(fixtures / "nvml/a100-sxm4-80gb-mig-7x1g.json")  # A100-SXM4-80GB, 7 x 1g.10gb
    nvml = FlakyNvml(recorded, failures=1, code=pynvml.NVML_ERROR_UNKNOWN)
    shim = NvmlShim(nvml=nvml, catalog=load_catalog())
    agent = Agent(_config(), [shim])
    devices = agent.discover_with_retry()
    assert shim.status.state == ShimState.PRESENT and agent.discoveries == 2
    assert len(devices) == 8  # the GPU and its seven MIG devices are all reported...
    descriptor = agent.node_descriptor()
    assert descriptor.devices == 7 and descriptor.model == "A100"  # ...but the node offers the seven, not eight
    assert all(d.parent_uuid == devices[0].uuid for d in schedulable_devices(devices))
    agent.close()
    assert not nvml.initialised


def test_nvml_without_a_driver_is_absent_and_not_retried() -> None:
    nvml = FlakyNvml(FakeNvml([]), failures=10, code=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    agent = Agent(_config(), [NvmlShim(nvml=nvml, catalog=None)])
    assert agent.discover_with_retry() == [] and agent.discoveries == 1
    assert agent.shims[0].status.state == ShimState.ABSENT and not agent.failed_shims
