"""Fixtures of the API tests (defined in :mod:`api_stack`, which the test modules import helpers from)."""

from api_stack import database_url, fresh_url, stack

__all__ = ["database_url", "fresh_url", "stack"]
