"""Fixtures of the serving tests (the helpers live in ``serving_stack.py``: a module name no other test folder uses)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_stack import Stack, make_stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from make_stack(tmp_path)
