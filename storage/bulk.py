"""Bulk insertion of job rows: ``COPY`` on PostgreSQL, multi-row ``executemany`` on SQLite.

On PostgreSQL, ``INSERT`` executemany (even batched by SQLAlchemy's insertmanyvalues) spends most
of its time in per-statement overhead on client and server; ``COPY`` streams rows in one command
and is several times faster. ``COPY`` cannot skip conflicting rows, so when existing positions
must be skipped the rows go through a temporary staging table and one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from sqlalchemy import JSON, insert, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from storage.models import Job

SQLITE_CHUNK = 5_000
"""Rows per SQLite executemany: amortises statement overhead, bounds the list of dicts in memory."""

_STAGING = "jobs_staging"
# Columns of ``jobs`` whose values are dicts: COPY takes them as JSON text.
_JSON_COLUMNS = frozenset(
    column.name for column in Job.__table__.c if isinstance(column.type, JSON)
)


def insert_job_rows(
    session: Session,
    columns: tuple[str, ...],
    rows: Iterable[tuple[Any, ...]],
    *,
    skip_existing: bool,
) -> int:
    """Insert ``rows`` (tuples in ``columns`` order, column names) into ``jobs``; return how many
    were inserted. With ``skip_existing`` a row whose (submission_id, position) exists is skipped;
    without it such a row raises ``IntegrityError`` and is faster on PostgreSQL."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return _copy_rows(session, columns, rows, skip_existing=skip_existing)
    if dialect == "sqlite":
        return _executemany_rows(session, columns, rows, skip_existing=skip_existing)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")  # pragma: no cover


def _copy_rows(
    session: Session,
    columns: tuple[str, ...],
    rows: Iterable[tuple[Any, ...]],
    *,
    skip_existing: bool,
) -> int:
    # The DBAPI (psycopg) connection of the session's current transaction: COPY runs inside it.
    driver_connection = session.connection().connection.driver_connection
    dbapi_error = session.get_bind().dialect.loaded_dbapi.Error
    try:
        return _copy(driver_connection, columns, rows, skip_existing=skip_existing)
    except dbapi_error as exc:
        # Raise what SQLAlchemy would have (IntegrityError, OperationalError, ...), so callers
        # and ``storage.db.translate_db_errors`` see one kind of exception on every path.
        raise DBAPIError.instance("COPY jobs", None, exc, dbapi_error) from exc


def _copy(
    driver_connection: Any,
    columns: tuple[str, ...],
    rows: Iterable[tuple[Any, ...]],
    *,
    skip_existing: bool,
) -> int:
    column_list = ", ".join(columns)
    encode = _pg_encoder(columns)
    with driver_connection.cursor() as cursor:
        target = "jobs"
        if skip_existing:
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (LIKE jobs INCLUDING DEFAULTS) "
                "ON COMMIT DROP"
            )
            target = _STAGING
        with cursor.copy(f"COPY {target} ({column_list}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(encode(row))
        if not skip_existing:
            return cursor.rowcount
        cursor.execute(
            f"INSERT INTO jobs ({column_list}) SELECT {column_list} FROM {_STAGING} "
            "ON CONFLICT (submission_id, position) DO NOTHING"
        )
        inserted = cursor.rowcount
        # Emptied, not dropped: a second call in the same transaction reuses it.
        cursor.execute(f"TRUNCATE {_STAGING}")
        return inserted


def _pg_encoder(columns: tuple[str, ...]) -> Callable[[tuple[Any, ...]], Sequence[Any]]:
    """Convert a row to what COPY's text format takes: JSON columns as their text. Everything
    else (text, numbers, booleans, aware datetimes) psycopg writes as it is; a status must be its
    plain text (``JobStatus.QUEUED.value``), which ``storage.submissions.job_row`` gives."""
    json_at = [i for i, name in enumerate(columns) if name in _JSON_COLUMNS]

    def encode(row: tuple[Any, ...]) -> Sequence[Any]:
        values = list(row)
        for i in json_at:
            values[i] = json.dumps(values[i]) if values[i] else "{}"
        return values

    return encode


def _executemany_rows(
    session: Session,
    columns: tuple[str, ...],
    rows: Iterable[tuple[Any, ...]],
    *,
    skip_existing: bool,
) -> int:
    table = Job.__table__
    statement = (
        sqlite.insert(table).on_conflict_do_nothing(index_elements=["submission_id", "position"])
        if skip_existing
        else insert(table)
    )
    inserted = 0
    for chunk in _chunks(rows, SQLITE_CHUNK):
        result = session.execute(statement, [dict(zip(columns, row, strict=True)) for row in chunk])
        inserted += result.rowcount
    return inserted


def _chunks(rows: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


# A bulk insert this large relative to the table leaves the planner's row estimates stale until
# autovacuum analyzes it (a minute later at best; never where it is off): a listing's
# ``ORDER BY position LIMIT 1000`` then sorts a million rows instead of walking the key.
ANALYZE_FRACTION = 0.1
ANALYZE_MIN_ROWS = 10_000


def refresh_statistics(session: Session, inserted: int) -> bool:
    """``ANALYZE jobs, flows`` on PostgreSQL after ``inserted`` rows if they are at least
    ``ANALYZE_MIN_ROWS`` and a tenth of what the planner last counted (what autovacuum's own
    threshold would wait for). Returns whether it ran; SQLite plans without statistics here."""
    if session.get_bind().dialect.name != "postgresql" or inserted < ANALYZE_MIN_ROWS:
        return False
    estimated = session.execute(
        text("SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass")
    ).scalar_one()
    if estimated > 0 and inserted < ANALYZE_FRACTION * estimated:
        return False
    session.execute(text("ANALYZE jobs, flows"))
    return True
