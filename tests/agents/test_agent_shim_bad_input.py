"""Bad input never escapes a shim: random, truncated and garbled variants of every fixture, tools that hang, fail,
print garbage bytes, localise their output or sit on PATH under another name. What the parser did not understand
is named (tool and version) on the device, logged once, and never turns into a healthy device without metrics."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from captures import CAPTURES, FIXTURES, make_capture_shim, write_replay_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.protocol import METRIC_FIELDS, Health, ShimState
from agents.shims.amd_cli import ROCM_SMI_ARGS, AmdSmiCliShim, RocmSmiShim
from agents.shims.ascend import AscendShim
from agents.shims.cambricon import CambriconShim, parse_cnmon_json
from agents.shims.hygon import HY_SMI_ARGS, HygonShim
from agents.shims.iluvatar import QUERY, IluvatarShim
from agents.shims.kunlunxin import KunlunxinShim
from agents.shims.metax import MetaxShim
from agents.shims.moorethreads import MooreThreadsShim
from agents.shims.tool import CORE_METRICS, ToolOutcome, ToolResult, ToolShim

MakeTool = Callable[[str, str], str]


@dataclass(frozen=True)
class Replay:
    """A fixture and how its tool is asked for it: (shim class, {argument string: fixture path})."""

    name: str
    shim: type[ToolShim]
    responses: dict[str, str]


_SHIMS: dict[str, type[ToolShim]] = {
    "ascend": AscendShim,
    "cambricon": CambriconShim,
    "hygon": HygonShim,
    "kunlunxin": KunlunxinShim,
    "iluvatar": IluvatarShim,
    "metax": MetaxShim,
    "moorethreads": MooreThreadsShim,
    "amd-cli": AmdSmiCliShim,
    "rocm-smi": RocmSmiShim,
}
_ALIASES = {"HYSMI": " ".join(HY_SMI_ARGS), "ROCMSMI": " ".join(ROCM_SMI_ARGS)}
_B910 = "ascend/npu-smi-info-910b.txt"
_PER_CHIP = {
    "info -m": "ascend/npu-smi-info-m.txt",
    "info -t usages -i 1 -c 0": "ascend/npu-smi-usages.txt",
    "info -t power -i 1 -c 0": "ascend/npu-smi-power.txt",
    "info -t temp -i 1 -c 0": "ascend/npu-smi-temp.txt",
}
_HY = " ".join(HY_SMI_ARGS)
_IX = f"--query-gpu={','.join(QUERY)} --format=csv,noheader,nounits"

REPLAYS: list[Replay] = [
    *(Replay(c.name, _SHIMS[c.shim], {_ALIASES.get(k, k): v for k, v in c.responses.items()}) for c in CAPTURES),
    # the synthetic fixtures (broken and well-formed) in the layouts the tools document
    Replay("npu-smi-info-910b.txt", AscendShim, {"info": _B910, **_PER_CHIP}),
    Replay("npu-smi-info-truncated.txt", AscendShim, {"info": "ascend/npu-smi-info-truncated.txt", **_PER_CHIP}),
    Replay("npu-smi-info-garbled.txt", AscendShim, {"info": "ascend/npu-smi-info-garbled.txt", **_PER_CHIP}),
    Replay("npu-smi-usages.txt", AscendShim, {"info": _B910, **_PER_CHIP}),
    Replay("cnmon-info.txt", CambriconShim, {"info -u -m -e -p": "cambricon/cnmon-info.txt"}),
    Replay("cnmon-info-partial.txt", CambriconShim, {"info -u -m -e -p": "cambricon/cnmon-info-partial.txt"}),
    Replay("hy-smi.json", HygonShim, {_HY: "hygon/hy-smi.json"}),
    Replay("hy-smi-banner.txt", HygonShim, {_HY: "hygon/hy-smi-banner.txt"}),
    Replay("hy-smi-truncated.json", HygonShim, {_HY: "hygon/hy-smi-truncated.json"}),
    Replay("ixsmi-query.csv", IluvatarShim, {_IX: "iluvatar/ixsmi-query.csv"}),
    Replay("xpu-smi-m.txt", KunlunxinShim, {"-m": "kunlunxin/xpu-smi-m.txt"}),
    Replay("xpu-smi-m-partial.txt", KunlunxinShim, {"-m": "kunlunxin/xpu-smi-m-partial.txt"}),
    Replay("mx-smi.txt", MetaxShim, {"": "metax/mx-smi.txt"}),
    Replay("mthreads-gmi-q.json", MooreThreadsShim, {"-q --json": "moorethreads/mthreads-gmi-q.json"}),
    Replay(
        "amd-smi-list",
        AmdSmiCliShim,
        {"static --json": "amd/amd-smi-list-static.json", "metric --json": "amd/amd-smi-list-metric.json"},
    ),
    Replay(
        "amd-smi-gpu-data",
        AmdSmiCliShim,
        {"static --json": "amd/amd-smi-gpu-data-static.json", "metric --json": "amd/amd-smi-gpu-data-metric.json"},
    ),
]


def test_every_tool_fixture_is_replayed() -> None:
    """The property tests below cover every vendor-tool fixture (NVML fixtures are recorded library answers,
    exercised in test_agent_nvml.py; decisions/ holds the simulator's golden decision logs, not tool output)."""
    replayed = {path for r in REPLAYS for path in r.responses.values()}
    replayed |= {"cambricon/cnmon_info.json"}  # an export file, read by parse_cnmon_json (tested below)
    on_disk = {
        str(p.relative_to(FIXTURES))
        for p in FIXTURES.glob("*/*")
        if p.parent.name not in {"nvml", "kubernetes", "decisions"} and p.name != "README.md" and p.is_file()
    }
    assert on_disk <= replayed, sorted(on_disk - replayed)


def _runner(responses: dict[str, str], mutate: Callable[[str], str] | None = None) -> Any:
    texts = {args: (FIXTURES / path).read_text() for args, path in responses.items()}

    def run(argv: Sequence[str], timeout_s: float) -> ToolResult:
        key = " ".join(argv[1:])
        if key not in texts:
            return ToolResult(argv=list(argv), outcome=ToolOutcome.FAILED, returncode=2, stderr="unknown option")
        text = texts[key]
        return ToolResult(
            argv=list(argv), outcome=ToolOutcome.OK, returncode=0, stdout=mutate(text) if mutate else text
        )

    return run


def _check(shim: ToolShim, fast: bool) -> None:
    devices = shim.devices
    assert shim.status.state in (ShimState.PRESENT, ShimState.ABSENT, ShimState.ERROR)
    if shim.status.state != ShimState.PRESENT:
        assert devices == [] and shim.status.reason
    assert len({d.uuid for d in devices}) == len(devices), "a device reported twice"
    samples = shim.sample(fast=fast)
    assert [s.uuid for s in samples] == [d.uuid for d in devices]
    for sample in samples:
        if sample.health == Health.HEALTHY:
            assert any(getattr(sample, f) is not None for f in CORE_METRICS), "healthy without metrics"
        else:
            assert sample.health_reasons
        for field in METRIC_FIELDS:
            if field != "xid_events" and getattr(sample, field) is None and field not in {"energy_j"}:
                assert field in sample.fields_unavailable


@st.composite
def _mutation(draw: st.DrawFn) -> Callable[[str], str]:
    kind = draw(st.sampled_from(["truncate", "garbage", "drop-lines", "digits", "random"]))
    cut = draw(st.floats(min_value=0, max_value=1))
    junk = draw(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
    seed = draw(st.integers(min_value=0, max_value=2**16))

    def mutate(text: str) -> str:
        at = int(len(text) * cut)
        if kind == "truncate":
            return text[:at]
        if kind == "garbage":
            return text[:at] + junk + text[at:]
        lines = text.splitlines(keepends=True)
        if kind == "drop-lines":
            return "".join(line for i, line in enumerate(lines) if (i * 7 + seed) % 5)
        if kind == "digits":
            return "".join(str((int(c) + seed) % 10) if c.isdigit() and (ord(c) + seed) % 3 == 0 else c for c in text)
        return junk * (1 + seed % 50)

    return mutate


@pytest.mark.parametrize("replay", REPLAYS, ids=[r.name for r in REPLAYS])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutate=_mutation())
def test_random_and_truncated_variants_never_escape_a_shim(replay: Replay, mutate: Callable[[str], str]) -> None:
    # discovery on a mutated output
    broken = replay.shim(runner=_runner(replay.responses, mutate), catalog="default")
    broken.discover()
    _check(broken, fast=True)
    # discovery on the real output, then a tick whose output comes back mutated
    shim = replay.shim(runner=_runner(replay.responses), catalog="default")
    shim.discover()
    shim.runner = _runner(replay.responses, mutate)
    _check(shim, fast=False)


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=0, max_value=2000), junk=st.text(max_size=30))
def test_cnmon_json_export_never_raises_but_on_invalid_json(cut: int, junk: str) -> None:
    text = (FIXTURES / "cambricon/cnmon_info.json").read_text()
    try:
        readings = parse_cnmon_json(text[:cut] + junk)
    except ValueError:
        return  # not JSON: the caller (a shim) reports it; what matters is no other exception type
    assert all(r.index >= 0 for r in readings)


# ------------------------------------------------------------------------------------------- tool behaviour


def test_hanging_tool_is_reported_and_the_next_tick_tries_again(tmp_path: Path, make_tool: MakeTool) -> None:
    capture = next(c for c in CAPTURES if c.shim == "metax")
    good = write_replay_tool(tmp_path, "mx-smi-good", capture)
    shim = MetaxShim(binary=good, catalog="default", timeout_s=0.5)
    assert len(shim.discover()) == 8
    shim.binary = make_tool("mx-smi-hung", "sleep 30")
    start = time.monotonic()
    hung = shim.sample()
    assert time.monotonic() - start < 5
    assert all(s.health == Health.UNKNOWN and "timed out after" in s.health_reasons[0] for s in hung)
    assert hung[0].health_reasons[0].startswith("mx-smi 2.2.4: ")
    shim.binary = good
    assert all(s.health == Health.HEALTHY and s.power_w for s in shim.sample())


def test_tool_hanging_at_discovery_is_an_error_not_absence(make_tool: MakeTool) -> None:
    shim = CambriconShim(binary=make_tool("cnmon", "sleep 30"), catalog="default", timeout_s=0.3)
    assert shim.discover() == []
    assert shim.status.state == ShimState.ERROR and "timed out" in shim.status.reason


def test_nonzero_exit_gives_unknown_with_the_tools_message(tmp_path: Path, make_tool: MakeTool) -> None:
    capture = next(c for c in CAPTURES if c.name.startswith("paddle-docs-cnmon-5.10.13"))
    shim = make_capture_shim(capture, tmp_path)
    shim.discover()
    shim.binary = make_tool("cnmon-broken", "echo 'cndev: device lost' >&2; exit 7")
    samples = shim.sample()
    assert [s.health for s in samples] == [Health.UNKNOWN, Health.UNKNOWN]
    assert "exited 7: cndev: device lost" in samples[0].health_reasons[0]
    assert samples[0].health_reasons[0].startswith("cnmon 5.10.13: ")


def test_binary_under_another_name_is_found_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capture = next(c for c in CAPTURES if "p800" in c.name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_replay_tool(bin_dir, "xpu_smi", capture)  # PaddlePaddle's docs call it xpu_smi; Kunlunxin's, xpu-smi
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    shim = KunlunxinShim(catalog="default")
    assert shim.binary == "xpu_smi"
    assert [d.model for d in shim.discover()] == ["P800"] * 8
    assert shim.status.command == "xpu_smi"


def test_garbage_bytes_are_an_error_naming_the_tool(make_tool: MakeTool) -> None:
    tool = make_tool("mthreads-gmi", r"printf '\377\376\000\033[31m\201garbage\n|||| 0 |'")
    shim = MooreThreadsShim(binary=tool, catalog="default")
    assert shim.discover() == []
    assert shim.status.state == ShimState.ERROR
    assert shim.status.reason.startswith("mthreads-gmi (version not printed): ")


def test_a_file_that_cannot_be_run_is_an_error_not_a_crash(tmp_path: Path) -> None:
    not_executable = tmp_path / "npu-smi"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    not_executable.chmod(stat.S_IRUSR | stat.S_IWUSR)
    shim = AscendShim(binary=str(not_executable), catalog="default")
    assert shim.discover() == [] and shim.status.state in (ShimState.ERROR, ShimState.ABSENT)
    directory = tmp_path / "cnmon"
    directory.mkdir()
    shim2 = CambriconShim(binary=str(directory), catalog="default")
    assert shim2.discover() == [] and shim2.status.reason


def test_localised_output_and_the_c_locale(make_tool: MakeTool) -> None:
    path = FIXTURES / "cambricon/paddle-docs-cnmon-5.10.13-mlu370-x8.txt"
    # The tool is run with LC_ALL=C (so localising tools print English labels); a zh_CN banner line that a
    # tool prints regardless is skipped, and the table is still read.
    script = f'[ "$LC_ALL" = C ] || exit 9\necho "温馨提示：驱动版本 v5.10.13"\ncat "{path}"'
    shim = CambriconShim(
        binary=make_tool("cnmon", f'case "$*" in "") {script} ;; *) exit 2 ;; esac'), catalog="default"
    )
    assert [d.model for d in shim.discover()] == ["MLU370", "MLU370"]
    assert all(s.health == Health.HEALTHY for s in shim.sample())


def test_a_row_not_understood_is_named_logged_once_and_not_healthy(
    tmp_path: Path, make_tool: MakeTool, caplog: pytest.LogCaptureFixture
) -> None:
    good = (FIXTURES / "cambricon/paddle-docs-cnmon-5.10.13-mlu370-x8.txt").read_text()
    broken = good.replace("|  0%   32C        106 W/ 250 W |     0 MiB/ 23374 MiB |", "|  ??  ?? | ?? |")
    (tmp_path / "broken.txt").write_text(broken)
    shim = CambriconShim(
        binary=make_tool("cnmon", f'case "$*" in "") cat "{tmp_path / "broken.txt"}" ;; *) exit 2 ;; esac'),
        catalog="default",
    )
    shim.discover()
    with caplog.at_level(logging.WARNING, logger="zhisuan.agent.shims"):
        first = shim.sample()[0]
        shim.sample()
    assert first.health == Health.UNKNOWN
    assert any(
        r.startswith("cnmon 5.10.13: memory usage '?? ' not understood") or "not understood" in r
        for r in first.health_reasons
    )
    assert first.memory_used_mib is None and "memory_used_mib" in first.fields_unavailable  # not 0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(set(messages)), "a problem was logged more than once"
    assert any("cnmon 5.10.13" in m for m in messages)


def test_device_listed_twice_is_reported_once(make_tool: MakeTool, tmp_path: Path) -> None:
    text = (FIXTURES / "kunlunxin/xpu-smi-m.txt").read_text()
    doubled = text + text.splitlines()[0] + "\n"
    (tmp_path / "doubled.txt").write_text(doubled)
    shim = KunlunxinShim(binary=make_tool("xpu-smi", f'cat "{tmp_path / "doubled.txt"}"'), catalog="default")
    devices = shim.discover()
    assert [d.index for d in devices] == [0, 1]
    samples = shim.sample()
    assert any("device 0 is listed twice" in r for r in samples[0].health_reasons)


def test_amd_without_the_library_falls_back_to_rocm_smi(tmp_path: Path) -> None:
    from agents.shims.amd import AmdShim

    capture = next(c for c in CAPTURES if c.shim == "rocm-smi")
    rocm = write_replay_tool(tmp_path, "rocm-smi", capture)
    shim = AmdShim(module=None, catalog="default", amd_smi=str(tmp_path / "no-amd-smi"), rocm_smi=rocm)
    devices = shim.discover()
    assert len(devices) == 1 and shim.status.state == ShimState.PRESENT
    assert "amdsmi Python package not installed; using rocm-smi" in shim.status.reason
    (sample,) = shim.sample()
    assert sample.utilization_pct == 100 and sample.memory_total_mib == pytest.approx(16368, abs=1)
