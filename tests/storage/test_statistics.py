"""After a bulk submit the planner knows the new rows: a listing page walks the key.

Right after a million rows are copied in, PostgreSQL still plans with the table's old statistics
(a handful of rows) until autovacuum analyzes it, a minute later at best and never where it is
off: the first page of ``loopfree jobs`` then sorted every row of the submission (1.1 s at 1M
jobs in bench_backlog) instead of reading 1,000 entries of the (submission_id, position) key.
"""

from __future__ import annotations

from sqlalchemy import Engine

from storage.bulk import ANALYZE_MIN_ROWS, refresh_statistics
from storage.db import session_scope
from storage.gallery import find_jobs
from tests.storage.test_window import captured_selects

from .helpers import add_submission


def first_page_plan(engine: Engine, submission_id: str) -> str:
    """The plan the database chooses for a listing's first page (sequential scans allowed)."""
    with captured_selects(engine) as seen, session_scope(engine) as session:
        find_jobs(session, submission_id, limit=1000)
    statement, parameters = next((sql, p) for sql, p in seen if "ORDER BY jobs.position" in sql)
    explain = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(explain + statement, parameters).all()
    return "\n".join(str(row[-1]) for row in rows)


def test_a_bulk_submit_leaves_statistics_a_listing_plans_with(engine: Engine) -> None:
    with session_scope(engine) as session:  # the planner's picture of an empty table
        refresh_statistics(session, ANALYZE_MIN_ROWS)
    large, _ = add_submission(engine, ANALYZE_MIN_ROWS + 5_000)
    with session_scope(engine) as session:
        assert not refresh_statistics(session, 10)  # a small submit never pays for it
        ran = refresh_statistics(session, ANALYZE_MIN_ROWS + 5_000)
    plan = first_page_plan(engine, large)
    if engine.dialect.name == "postgresql":
        assert ran
        assert "uq_jobs_submission_id_position" in plan and "Sort" not in plan, plan
    else:
        assert not ran  # SQLite plans the key without statistics
        assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan
