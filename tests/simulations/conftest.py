"""Shared helpers for the simulator tests: small clusters and traces built here, shared traces when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.model import Node

ROOT = Path(__file__).resolve().parents[2]
SHARED_TRACES = ROOT.parent / "shared" / "traces"


def shared(*parts: str) -> Path:
    """A file of ``../shared/traces``; the test is skipped when the shared folder is absent."""
    path = SHARED_TRACES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def nodes(model: str = "A100", count: int = 2, devices: int = 8, prefix: str = "n") -> list[Node]:
    return [
        Node(id=f"{prefix}{i}", model=model, devices=devices, cpu_milli=64000, memory_mib=512000) for i in range(count)
    ]
