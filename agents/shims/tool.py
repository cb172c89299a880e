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
import logging
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
from typing import Any

from pydantic import BaseModel, ConfigDict

from agents.protocol import METRIC_FIELDS, DeviceInfo, DeviceSample, Health, ShimState, ShimStatus
from agents.shims.base import ModelResolver, Shim
from scheduler.catalog import Catalog

log = logging.getLogger("zhisuan.agent.shims")


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
    # child would otherwise keep the pipe open and block us past the timeout. LC_ALL=C keeps tools that localise
    # their output (cnmon, npu-smi on zh_CN hosts) printing the English labels the parsers read.
    try:
        proc = subprocess.Popen(
            [exe, *argv[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )
    except OSError as oserr:  # not executable, wrong architecture, a directory named like the tool
        return ToolResult(argv=argv, outcome=ToolOutcome.FAILED, stderr=str(oserr), elapsed_s=time.monotonic() - start)
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


# ------------------------------------------------------------------------------------------- tool shims

#: Metrics whose absence together means the shim read nothing useful about a device (a row it did not understand).
CORE_METRICS = ("utilization_pct", "memory_used_mib", "power_w", "temperature_c")

#: Phrases tools print when they run fine but the node has none of their devices (vendor absent, not an error).
_NO_DEVICE_PHRASES = ("no device", "no devices", "not found any", "no npu", "no mlu", "no gpu", "no xpu", "no dcu")


class ToolShim(Shim):
    """A shim that runs one vendor tool and parses its text. Subclasses implement :meth:`_discover` and
    :meth:`_sample` on top of :meth:`_run`.

    ``binary`` overrides the tool path (tests point it at a script that prints a recorded output); without it the
    first of ``tools`` found on ``PATH`` is used (vendors ship one tool under several names: ``xpu-smi`` and
    ``xpu_smi``, ``hy-smi`` and DTK's ``rocm-smi``). ``timeout_s`` bounds every call; ``runner`` replaces
    :func:`run_tool` entirely. What the parser did not understand is reported on the device, named with the tool
    and its version, and logged once per distinct message.
    """

    tool: str = ""
    tools: tuple[str, ...] = ()

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
        self.binary = binary or self._find_binary()
        self.timeout_s = timeout_s
        self.resolver = ModelResolver(catalog)
        self.runner: Runner = runner or run_tool
        self.clock = clock
        self.wall_clock = wall_clock
        self.last_error: str | None = None
        self.tool_version: str | None = None
        self.driver_version: str | None = None
        self._logged: set[str] = set()

    def _find_binary(self) -> str:
        for name in self.tools or (self.tool,):
            if shutil.which(name) is not None:
                return name
        return (self.tools or (self.tool,))[0]

    def _run(self, *args: str) -> ToolResult:
        return self.runner([self.binary, *args], self.timeout_s)

    def discover(self) -> list[DeviceInfo]:
        try:
            return self._discover()
        except Exception as err:  # a parser bug on odd output must not stop the agent
            return self._error(f"could not parse discovery output ({err!r})")

    def sample(self, fast: bool = True) -> list[DeviceSample]:
        now, wall = self.clock(), self.wall_clock()
        if not self.devices:
            return []
        try:
            return self._sample(fast, now, wall)
        except Exception as err:
            return self.failed_samples(self.reason(f"could not parse output ({err!r})"), now, wall)

    # ------------------------------------------------------------------ status and honest failure

    def reason(self, what: str) -> str:
        """``"npu-smi 24.1.RC2: <what>"``: every problem names the tool and the version that printed it."""
        return f"{self.tool} {self.tool_version or '(version not printed)'}: {what}"

    def log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s shim: %s", self.vendor, message)

    def _present(self, devices: list[DeviceInfo], tool_version: str | None = None) -> list[DeviceInfo]:
        if tool_version is not None:
            self.tool_version = tool_version
        for device in devices:
            if device.driver_version is None and self.driver_version:
                device.driver_version = self.driver_version
        super()._present(devices, self.tool_version)
        self.status.driver_version = self.driver_version
        self.status.command = self.binary
        return devices

    def _error(self, what: str) -> list[DeviceInfo]:
        """The tool runs but its output cannot be used: an error (not absence), reported and logged."""
        message = self.reason(what)
        self.log_once(message)
        self.status = ShimStatus(
            vendor=self.vendor,
            state=ShimState.ERROR,
            reason=message,
            tool_version=self.tool_version,
            driver_version=self.driver_version,
            command=self.binary,
        )
        self.devices = []
        return []

    def _discover_failed(self, result: ToolResult) -> list[DeviceInfo]:
        if result.outcome == ToolOutcome.MISSING:
            return self._absent(f"{self.binary} not found on PATH")
        if result.outcome == ToolOutcome.FAILED and _says_no_device(result.stdout + result.stderr):
            return self._absent(f"{self.tool} reports no devices: {result.describe()}")
        return self._error(f"unusable: {result.describe()}")

    def _nothing_understood(self, result: ToolResult, what: str) -> list[DeviceInfo]:
        """The tool ran and printed something no parser recognised: absent if it said so, an error otherwise."""
        text = (result.stdout or "").strip()
        if not text or _says_no_device(text):
            return self._absent(
                f"{self.tool} listed no devices ({text.splitlines()[0][:80] if text else 'empty output'})"
            )
        return self._error(what)

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

    def _finish(
        self, sample: DeviceSample, problems: Sequence[str] = (), output_problems: Sequence[str] = ()
    ) -> DeviceSample:
        """Apply the rules every tool shim shares: problems become named reasons (logged once); a device whose own
        lines were not fully understood, or that the parser read nothing from, is ``unknown`` rather than healthy
        (a vendor's ``unhealthy`` stands); problems elsewhere in the output are reasons only; unread metrics are
        listed."""
        for problem in [*problems, *output_problems]:
            message = self.reason(problem)
            self.log_once(message)
            if message not in sample.health_reasons:
                sample.health_reasons.append(message)
        if problems and sample.health == Health.HEALTHY:
            sample.health = Health.UNKNOWN
        if all(getattr(sample, name) is None for name in CORE_METRICS) and sample.health == Health.HEALTHY:
            sample.health = Health.UNKNOWN
            sample.health_reasons.append(self.reason("no utilisation, memory, power or temperature could be read"))
        missing = [f for f in METRIC_FIELDS if f != "xid_events" and getattr(sample, f) is None]
        # XIDs are an NVIDIA notion; the other vendors report faults through their health words instead.
        sample.flag_unavailable(*missing, "xid_events")
        return sample


def _says_no_device(text: str) -> bool:
    lowered = text.lower()
    return any(phrase in lowered for phrase in _NO_DEVICE_PHRASES)


# ------------------------------------------------------------------------------------- parsing helpers


def parse_number(text: str | None) -> float | None:
    """The first number in ``text`` (``"69W"`` → 69.0, ``"N/A"`` → None, ``"[Not Supported]"`` → None)."""
    if text is None:
        return None
    match = re.search(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    if match is None:
        return None
    try:
        return float(match.group(0))
    except (ValueError, OverflowError):
        return None


def pct(value: float | None) -> float | None:
    """A percentage, or None when the tool printed something outside 0-100 (garbled output)."""
    if value is None or not 0 <= value <= 100:
        return None
    return value


def nonneg(value: float | None) -> float | None:
    if value is None or value < 0 or value != value or value == float("inf"):
        return None
    return value


def celsius(value: float | None) -> float | None:
    """A temperature a device can have (-40..150 C); anything else is garbage, not a reading."""
    if value is None or not -40 <= value <= 150:
        return None
    return value


BUS_ID = re.compile(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]")


def bus_id(text: str | None) -> str | None:
    """A PCI address when ``text`` is one (``0000:C1:00.0``, NVIDIA's ``00000000:13:00.0``), else None."""
    if text is None:
        return None
    match = BUS_ID.fullmatch(text.strip())
    return match.group(0) if match else None


def cells(line: str) -> list[str]:
    """The ``|``-separated cells of a table row, stripped: ``"| a | b |"`` → ``["a", "b"]``."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


_INDEX_NAME = re.compile(r"^(\d+)\s+(.*?)(?:\s+(?:N/A|On|Off))?$")
_TEMP = re.compile(r"(-?\d+(?:\.\d+)?)\s*°?C\b")
_POWER = re.compile(r"(\S+?)\s*W?\s*/\s*(\S+?)\s*W\b|(N/A)\s*/\s*(N/A)")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*(?:MiB)?\s*/\s*(\d+(?:\.\d+)?)\s*MiB")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_MHZ = re.compile(r"(\d+(?:\.\d+)?)\s*MHz")


def parse_nvsmi_style(text: str) -> list[Reading]:
    """Device blocks of an ``nvidia-smi``-style summary table, as ``ixsmi``, ``xpu-smi`` (P800 era) and
    ``mx-smi`` print them: a block starts with ``| <index>  <name> ... |`` and runs to the next ``+---`` line;
    values are found by their units (``35C``, ``103W / 350W``, ``64MiB / 32768MiB``, ``0%``), which is what stays
    put when vendors move columns between releases. Returns readings with the values found; a block missing its
    second line yields a reading whose unread values stay absent (reported by the shim)."""
    readings: list[Reading] = []
    block: list[list[str]] = []

    def flush() -> None:
        if block:
            readings.append(_nvsmi_block(block))
            block.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("+") or stripped.startswith("|=") or not stripped.startswith("|"):
            flush()
            if "Processes" in line or "Process:" in line:
                break
            continue
        row = cells(line)
        if len(row) < 3:
            continue
        if (_INDEX_NAME.match(row[0]) and not block) or block:
            block.append(row)
    flush()
    return readings


def _nvsmi_block(block: list[list[str]]) -> Reading:
    first = block[0]
    match = _INDEX_NAME.match(first[0])
    assert match is not None
    reading = Reading(index=int(match.group(1)), name=match.group(2).strip(), health=Health.HEALTHY)
    for row in block:
        for cell in row:
            found = BUS_ID.search(cell)
            if found and reading.bus_id is None:
                reading.bus_id = found.group(0)
    rest = block[1:]
    v = reading.values
    for row in rest:
        temp = _TEMP.search(row[0])
        if temp and "temperature_c" not in v:
            v["temperature_c"] = celsius(float(temp.group(1)))
        power = _POWER.search(row[0])
        if power and "power_w" not in v:
            v["power_w"] = nonneg(parse_number(power.group(1))) if power.group(1) else None
            v["power_limit_w"] = nonneg(parse_number(power.group(2))) if power.group(2) else None
    for row in block:
        memory = _MEMORY.search(row[1]) if len(row) > 1 else None
        if memory and "memory_total_mib" not in v:
            v["memory_used_mib"] = nonneg(float(memory.group(1)))
            v["memory_total_mib"] = nonneg(float(memory.group(2)))
    for row in block:
        util = _PERCENT.search(row[2]) if len(row) > 2 else None
        if util and "utilization_pct" not in v:
            v["utilization_pct"] = pct(float(util.group(1)))
    clock = _MHZ.search(first[2]) if len(first) > 2 else None
    if clock:
        v["sm_clock_mhz"] = nonneg(float(clock.group(1)))
    if len(first) > 2 and first[2].strip().isdigit():
        v["ecc_uncorrectable_total"] = float(first[2].strip())  # the "Volatile Uncorr. ECC" column
    if not rest:
        reading.problems.append("device block has no metrics line (output cut short?)")
    return reading


@dataclass
class Reading:
    """What one call of a vendor tool said about one device, before it becomes a :class:`DeviceSample`.

    ``values`` maps :data:`METRIC_FIELDS` names to numbers; a field the tool printed but we could not parse is
    present with ``None`` and explained in ``problems``; a field the tool never prints is absent. Both end up in
    ``fields_unavailable``. ``names`` are further names the tool printed for the part (``npu-smi info -m``).
    """

    index: int
    name: str
    uuid: str | None = None
    bus_id: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    health: Health = Health.HEALTHY
    reasons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Parsed:
    """Everything one parser got out of one output: the devices, the versions printed, and what it did not
    understand that belongs to no single device (a row it could not read)."""

    readings: list[Reading] = field(default_factory=list)
    tool_version: str | None = None
    driver_version: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Mode:
    """One way of asking a tool for its devices: the arguments and the parser of what it prints."""

    name: str
    args: tuple[str, ...]
    parse: Callable[[str], Parsed]


def safe_parse(parse: Callable[[str], Parsed], text: str) -> Parsed:
    """Run a parser; an exception (a parser bug on odd input) becomes a problem instead of escaping."""
    try:
        return parse(text)
    except Exception as err:
        return Parsed(problems=[f"{type(err).__name__}: {err}"[:200]])


def unique_readings(parsed: Parsed) -> list[Reading]:
    """Readings with duplicate indexes dropped (the first kept) and the duplication recorded as a problem."""
    seen: dict[int, Reading] = {}
    for reading in parsed.readings:
        if reading.index in seen:
            parsed.problems.append(f"device {reading.index} is listed twice; the second entry was ignored")
            continue
        seen[reading.index] = reading
    return list(seen.values())


class ReadingShim(ToolShim):
    """A :class:`ToolShim` whose tool prints everything in one call. Subclasses list :attr:`modes`, most reliable
    first; discovery uses the first that runs and yields devices, and sampling keeps using it."""

    modes: tuple[Mode, ...] = ()
    #: Prefix for UUIDs the tool prints without a vendor marker (hy-smi's "Unique ID"), so they cannot collide.
    uuid_prefix: str = ""
    #: An extra call that prints the driver version when the modes' output does not (``hy-smi --showdriverversion``).
    version_mode: Mode | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode: Mode | None = None

    def _read(self) -> tuple[ToolResult, Parsed]:
        mode = self.mode or self.modes[0]
        result = self._run(*mode.args)
        parsed = safe_parse(mode.parse, result.stdout) if result.ok else Parsed()
        return result, parsed

    def _discover(self) -> list[DeviceInfo]:
        tried: list[str] = []
        last: ToolResult | None = None
        for mode in self.modes:
            result = self._run(*mode.args)
            last = result
            if result.outcome == ToolOutcome.MISSING:
                return self._discover_failed(result)
            if not result.ok:
                tried.append(f"'{' '.join((self.tool, *mode.args))}' {result.describe()}")
                continue
            parsed = safe_parse(mode.parse, result.stdout)
            self.tool_version = parsed.tool_version or self.tool_version
            self.driver_version = parsed.driver_version or self.driver_version
            readings = unique_readings(parsed)
            if readings:
                self.mode = mode
                self._read_versions()
                return self._present(self._describe(readings, parsed))
            what = "; ".join(parsed.problems) or "no device rows recognised"
            tried.append(f"'{' '.join((self.tool, *mode.args))}' printed output not understood ({what})")
        if last is None:
            return self._error("no way of querying the tool is configured")
        if last.ok:
            return self._nothing_understood(last, "; ".join(tried))
        if len(self.modes) == 1 or _says_no_device(last.stdout + last.stderr):
            return self._discover_failed(last)
        return self._error("; ".join(tried))

    def _read_versions(self) -> None:
        if self.version_mode is None or (self.driver_version and self.tool_version):
            return
        result = self._run(*self.version_mode.args)
        if result.ok:
            parsed = safe_parse(self.version_mode.parse, result.stdout)
            self.tool_version = self.tool_version or parsed.tool_version
            self.driver_version = self.driver_version or parsed.driver_version

    def _describe(self, readings: list[Reading], parsed: Parsed) -> list[DeviceInfo]:
        devices = []
        used: set[str] = set()
        for reading in readings:
            stand_in = reading.bus_id or f"index{reading.index}"
            total = reading.values.get("memory_total_mib")
            notes = list(reading.notes)
            if not reading.uuid:
                notes.append(f"{self.tool} prints no UUID; uuid derived from {stand_in}")
            uuid = f"{self.uuid_prefix}{reading.uuid}" if reading.uuid else f"{self.vendor}-{stand_in}"
            if uuid in used:  # two devices claiming one id (cloned VFs, a garbled bus id): keep both, apart
                notes.append(self.reason(f"{uuid} is also claimed by another device; index appended"))
                uuid = f"{uuid}#index{reading.index}"
            used.add(uuid)
            devices.append(
                self.resolver.describe(
                    self.vendor,
                    reading.index,
                    uuid,
                    reading.name,
                    bus_id=reading.bus_id,
                    memory_total_mib=total,
                    other_names=reading.names,
                    notes=notes,
                )
            )
        return devices

    def _sample(self, fast: bool, now: float, wall: float) -> list[DeviceSample]:
        result, parsed = self._read()
        if not result.ok:
            return self.failed_samples(self.reason(result.describe()), now, wall)
        readings = unique_readings(parsed)
        if not readings:
            what = "; ".join(parsed.problems) or "no device rows recognised"
            self.log_once(self.reason(f"output not understood ({what})"))
            return self.failed_samples(self.reason(f"output not understood ({what})"), now, wall)
        by_index = {r.index: r for r in readings}
        out: list[DeviceSample] = []
        for device in self.devices:
            reading = by_index.get(device.index)
            if reading is None:
                failed = self.failed_samples(self.reason(f"device {device.index} missing from output"), now, wall)
                out.extend(s for s in failed if s.index == device.index)
                continue
            sample = self._new_sample(device, now, wall)
            for name, value in reading.values.items():
                setattr(sample, name, int(value) if value is not None and name.startswith("ecc_") else value)
            sample.health = reading.health
            sample.health_reasons = list(reading.reasons)
            out.append(self._finish(sample, reading.problems, parsed.problems))
        return out
