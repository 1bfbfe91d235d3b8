"""The backlog and the window in SQL: what the dispatcher sends from and what the reconciler checks.

A queued job is either in the **backlog** (``dispatched_at`` NULL: only the database knows it) or
in the **window** (``dispatched_at`` set: it has a message in the broker, or a worker holds its
message unclaimed). The dispatcher (``fleet.dispatch``) moves jobs from the backlog to the window
in fair order; the reconciler (``fleet.reconcile``) finds window jobs whose message was lost.

Every query here reads through one of the partial indexes ``ix_jobs_backlog``, ``ix_jobs_window``
(jobs) or ``ix_flows_backlog``, ``ix_flows_open`` (flows), so its cost follows the window and the
flows in flight, never the backlog's size. A partial index serves only queries that imply its
predicate, so the predicates below are literal SQL: a bound parameter for ``status`` would hide
the predicate from PostgreSQL's generic plans (psycopg prepares a statement it has run five
times, and the server may then plan it once for any value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, select, text, update
from sqlalchemy.orm import Session

from storage.counters import FlowKey, note_exhausted, note_moves
from storage.models import Flow, Job, JobStatus, Submission, utcnow

# storage.models' index predicates, qualified with their table (tests/storage/test_window.py checks
# that both planners use the indexes for them).
IN_BACKLOG = text("jobs.status = 'queued' AND jobs.dispatched_at IS NULL")
IN_WINDOW = text("jobs.status = 'queued' AND jobs.dispatched_at IS NOT NULL")
FLOW_HAS_BACKLOG = text("flows.backlog > 0")
FLOW_IS_OPEN = text("(flows.queued > 0 OR flows.running > 0)")


_IDS_PER_STATEMENT = 1_000
"""Job ids per ``IN (...)``: well under SQLite's bound-parameter limit."""


@dataclass(frozen=True)
class FlowState:
    """A flow the dispatcher may send from, with what it has in the window now."""

    key: FlowKey
    owner: str
    created_at: datetime
    backlog: int
    in_window: int

    @property
    def submission_id(self) -> str:
        return self.key[0]

    @property
    def priority(self) -> int:
        return self.key[2]


def window_size(session: Session, model: str) -> int:
    """Queued jobs of ``model`` that have a message (in the broker, or held by a worker)."""
    statement = select(func.count()).select_from(Job).where(Job.model == model, IN_WINDOW)
    return int(session.scalar(statement) or 0)


def flows_to_send(session: Session, model: str) -> list[FlowState]:
    """The flows of ``model`` with a backlog, of submissions not cancelled, each with its jobs in
    the window now (what fair sharing balances)."""
    flows = session.execute(
        select(
            Flow.submission_id, Flow.model, Flow.priority, Flow.owner, Flow.created_at, Flow.backlog
        )  # fmt: skip
        .join(Submission, Submission.id == Flow.submission_id)
        .where(Flow.model == model, FLOW_HAS_BACKLOG, Submission.cancelled_at.is_(None))
    ).all()
    if not flows:
        return []
    in_window = window_by_flow(session, model)
    return [
        FlowState(
            key=(row.submission_id, row.model, row.priority),
            owner=row.owner,
            created_at=row.created_at,
            backlog=int(row.backlog),
            in_window=in_window.get((row.submission_id, row.model, row.priority), 0),
        )
        for row in flows
    ]


def window_by_flow(session: Session, model: str) -> dict[FlowKey, int]:
    """Jobs of ``model`` in the window, per flow."""
    statement = (
        select(Job.submission_id, Job.priority, func.count())
        .where(Job.model == model, IN_WINDOW)
        .group_by(Job.submission_id, Job.priority)
    )
    return {(sid, model, priority): int(n) for sid, priority, n in session.execute(statement)}


def take_from_backlog(
    session: Session, key: FlowKey, count: int, *, now: datetime | None = None
) -> list[str]:
    """Move up to ``count`` of the flow's backlog jobs, in position order, into the window
    (``dispatched_at`` = now); returns their ids, for the caller to publish after the commit.
    A flow that turns out to have none left has its backlog hint set to zero."""
    now = now or utcnow()
    # Chosen first, then updated by id: a locking subquery inside the UPDATE would be scanned
    # again by PostgreSQL for every row and, skipping the rows it had just updated, take the
    # whole backlog.
    chosen = list(
        session.scalars(
            _backlog_of(key).order_by(Job.position).limit(count).with_for_update(skip_locked=True)
        )
    )
    taken: list[str] = []
    for start in range(0, len(chosen), _IDS_PER_STATEMENT):
        statement = (
            update(Job)
            .where(Job.id.in_(chosen[start : start + _IDS_PER_STATEMENT]), IN_BACKLOG)
            .values(dispatched_at=now)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        taken += session.scalars(statement)
    note_moves(session, [key] * len(taken), source=None, target=None, backlog=-1)
    if len(taken) < count and not _has_backlog(session, key):
        note_exhausted(session, key)
    return taken


def _has_backlog(session: Session, key: FlowKey) -> bool:
    return session.scalar(_backlog_of(key).limit(1)) is not None


def _backlog_of(key: FlowKey) -> Select[tuple[str]]:
    """The ids of the flow's jobs in the backlog (queued, not in the window)."""
    submission_id, model, priority = key
    return select(Job.id).where(
        Job.submission_id == submission_id,
        Job.model == model,
        Job.priority == priority,
        IN_BACKLOG,
    )


def return_to_backlog(session: Session, job_ids: Sequence[str]) -> int:
    """Jobs whose messages could not be published go back to the backlog (best effort: if this
    fails too, they stay in the window and the reconciler publishes them once they look lost)."""
    statement = (
        update(Job)
        .where(Job.id.in_(list(job_ids)), IN_WINDOW)
        .values(dispatched_at=None)
        .returning(Job.submission_id, Job.model, Job.priority)
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(statement).all()
    return note_moves(session, [tuple(row) for row in rows], source=None, target=None, backlog=1)


def stale_in_window(
    session: Session, model: str, *, dispatched_before: datetime, limit: int
) -> list[tuple[str, int]]:
    """``(id, priority)`` of window jobs of ``model`` sent (or last held by a worker) before
    ``dispatched_before``, oldest first: their messages may have been lost."""
    statement = (
        select(Job.id, Job.priority)
        .where(Job.model == model, IN_WINDOW, Job.dispatched_at < dispatched_before)
        .order_by(Job.dispatched_at)
        .limit(limit)
    )
    return [(row.id, row.priority) for row in session.execute(statement)]


def redispatch(
    session: Session, job_ids: Sequence[str], *, now: datetime | None = None
) -> list[tuple[str, str, int]]:
    """Window jobs whose message is published again: ``dispatched_at`` = now. Returns
    ``(id, model, priority)`` of those still queued, to publish after the commit."""
    statement = (
        update(Job)
        .where(Job.id.in_(list(job_ids)), IN_WINDOW)
        .values(dispatched_at=now or utcnow())
        .returning(Job.id, Job.model, Job.priority)
        .execution_options(synchronize_session=False)
    )
    return [(row.id, row.model, row.priority) for row in session.execute(statement)]


def window_jobs_of(session: Session, submission_id: str) -> list[str]:
    """The submission's jobs in the window (they have messages): read through the window's
    index, model by model, not through the submission's million rows."""
    models = select(Flow.model).where(Flow.submission_id == submission_id).distinct()
    statement = select(Job.id).where(
        Job.model.in_(models), IN_WINDOW, Job.submission_id == submission_id
    )
    return list(session.scalars(statement))


def models_in_window(session: Session) -> list[str]:
    """Every model with a job in the window (a read of the window, not of the backlog)."""
    statement = select(Job.model).where(IN_WINDOW).distinct()
    return sorted(session.scalars(statement))


def models_with_backlog(session: Session) -> list[str]:
    """Every model with a flow that has a backlog."""
    statement = select(Flow.model).where(FLOW_HAS_BACKLOG).distinct()
    return sorted(session.scalars(statement))


def succeeded_recently(session: Session, model: str, since: datetime) -> int:
    """Jobs of ``model`` that succeeded at or after ``since``: a range of ``ix_jobs_finished_at``
    (the recent work), how fast the fleet drains the window."""
    statement = (
        select(func.count())
        .select_from(Job)
        .where(Job.finished_at >= since, Job.status == JobStatus.SUCCEEDED, Job.model == model)
    )
    return int(session.scalar(statement) or 0)
