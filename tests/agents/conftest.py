"""Shared fixtures for the node-agent tests."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_fakes import StubApi, make_test_catalog

from scheduler.catalog import Catalog

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return make_test_catalog()


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def make_tool(tmp_path: Path) -> Callable[[str, str], str]:
    """Write an executable shell script standing in for a vendor tool; returns its path."""

    def make(name: str, body: str) -> str:
        path = tmp_path / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return str(path)

    return make


@pytest.fixture
def api() -> Iterator[StubApi]:
    server = StubApi().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    # Docstring examples and fixture paths are written relative to the repository root.
    monkeypatch.chdir(FIXTURES.parents[1])
    os.environ.setdefault("LC_ALL", "C")
