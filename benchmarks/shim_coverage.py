"""How well the vendor shims read the real captures kept under tests/fixtures (issue 17's closing table).

Every capture listed in ``tests/agents/captures.py`` is replayed through its shim by a real subprocess, and the
table says, per capture: the devices found against the devices the capture shows, the catalog model, and how many
of the values printed for the first device came out right. Run ``python benchmarks/shim_coverage.py`` (``--json``
for machine-readable rows); it exits non-zero when any capture falls short.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORE = ("utilization_pct", "memory_used_mib", "power_w", "temperature_c")


def _captures_module() -> Any:
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("shim_captures", ROOT / "tests" / "agents" / "captures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["shim_captures"] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Row:
    vendor: str
    capture: str
    tool_version: str | None
    board: str
    devices_found: int
    devices_shown: int
    model_expected: str | None
    models_found: list[str | None]
    fields_right: int
    fields_printed: int
    wrong: list[str]
    healthy_empty: int
    source: str

    @property
    def ok(self) -> bool:
        return (
            self.devices_found == self.devices_shown
            and self.models_found == [self.model_expected] * self.devices_shown
            and self.fields_right == self.fields_printed
            and self.healthy_empty == 0
        )


def coverage_rows() -> list[Row]:
    module = _captures_module()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, capture in enumerate(module.CAPTURES):
            directory = Path(tmp) / str(number)
            directory.mkdir()
            shim = module.make_capture_shim(capture, directory)
            devices = shim.discover()
            samples = shim.sample(fast=True) if devices else []
            wrong = []
            right = 0
            first = samples[0] if samples else None
            for field, expected in capture.first.items():
                got = getattr(first, field) if first is not None else None
                if got is not None and abs(got - expected) <= 1e-6 * max(1.0, abs(expected)):
                    right += 1
                else:
                    wrong.append(f"{field}={got} (capture: {expected})")
            empty = sum(1 for s in samples if s.health.value == "healthy" and all(getattr(s, f) is None for f in CORE))
            rows.append(
                Row(
                    vendor=capture.vendor,
                    capture=capture.name,
                    tool_version=shim.status.tool_version,
                    board=capture.board,
                    devices_found=len(devices),
                    devices_shown=capture.devices,
                    model_expected=capture.model,
                    models_found=[d.model for d in devices],
                    fields_right=right,
                    fields_printed=len(capture.first),
                    wrong=wrong,
                    healthy_empty=empty,
                    source=capture.source,
                )
            )
    return rows


def render(rows: list[Row]) -> str:
    lines = [
        "| vendor | capture | tool version | board | devices found / shown | model | printed values read | ok |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        models = sorted({str(m) for m in r.models_found}) or ["-"]
        model = f"{'/'.join(models)}" + ("" if r.models_found == [r.model_expected] * r.devices_shown else " (wrong)")
        lines.append(
            f"| {r.vendor} | `{r.capture}` | {r.tool_version or '-'} | {r.board} | {r.devices_found} / "
            f"{r.devices_shown} | {model.replace('None', 'unknown')} | {r.fields_right} / {r.fields_printed}"
            f"{' ' + '; '.join(r.wrong) if r.wrong else ''} | {'yes' if r.ok else 'NO'} |"
        )
    per_vendor = Counter(r.vendor for r in rows)
    good = Counter(r.vendor for r in rows if r.ok)
    lines.append("")
    lines.append("| vendor | real captures | fully read |")
    lines.append("| --- | --- | --- |")
    for vendor, count in per_vendor.items():
        lines.append(f"| {vendor} | {count} | {good[vendor]} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = coverage_rows()
    if args.json:
        print(json.dumps([asdict(r) | {"ok": r.ok} for r in rows], indent=2))
    else:
        print(render(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
