"""Alembic as plain functions: ``upgrade``, ``downgrade``, ``current``, ``head``, ``check_schema``.

The Alembic ``Config`` is built in code (``script_location`` is this package's folder), and
migrations run on an engine from ``storage.db.make_engine``, so they get the same SQLite settings
and error translation as everything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text

from storage.db import SchemaMissing, engine_label, make_engine, translate_db_errors

# This module lives in the migrations package, so the revisions are its neighbours.
MIGRATIONS_DIR = Path(__file__).resolve().parent


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (creating the tables on a new database)."""
    with _migration_connection(url) as connection:
        command.upgrade(_config(connection), revision)


def downgrade(url: str, revision: str) -> None:
    """Step the database back to ``revision`` (``"base"`` drops every loopfree table)."""
    with _migration_connection(url) as connection:
        command.downgrade(_config(connection), revision)


def current(url: str) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    engine = make_engine(url)
    try:
        with translate_db_errors(engine_label(engine)), engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    """The newest revision this code knows."""
    head_revision = ScriptDirectory.from_config(_config(None)).get_current_head()
    assert head_revision is not None, f"no migrations found in {MIGRATIONS_DIR}"
    return head_revision


def check_schema(url: str) -> None:
    """Raise ``SchemaMissing`` unless the database is at the newest revision (worker start-up)."""
    at, want = current(url), head()
    if at != want:
        engine = make_engine(url)
        label = engine_label(engine)
        engine.dispose()
        raise SchemaMissing(
            f"The database at {label} is at schema revision {at or 'none'}, this code needs "
            f"{want}. Run `loopfree db upgrade`."
        )


def revision(url: str, message: str) -> None:
    """Autogenerate a new revision file from the difference between ``url`` and the models."""
    with _migration_connection(url) as connection:
        command.revision(_config(connection), message=message, autogenerate=True)


def _config(connection: Connection | None) -> Config:
    config = Config()
    # Config values go through configparser interpolation, where "%" is special.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


@contextmanager
def _migration_connection(url: str) -> Iterator[Connection]:
    """A connection in one transaction: the whole migration commits or none of it does."""
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        # SQLite batch migrations rebuild tables (copy, drop, rename); with foreign keys enforced
        # the drop would cascade into child rows. The pragma only works outside a transaction,
        # so it is set per connection; ``foreign_key_check`` afterwards proves nothing dangles.
        event.listen(engine, "connect", _sqlite_foreign_keys_off)
    try:
        with translate_db_errors(engine_label(engine)), engine.begin() as connection:
            yield connection
            if engine.dialect.name == "sqlite":
                _check_sqlite_foreign_keys(connection)
    finally:
        engine.dispose()


def _sqlite_foreign_keys_off(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA foreign_keys = OFF")


def _check_sqlite_foreign_keys(connection: Connection) -> None:
    broken = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
    if broken:
        raise RuntimeError(f"migration left rows with dangling foreign keys: {broken[:5]}")
