"""The engine factory and the translation of driver errors into the loopfree error tree."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from core.errors import DatabaseUnavailable
from storage.db import DatabaseMisconfigured, Engine, make_engine, session_scope
from tests.conftest import PG_ADMIN_URL, free_port


def check_connection(engine: Engine) -> None:
    """Open a session and run a trivial query: the path every caller takes to the database."""
    with session_scope(engine) as session:
        session.execute(text("SELECT 1"))


def test_sqlite_engines_use_wal_a_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys")
            }
    finally:
        engine.dispose()
    assert pragma == {"journal_mode": "wal", "busy_timeout": 30_000, "foreign_keys": 1}


def test_sqlite_write_transactions_take_the_write_lock_when_they_begin(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with session_scope(engine) as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
        # A second connection cannot write while the first transaction is open, even though the
        # first has not written yet: BEGIN IMMEDIATE took the lock up front.
        other = make_engine(sqlite_url, sqlite_busy_timeout_s=0.1)
        with session_scope(engine) as session:
            session.execute(text("SELECT count(*) FROM t"))
            with (
                pytest.raises(DatabaseUnavailable, match="database is locked"),
                session_scope(other) as competing,
            ):
                competing.execute(text("INSERT INTO t VALUES (1)"))
        other.dispose()
    finally:
        engine.dispose()


def test_make_engine_creates_the_sqlite_files_folder(tmp_path: Path) -> None:
    database = tmp_path / "new" / "nested" / "loopfree.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        check_connection(engine)
    finally:
        engine.dispose()
    assert database.is_file()


def test_postgresql_urls_without_a_driver_get_psycopg() -> None:
    engine = make_engine("postgresql://user@127.0.0.1:1/db")
    assert engine.url.drivername == "postgresql+psycopg"
    assert engine.pool._pre_ping  # type: ignore[attr-defined]


def test_an_unreachable_postgresql_is_unavailable_and_the_message_hides_the_password() -> None:
    url = f"postgresql+psycopg://loopfree:s3cret-pw@127.0.0.1:{free_port()}/loopfree"
    engine = make_engine(url)
    with pytest.raises(DatabaseUnavailable) as caught:
        check_connection(engine)
    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "loopfree:***@127.0.0.1" in message
    assert "LOOPFREE_DATABASE_URL" in message


def test_a_missing_postgresql_database_is_a_configuration_error(
    pg_admin: psycopg.Connection,
) -> None:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    engine = make_engine(f"{base}/loopfree_no_such_database")
    with pytest.raises(DatabaseMisconfigured, match="does not exist"):
        check_connection(engine)
    engine.dispose()


def test_a_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    folder_in_the_way = tmp_path / "loopfree.db"
    folder_in_the_way.mkdir()
    engine = make_engine(f"sqlite:///{folder_in_the_way}")
    with pytest.raises(DatabaseUnavailable, match="unable to open"):
        check_connection(engine)
    engine.dispose()


def test_sql_errors_that_are_bugs_are_not_disguised_as_unavailable(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with pytest.raises(OperationalError, match="syntax error"), session_scope(engine) as s:
            s.execute(text("SELEC 1"))
    finally:
        engine.dispose()


def test_a_url_that_is_not_a_database_url_is_a_user_error() -> None:
    with pytest.raises(DatabaseMisconfigured, match="not a database URL"):
        make_engine("localhost:5432")
    with pytest.raises(DatabaseMisconfigured, match="No SQLAlchemy driver"):
        make_engine("nosuchdb://host/db")
