"""Fixtures for the fault suite: a tiny model, private servers the tests may break, fleets.

Each fleet gets its own Redis server (a test may restart or flush it), its own bucket and a
database of its own, so breaking things never touches the services other tests are using.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL, service_missing
from tests.fault.fleet import Fleet, fleet_env, migrated_database, new_bucket
from tests.helpers_processes import RedisServer
from worker.tiny import make_model


@pytest.fixture(scope="session")
def fault_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("fault-models") / "tiny", shape="tiny", seed=1)


@contextlib.contextmanager
def private_redis(folder: Path) -> Iterator[RedisServer]:
    """A Redis server of its own on a free port, killed on exit."""
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
    with private_redis(tmp_path / "redis") as server:
        yield server


@contextlib.contextmanager
def open_fleet(
    folder: Path,
    *,
    pg_admin: psycopg.Connection,
    s3_endpoint: str,
    model: Path,
    broker_url: str,
    database_url: str | None = None,
    **overrides: object,
) -> Iterator[Fleet]:
    """A fleet on a fresh database (unless given) and bucket, with ``LOOPFREE_<NAME>``
    overrides; its workers are killed and its database dropped on exit."""
    with contextlib.ExitStack() as cleanup:
        if database_url is None:
            database_url = cleanup.enter_context(migrated_database(pg_admin, PG_ADMIN_URL))
        env = fleet_env(
            home=folder / "home",
            database_url=database_url,
            broker_url=broker_url,
            storage_url=new_bucket(s3_endpoint),
            s3_endpoint=s3_endpoint,
            model=model,
        )
        env.update({f"LOOPFREE_{key.upper()}": str(value) for key, value in overrides.items()})
        fleet = Fleet(folder, env)
        cleanup.callback(fleet.close)
        yield fleet


MakeFleet = Callable[..., Fleet]


@pytest.fixture()
def make_fleet(
    tmp_path: Path,
    pg_admin: psycopg.Connection,
    s3_server: str,
    s3_env: dict[str, str],
    fault_model_dir: Path,
) -> Iterator[MakeFleet]:
    """``make_fleet(broker_url=..., s3_endpoint=..., **overrides)``: see ``open_fleet``."""
    numbers = itertools.count()
    with contextlib.ExitStack() as cleanup:

        def make(*, broker_url: str, s3_endpoint: str | None = None, **options: object) -> Fleet:
            folder = tmp_path / f"fleet-{next(numbers)}"
            return cleanup.enter_context(
                open_fleet(
                    folder,
                    pg_admin=pg_admin,
                    s3_endpoint=s3_endpoint or s3_server,
                    model=fault_model_dir,
                    broker_url=broker_url,
                    **options,
                )
            )

        yield make
