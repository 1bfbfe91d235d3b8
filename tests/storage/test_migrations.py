"""Alembic migrations build exactly the models' schema and keep data across upgrades."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from migrations import runner as migrate
from storage.db import SchemaMissing, make_engine, session_scope
from storage.models import Base, JobStatus
from storage.queries import count_by_status

from .helpers import add_submission


def schema_differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_migrations_build_exactly_the_schema_of_the_models(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert schema_differences(db_url) == []
    engine = make_engine(db_url)
    try:
        indexes = {index["name"] for index in inspect(engine).get_indexes("jobs")}
    finally:
        engine.dispose()
    assert {
        "ix_jobs_submission_id_status_position",
        "ix_jobs_backlog",
        "ix_jobs_window",
        "ix_jobs_running",
    } <= indexes


def test_a_models_change_without_a_migration_would_be_detected(db_url: str) -> None:
    from sqlalchemy import Column, Integer, MetaData, Table

    migrate.upgrade(db_url)
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    Table("jobs", changed, Column("added_later", Integer), extend_existing=True)
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), changed)
    finally:
        engine.dispose()
    assert [(d[0], d[3].name) for d in diff] == [("add_column", "added_later")]  # type: ignore[index]


def test_upgrading_a_database_with_jobs_again_keeps_every_job(db_url: str) -> None:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        add_submission(engine, 25)
        migrate.upgrade(db_url)  # already at head: must be a no-op
        migrate.upgrade(db_url, migrate.head())
        with session_scope(engine) as session:
            assert count_by_status(session)[JobStatus.QUEUED] == 25
    finally:
        engine.dispose()
    assert migrate.current(db_url) == migrate.head()


def test_downgrading_to_base_drops_the_tables_and_upgrading_restores_them(db_url: str) -> None:
    migrate.upgrade(db_url)
    migrate.downgrade(db_url, "base")
    assert migrate.current(db_url) is None
    engine = make_engine(db_url)
    try:
        assert not {"jobs", "submissions"} & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head()
    assert schema_differences(db_url) == []


def test_an_unmigrated_database_says_to_run_db_upgrade(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with pytest.raises(SchemaMissing, match="loopfree db upgrade"), session_scope(engine) as s:
            count_by_status(s)
    finally:
        engine.dispose()
    with pytest.raises(SchemaMissing, match="revision none"):
        migrate.check_schema(db_url)
    migrate.upgrade(db_url)
    migrate.check_schema(db_url)  # at head now: no error


def test_upgrading_from_0004_counts_every_job_in_its_flow_and_puts_queued_jobs_in_the_window(
    db_url: str,
) -> None:
    """Jobs queued before revision 0005 all had a message: they become the window, and the flows
    count every job as its row says."""
    from sqlalchemy import text

    migrate.upgrade(db_url, "0004")
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO submissions (id, created_at, source, defaults, job_count) "
                    "VALUES (:id, :at, 'old.txt', '{}', 3)"
                ),
                {"id": _SUBMISSION, "at": "2026-01-01 00:00:00"},
            )
            for position, status in enumerate(("queued", "running", "succeeded")):
                connection.execute(
                    text(
                        "INSERT INTO jobs (id, submission_id, position, line_number, prompt, "
                        "seed, height, width, steps, model, priority, metadata, status, "
                        "attempts, created_at) VALUES (:id, :sid, :pos, :pos, 'p', 1, 64, 64, 4, "
                        "'m/x', 5, '{}', :status, 0, '2026-01-01 00:00:00')"
                    ),
                    {"id": _job(position), "sid": _SUBMISSION, "pos": position, "status": status},
                )
        migrate.upgrade(db_url)
        with session_scope(engine) as session:
            counts = count_by_status(session)
            from storage.window import window_size

            in_window = window_size(session, "m/x")
    finally:
        engine.dispose()
    assert counts == {
        JobStatus.QUEUED: 1,
        JobStatus.RUNNING: 1,
        JobStatus.SUCCEEDED: 1,
        JobStatus.FAILED: 0,
        JobStatus.CANCELLED: 0,
    }
    assert in_window == 1


_SUBMISSION = "11111111-1111-4111-8111-111111111111"


def _job(position: int) -> str:
    return f"22222222-2222-4222-8222-{position:012d}"
