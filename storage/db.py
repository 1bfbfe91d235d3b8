"""Engine factory, sessions, and the translation of driver errors into our error tree.

SQLite is the embedded default: a worker and a producer may share one file from two processes.
Three settings make that safe: WAL journal mode (readers never block the writer), a busy timeout
(a writer waits for the lock instead of failing at once) and ``BEGIN IMMEDIATE`` (a transaction
takes the write lock when it starts, so two transactions can never deadlock upgrading a read lock
to a write lock, which SQLite reports as an instant ``database is locked`` the timeout cannot fix).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session

# The two types callers pass around, re-exported so that a stage can annotate an engine or a
# session without importing SQLAlchemy (tests/test_architecture.py keeps SQL inside storage/).
__all__ = [
    "PG_CONNECT_TIMEOUT_S",
    "PG_IDLE_IN_TRANSACTION_TIMEOUT_S",
    "PG_STATEMENT_TIMEOUT_S",
    "RECONCILER_LOCK_TIMEOUT_S",
    "SQLITE_BUSY_TIMEOUT_S",
    "DatabaseMisconfigured",
    "Engine",
    "SchemaMissing",
    "Session",
    "bound_lock_waits",
    "classify_db_error",
    "dialect_insert",
    "engine_label",
    "make_engine",
    "pg_session_options",
    "session_scope",
    "translate_db_errors",
]

from core.errors import DatabaseUnavailable, UserError
from core.settings import mask_url

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a SQLite writer waits for another process's write lock before giving up. Batches
commit in milliseconds, so 30 s only runs out when a transaction is held open far too long."""

PG_CONNECT_TIMEOUT_S = 10
"""Fail a PostgreSQL connection attempt after this long instead of the OS default (minutes)."""

PG_IDLE_IN_TRANSACTION_TIMEOUT_S = 60
"""PostgreSQL ends a session that sits idle inside a transaction this long. Our transactions do
no waiting between statements (uploads and sampling happen outside them), so only a stalled
process (SIGSTOP, a frozen VM) or a hung client gets here; without it, such a process holds its
row locks forever and every writer of those rows queues behind it (observed: 9.5 min)."""

PG_STATEMENT_TIMEOUT_S = 600
"""PostgreSQL cancels one statement after this long: far above the slowest we run (COPY of a
million-job submission, tens of seconds), low enough that nothing hangs for hours."""

RECONCILER_LOCK_TIMEOUT_S = 5
"""How long a reconciler or operator statement waits for a row lock before giving up on it. It
skips locked rows where it can (``FOR UPDATE SKIP LOCKED``) and comes back on its next pass."""

# SQLite messages that mean "the database cannot be used right now", not "your SQL is wrong"
# (sqlite3 raises OperationalError for both).
_SQLITE_UNAVAILABLE = (
    "database is locked",
    "database table is locked",
    "unable to open",
    "disk i/o error",
)
# PostgreSQL refusals that retrying cannot fix: unknown database, bad password, no such role.
# At connect time psycopg often has no SQLSTATE, so the server's message is matched as well.
_PG_MISCONFIGURED = {"3D000", "28P01", "28000"}
_PG_MISCONFIGURED_TEXT = re.compile(
    r'database "[^"]*" does not exist|password authentication failed|role "[^"]*" does not exist'
)


class DatabaseMisconfigured(UserError):
    """The database URL points at something that will never work (bad name, password, driver)."""


class SchemaMissing(UserError):
    """The database has no (or an outdated) loopfree schema."""


def make_engine(
    url: str, *, sqlite_busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S, **engine_kwargs: Any
) -> Engine:
    """Create an engine for a SQLite or PostgreSQL URL, configured for several processes.

    ``postgresql://`` URLs get the psycopg 3 driver. For SQLite, the database file's folder is
    created. Extra keyword arguments go to ``sqlalchemy.create_engine``.
    """
    sa_url = _parse_url(url)
    try:
        if sa_url.get_backend_name() == "sqlite":
            return _make_sqlite_engine(sa_url, engine_kwargs, sqlite_busy_timeout_s)
        if sa_url.get_backend_name() == "postgresql":
            engine_kwargs.setdefault("pool_pre_ping", True)  # survive server restarts / idle drops
            connect_args = engine_kwargs.setdefault("connect_args", {})
            connect_args.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
            connect_args.setdefault("options", pg_session_options())
        return create_engine(sa_url, **engine_kwargs)
    except NoSuchModuleError as exc:
        raise DatabaseMisconfigured(
            f"No SQLAlchemy driver for {mask_url(url)}: use sqlite:///path/to/file.db or "
            "postgresql+psycopg://user:password@host:5432/dbname."
        ) from exc


def pg_session_options(
    *,
    idle_in_transaction_s: float = PG_IDLE_IN_TRANSACTION_TIMEOUT_S,
    statement_s: float = PG_STATEMENT_TIMEOUT_S,
) -> str:
    """libpq ``options`` that set the server-side timeouts of every session we open."""
    return (
        f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_s * 1000)} "
        f"-c statement_timeout={int(statement_s * 1000)}"
    )


def bound_lock_waits(session: Session, seconds: float = RECONCILER_LOCK_TIMEOUT_S) -> None:
    """Make the rest of ``session``'s transaction wait at most ``seconds`` for any lock
    (PostgreSQL ``SET LOCAL lock_timeout``; SQLite has its busy timeout). For the reconciler and
    operator commands, which must never queue behind a stalled worker's transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = {int(seconds * 1000)}"))


def dialect_insert(session: Session, table: Any) -> Any:
    """The session's dialect's INSERT for ``table``: the one with ``on_conflict_do_nothing`` and
    ``on_conflict_do_update`` (PostgreSQL and SQLite both have them; plain ``insert`` does not)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")  # pragma: no cover


def _parse_url(url: str) -> URL:
    try:
        sa_url = make_url(url)
    except ArgumentError as exc:
        raise DatabaseMisconfigured(
            f"{mask_url(url)!r} is not a database URL: use sqlite:///path/to/file.db or "
            "postgresql+psycopg://user:password@host:5432/dbname."
        ) from exc
    if sa_url.drivername in ("postgres", "postgresql"):
        # SQLAlchemy's default PostgreSQL driver is psycopg2, which we do not install.
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    return sa_url


def _make_sqlite_engine(
    sa_url: URL, engine_kwargs: dict[str, Any], busy_timeout_s: float
) -> Engine:
    database = sa_url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(sa_url, **engine_kwargs)
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop pysqlite from issuing its own deferred BEGIN; ``_on_begin`` issues ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL never corrupts the file; a power cut may lose the last commits, which
        # at worst re-runs a job (we deliver at least once anyway).
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def engine_label(engine: Engine) -> str:
    """The engine's URL with the password masked, for messages and logs."""
    return mask_url(engine.url.render_as_string(hide_password=False))


@contextmanager
def translate_db_errors(label: str) -> Iterator[None]:
    """Re-raise driver errors that mean "cannot use the database now" as ``DatabaseUnavailable``.

    ``label`` names the database in messages; pass a masked URL (see ``engine_label``). Errors that
    are bugs (bad SQL, constraint violations) pass through unchanged.
    """
    try:
        yield
    except DBAPIError as exc:
        translated = classify_db_error(exc, label)
        if translated is None:
            raise
        raise translated from exc


def classify_db_error(exc: DBAPIError, label: str) -> Exception | None:
    """Our error for a driver error, or None if it is not about availability or setup."""
    detail = _first_line(exc.orig)
    sqlstate = getattr(exc.orig, "sqlstate", None)
    lowered = detail.lower()
    if "no such table" in lowered or sqlstate == "42P01":
        return SchemaMissing(
            f"The database at {label} has no loopfree tables ({detail}). "
            "Run `loopfree db upgrade` to create or update the schema."
        )
    if sqlstate in _PG_MISCONFIGURED or _PG_MISCONFIGURED_TEXT.search(detail):
        return DatabaseMisconfigured(
            f"The database at {label} refused the connection: {detail}. "
            "Fix the database name, user or password in LOOPFREE_DATABASE_URL."
        )
    is_sqlite = type(exc.orig).__module__.startswith("sqlite3")
    unavailable = exc.connection_invalidated or (
        lowered.startswith(_SQLITE_UNAVAILABLE)
        if is_sqlite
        else type(exc.orig).__name__ in ("OperationalError", "InterfaceError")
        or isinstance(exc.orig, _psycopg_operational_errors())
    )
    if not unavailable:
        return None
    return DatabaseUnavailable(
        f"Cannot use the database at {label}: {detail}. Check that it is running and reachable "
        "and that LOOPFREE_DATABASE_URL is right; the operation can be retried."
    )


def _psycopg_operational_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency, but SQLite works without it
        return ()
    return (psycopg.OperationalError, psycopg.InterfaceError)


def _first_line(error: BaseException | None) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error, driver errors translated.

    Objects stay usable after the commit (``expire_on_commit=False``), so callers can return rows.
    """
    label = engine_label(engine)
    with translate_db_errors(label), Session(engine, expire_on_commit=False) as s, s.begin():
        yield s
