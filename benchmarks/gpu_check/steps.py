"""The checks ``benchmarks/gpu_check.sh`` runs once the project is installed (issue 22), one step at a time.

Every step drives the product from outside, through its command line (``zhisuan ...``) and
``benchmarks/agent.py``, as an operator would on a GPU node, and checks what comes back::

    env        machine, driver (nvidia-smi), torch/CUDA and Ray versions, the commit            (never fails)
    discover   zhisuan agent discover --vendor nvidia: the real device list, cross-checked with nvidia-smi
    bench      benchmarks/agent.py: NVML tick cost per device (target <= 80 us, fast set), agent CPU share
    exporter   zhisuan server + zhisuan agent run --exporter-port: the agent registers the real GPU, and
               the scrape has every DCGM-compatible series agents/exporter.py promises, in dcgm-exporter's units
    cluster    a one-node cluster file of the discovered model and device count
    up         zhisuan up --cluster that file: Ray, agents, API, scheduler; the node is ready
    train      zhisuan submit seeds/examples/train-1worker.yaml: its log shows torch on cuda:0 with
               CUDA_VISIBLE_DEVICES = the device Zhisuan placed it on
    probe      zhisuan submit benchmarks/gpu_check/cuda_probe.yaml: the job's CUDA device has the UUID NVML gave
               the placed device, and it is the only one the job sees; a bf16 matmul runs on it
    inference  zhisuan submit seeds/examples/inference-service.yaml: two 0.25-device replicas on one GPU,
               each answers /info and /predict
    down       Ctrl-C to zhisuan up: everything stops

A failed check stops the run (exit 1) with one line ``FAILED at step S: why``. Values that disagree (NVML
against nvidia-smi, an exporter unit, a missed target) are *findings*: the run goes on, lists them at the end and
exits 3. ``--emulated MODEL:COUNT`` runs every step with the emulated shim instead of NVML, so all of it can be
rehearsed on a machine without a GPU; every step then says EMULATED. ``--from STEP`` starts later (the steps a
later one needs — discover, cluster, up — still run, marked "setup"), ``--only STEP`` runs one step.

It imports nothing from the project: the product's package layout may change, its command line is the contract.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[2]

STEPS: dict[str, str] = {
    "env": "machine, driver, torch/CUDA, Ray",
    "discover": "zhisuan agent discover (NVML)",
    "bench": "benchmarks/agent.py: NVML tick cost per device",
    "exporter": "zhisuan server + zhisuan agent run: registration and the DCGM-compatible scrape",
    "cluster": "a one-node cluster file of the discovered model",
    "up": "zhisuan up with that cluster file",
    "train": "seeds/examples/train-1worker.yaml through the API",
    "probe": "benchmarks/gpu_check/cuda_probe.yaml: the job's CUDA device is the placed one",
    "inference": "seeds/examples/inference-service.yaml: fractional replicas on the GPU, called",
    "down": "zhisuan up stops cleanly",
}
#: What a step needs from earlier ones (run first, as setup, when ``--from``/``--only`` skip them).
NEEDS: dict[str, tuple[str, ...]] = {
    "exporter": ("discover",),
    "cluster": ("discover",),
    "up": ("cluster",),
    "train": ("up",),
    "probe": ("up", "discover"),
    "inference": ("up",),
    "down": ("up",),
}

TARGET_FAST_TICK_US = 80.0  # issue 7: per device per fast tick through NVML on an H100
TARGET_AGENT_CPU_PCT = 0.5

#: The DCGM-compatible series of agents/exporter.py (names as dcgm-exporter's etc/default-counters.csv) and the
#: sample field each is read from; FB_FREE is total - used, XID_ERRORS the last XID.
DCGM_SERIES: dict[str, tuple[str, ...]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("utilization_pct",),
    "DCGM_FI_DEV_FB_USED": ("memory_used_mib",),
    "DCGM_FI_DEV_FB_FREE": ("memory_used_mib", "memory_total_mib"),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w",),
    "DCGM_FI_DEV_GPU_TEMP": ("temperature_c",),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz",),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_j",),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("ecc_uncorrectable_total",),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("ecc_correctable_total",),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("remapped_rows_uncorrectable",),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("remap_failure",),
    "DCGM_FI_DEV_XID_ERRORS": ("xid_events",),
}
#: Read every fast tick; a real NVIDIA data-centre GPU answers all of them.
DCGM_FAST = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_SM_CLOCK",
)
DCGM_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname")
NEUTRAL_REQUIRED = ("zhisuan_device_memory_total_bytes", "zhisuan_device_health", "zhisuan_agent_tick_seconds")

TERMINAL = ("succeeded", "failed", "cancelled")
#: An API token as the product prints it (``zs_<id>_<secret>``): never written to the log.
TOKEN = re.compile(r"\bzs_[A-Za-z0-9_-]{8,}")


class CheckFailed(Exception):
    """A check of the current step failed; the message is the one-line reason."""


class StepSkipped(Exception):
    """The step cannot run on this machine for a reason already recorded as a finding; the run goes on."""


@dataclass
class Finding:
    step: str
    message: str


# ----------------------------------------------------------------------------------------------- output


class Log:
    """Prints to stdout (``gpu_check.sh`` tees it into the run's log file), flushed at once, API tokens masked.

    >>> Log().line("center admin token (shown once): zs_36cf3ba391d1883b_mMiix9ehIC")
    center admin token (shown once): zs_***
    """

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout

    def line(self, text: str = "") -> None:
        self.out.write(TOKEN.sub("zs_***", text) + "\n")
        self.out.flush()

    def block(self, text: str, indent: str = "    ", limit: int = 400) -> None:
        lines = text.rstrip("\n").splitlines()
        if len(lines) > limit:
            lines = [*lines[: limit // 2], f"... ({len(lines) - limit} lines left out) ...", *lines[-limit // 2 :]]
        for line in lines:
            self.line(indent + line)


def shown(argv: Sequence[str]) -> str:
    """A command line as printed: the value of ``--token`` left out (the log is a file people pass around).

    >>> shown(["zhisuan", "nodes", "--token", "zs_secret", "-o", "json"])
    'zhisuan nodes --token *** -o json'
    """
    return " ".join("***" if i and argv[i - 1] == "--token" else a for i, a in enumerate(argv))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def node_id_for(hostname: str) -> str:
    """A node id for this machine in the cluster file: lower case, letters, digits and dashes.

    >>> node_id_for("GPU_Box.example.cn")
    'gpu-box'
    """
    short = hostname.split(".")[0].lower()
    cleaned = re.sub(r"[^a-z0-9-]+", "-", short).strip("-")
    return cleaned or "gpu-node"


def normalise_uuid(uuid: str | None) -> str:
    """The 32 hex digits of a GPU UUID: NVML writes ``GPU-<8-4-4-4-12>``, torch the same without ``GPU-``.

    >>> normalise_uuid("GPU-5e1c4a2b-0000-1111-2222-333344445555")
    '5e1c4a2b000011112222333344445555'
    >>> normalise_uuid("5E1C4A2B-0000-1111-2222-333344445555")
    '5e1c4a2b000011112222333344445555'
    >>> normalise_uuid("<torch._C._CUuuid object>")
    ''
    """
    text = (uuid or "").strip().lower().removeprefix("gpu-").removeprefix("mig-")
    digits = re.sub(r"[^0-9a-f]", "", text)
    return digits if len(digits) == 32 and re.fullmatch(r"[0-9a-f-]+", text) else ""


# ---------------------------------------------------------------------------------------------- processes


class Service:
    """A long-running product process (``zhisuan up``, ``server``, ``agent run``) with its output in a file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path, log: Log) -> None:
        self.name, self.argv, self.log_path, self.log = name, list(argv), log_path, log
        log.line(f"    $ {shown(self.argv)} &    (output: {log_path})")
        self._out = open(log_path, "wb")  # noqa: SIM115 - open for the process's lifetime, closed by stop()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals it and its children only
        )

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first match of ``pattern`` in the output; fails if the process exits or time runs out first."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout_s
        while True:
            found = regex.search(self.text())
            if found:
                return found
            if self.popen.poll() is not None:
                raise CheckFailed(
                    f"{self.name} exited with code {self.popen.returncode} before printing /{pattern}/; "
                    f"its last line: {self.tail(1).strip() or '(nothing)'}"
                )
            if time.monotonic() > deadline:
                raise CheckFailed(f"{self.name} did not print /{pattern}/ within {timeout_s:g} s")
            time.sleep(0.2)

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout_s: float = 30.0) -> int | None:
        """Signal the process group, wait; SIGKILL it after ``timeout_s``. Returns the exit code (None: killed)."""
        code: int | None = self.popen.poll()
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                code = self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
                code = None
        self._out.close()
        return code


# ------------------------------------------------------------------------------------------------ context


@dataclass
class Context:
    venv: Path
    work: Path
    log: Log
    emulated: str | None = None  # MODEL:COUNT
    model_override: str | None = None
    bench_duration_s: float = 5.0
    findings: list[Finding] = field(default_factory=list)
    step: str = ""
    discovery: dict[str, Any] | None = None
    smi: dict[str, dict[str, str]] = field(default_factory=dict)  # uuid -> nvidia-smi fields
    model: str | None = None
    node_id: str = ""
    cluster_file: Path | None = None
    up: Service | None = None
    services: list[Service] = field(default_factory=list)
    train_devices: list[int] = field(default_factory=list)
    _echoed: set[str] = field(default_factory=set)

    @property
    def tag(self) -> str:
        return "EMULATED " if self.emulated else ""

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.update(extra)
        return env

    def find(self, message: str) -> None:
        self.findings.append(Finding(self.step, message))
        self.log.line(f"    FINDING: {message}")

    def note(self, message: str) -> None:
        self.log.line(f"    NOTE: {message}")

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = 60.0,
        env: dict[str, str] | None = None,
        show: bool = True,
        check: bool = True,
        label: str | None = None,
        poll: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion from the repository root, print it (or ``label``) and (``show``) its output."""
        argv = list(argv)
        text = label or shown(argv)
        if not poll or text not in self._echoed:  # a command polled in a loop is printed once
            self.log.line(f"    $ {text}" + ("    (polled)" if poll else ""))
            self._echoed.add(text)
        try:
            done = subprocess.run(
                argv,
                cwd=ROOT,
                env=env or self.env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise CheckFailed(f"`{' '.join(argv[:3])} ...` did not finish within {timeout_s:g} s") from err
        except FileNotFoundError as err:
            raise CheckFailed(f"{argv[0]} is not installed") from err
        if show and done.stdout.strip():
            self.log.block(done.stdout)
        if done.stderr.strip() and (show or done.returncode != 0):
            self.log.block(done.stderr)
        if check and done.returncode != 0:
            said = " ".join((done.stderr.strip() or done.stdout.strip() or "(no output)").split())
            said = said if len(said) <= 400 else "..." + said[-400:]
            raise CheckFailed(f"`{shown(argv[:4])} ...` exited with code {done.returncode}: {said}")
        return done

    def zhisuan(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run([str(self.venv / "bin" / "zhisuan"), *args], **kwargs)

    def zhisuan_json(self, *args: str, **kwargs: Any) -> Any:
        done = self.zhisuan(*args, "-o", "json", **kwargs)
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError as err:
            raise CheckFailed(f"`zhisuan {' '.join(args)} -o json` did not print JSON: {err}") from err

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Service:
        service = Service(name, argv, env, self.work / f"{name}.log", self.log)
        self.services.append(service)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.services):
            if service.popen.poll() is None:
                code = service.stop(signal.SIGINT, timeout_s=30)
                self.log.line(f"    stopped {service.name} (exit {code})")
        self.services.clear()

    def devices(self) -> list[dict[str, Any]]:
        if self.discovery is None:
            raise CheckFailed("no discovery result (the discover step did not run)")
        devices: list[dict[str, Any]] = self.discovery["devices"]
        return devices


# -------------------------------------------------------------------------------------------------- steps


def step_env(ctx: Context) -> None:
    log = ctx.log
    log.line(
        f"    host {socket.gethostname()}, {platform.platform()}, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}"
    )
    log.line(f"    venv {ctx.venv}; work directory {ctx.work}")
    if shutil.which("git") and (ROOT / ".git").exists():
        head = ctx.run(["git", "log", "-1", "--format=%h %cd %s", "--date=iso"], show=False, check=False)
        dirty = ctx.run(["git", "status", "--porcelain", "--untracked-files=no"], show=False, check=False)
        changed = len(dirty.stdout.splitlines())
        log.line(f"    commit {head.stdout.strip()}" + (f" (+{changed} files changed)" if changed else ""))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        log.line("    nvidia-smi: not on PATH")
    else:
        query = (
            "index,uuid,name,pci.bus_id,driver_version,memory.total,memory.used,power.draw,"
            "enforced.power.limit,temperature.gpu,clocks.sm,mig.mode.current"
        )
        ctx.run([smi], timeout_s=30, check=False)
        # Two queries: a field this driver does not know fails its whole query, and `memory.reserved` is recent.
        for fields in (query, "uuid,memory.reserved"):
            done = ctx.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"], timeout_s=30, check=False)
            keys = fields.split(",")
            for row in done.stdout.strip().splitlines() if done.returncode == 0 else []:
                values = dict(zip(keys, (v.strip() for v in row.split(",")), strict=False))
                if "uuid" in values:
                    ctx.smi.setdefault(values["uuid"], {}).update(values)
        ctx.run([smi, "topo", "-m"], timeout_s=30, check=False)
    probe = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "for name in ('torch', 'ray', 'nvidia-ml-py', 'zhisuan'):\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: out[name] = None\n"
        "try:\n"
        "    import torch\n"
        "    out['torch.cuda.is_available'] = torch.cuda.is_available()\n"
        "    out['torch.version.cuda'] = torch.version.cuda\n"
        "    out['cuda devices'] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]\n"
        "except Exception as err:\n"
        "    out['torch error'] = repr(err)\n"
        "print(json.dumps(out))\n"
    )
    label = f"{ctx.venv / 'bin' / 'python'} -c '<versions of torch, ray, nvidia-ml-py, zhisuan; torch.cuda>'"
    ctx.run([str(ctx.venv / "bin" / "python"), "-c", probe], timeout_s=120, check=False, label=label)


#: (what, sample field, nvidia-smi --query-gpu field, allowed difference given nvidia-smi's value). Loose where
#: the two read at different moments (power, clocks): these catch a wrong unit or field, not noise.
SMI_CROSS_CHECKS: tuple[tuple[str, str, str, Callable[[float], float]], ...] = (
    ("memory total MiB", "memory_total_mib", "memory.total", lambda v: max(2.0, 0.01 * v)),
    ("memory used MiB", "memory_used_mib", "memory.used", lambda v: max(64.0, 0.05 * v)),
    ("power W", "power_w", "power.draw", lambda v: max(30.0, 0.3 * v)),
    ("power limit W", "power_limit_w", "enforced.power.limit", lambda v: 1.0),
    ("temperature C", "temperature_c", "temperature.gpu", lambda v: 3.0),
    ("SM clock MHz", "sm_clock_mhz", "clocks.sm", lambda v: max(200.0, v)),
)


def _compare(
    ctx: Context, uuid: str, what: str, nvml: Any, smi_text: str | None, tolerance: Callable[[float], float]
) -> None:
    """A finding when NVML (through the shim) and nvidia-smi disagree by more than ``tolerance(smi)``."""
    if nvml is None or smi_text is None:
        return
    try:
        smi_value = float(smi_text)
    except ValueError:
        return  # "[N/A]", "[Not Supported]"
    if abs(float(nvml) - smi_value) > tolerance(smi_value):
        ctx.find(f"{uuid} {what}: the shim says {nvml}, nvidia-smi says {smi_value}")


def cross_check_smi(ctx: Context, samples: list[dict[str, Any]], devices: int) -> None:
    """Findings where the shim's first sample and nvidia-smi (same driver, another reader) disagree."""
    for sample in samples:
        uuid = sample["uuid"]
        smi = ctx.smi.get(uuid)
        if smi is None:
            ctx.find(f"{uuid}: NVML discovery reported a UUID nvidia-smi does not list ({sorted(ctx.smi)})")
            continue
        for what, ours, theirs, tolerance in SMI_CROSS_CHECKS:
            if ours == "memory_used_mib" and smi.get("memory.reserved"):
                what += f" (nvidia-smi counts {smi['memory.reserved']} MiB apart as reserved)"
            _compare(ctx, uuid, what, sample.get(ours), smi.get(theirs), tolerance)
    if len(ctx.smi) != devices:
        ctx.find(f"nvidia-smi lists {len(ctx.smi)} GPUs, discovery {devices}")


def step_discover(ctx: Context) -> None:
    args = ["agent", "discover"]
    args += ["--emulate", ctx.emulated] if ctx.emulated else ["--vendor", "nvidia"]
    done = ctx.zhisuan(*args, timeout_s=60)
    try:
        found: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise CheckFailed(f"`zhisuan agent discover` did not print JSON: {err}") from err
    vendors = found.get("vendors", [])
    devices: list[dict[str, Any]] = found.get("devices", [])
    if not devices:
        why = "; ".join(f"{v.get('vendor')}: {v.get('state')} ({v.get('reason')})" for v in vendors) or "no vendor"
        raise CheckFailed(
            f"NVML found no NVIDIA GPU — {why}. This machine has no usable NVIDIA driver/GPU; "
            "`benchmarks/gpu_check.sh --emulated` rehearses the later steps with the emulated shim"
        )
    ctx.discovery = found
    ctx.log.line(f"    {ctx.tag}devices found: {len(devices)}")
    for d in devices:
        peers = len(d.get("peers") or [])
        ctx.log.line(
            f"    [{d['index']}] {d['name']!r} -> catalog model {d.get('model')} | {d['uuid']} | "
            f"{d.get('memory_total_mib')} MiB | bus {d.get('bus_id')} | MIG {d.get('mig_enabled')} | "
            f"NVLink peers {peers} | driver {d.get('driver_version')}"
        )
        for note in d.get("notes", []):
            ctx.log.line(f"        note: {note}")
    samples = found.get("samples", [])
    for sample in samples:
        if sample.get("fields_unavailable"):
            ctx.note(f"{sample['uuid']}: fields the shim could not read: {', '.join(sample['fields_unavailable'])}")
        if sample.get("health") != "healthy":
            reasons = "; ".join(sample.get("health_reasons", []))
            ctx.find(f"{sample['uuid']} health {sample.get('health')}: {reasons}")
    if ctx.smi and not ctx.emulated:
        cross_check_smi(ctx, samples, len(devices))
    models = {d.get("model") for d in devices}
    if len(models) != 1:
        raise CheckFailed(f"a node must hold one model; discovery found {sorted(map(str, models))}")
    model = models.pop()
    if model is None:
        name = devices[0]["name"]
        if ctx.model_override is None:
            raise CheckFailed(
                f"discovery found {name!r}, which the accelerator catalog (seeds/accelerators.yaml) has no model or "
                "alias for; add it there, or pass --model H100 to run the rest with a stand-in model"
            )
        ctx.find(f"{name!r} is not in the accelerator catalog; the later steps use --model {ctx.model_override}")
        model = ctx.model_override
    elif ctx.model_override is not None and ctx.model_override != model:
        ctx.note(f"discovery says {model}; --model {ctx.model_override} replaces it in the cluster file")
        model = ctx.model_override
    ctx.model = model


def step_bench(ctx: Context) -> None:
    argv = [str(ctx.venv / "bin" / "python"), "benchmarks/agent.py", "--duration", f"{ctx.bench_duration_s:g}"]
    done = ctx.run(argv, timeout_s=180)
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise CheckFailed(f"benchmarks/agent.py did not print JSON: {err}") from err
    emulated = result["emulated"]["fast_tick_per_device"]
    ctx.log.line(
        f"    emulated shim, fast tick per device: {emulated['median_us']} us median, {emulated['p99_us']} us p99"
    )
    cpu = result["agent_cpu"]
    ctx.log.line(
        f"    agent at 1 Hz, 8 emulated devices: {cpu['cpu_share_of_one_core_pct']} % of a core "
        f"(target <= {TARGET_AGENT_CPU_PCT} %)"
    )
    if cpu["cpu_share_of_one_core_pct"] > TARGET_AGENT_CPU_PCT:
        ctx.find(f"agent CPU {cpu['cpu_share_of_one_core_pct']} % of a core > target {TARGET_AGENT_CPU_PCT} %")
    nvml = result["nvml"]
    if not nvml.get("available"):
        if ctx.emulated:
            ctx.log.line(f"    EMULATED: no NVML tick cost without a GPU ({nvml.get('reason')})")
            return
        raise CheckFailed(f"benchmarks/agent.py found no GPU through NVML: {nvml.get('reason')}")
    fast, slow = nvml["fast_tick_per_device"], nvml["slow_tick_per_device"]
    met = fast["median_us"] <= TARGET_FAST_TICK_US
    ctx.log.line(
        f"    NVML fast tick per device ({nvml['devices']} x {', '.join(nvml['models'])}, driver {nvml['driver']}): "
        f"{fast['median_us']} us median, {fast['p99_us']} us p99 — target <= {TARGET_FAST_TICK_US:g} us: "
        f"{'met' if met else 'MISSED'}"
    )
    ctx.log.line(f"    NVML slow tick per device: {slow['median_us']} us median, {slow['p99_us']} us p99")
    if not met:
        ctx.find(f"NVML fast tick {fast['median_us']} us per device > target {TARGET_FAST_TICK_US:g} us")
    if ctx.discovery is not None and not ctx.emulated and nvml["devices"] != len(ctx.devices()):
        ctx.find(f"benchmarks/agent.py saw {nvml['devices']} GPUs, discovery {len(ctx.devices())}")


def scrape(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        text: str = answer.read().decode()
        return text


def parse_scrape(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(series name, labels, value) of every sample in a Prometheus text scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, dict(s.labels), float(s.value)) for f in text_string_to_metric_families(text) for s in f.samples]


def check_scrape(ctx: Context, samples: list[tuple[str, dict[str, str], float]], devices: list[dict[str, Any]]) -> None:
    """Every promised series for every device, with dcgm-exporter's labels and units; see the module docstring.

    Series are matched to devices by vendor index (DCGM's ``gpu`` label, our ``device``); on a real GPU the
    ``UUID`` label must also be the one discovery read (the emulated shim names its devices after the node)."""
    by_name: dict[str, dict[str, tuple[dict[str, str], float]]] = {}
    unavailable: dict[str, set[str]] = {}
    for name, labels, value in samples:
        index = labels.get("gpu") if name.startswith("DCGM_") else labels.get("device")
        by_name.setdefault(name, {})[index or ""] = (labels, value)
        if name == "zhisuan_device_field_unavailable" and value:
            unavailable.setdefault(index or "", set()).add(labels.get("field", ""))
    for required in NEUTRAL_REQUIRED:
        if required not in by_name:
            raise CheckFailed(f"the scrape has no {required}")
    for device in devices:
        index, uuid = str(device["index"]), device["uuid"]
        unread = unavailable.get(index, set())
        present, explained = [], []
        if device.get("vendor") != "nvidia":
            ctx.note(f"GPU {index} is a {device.get('vendor')} device: the exporter exports no DCGM series for it")
            continue
        for series, fields in DCGM_SERIES.items():
            got = by_name.get(series, {}).get(index)
            if got is None:
                if any(f in unread for f in fields):
                    explained.append(series)
                    if series in DCGM_FAST and not ctx.emulated:
                        raise CheckFailed(f"{series} missing for GPU {index}: the shim could not read {fields}")
                    continue
                raise CheckFailed(
                    f"{series} missing for GPU {index}, and zhisuan_device_field_unavailable does not say why"
                )
            labels, _value = got
            absent = [label for label in DCGM_LABELS if not labels.get(label)]
            if absent:
                raise CheckFailed(f"{series} for GPU {index} lacks dcgm-exporter's labels {absent}")
            if not ctx.emulated and labels["UUID"] != uuid:
                raise CheckFailed(f"{series} for GPU {index} has UUID {labels['UUID']}, discovery read {uuid}")
            present.append(series)
        ctx.log.line(f"    {ctx.tag}GPU {index} ({uuid}): {len(present)} of {len(DCGM_SERIES)} DCGM series present")
        if explained:
            ctx.note(f"GPU {index}: absent because the shim could not read them: {', '.join(explained)}")
        _check_units(ctx, index, by_name, device)


def _value(by_name: dict[str, dict[str, tuple[dict[str, str], float]]], name: str, index: str) -> float | None:
    got = by_name.get(name, {}).get(index)
    return None if got is None else got[1]


def _check_units(
    ctx: Context, index: str, by_name: dict[str, dict[str, tuple[dict[str, str], float]]], device: dict[str, Any]
) -> None:
    """dcgm-exporter's units (MiB, W, C, MHz, mJ) against ours (bytes, W, C, Hz, J) and against discovery."""
    used, free = _value(by_name, "DCGM_FI_DEV_FB_USED", index), _value(by_name, "DCGM_FI_DEV_FB_FREE", index)
    total_bytes = _value(by_name, "zhisuan_device_memory_total_bytes", index)
    discovered = device.get("memory_total_mib")
    if (
        used is not None
        and free is not None
        and discovered
        and abs(used + free - discovered) > max(2.0, 0.01 * discovered)
    ):
        ctx.find(f"GPU {index}: FB_USED + FB_FREE = {used + free:g} MiB, discovery says {discovered} MiB")
    if total_bytes is not None and discovered and abs(total_bytes / 2**20 - discovered) > 1:
        ctx.find(f"GPU {index}: zhisuan_device_memory_total_bytes is {total_bytes:g}, not {discovered} MiB in bytes")
    pairs = (
        ("DCGM_FI_DEV_FB_USED", "zhisuan_device_memory_used_bytes", 2**20),
        ("DCGM_FI_DEV_SM_CLOCK", "zhisuan_device_clock_hertz", 1e6),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "zhisuan_device_energy_joules_total", 1e-3),
        ("DCGM_FI_DEV_POWER_USAGE", "zhisuan_device_power_watts", 1.0),
        ("DCGM_FI_DEV_GPU_TEMP", "zhisuan_device_temperature_celsius", 1.0),
    )
    for dcgm, ours, scale in pairs:
        a, b = _value(by_name, dcgm, index), _value(by_name, ours, index)
        if a is not None and b is not None and abs(a * scale - b) > 1e-6 * max(1.0, abs(b)):
            ctx.find(f"GPU {index}: {dcgm} = {a:g} but {ours} = {b:g} (expected {dcgm} x {scale:g})")
    plausible = (
        ("DCGM_FI_DEV_POWER_USAGE", 1.0, 2000.0, "W"),
        ("DCGM_FI_DEV_GPU_TEMP", 5.0, 110.0, "C"),
        ("DCGM_FI_DEV_SM_CLOCK", 50.0, 4000.0, "MHz"),
        ("DCGM_FI_DEV_GPU_UTIL", 0.0, 100.0, "%"),
    )
    for name, low, high, unit in plausible:
        value = _value(by_name, name, index)
        if value is not None and not low <= value <= high:
            ctx.find(f"GPU {index}: {name} = {value:g}, outside {low:g}-{high:g} {unit}: wrong unit?")


def step_exporter(ctx: Context) -> None:
    if ctx.model_override is not None and {d.get("model") for d in ctx.devices()} == {None}:
        ctx.find("exporter step skipped: the API refuses to register a node whose model the catalog lacks (HTTP 422)")
        raise StepSkipped("the discovered model is not in the catalog, so `zhisuan agent run` cannot register")
    port, exporter_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    token_file = ctx.work / "exporter-admin-token"
    env = ctx.env(
        ZHISUAN_DATABASE_URL=f"sqlite:///{ctx.work / 'exporter.db'}",
        ZHISUAN_ADMIN_TOKEN_FILE=str(token_file),
        ZHISUAN_HEARTBEAT_INTERVAL_S="1",
        XDG_CONFIG_HOME=str(ctx.work / "exporter-config"),
    )
    server = ctx.start("server", [str(ctx.venv / "bin" / "zhisuan"), "server", "--port", str(port)], env)
    server.wait_for(r"^serving http", timeout_s=60)
    admin = token_file.read_text().strip() if token_file.exists() else ""
    if not admin:
        raise CheckFailed(f"zhisuan server wrote no admin token to {token_file}")
    auth = ("--url", url, "--token", admin)
    created = ctx.zhisuan_json("admin", "node-token", "--node", ctx.node_id, *auth, env=env, show=False)
    node_token = str(created["token"])
    ctx.log.line(f"    node-agent token {created.get('id')} for node {ctx.node_id}")
    shim = ["--emulate", ctx.emulated] if ctx.emulated else ["--vendor", "nvidia"]
    agent_argv = [
        str(ctx.venv / "bin" / "zhisuan"),
        "agent",
        "run",
        *shim,
        "--api-url",
        url,
        "--token",
        "$NODE_TOKEN",
        "--node-id",
        ctx.node_id,
        "--interval",
        "0.5",
        "--slow-every",
        "2",
        "--exporter-port",
        str(exporter_port),
        "--exporter-addr",
        "127.0.0.1",
    ]
    agent_env = env | {"ZHISUAN_NODE_TOKEN": node_token}
    agent = ctx.start("agent", [a for a in agent_argv if a not in ("--token", "$NODE_TOKEN")], agent_env)
    agent.wait_for(r"^metrics on http", timeout_s=60)
    metrics_url = f"http://127.0.0.1:{exporter_port}/metrics"
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:  # the first tick (a slow one) fills every series
        if agent.popen.poll() is not None:
            raise CheckFailed(f"zhisuan agent run exited with code {agent.popen.returncode}: {agent.tail(1)}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            text = scrape(metrics_url)
            if "DCGM_FI_DEV_FB_USED" in text and "zhisuan_device_energy_joules" in text:
                break
        time.sleep(0.3)
    if not text:
        raise CheckFailed(f"the exporter at {metrics_url} did not answer within 30 s; agent said: {agent.tail(3)}")
    ctx.log.line(f"    $ curl {metrics_url}    (the device series:)")
    ctx.log.block("\n".join(line for line in text.splitlines() if line.startswith(("DCGM_", "zhisuan_device_"))))
    check_scrape(ctx, parse_scrape(text), ctx.devices())

    deadline, node = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        nodes = ctx.zhisuan_json("nodes", *auth, env=env, show=False, poll=True)
        node = next((n for n in nodes if n.get("id") == ctx.node_id), None)
        if node is not None and node.get("state") == "ready":
            break
        time.sleep(0.5)
    if node is None:
        raise CheckFailed(f"the agent of {ctx.node_id} did not register with the API: {agent.tail(3)}")
    got = sorted(d["uuid"] for d in node.get("devices", []))
    want = sorted(d["uuid"] for d in ctx.devices())
    ctx.log.line(
        f"    registered: node {node['id']} {node.get('state')}, model {node.get('model')}, "
        f"{node.get('device_count')} devices {got}"
    )
    if node.get("state") != "ready":
        raise CheckFailed(f"node {ctx.node_id} registered but is {node.get('state')}, not ready")
    if len(got) != len(want) or (got != want and not ctx.emulated):
        raise CheckFailed(f"the API holds devices {got} for {ctx.node_id}, discovery found {want}")
    if node.get("model") != ctx.model and ctx.model_override is None:
        raise CheckFailed(f"the API holds model {node.get('model')} for {ctx.node_id}, discovery said {ctx.model}")
    code = agent.stop(signal.SIGTERM)
    ctx.log.line(f"    agent stopped (exit {code})")
    server.stop(signal.SIGINT)
    ctx.services.remove(agent)
    ctx.services.remove(server)


def cluster_yaml(node_id: str, model: str, devices: int, cpu_cores: int, memory_gib: int) -> str:
    """A one-node cluster file (the format of seeds/clusters/*.yaml, one explicit node).

    >>> print(cluster_yaml("gpu-box", "H100", 1, 8, 16))  # doctest: +NORMALIZE_WHITESPACE
    # One node: this machine as NVML discovery found it (benchmarks/gpu_check.sh).
    name: gpu-check
    sites:
      local: {region: dev, tier: cloud}
    nodes:
      - {id: gpu-box, model: H100, site: local, devices: 1, cpu_cores: 8, memory_gib: 16}
    """
    return (
        "# One node: this machine as NVML discovery found it (benchmarks/gpu_check.sh).\n"
        "name: gpu-check\n"
        "sites:\n"
        "  local: {region: dev, tier: cloud}\n"
        "nodes:\n"
        f"  - {{id: {node_id}, model: {model}, site: local, devices: {devices}, cpu_cores: {cpu_cores}, "
        f"memory_gib: {memory_gib}}}\n"
    )


def _memory_gib() -> int:
    """Half this machine's memory, between 4 and 32 GiB: what Ray accounts, not what it takes."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return max(4, min(32, int(line.split()[1]) // 2**20 // 2))
    return 4


def step_cluster(ctx: Context) -> None:
    if ctx.model is None:
        raise CheckFailed("no model from discovery")
    devices = len(ctx.devices())
    cpus = max(2, min(16, os.cpu_count() or 2))
    ctx.cluster_file = ctx.work / "cluster.yaml"
    ctx.cluster_file.write_text(cluster_yaml(ctx.node_id, ctx.model, devices, cpus, _memory_gib()))
    ctx.log.line(f"    {ctx.tag}cluster file {ctx.cluster_file}:")
    ctx.log.block(ctx.cluster_file.read_text(), indent="      ")
    jobs = ctx.work / "one-job.yaml"
    jobs.write_text("jobs:\n  - {id: gpu-check, tenant: acme, workers: 1, devices_per_worker: 1, job_class: generic}\n")
    decisions = ctx.zhisuan_json("place", "--cluster", str(ctx.cluster_file), "--jobs", str(jobs), show=False)
    first = decisions[0] if decisions else {}
    if first.get("decision") != "start" or first.get("model") != ctx.model:
        raise CheckFailed(f"the policy core does not start a one-device job on this cluster file: {first}")
    ctx.log.line(
        f"    zhisuan place: a one-device job starts on {first['workers'][0]['node']} {first['workers'][0]['devices']}"
    )


def step_up(ctx: Context) -> None:
    if ctx.cluster_file is None:
        raise CheckFailed("no cluster file")
    port, env = free_port(), _up_env(ctx)
    argv = [str(ctx.venv / "bin" / "zhisuan"), "up", "--cluster", str(ctx.cluster_file), "--port", str(port)]
    ctx.up = ctx.start("up", argv, env)
    ctx.up.wait_for(r"Ctrl-C stops everything", timeout_s=120)
    ctx.log.block(ctx.up.text(), indent="    | ")
    deadline, node = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        nodes = ctx.zhisuan_json("nodes", "--profile", "admin", env=env, show=False, poll=True)
        node = next((n for n in nodes if n.get("id") == ctx.node_id), None)
        if node is not None and node.get("state") == "ready":
            break
        time.sleep(0.5)
    if node is None or node.get("state") != "ready":
        raise CheckFailed(f"node {ctx.node_id} is not ready in `zhisuan nodes` 60 s after up: {node}")
    ctx.log.line(
        f"    node {node['id']}: {node.get('state')}, {node.get('model')} x {node.get('device_count')}, "
        f"pool {node.get('pool')}, devices {[d['uuid'] for d in node.get('devices', [])]}"
    )
    if node.get("model") != ctx.model or node.get("device_count") != len(ctx.devices()):
        raise CheckFailed(
            f"`zhisuan nodes` shows {node.get('model')} x {node.get('device_count')}, not the cluster file's"
        )
    if not ctx.emulated:
        real = {d["uuid"] for d in ctx.devices()}
        if not real & {d["uuid"] for d in node.get("devices", [])}:
            ctx.note("zhisuan up reports emulated devices for the node (its agents use the emulated shim), not NVML's")


def _up_env(ctx: Context) -> dict[str, str]:
    return ctx.env(
        ZHISUAN_DATABASE_URL=f"sqlite:///{ctx.work / 'up.db'}",
        XDG_CONFIG_HOME=str(ctx.work / "up-config"),
    )


def submit_and_wait(ctx: Context, spec: str, until: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
    """Submit a job spec as dev@acme through the API; poll ``zhisuan status`` until one of ``until``."""
    env = _up_env(ctx)
    job = ctx.zhisuan_json("submit", spec, env=env, show=False)
    job_id = str(job["id"])
    ctx.log.line(f"    submitted {job_id} ({job.get('name')}): {job.get('state')}")
    deadline, state, status = time.monotonic() + timeout_s, "", job
    while time.monotonic() < deadline:
        status = ctx.zhisuan_json("status", job_id, env=env, show=False, poll=True)
        if status["state"] != state:
            state = status["state"]
            ctx.log.line(f"    {job_id}: {state} {status.get('message') or ''}".rstrip())
        if state in until or state in TERMINAL:
            break
        time.sleep(0.5)
    else:
        ctx.zhisuan("why", job_id, env=env, check=False)
        raise CheckFailed(f"{job_id} ({spec}) is still {state} after {timeout_s:g} s")
    placement = status.get("placement") or {}
    for w in placement.get("workers", []):
        ctx.log.line(
            f"    placed rank {w['rank']} on {w['node']} devices {w['devices']} ({w['milli']} milli), "
            f"model {placement.get('model')}"
        )
    return dict(status)


def job_log(ctx: Context, job_id: str, rank: int = 0) -> str:
    return ctx.zhisuan("logs", job_id, "--rank", str(rank), env=_up_env(ctx), show=False, poll=True).stdout


def step_train(ctx: Context) -> None:
    old = Path("/tmp/zhisuan/checkpoints/train-1worker")  # the example's checkpoint.path
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
        ctx.note(f"removed {old} of an earlier run, so the job trains from step 0 instead of resuming")
    status = submit_and_wait(ctx, "seeds/examples/train-1worker.yaml", (), timeout_s=150)
    text = job_log(ctx, status["id"])
    ctx.log.block(text, indent="    | ")
    if status["state"] != "succeeded":
        raise CheckFailed(
            f"train-1worker {status['state']}: {status.get('message')} (exit code {status.get('exit_code')})"
        )
    workers = (status.get("placement") or {}).get("workers", [])
    if len(workers) != 1:
        raise CheckFailed(f"train-1worker has {len(workers)} placed workers, expected 1")
    ctx.train_devices = [int(d) for d in workers[0]["devices"]]
    placed = ",".join(str(d) for d in ctx.train_devices)
    first = re.search(r"^rank 0/1 .* device (\S+) visible (\{.*?\}) master", text, re.MULTILINE)
    done = re.search(r"^DONE (\{.*\})$", text, re.MULTILINE)
    if first is None or done is None:
        raise CheckFailed("the training log lacks its 'rank 0/1 ... device ... visible ...' or 'DONE {...}' line")
    device, visible = first.group(1), json.loads(first.group(2))
    if visible.get("CUDA_VISIBLE_DEVICES") != placed:
        raise CheckFailed(
            f"the job saw CUDA_VISIBLE_DEVICES={visible.get('CUDA_VISIBLE_DEVICES')!r}; "
            f"Zhisuan placed it on device {placed}"
        )
    ctx.log.line(f"    {ctx.tag}job ran with CUDA_VISIBLE_DEVICES={placed} (as placed); torch device: {device}")
    if ctx.emulated:
        if device != "cpu":
            ctx.note(f"emulated run, yet torch used {device}")
        ctx.log.line("    EMULATED: no GPU, so torch trained on the CPU; on a GPU this line must say cuda:0")
    elif device != "cuda:0" or json.loads(done.group(1)).get("device") != "cuda:0":
        raise CheckFailed(f"torch trained on {device}, not cuda:0, although device {placed} was placed")


def step_probe(ctx: Context) -> None:
    status = submit_and_wait(ctx, "benchmarks/gpu_check/cuda_probe.yaml", (), timeout_s=120)
    text = job_log(ctx, status["id"])
    ctx.log.block(text, indent="    | ")
    if status["state"] != "succeeded":
        raise CheckFailed(f"the CUDA probe {status['state']}: {status.get('message')}")
    found = re.search(r"^PROBE (\{.*\})$", text, re.MULTILINE)
    if found is None:
        raise CheckFailed("the probe's log has no PROBE line")
    probe: dict[str, Any] = json.loads(found.group(1))
    workers = (status.get("placement") or {}).get("workers", [])
    placed = [int(d) for d in workers[0]["devices"]] if workers else []
    if probe.get("CUDA_VISIBLE_DEVICES") != ",".join(map(str, placed)):
        raise CheckFailed(f"the probe saw CUDA_VISIBLE_DEVICES={probe.get('CUDA_VISIBLE_DEVICES')!r}, placed {placed}")
    if ctx.emulated:
        ctx.log.line(f"    EMULATED: CUDA available: {probe.get('cuda_available')} (expected False without a GPU)")
        return
    if not probe.get("cuda_available"):
        raise CheckFailed(f"torch in the job sees no CUDA device with CUDA_VISIBLE_DEVICES={placed}")
    if probe.get("device_count") != len(placed):
        raise CheckFailed(f"the job sees {probe.get('device_count')} CUDA devices; it was given {len(placed)}")
    by_index = {int(d["index"]): d for d in ctx.devices()}
    want = by_index.get(placed[0])
    if want is None:
        raise CheckFailed(f"the placed device index {placed[0]} is not one discovery found")
    if not normalise_uuid(probe.get("uuid")):
        ctx.find(f"torch gave no readable UUID for cuda:0 ({probe.get('uuid')!r}); the device is matched by name only")
    elif normalise_uuid(probe.get("uuid")) != normalise_uuid(want["uuid"]):
        raise CheckFailed(
            f"the job's cuda:0 is {probe.get('uuid')}, but NVML device {placed[0]} (placed) is {want['uuid']}: "
            f"CUDA and NVML number the GPUs differently (CUDA_DEVICE_ORDER={probe.get('CUDA_DEVICE_ORDER')})"
        )
    ctx.log.line(
        f"    the job's cuda:0 is {probe.get('name')} {probe.get('uuid')} = NVML device {placed[0]} as placed; "
        f"bf16 4096^3 matmul {probe.get('bf16_matmul_4096_tflops')} TFLOP/s"
    )
    if probe.get("name") != want["name"]:
        ctx.find(f"torch names the device {probe.get('name')!r}, NVML {want['name']!r}")


def step_inference(ctx: Context) -> None:
    status = submit_and_wait(ctx, "seeds/examples/inference-service.yaml", ("running",), timeout_s=120)
    job_id = str(status["id"])
    if status["state"] != "running":
        raise CheckFailed(f"inference-service {status['state']}: {status.get('message')}")
    workers = (status.get("placement") or {}).get("workers", [])
    infos = []
    for w in workers:
        deadline, url = time.monotonic() + 60, None
        while time.monotonic() < deadline and url is None:
            found = re.search(r"serving on (http://\S+)", job_log(ctx, job_id, w["rank"]))
            url = found.group(1) if found else None
            if url is None:
                time.sleep(0.5)
        if url is None:
            raise CheckFailed(f"replica {w['rank']} printed no 'serving on http://...' line in 60 s")
        info = json.loads(scrape(f"{url}/info"))
        request = urllib.request.Request(
            f"{url}/predict", data=json.dumps({"inputs": [[1, 2, 3], [4, 5]]}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            prediction = json.loads(answer.read())
        ctx.log.line(f"    $ curl {url}/info -> {json.dumps(info, sort_keys=True)}")
        ctx.log.line(f"    $ curl -d '{{\"inputs\": [[1, 2, 3], [4, 5]]}}' {url}/predict -> {json.dumps(prediction)}")
        if prediction.get("outputs") != [6.0, 9.0]:
            raise CheckFailed(f"replica {w['rank']} answered {prediction}, expected outputs [6.0, 9.0]")
        visible = info.get("visible_devices", {}).get("CUDA_VISIBLE_DEVICES")
        placed = ",".join(str(d) for d in w["devices"])
        if visible != placed or str(info.get("device_milli")) != str(w["milli"]):
            raise CheckFailed(
                f"replica {w['rank']} sees CUDA_VISIBLE_DEVICES={visible!r}, {info.get('device_milli')} milli; "
                f"placed on {placed}, {w['milli']} milli"
            )
        infos.append((placed, w["milli"]))
    devices = {placed for placed, _ in infos}
    ctx.log.line(
        f"    {ctx.tag}{len(infos)} replicas of {infos[0][1] if infos else '?'} milli each on device(s) "
        f"{sorted(devices)}; the training job ran on {ctx.train_devices}"
    )
    if (
        ctx.train_devices
        and len(devices) == 1
        and len(ctx.devices()) == 1
        and [int(d) for d in next(iter(devices)).split(",")] != ctx.train_devices
    ):
        raise CheckFailed(f"one GPU, yet the service sits on {devices} and the training job ran on {ctx.train_devices}")
    ctx.zhisuan("cancel", job_id, env=_up_env(ctx), show=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = ctx.zhisuan_json("status", job_id, env=_up_env(ctx), show=False, poll=True)["state"]
        if state in TERMINAL:
            ctx.log.line(f"    cancelled the service: {state}")
            return
        time.sleep(0.5)
    raise CheckFailed(f"the inference service did not stop within 60 s of `zhisuan cancel` ({state})")


def step_down(ctx: Context) -> None:
    if ctx.up is None:
        raise CheckFailed("zhisuan up is not running")
    code = ctx.up.stop(signal.SIGINT, timeout_s=60)
    ctx.services.remove(ctx.up)
    ctx.log.block(ctx.up.tail(3), indent="    | ")
    if code != 0:
        raise CheckFailed(f"zhisuan up exited with {code} after Ctrl-C (None: it had to be killed)")
    ctx.log.line("    zhisuan up stopped cleanly (exit 0)")
    ctx.up = None


STEP_FUNCS: dict[str, Callable[[Context], None]] = {
    "env": step_env,
    "discover": step_discover,
    "bench": step_bench,
    "exporter": step_exporter,
    "cluster": step_cluster,
    "up": step_up,
    "train": step_train,
    "probe": step_probe,
    "inference": step_inference,
    "down": step_down,
}


def plan(first: str | None, only: str | None) -> list[tuple[str, str]]:
    """(step, "check" or "setup") in order: the chosen steps and what they need.

    >>> plan(None, "train")  # doctest: +NORMALIZE_WHITESPACE
    [('env', 'check'), ('discover', 'setup'), ('cluster', 'setup'), ('up', 'setup'), ('train', 'check'),
     ('down', 'setup')]
    >>> [s for s, _ in plan("probe", None)]
    ['env', 'discover', 'cluster', 'up', 'probe', 'inference', 'down']
    """
    names = list(STEPS)
    if only is not None:
        chosen = {"env", only}
    elif first is not None:
        chosen = {"env", *names[names.index(first) :]}
    else:
        chosen = set(names)
    needed: set[str] = set()

    def need(step: str) -> None:
        for dep in NEEDS.get(step, ()):
            if dep not in needed:
                needed.add(dep)
                need(dep)

    for step in chosen:
        need(step)
    if "up" in chosen | needed:
        needed.add("down")  # whatever up started is stopped the way an operator would
    return [(s, "check" if s in chosen else "setup") for s in names if s in chosen | needed]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, required=True, help="the virtual environment the project is installed in")
    parser.add_argument("--work", type=Path, required=True, help="folder for databases, configs and process logs")
    parser.add_argument("--emulated", metavar="MODEL:COUNT", help="the emulated shim instead of NVML (no GPU needed)")
    parser.add_argument("--model", help="catalog model for the cluster file when the catalog lacks the GPU's name")
    parser.add_argument("--from", dest="first", choices=list(STEPS), help="start at this step")
    parser.add_argument("--only", choices=list(STEPS), help="run only this step (and what it needs)")
    parser.add_argument("--bench-duration", type=float, default=5.0, help="seconds of the agent CPU measurement")
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole run, installs included (8 min)")
    parser.add_argument(
        "--deadline-s", type=float, default=540.0, help="no step starts after this many seconds (a 10-minute call)"
    )
    parser.add_argument("--started-at", type=float, default=None, help="epoch seconds the run began (gpu_check.sh)")
    parser.add_argument("--install-s", type=float, default=None, help="seconds the install took (gpu_check.sh)")
    args = parser.parse_args(argv)
    if args.first and args.only:
        parser.error("give --from or --only, not both")

    log = Log()
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        venv=args.venv.resolve(),
        work=args.work.resolve(),
        log=log,
        emulated=args.emulated,
        model_override=args.model,
        bench_duration_s=args.bench_duration,
        node_id=node_id_for(socket.gethostname()),
    )
    started = args.started_at or time.time()
    if ctx.emulated:
        log.line(f"*** EMULATED RUN: every device below is the emulated shim's {ctx.emulated}, not a GPU ***")
    timings: list[tuple[str, str, str, float]] = []
    if args.install_s is not None:
        timings.append(("install", "check", "ok", args.install_s))
    failed: tuple[str, str] | None = None
    steps = plan(args.first, args.only)
    try:
        for number, (step, role) in enumerate(steps, 1):
            ctx.step = step
            if time.time() - started > args.deadline_s and step != "down":
                failed = (step, f"not started: the run has taken {time.time() - started:.0f} s, past --deadline-s")
                break
            suffix = " (setup for a later step)" if role == "setup" else ""
            log.line(f"== [{number}/{len(steps)}] {step}: {STEPS[step]}{suffix}{' — EMULATED' if ctx.emulated else ''}")
            began = time.monotonic()
            try:
                STEP_FUNCS[step](ctx)
            except StepSkipped as err:
                timings.append((step, role, "SKIPPED", time.monotonic() - began))
                log.line(f"-- {step}: SKIPPED ({err})")
                continue
            except CheckFailed as err:
                failed = (step, " | ".join(line.strip() for line in str(err).splitlines() if line.strip()))
            except Exception as err:  # a bug here or an answer of an unexpected shape: still one clear line
                failed = (step, f"{type(err).__name__}: {err}")
            seconds = time.monotonic() - began
            timings.append((step, role, "FAILED" if failed else "ok", seconds))
            log.line(f"-- {step}: {'FAILED' if failed else 'ok'} in {seconds:.1f} s")
            if failed:
                break
    finally:
        if failed:
            for service in ctx.services:
                log.line(f"    last lines of {service.name} ({service.log_path}):")
                log.block(service.tail(25), indent="    | ")
        ctx.step = "cleanup"
        ctx.stop_all()

    total = time.time() - started
    log.line("")
    log.line(f"{'step':<10} {'role':<6} {'result':<7} {'seconds':>8}")
    for step, role, result, seconds in timings:
        log.line(f"{step:<10} {role:<6} {result:<7} {seconds:>8.1f}")
    log.line(f"{'total':<25} {total:>8.1f}   (budget {args.budget_s:g} s, installs included)")
    if not failed and total > args.budget_s:
        ctx.step = "budget"
        ctx.find(f"the run took {total:.0f} s, over the {args.budget_s:g} s budget")
    for finding in ctx.findings:
        log.line(f"FINDING ({finding.step}): {finding.message}")
    mode = "EMULATED " if ctx.emulated else ""
    if failed:
        log.line(f"FAILED at step {failed[0]}: {failed[1]}")
        return 1
    if ctx.findings:
        log.line(f"{mode}RESULT: every check passed, {len(ctx.findings)} finding(s) above")
        return 3
    log.line(f"{mode}RESULT: every check passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
