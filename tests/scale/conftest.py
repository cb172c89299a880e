"""Fixtures of the scale tests (helpers in ``scale_stack``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import scale_stack  # noqa: F401  (puts tests/api, where the database helpers live, on the path)
from api_stack import create_postgres_database, drop_postgres_database, postgres_available


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    error = postgres_available()
    if error is not None:
        pytest.skip(f"PostgreSQL NOT TESTED: {error}")
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)
