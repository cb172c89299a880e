"""Running vendor command-line tools safely, and the base class of the shims that parse their output.

A vendor tool can be missing (vendor absent), hang (driver wedged: the agent must not hang with it), exit non-zero
or print garbage. :func:`run_tool` turns each case into a :class:`ToolResult` instead of an exception::

    >>> run_tool(["definitely-not-a-vendor-tool"], timeout_s=1).outcome
    <ToolOutcome.MISSING: 'missing'>
    >>> run_tool(["sh", "-c", "echo ok"], timeout_s=5).stdout
    'ok\\n'
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from agents.protocol import METRIC_FIELDS, DeviceInfo, DeviceSample, Health
from agents.shims.base import ModelResolver, Shim
from scheduler.catalog import Catalog


class ToolOutcome(StrEnum):
    OK = "ok"
    MISSING = "missing"
    TIMEOUT = "timeout"
    FAILED = "failed"


class ToolResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    argv: list[str]
    outcome: ToolOutcome
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == ToolOutcome.OK

    def describe(self) -> str:
        """One line for ``health_reasons``: ``"npu-smi info timed out after 2.0 s"``."""
        cmd = " ".join(self.argv[:3])
        if self.outcome == ToolOutcome.TIMEOUT:
            return f"{cmd} timed out after {self.elapsed_s:.1f} s"
        if self.outcome == ToolOutcome.MISSING:
            return f"{self.argv[0]} not found"
        if self.outcome == ToolOutcome.FAILED:
            detail = (self.stderr or self.stdout).strip().splitlines()[:1]
            return f"{cmd} exited {self.returncode}: {detail[0] if detail else 'no output'}"
        return f"{cmd} ok"


Runner = Callable[[Sequence[str], float], ToolResult]


def run_tool(argv: Sequence[str], timeout_s: float) -> ToolResult:
    """Run ``argv`` with a hard timeout; a timed-out tool and all its children are killed."""
    argv = list(argv)
    exe = shutil.which(argv[0])
    if exe is None:
        return ToolResult(argv=argv, outcome=ToolOutcome.MISSING)
    start = time.monotonic()
    # A new session lets us kill the tool's whole process group: vendor tools are often shell wrappers whose
    # child would otherwise keep the pipe open and block us past the timeout.
    proc = subprocess.Popen(
        [exe, *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        return ToolResult(argv=argv, outcome=ToolOutcome.TIMEOUT, elapsed_s=time.monotonic() - start)
    result = ToolResult(
        argv=argv,
        outcome=ToolOutcome.OK if proc.returncode == 0 else ToolOutcome.FAILED,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        returncode=proc.returncode,
        elapsed_s=time.monotonic() - start,
    )
    return result


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class ToolShim(Shim):
    """A shim that runs one vendor tool and parses its text. Subclasses implement :meth:`_discover` and
    :meth:`_sample` on top of :meth:`_run`.

    ``binary`` overrides the tool path (tests point it at a script that prints a recorded output);
    ``timeout_s`` bounds every call; ``runner`` replaces :func:`run_tool` entirely.
    """

    tool: str = ""

    def __init__(
        self,
        binary: str | None = None,
        timeout_s: float = 5.0,
        catalog: Catalog | str | None = "default",
        runner: Runner | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.binary = binary or self.tool
        self.timeout_s = timeout_s
        self.resolver = ModelResolver(catalog)
        self.runner: Runner = runner or run_tool
        self.clock = clock
        self.wall_clock = wall_clock
        self.last_error: str | None = None

    def _run(self, *args: str) -> ToolResult:
        return self.runner([self.binary, *args], self.timeout_s)

    def discover(self) -> list[DeviceInfo]:
        try:
            return self._discover()
        except Exception as err:  # a parser bug on odd output must not stop the agent
            return self._absent(f"{self.tool}: could not parse discovery output ({err!r})")

    def sample(self, fast: bool = True) -> list[DeviceSample]:
        now, wall = self.clock(), self.wall_clock()
        if not self.devices:
            return []
        try:
            return self._sample(fast, now, wall)
        except Exception as err:
            return self.failed_samples(f"{self.tool}: could not parse output ({err!r})", now, wall)

    def _discover_failed(self, result: ToolResult) -> list[DeviceInfo]:
        if result.outcome == ToolOutcome.MISSING:
            return self._absent(f"{self.binary} not found on PATH")
        return self._absent(f"{self.tool} unusable: {result.describe()}")

    @abstractmethod
    def _discover(self) -> list[DeviceInfo]: ...

    @abstractmethod
    def _sample(self, fast: bool, now: float, wall: float) -> list[DeviceSample]: ...

    def _new_sample(self, device: DeviceInfo, now: float, wall: float) -> DeviceSample:
        return DeviceSample(
            vendor=self.vendor,
            index=device.index,
            uuid=device.uuid,
            model=device.model,
            sampled_monotonic_s=now,
            sampled_wall_time=wall,
            memory_total_mib=device.memory_total_mib,
            health=Health.HEALTHY,
        )


# ------------------------------------------------------------------------------------- parsing helpers


def parse_number(text: str | None) -> float | None:
    """The first number in ``text`` (``"69W"`` → 69.0, ``"N/A"`` → None, ``"[Not Supported]"`` → None)."""
    if text is None:
        return None
    match = re.search(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    if match is None:
        return None
    return float(match.group(0))


def pct(value: float | None) -> float | None:
    """A percentage, or None when the tool printed something outside 0-100 (garbled output)."""
    if value is None or not 0 <= value <= 100:
        return None
    return value


def nonneg(value: float | None) -> float | None:
    if value is None or value < 0:
        return None
    return value


@dataclass
class Reading:
    """What one call of a vendor tool said about one device, before it becomes a :class:`DeviceSample`.

    ``values`` maps :data:`METRIC_FIELDS` names to numbers; a field the tool printed but we could not parse is
    present with ``None``; a field the tool never prints is absent. Both end up in ``fields_unavailable``.
    """

    index: int
    name: str
    uuid: str | None = None
    bus_id: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    health: Health = Health.HEALTHY
    reasons: list[str] = field(default_factory=list)


class ReadingShim(ToolShim):
    """A :class:`ToolShim` whose tool prints everything in one call: subclasses implement :meth:`_read`."""

    @abstractmethod
    def _read(self) -> tuple[ToolResult, list[Reading]]:
        """Run the tool once and parse every device it lists."""

    def _discover(self) -> list[DeviceInfo]:
        result, readings = self._read()
        if not result.ok:
            return self._discover_failed(result)
        if not readings:
            return self._absent(f"{self.tool} listed no devices (unrecognised or empty output)")
        devices = []
        for reading in readings:
            stand_in = reading.bus_id or f"index{reading.index}"
            total = reading.values.get("memory_total_mib")
            devices.append(
                self.resolver.describe(
                    self.vendor,
                    reading.index,
                    reading.uuid or f"{self.vendor}-{stand_in}",
                    reading.name,
                    bus_id=reading.bus_id,
                    memory_total_mib=total,
                    notes=[] if reading.uuid else [f"{self.tool} prints no UUID; uuid derived from {stand_in}"],
                )
            )
        return self._present(devices)

    def _sample(self, fast: bool, now: float, wall: float) -> list[DeviceSample]:
        result, readings = self._read()
        if not result.ok:
            return self.failed_samples(result.describe(), now, wall)
        by_index = {r.index: r for r in readings}
        out: list[DeviceSample] = []
        for device in self.devices:
            reading = by_index.get(device.index)
            if reading is None:
                failed = self.failed_samples(f"device {device.index} missing from {self.tool} output", now, wall)
                out.extend(s for s in failed if s.index == device.index)
                continue
            sample = self._new_sample(device, now, wall)
            for name, value in reading.values.items():
                setattr(sample, name, value)
            sample.health = reading.health
            sample.health_reasons = list(reading.reasons)
            sample.flag_unavailable(*(f for f in METRIC_FIELDS if f != "xid_events" and getattr(sample, f) is None))
            if self.vendor != "nvidia":
                sample.flag_unavailable("xid_events")  # XIDs are an NVIDIA notion
            out.append(sample)
        return out
