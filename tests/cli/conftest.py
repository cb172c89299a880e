"""Fixtures of the CLI and SDK tests: a real API server (see ``cli_server.py``) and an isolated CLI config."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.testing
from cli_server import Server, running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("zhisuan-server")) as started:
        yield started


@pytest.fixture(autouse=True, scope="module")
def _build_the_cli_once() -> Iterator[None]:
    """Typer rebuilds the whole click command tree (every sub-app) on each ``CliRunner.invoke``, ~0.5 s here;
    these tests invoke the same app ~100 times, so build it once per module."""
    original = getattr(typer.testing, "_get_command", None)
    if original is None:  # another typer version: just run slower
        yield
        return
    typer.testing._get_command = functools.cache(original)
    try:
        yield
    finally:
        typer.testing._get_command = original


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty config directory and no ZHISUAN_* variables."""
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    for name in ("ZHISUAN_URL", "ZHISUAN_TOKEN", "ZHISUAN_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return xdg
