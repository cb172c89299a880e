"""The walls of the architecture are code: `lint-imports` keeps them, and breaks on a forbidden import.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); ``make lint`` runs them on the tree. Here they
run on a copy of the packages with one forbidden import added, to show each wall actually holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("scheduler", "agents", "api", "simulations")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "400"}  # one line per contract
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("walls")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_core_module_is_inside_the_purity_wall() -> None:
    # The core-pure contract lists its modules (scheduler.live must stay outside it): a new core module has to be
    # added there, or it would escape the wall unnoticed.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    pure = next(c for c in config["contracts"] if c["name"].startswith("The policy core is pure"))
    core = {f"scheduler.{p.stem}" for p in (ROOT / "scheduler").glob("*.py") if p.stem != "__init__"}
    assert core == set(pure["source_modules"])


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("scheduler/state.py", "import ray", "The policy core is pure"),
        ("scheduler/placement.py", "import time", "The policy core is pure"),
        ("scheduler/live/service.py", "import api.tables", "The live runtime sits below the API"),
        ("simulations/engine.py", "import scheduler.live.service", "The simulator runs the core alone"),
        ("agents/agent.py", "import scheduler.core", "Agents import only the catalog"),
        ("api/routers/jobs.py", "import scheduler.live.executors.ray", "The API reaches executors"),
        ("scheduler/model.py", "import scheduler.metering", "Layers inside the core"),
    ],
)
def test_a_forbidden_import_breaks_its_wall(tree: Path, module: str, line: str, contract: str) -> None:
    path = tree / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}  # deliberately broken wall\n")
        result = _lint(tree)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if "BROKEN" in row]
    assert any(contract in row for row in broken), result.stdout
