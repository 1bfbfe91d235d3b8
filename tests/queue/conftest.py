"""Fixtures for the queue path: a settings object per test, a tiny model, database schema."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from core.settings import Settings
from migrations.runner import upgrade
from storage.objects import open_store
from tests.conftest import free_port
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
def fleet_env(tmp_path, migrated_pg_url, redis_url, s3_server, s3_env, queue_model_dir):
    """LOOPFREE_* variables pointing at the real services, as a deployment would set them."""
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    open_store(f"s3://{bucket}", endpoint_url=s3_server, region="us-east-1").ensure_bucket()
    return {
        "LOOPFREE_HOME": str(tmp_path / "home"),
        "LOOPFREE_DATABASE_URL": migrated_pg_url,
        "LOOPFREE_BROKER_URL": redis_url,
        "LOOPFREE_STORAGE_URL": f"s3://{bucket}/images",
        "LOOPFREE_S3_ENDPOINT_URL": s3_server,
        "LOOPFREE_S3_REGION": "us-east-1",
        "LOOPFREE_MODEL": str(queue_model_dir),
        "LOOPFREE_MAX_WAIT_MS": "50",
        "LOOPFREE_METRICS_PORT": str(free_port()),
        "LOOPFREE_DEVICE": "cpu",
    }
