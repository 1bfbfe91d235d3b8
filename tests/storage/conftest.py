"""Fixtures for the storage tests: an engine on a migrated SQLite or PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from storage.db import make_engine


@pytest.fixture()
def engine(migrated_db_url: str) -> Iterator[Engine]:
    """An engine on a database at the newest revision (tests using it run on both backends)."""
    engine = make_engine(migrated_db_url)
    try:
        yield engine
    finally:
        engine.dispose()
