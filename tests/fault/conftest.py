"""Fixtures for the fault suite: a tiny model, private servers the tests may break, fleets.

Each fleet gets its own Redis server (a test may restart or flush it), its own bucket and a
database of its own, so breaking things never touches the services other tests are using.
"""

from __future__ import annotations

import contextlib
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


def start_redis(folder: Path) -> RedisServer:
    server = RedisServer(folder)
    try:
        server.start()
    except (FileNotFoundError, AssertionError) as error:
        service_missing("a private redis-server", error)
    return server


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test's own, on a free port."""
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.kill()


MakeFleet = Callable[..., Fleet]


@pytest.fixture()
def make_fleet(
    tmp_path: Path,
    pg_admin: psycopg.Connection,
    s3_server: str,
    s3_env: dict[str, str],
    fault_model_dir: Path,
) -> Iterator[MakeFleet]:
    """``make_fleet(broker_url=..., **overrides)``: a fleet on a fresh database and bucket, with
    ``LOOPFREE_<NAME>`` overrides; its workers are killed and its database dropped afterwards."""
    fleets: list[Fleet] = []
    with contextlib.ExitStack() as cleanup:

        def make(
            *,
            broker_url: str,
            s3_endpoint: str | None = None,
            database_url: str | None = None,
            **overrides: object,
        ) -> Fleet:
            if database_url is None:
                database_url = cleanup.enter_context(migrated_database(pg_admin, PG_ADMIN_URL))
            endpoint = s3_endpoint or s3_server
            env = fleet_env(
                home=tmp_path / f"home-{len(fleets)}",
                database_url=database_url,
                broker_url=broker_url,
                storage_url=new_bucket(endpoint),
                s3_endpoint=endpoint,
                model=fault_model_dir,
            )
            env.update({f"LOOPFREE_{key.upper()}": str(value) for key, value in overrides.items()})
            fleet = Fleet(tmp_path / f"fleet-{len(fleets)}", env)
            fleets.append(fleet)
            cleanup.callback(fleet.close)
            return fleet

        yield make
