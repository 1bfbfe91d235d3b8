"""Shared fixtures for tests that talk to real services: PostgreSQL, Redis, an S3 endpoint.

No mocks: databases are real PostgreSQL databases and SQLite files, S3 is a moto server answering
HTTP on a loopback port. When PostgreSQL or Redis cannot be reached the fixtures skip locally but
fail under CI (``CI=true``), so a broken CI service can never turn into a green run of skips.

Environment overrides: ``LOOPFREE_TEST_PG_ADMIN_URL`` (a database to run CREATE DATABASE from),
``LOOPFREE_TEST_REDIS_URL`` (a Redis database the tests may flush).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from storage.objects import ObjectStore, open_store

PG_ADMIN_URL = os.environ.get(
    "LOOPFREE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("LOOPFREE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# Static test credentials for the moto server; nothing real is ever signed with them.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "loopfree-test",
    "AWS_SECRET_ACCESS_KEY": "loopfree-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata lookup
}


def service_missing(what: str, detail: object) -> None:
    """Fail under CI, skip elsewhere: a missing service must never pass CI silently."""
    message = f"{what} is not reachable: {detail}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: required)")
    pytest.skip(message)


def free_port() -> int:
    """A loopback port nothing listens on (bound and released; fine for tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    name = f"loopfree_test_{uuid.uuid4().hex[:12]}"
    pg_admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url_for(name)
    finally:
        # FORCE: an engine the test forgot to dispose must not keep the database alive.
        pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _pg_migrated_database(pg_admin: psycopg.Connection) -> Iterator[tuple[str, psycopg.Connection]]:
    """One PostgreSQL database per session, migrated to head once; ``migrated_pg_url`` empties it
    before each test (a TRUNCATE takes milliseconds, a new database plus migrations ~0.3 s)."""
    from migrations.runner import upgrade

    name = f"loopfree_test_{uuid.uuid4().hex[:12]}"
    pg_admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _pg_url_for(name)
        upgrade(url)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection:
            yield url, connection
    finally:
        pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


def _pg_url_for(name: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


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


@pytest.fixture()
def redis_url() -> Iterator[str]:
    """A Redis database, flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing(f"Redis at {REDIS_URL}", exc)
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


# -- S3 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Test credentials in the environment, and no AWS profile or config file from the host."""
    missing = str(tmp_path_factory.mktemp("aws") / "none")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in S3_TEST_ENV.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", missing)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
        yield dict(S3_TEST_ENV)


@pytest.fixture(scope="session")
def s3_server(s3_env: dict[str, str]) -> Iterator[str]:
    """A moto S3 server on a free loopback port for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in test output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


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
