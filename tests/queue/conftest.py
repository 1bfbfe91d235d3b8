"""Fixtures for the queue path: a settings object per test, a tiny model, database schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings
from migrations.runner import upgrade
from tests.harness import Services, free_port, new_bucket
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


@pytest.fixture()
def fleet_env(
    tmp_path: Path,
    migrated_pg_url: str,
    redis_url: str,
    s3_server: str,
    s3_env: dict[str, str],
    queue_model_dir: Path,
) -> dict[str, str]:
    """LOOPFREE_* variables pointing at the real services, as a deployment would set them."""
    bucket = new_bucket(s3_server, prefix="e2e")
    services = Services(migrated_pg_url, redis_url, bucket, s3_server)
    return services.env(
        home=tmp_path / "home", model=queue_model_dir, max_wait_ms=50, metrics_port=free_port()
    )
