"""The API served for real: uvicorn on a free loopback port, over a PostgreSQL database of the
module's own, Redis and a moto S3 bucket; tokens made the way ``loopfree tokens create`` makes
them; a tiny random-weight model under ``LOOPFREE_MODEL_ROOTS`` (the API takes no other local
folder), rendered by a real ``loopfree worker`` process where a test needs images."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from core.settings import Settings
from storage.db import Engine, make_engine, session_scope
from storage.models import utcnow
from storage.tokens import create_token
from tests.conftest import PG_ADMIN_URL, REDIS_URL, redis_client, service_missing
from tests.harness import (
    ServedAsgi,
    loopfree_env,
    new_bucket,
    settings_from,
    throwaway_database,
)
from worker.tiny import make_model


@dataclass
class Clock:
    """The time the API's daily quotas count in: now, plus whatever a test adds."""

    shift: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return utcnow() + self.shift


class ServedApi(ServedAsgi):
    """``api.app.create_app`` served by uvicorn in a thread of the test process."""

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utcnow) -> None:
        from api.app import create_app

        super().__init__(
            create_app(settings, clock=clock),
            name="api-server",
            what="the API",
            limit_concurrency=500,
        )


@dataclass
class Fleet:
    """One module's services, the settings and environment that point at them, and the API."""

    env: dict[str, str]
    settings: Settings
    engine: Engine
    api: ServedApi
    clock: Clock
    model: str

    @property
    def url(self) -> str:
        return self.api.url

    def token(self, owner: str, **options: object) -> str:
        with session_scope(self.engine) as session:
            _, token = create_token(session, owner=owner, **options)  # type: ignore[arg-type]
        return token

    def count(self, sql: str) -> int:
        from sqlalchemy import text

        with session_scope(self.engine) as session:
            return int(session.execute(text(sql)).scalar_one())


@pytest.fixture(scope="session")
def api_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("api-models") / "tiny", shape="tiny", seed=5)


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, s3_server: str, api_model_dir: Path
) -> Iterator[Fleet]:
    """PostgreSQL (a database of this module's), Redis, S3 and the API serving them."""
    import psycopg

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as error:
        service_missing(f"PostgreSQL at {PG_ADMIN_URL}", error)
    redis = redis_client(REDIS_URL)
    redis.flushdb()
    home = tmp_path_factory.mktemp("api-home")
    try:
        with throwaway_database(PG_ADMIN_URL, prefix="loopfree_api") as database:
            env = loopfree_env(
                home=home,
                database_url=database,
                broker_url=REDIS_URL,
                storage_url=new_bucket(s3_server, prefix="api"),
                s3_endpoint=s3_server,
                model=api_model_dir,
                max_wait_ms=50,
                model_roots=json.dumps([str(api_model_dir.parent)]),
                metrics_port=0,
                owner="operator",
            )
            settings = settings_from(env, only=True)
            settings.ensure_home()
            engine = make_engine(settings.resolved_database_url)
            clock = Clock()
            try:
                with ServedApi(settings, clock=clock) as api:
                    yield Fleet(env, settings, engine, api, clock, str(api_model_dir))
            finally:
                engine.dispose()
    finally:
        redis.flushdb()
        redis.close()
