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

from tests.conftest import PG_ADMIN_URL, private_redis
from tests.fault.fleet import Fleet, fleet_env
from tests.harness import Services, new_bucket, throwaway_database

__all__ = ["MakeFleet", "open_fleet", "private_redis"]  # private_redis: fault tests import it here
from worker.tiny import make_model


@pytest.fixture(scope="session")
def fault_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("fault-models") / "tiny", shape="tiny", seed=1)


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
            database_url = cleanup.enter_context(
                throwaway_database(PG_ADMIN_URL, admin=pg_admin, prefix="loopfree_fault")
            )
        bucket = new_bucket(s3_endpoint, prefix="fault")
        services = Services(database_url, broker_url, bucket, s3_endpoint)
        fleet = Fleet(folder, fleet_env(services, home=folder / "home", model=model, **overrides))
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
