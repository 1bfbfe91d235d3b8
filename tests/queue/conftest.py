"""Fixtures for the queue path: a settings object per test, a tiny model, database schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopfree.settings import Settings
from storage.migrate import upgrade
from worker.tiny import make_model


@pytest.fixture(scope="session")
def queue_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("queue-models") / "tiny", shape="tiny", seed=1)


@pytest.fixture()
def embedded_settings(tmp_path: Path, queue_model_dir: Path) -> Settings:
    """Everything embedded: SQLite, a local folder store, the filesystem broker."""
    settings = Settings(home=tmp_path / "home", model=str(queue_model_dir), max_wait_ms=50)
    settings.ensure_home()
    upgrade(settings.resolved_database_url)
    return settings
