"""Fixtures shared by the marketplace's tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def postgres_only(is_postgres: bool) -> None:
    """For races between transactions: SQLite runs one writer at a time (its write lock covers
    a whole transaction), so there the race cannot happen; CI runs these on PostgreSQL."""
    if not is_postgres:
        pytest.skip("races between transactions are PostgreSQL's (SQLite: one writer at a time)")
