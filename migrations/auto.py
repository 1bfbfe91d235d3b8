"""Schema on demand: the embedded default (SQLite) needs no `loopfree db upgrade` step.

Every CLI command that reads or writes the database calls ``ensure_schema`` first. On SQLite the
database is a private file of this machine, so creating or migrating it in place is what a user
expects; on PostgreSQL a shared database changes only by an explicit ``loopfree db upgrade`` (or
with ``LOOPFREE_AUTO_MIGRATE=true``), because a fleet should not be migrated by whichever client
happens to run first.

The check costs one small query when the schema is current: the newest revision is read from the
version files' names (``NNNN_name.py``, a linear chain of numbered revisions), so Alembic itself
is imported only when there is something to do.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from core.settings import Settings
from storage.db import make_engine

VERSIONS_DIR = Path(__file__).resolve().parent / "versions"


def newest_revision() -> str:
    """The head revision, from the file names (``0004_webhook_outbox.py`` -> ``0004``)."""
    numbers = [path.name.split("_", 1)[0] for path in VERSIONS_DIR.glob("[0-9]*_*.py")]
    return max(numbers)


def wants_auto_migrate(settings: Settings) -> bool:
    return settings.auto_migrate or settings.resolved_database_url.startswith("sqlite")


def schema_revision(url: str) -> str | None:
    """The database's revision, or None when it has no schema (or cannot say)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:  # noqa: BLE001 - no table yet; any real fault resurfaces in the upgrade
        return None
    finally:
        engine.dispose()


def ensure_schema(settings: Settings) -> bool:
    """Create or migrate the schema if this database is one we may migrate on our own (see the
    module docstring); True if a migration ran."""
    if not wants_auto_migrate(settings):
        return False
    url = settings.resolved_database_url
    if schema_revision(url) == newest_revision():
        return False
    from migrations import runner

    settings.ensure_home()
    runner.upgrade(url)
    return True
