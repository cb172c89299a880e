"""Helpers for the simulator tests: small clusters built here, and the public traces shipped in tests/fixtures."""

from __future__ import annotations

from pathlib import Path

from scheduler.model import Node

ROOT = Path(__file__).resolve().parents[2]
#: The public traces shipped with the repository (sources and licenses in its README).
TRACES = ROOT / "tests" / "fixtures" / "traces"


def public_trace(*parts: str) -> Path:
    """A file of ``tests/fixtures/traces`` (it must exist: the repository ships it)."""
    path = TRACES.joinpath(*parts)
    assert path.exists(), f"{path} is missing from the repository"
    return path


def nodes(model: str = "A100", count: int = 2, devices: int = 8, prefix: str = "n") -> list[Node]:
    return [
        Node(id=f"{prefix}{i}", model=model, devices=devices, cpu_milli=64000, memory_mib=512000) for i in range(count)
    ]
