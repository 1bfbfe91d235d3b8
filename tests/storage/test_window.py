"""The backlog and the window are read through partial indexes that hold only the work in flight.

A partial index can serve a query only when the query implies the index's predicate; one that
does not scans the whole backlog, a million rows at every dispatch. So each query is captured as
the code sends it and EXPLAINed, with its parameters, on the same database: a query that drops a
term of its index's predicate fails here (the predicates are spelled as literals for PostgreSQL's
generic plans besides, ``storage.window``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import Engine, event, text

from storage import window
from storage.db import session_scope
from storage.fleet_reads import count_pending, oldest_queued_at
from storage.models import utcnow
from storage.queries import find_stuck_running

from .helpers import add_submission

MODEL = "test/tiny"


@contextmanager
def captured_selects(engine: Engine) -> Iterator[list[tuple[str, object]]]:
    seen: list[tuple[str, object]] = []

    def before(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def plan_of(engine: Engine, statement: str, parameters: object) -> str:
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            # Small tables make a sequential scan cheaper; forbid it to ask "can it use the index"
            connection.exec_driver_sql("SET enable_seqscan = off")
            rows = connection.exec_driver_sql("EXPLAIN " + statement, parameters).all()
        else:
            rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return "\n".join(str(row[-1]) for row in rows)


QUERIES: dict[str, tuple[str, Callable]] = {
    "window size": ("ix_jobs_window", lambda s, sid: window.window_size(s, MODEL)),
    "stale window": (
        "ix_jobs_window",
        lambda s, sid: window.stale_in_window(s, MODEL, dispatched_before=utcnow(), limit=10),
    ),
    "backlog": ("ix_jobs_backlog", lambda s, sid: window._has_backlog(s, (sid, MODEL, 5))),
    "flows to send": ("ix_flows_backlog", lambda s, sid: window.flows_to_send(s, MODEL)),
    "pending": ("ix_flows_open", lambda s, sid: count_pending(s, MODEL)),
    "oldest queued": ("ix_flows_open", lambda s, sid: oldest_queued_at(s, MODEL)),
    "stuck running": (
        "ix_jobs_running",
        lambda s, sid: find_stuck_running(s, heartbeat_before=utcnow() - timedelta(minutes=5)),
    ),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_each_query_of_the_work_in_flight_uses_its_partial_index(engine: Engine, name: str) -> None:
    index, query = QUERIES[name]
    submission_id, _ = add_submission(engine, 50)
    with session_scope(engine) as session:
        window.take_from_backlog(session, (submission_id, MODEL, 5), 10)
    with captured_selects(engine) as seen, session_scope(engine) as session:
        query(session, submission_id)
    plans = [plan_of(engine, statement, parameters) for statement, parameters in seen]
    assert any(index in plan for plan in plans), f"{name}: {plans}"


def test_taking_from_the_backlog_takes_exactly_what_was_asked_in_position_order(
    engine: Engine,
) -> None:
    submission_id, ids = add_submission(engine, 30)
    key = (submission_id, MODEL, 5)
    with session_scope(engine) as session:
        first = window.take_from_backlog(session, key, 10)
        second = window.take_from_backlog(session, key, 15)
        rest = window.take_from_backlog(session, key, 100)
        assert window.window_size(session, MODEL) == 30
    assert [first, second, rest] == [ids[:10], ids[10:25], ids[25:]]
    with session_scope(engine) as session:
        flows = window.flows_to_send(session, MODEL)
        backlog = session.execute(text("SELECT backlog FROM flows")).scalar_one()
    assert flows == [] and backlog == 0  # found empty: the hint went to zero
