"""Shared fixtures for tests that talk to real services: PostgreSQL, Redis, an S3 endpoint.

No mocks: databases are real PostgreSQL databases and SQLite files, S3 is a moto server answering
HTTP on a loopback port. When PostgreSQL or Redis cannot be reached the fixtures skip locally but
fail under CI (``CI=true``), so a broken CI service can never turn into a green run of skips. The
services themselves come from ``tests/harness.py``, which the benchmarks use too.

Environment overrides: ``LOOPFREE_TEST_PG_ADMIN_URL`` (a database to run CREATE DATABASE from),
``LOOPFREE_TEST_REDIS_URL`` (a Redis database the tests may flush).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from storage.objects import ObjectStore
from storage.stores import open_store
from tests.harness import (
    PG_ADMIN_URL,
    S3_TEST_ENV,
    MotoServer,
    RedisServer,
    aws_test_env,
    free_port,
    swapped_environ,
    throwaway_database,
)

if TYPE_CHECKING:
    import redis

__all__ = [
    "PG_ADMIN_URL",
    "REDIS_URL",
    "free_port",
    "private_redis",
    "redis_client",
    "service_missing",
]

REDIS_URL = os.environ.get("LOOPFREE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def service_missing(what: str, detail: object) -> None:
    """Fail under CI, skip elsewhere: a missing service must never pass CI silently."""
    message = f"{what} is not reachable: {detail}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: required)")
    pytest.skip(message)


# -- SQL databases ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection to the admin database, for CREATE/DROP DATABASE."""
    try:
        connection = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        service_missing(f"PostgreSQL at {PG_ADMIN_URL}", exc)
    with connection:
        yield connection


@pytest.fixture()
def pg_url(pg_admin: psycopg.Connection) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    with throwaway_database(PG_ADMIN_URL, admin=pg_admin, migrate=False) as url:
        yield url


@pytest.fixture(scope="session")
def _pg_migrated_database(pg_admin: psycopg.Connection) -> Iterator[tuple[str, psycopg.Connection]]:
    """One PostgreSQL database per session, migrated to head once; ``migrated_pg_url`` empties it
    before each test (a TRUNCATE takes milliseconds, a new database plus migrations ~0.3 s)."""
    with (
        throwaway_database(PG_ADMIN_URL, admin=pg_admin) as url,
        psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection,
    ):
        yield url, connection


@pytest.fixture()
def migrated_pg_url(_pg_migrated_database: tuple[str, psycopg.Connection]) -> str:
    """A PostgreSQL database with the loopfree schema at head and every table empty.

    Shared by the tests of a session and truncated before each; use ``pg_url`` for a database of
    your own (e.g. to test migrations). Dispose your engines: a held lock blocks the TRUNCATE.
    """
    from storage.models import Base

    url, connection = _pg_migrated_database
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    connection.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return url


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file in this test's temporary folder (not created yet)."""
    return f"sqlite:///{tmp_path / 'db' / 'loopfree.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs twice: on a SQLite file and on a fresh PostgreSQL database."""
    return request.getfixturevalue({"sqlite": "sqlite_url", "postgresql": "pg_url"}[request.param])


@pytest.fixture()
def migrated_sqlite_url(sqlite_url: str) -> str:
    """A SQLite file with the loopfree schema at head."""
    from migrations.runner import upgrade

    upgrade(sqlite_url)
    return sqlite_url


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_db_url(request: pytest.FixtureRequest) -> str:
    """Like ``db_url``, with the schema already migrated to head."""
    names = {"sqlite": "migrated_sqlite_url", "postgresql": "migrated_pg_url"}
    return request.getfixturevalue(names[request.param])


# -- Redis --------------------------------------------------------------------------------------


def redis_client(url: str = REDIS_URL) -> redis.Redis:
    """A client of the Redis at ``url`` that has answered a PING (else skip, or fail under CI)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        service_missing(f"Redis at {url}", exc)
    return client


@pytest.fixture()
def redis_url() -> Iterator[str]:
    """A Redis database, flushed before and after the test."""
    client = redis_client(REDIS_URL)
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


@contextlib.contextmanager
def private_redis(folder: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of its own on a free port (a test may restart, flush or kill it),
    killed on exit."""
    server = RedisServer(folder)
    try:
        server.start()
    except (FileNotFoundError, AssertionError) as error:
        service_missing("a private redis-server", error)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis server for this test: see ``private_redis``."""
    with private_redis(tmp_path / "redis") as server:
        yield server


# -- S3 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Test credentials in the environment, and no AWS profile or config file from the host."""
    with swapped_environ(aws_test_env(str(tmp_path_factory.mktemp("aws") / "none"))):
        yield dict(S3_TEST_ENV)


@pytest.fixture(scope="session")
def s3_server(s3_env: dict[str, str]) -> Iterator[str]:
    """A moto S3 server on a free loopback port for the whole session; yields its endpoint URL."""
    with MotoServer() as server:
        yield server.url


@pytest.fixture()
def s3_store(s3_server: str) -> ObjectStore:
    """An ``S3Store`` on a fresh bucket (prefix ``outputs``), with short timeouts and retries."""
    store = open_store(
        f"s3://loopfree-{uuid.uuid4().hex[:12]}/outputs",
        endpoint_url=s3_server,
        region="us-east-1",
        max_attempts=2,
        connect_timeout_s=2.0,
        read_timeout_s=10.0,
    )
    store.ensure_bucket()
    return store
