"""Each package root names its public surface once: ``__all__``, the lazy table behind it and the imports that type
it agree, every name resolves, and importing one module does not load the whole package."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("scheduler", "agents", "api", "simulations")


def _typed_names(package: str) -> set[str]:
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # the TYPE_CHECKING block
            for imported in node.body:
                assert isinstance(imported, ast.ImportFrom)
                names |= {alias.name for alias in imported.names}
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_and_is_typed(package: str) -> None:
    module = importlib.import_module(package)
    exports = module._EXPORTS
    assert sorted(module.__all__) == sorted(exports) == sorted(_typed_names(package))
    for name, owner in exports.items():
        assert getattr(module, name) is getattr(importlib.import_module(owner), name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        module.nope  # noqa: B018


def test_the_catalog_alone_does_not_load_the_core() -> None:
    # The node agent and the Ray node supervisor import small parts of the package: they must stay small.
    code = "import sys, scheduler.catalog; print(sorted(m for m in sys.modules if m.startswith('scheduler')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "scheduler.core" not in loaded and "scheduler.placement" not in loaded
