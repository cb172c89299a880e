"""benchmarks/gpu_check.sh on a machine without a GPU: it stops cleanly at NVML discovery, and its emulated mode
runs the exporter step against a real ``zhisuan server`` and ``zhisuan agent run``.

Every run reuses the virtual environment these tests run in (``--venv sys.prefix``), so nothing is installed.
"""

from __future__ import annotations

import base64
import csv
import doctest
import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
VENV = Path(sys.prefix)
HAS_GPU = shutil.which("nvidia-smi") is not None or Path("/dev/nvidia0").exists()

needs_venv = pytest.mark.skipif(
    not (VENV / "bin" / "zhisuan").exists(), reason=f"the project is not installed in {VENV} (no bin/zhisuan)"
)


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", ROOT / "benchmarks" / "gpu_check" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, *args: str, timeout_s: float = 240) -> tuple[int, str, Path]:
    log = tmp_path / "gpu-check.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZHISUAN_")}
    done = subprocess.run(
        [str(SCRIPT), "--venv", str(VENV), "--log", str(log), "--work", str(tmp_path / "work"), *args],
        cwd=tmp_path,  # the script finds the repository from its own path
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr, log


@needs_venv
@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU: the real run would go on past discovery")
def test_without_a_gpu_the_run_stops_at_discovery_with_one_clear_line(tmp_path: Path) -> None:
    code, out, log = _run(tmp_path)
    assert code == 1, out
    lines = out.strip().splitlines()
    failed = [line for line in lines if line.startswith("FAILED at step")]
    assert failed == [line for line in lines if "FAILED at step" in line]  # exactly one, on a line of its own
    assert len(failed) == 1
    assert failed[0].startswith("FAILED at step discover: NVML found no NVIDIA GPU")
    assert "--emulated" in failed[0]  # says how to rehearse the rest
    # The install (a reused venv) and the non-GPU step passed and were timed; no later step started.
    assert f"reusing {VENV}" in out
    assert "-- install: ok in" in out and "-- env: ok in" in out and "-- discover: FAILED in" in out
    assert "== [3/10] bench" not in out
    # Everything printed is in the log file too, in the same order.
    text = log.read_text()
    assert text.splitlines()[: len(lines) - 1] == lines[: len(lines) - 1]
    assert text.strip().splitlines()[-1].startswith("exit status 1; the whole output is in")


@needs_venv
def test_emulated_exporter_step_scrapes_every_dcgm_series_from_a_real_agent(tmp_path: Path) -> None:
    code, out, log = _run(tmp_path, "--emulated", "H100:2", "--only", "exporter")
    assert code == 0, out
    assert "*** EMULATED RUN" in out and "EMULATED RESULT: every check passed" in out
    for index in (0, 1):
        assert f"EMULATED GPU {index} (EMU-local-H100-{index}): 11 of 12 DCGM series present" in out
    # The emulated shim has no SM clock, and the scrape says so instead of exporting a 0.
    assert "absent because the shim could not read them: DCGM_FI_DEV_SM_CLOCK" in out
    assert "registered: node" in out and "ready, model H100, 2 devices" in out
    assert "--token ***" in out and "zs_" not in log.read_text()  # tokens never reach the log
    assert "zhisuan up" not in out.split("== [")[-1]  # --only exporter started no cluster


@needs_venv
def test_a_missing_series_fails_and_a_wrong_unit_is_a_finding(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from agents.agent import Agent, AgentConfig, export_to
    from agents.exporter import TelemetryStore, make_registry
    from agents.shims.emulated import EmulatedShim

    steps = _module("steps")
    shim = EmulatedShim("H100", devices=1, node="n1")
    store = TelemetryStore(node="n1")
    agent = Agent(
        AgentConfig(api_url="http://127.0.0.1:9", node_token="t", node_id="n1"), [shim], on_tick=export_to(store)
    )
    devices = [d.model_dump(mode="json") for d in agent.discover()]
    shim.set_load(0, 40, 10_240)
    agent.tick()
    text = generate_latest(make_registry(store)).decode()
    ctx = steps.Context(venv=VENV, work=tmp_path, log=steps.Log(io.StringIO()), emulated="H100:1")

    steps.check_scrape(ctx, steps.parse_scrape(text), devices)
    assert ctx.findings == []

    missing = "\n".join(line for line in text.splitlines() if not line.startswith("DCGM_FI_DEV_FB_USED"))
    with pytest.raises(steps.CheckFailed, match="DCGM_FI_DEV_FB_USED missing for GPU 0"):
        steps.check_scrape(ctx, steps.parse_scrape(missing), devices)

    # FB_USED exported in bytes instead of MiB: caught against the neutral series and against discovery.
    samples = [
        (name, labels, value * 2**20 if name == "DCGM_FI_DEV_FB_USED" else value)
        for name, labels, value in steps.parse_scrape(text)
    ]
    steps.check_scrape(ctx, samples, devices)
    assert any("FB_USED + FB_FREE" in f.message for f in ctx.findings)
    assert any(
        "DCGM_FI_DEV_FB_USED = " in f.message and "zhisuan_device_memory_used_bytes" in f.message for f in ctx.findings
    )
    agent.close()


def test_nvidia_smi_cross_check_flags_a_wrong_unit_not_noise(tmp_path: Path) -> None:
    steps = _module("steps")
    ctx = steps.Context(venv=VENV, work=tmp_path, log=steps.Log(io.StringIO()))
    uuid = "GPU-5e1c4a2b-0000-1111-2222-333344445555"
    # SYNTHETIC values in nvidia-smi's --query-gpu units (MiB, W, C, MHz).
    ctx.smi = {
        uuid: {
            "uuid": uuid,
            "memory.total": "143771",
            "memory.used": "0",
            "memory.reserved": "574",
            "power.draw": "76.13",
            "enforced.power.limit": "700.00",
            "temperature.gpu": "31",
            "clocks.sm": "345",
        }
    }
    sample = {
        "uuid": uuid,
        "memory_total_mib": 143771.0,
        "memory_used_mib": 20.0,
        "power_w": 81.0,  # read a moment later: noise
        "power_limit_w": 700.0,
        "temperature_c": 32.0,
        "sm_clock_mhz": 1980.0,  # clocks move between two reads; only a 2x difference is a finding
    }
    steps.cross_check_smi(ctx, [sample], devices=1)
    assert [f.message for f in ctx.findings] == [f"{uuid} SM clock MHz: the shim says 1980.0, nvidia-smi says 345.0"]
    ctx.findings.clear()
    steps.cross_check_smi(ctx, [sample | {"power_w": 76130.0, "sm_clock_mhz": 345.0, "memory_used_mib": 574.0}], 1)
    messages = [f.message for f in ctx.findings]
    reserved = "(nvidia-smi counts 574 MiB apart as reserved)"
    assert messages[0] == f"{uuid} memory used MiB {reserved}: the shim says 574.0, nvidia-smi says 0.0"
    assert messages[1] == f"{uuid} power W: the shim says 76130.0, nvidia-smi says 76.13"
    assert len(messages) == 2


def test_the_helpers_docstring_examples() -> None:
    for name in ("steps", "prepare_wheels"):
        failures, tried = doctest.testmod(_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
        assert tried > 0 and failures == 0, name


def _fake_ray_wheel(path: Path) -> None:
    """SYNTHETIC: a two-file stand-in for Ray's wheel, with the trees prepare_wheels drops."""
    files = {
        "ray/__init__.py": b"__version__ = '0.0.1'\n",
        "ray/jars/ray_dist.jar": b"\0" * 4096,
        "ray/rllib/__init__.py": b"",
        "ray/dashboard/client/build/index.html": b"<html></html>",
        "ray/dashboard/agent.py": b"# kept: every raylet starts a dashboard agent\n",
        "ray-0.0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: ray\nVersion: 0.0.1\n",
        "ray-0.0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(
            "ray-0.0.1.dist-info/RECORD", "".join(f"{n},,\n" for n in [*files, "ray-0.0.1.dist-info/RECORD"])
        )


@pytest.mark.parametrize("stored", [True, False], ids=["stored", "deflated"])
def test_rewrite_wheel_drops_the_unused_trees_and_rewrites_record(tmp_path: Path, stored: bool) -> None:
    prepare = _module("prepare_wheels")
    wheel = tmp_path / "ray-0.0.1-py3-none-any.whl"
    _fake_ray_wheel(wheel)
    assert prepare.rewrite_wheel(wheel, drop=prepare.RAY_DROP, stored=stored) == 3
    with zipfile.ZipFile(wheel) as slim:
        names = set(slim.namelist())
        methods = {info.compress_type for info in slim.infolist()}
        record = list(csv.reader(io.StringIO(slim.read("ray-0.0.1.dist-info/RECORD").decode())))
        for name, digest, size in record:
            if name.endswith("RECORD"):
                continue
            data = slim.read(name)
            expected = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (expected, len(data)), name
    assert methods == {zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED}
    assert "ray/dashboard/agent.py" in names and not any("jars" in n or "rllib" in n or "build" in n for n in names)
    # Packed the way prepare_wheels.py packs, unpacked the way gpu_check.sh does, pip installs it offline.
    archive = prepare.pack(tmp_path, [wheel])
    assert not wheel.exists()
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    target, unpacked = tmp_path / "site", tmp_path / "unpacked" / wheel.name
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--target",
            str(target),
            str(unpacked),
        ],
        check=True,
        capture_output=True,
    )
    assert (target / "ray" / "__init__.py").exists() and not (target / "ray" / "jars").exists()
