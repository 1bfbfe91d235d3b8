"""What the fleet tools read from the database: open work per model, the oldest queued job, and
the spans of recent batches that worker throughput is measured from.

The exporter (``fleet.exporter``) runs these every few seconds and ``loopfree scale`` once per
call, so each is a range of an index on ``status`` or ``(model, status)``: its cost follows the
open backlog, not the table (timings: BENCHMARKS.md, fleet). The arithmetic on the results lives
in ``fleet.scaling``, which needs no database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Job, JobStatus, utcnow

PENDING_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
"""Jobs that still need a worker: the scaling signal counts these."""

THROUGHPUT_SAMPLE_JOBS = 2_000
"""Most recent succeeded jobs per model that throughput is measured from: about 125 batches of 16,
enough for a steady median per worker, a few hundred rows after grouping by batch."""

THROUGHPUT_LOOKBACK_S = 24 * 3600.0
"""How far back those jobs may lie. Busy-time rates do not decay with idle time, so a model that
scaled to zero overnight sizes its first burst from yesterday's workers instead of from nothing."""


@dataclass(frozen=True)
class BatchSpan:
    """One batch of one worker: claimed at ``start``, its last result recorded at ``end``."""

    worker: str
    start: datetime
    end: datetime
    jobs: int


def count_jobs_by_model(session: Session) -> dict[str, dict[JobStatus, int]]:
    """Jobs per model and status, every status present. One GROUP BY over ``(model, status)``."""
    counts: dict[str, dict[JobStatus, int]] = {}
    statement = select(Job.model, Job.status, func.count()).group_by(Job.model, Job.status)
    for model, status, count in session.execute(statement):
        counts.setdefault(model, dict.fromkeys(JobStatus, 0))[JobStatus(status)] = count
    return counts


def count_open_jobs(session: Session) -> dict[str, dict[JobStatus, int]]:
    """Queued and running jobs per model: only the open part of the ``status`` index is read."""
    counts: dict[str, dict[JobStatus, int]] = {}
    statement = (
        select(Job.model, Job.status, func.count())
        .where(Job.status.in_(PENDING_STATUSES))
        .group_by(Job.model, Job.status)
    )
    for model, status, count in session.execute(statement):
        counts.setdefault(model, dict.fromkeys(PENDING_STATUSES, 0))[JobStatus(status)] = count
    return counts


def count_pending(session: Session, model: str) -> int:
    """Queued + running jobs of one model (the ``ix_jobs_model_status`` index answers it)."""
    statement = (
        select(func.count())
        .select_from(Job)
        .where(Job.model == model, Job.status.in_(PENDING_STATUSES))
    )
    return session.scalar(statement) or 0


def oldest_queued_at(session: Session, model: str) -> datetime | None:
    """When the oldest queued job of ``model`` was created; ``None`` when none is queued. A MIN
    over the queued range of ``ix_jobs_model_status`` (or ``ix_jobs_status``): its cost follows the
    backlog (a few ms for 5,000 queued jobs on PostgreSQL), not the table."""
    statement = select(func.min(Job.created_at)).where(
        Job.model == model, Job.status == JobStatus.QUEUED
    )
    return session.scalar(statement)


def oldest_queued_by_model(session: Session) -> dict[str, datetime]:
    """``oldest_queued_at`` for every model with a queued job, in one read of the queued range."""
    statement = (
        select(Job.model, func.min(Job.created_at))
        .where(Job.status == JobStatus.QUEUED)
        .group_by(Job.model)
    )
    return {model: oldest for model, oldest in session.execute(statement)}


def recent_batches(
    session: Session,
    model: str,
    *,
    sample_jobs: int = THROUGHPUT_SAMPLE_JOBS,
    lookback_s: float = THROUGHPUT_LOOKBACK_S,
    now: datetime | None = None,
) -> list[BatchSpan]:
    """The batches of ``model``'s last ``sample_jobs`` succeeded jobs (finished within
    ``lookback_s``), one row per worker and batch: claimed at, last result at, jobs."""
    since = (now or utcnow()) - timedelta(seconds=lookback_s)
    recent = (
        select(Job.worker, Job.batch_id, Job.started_at, Job.finished_at)
        .where(
            Job.finished_at >= since,
            Job.status == JobStatus.SUCCEEDED,
            Job.model == model,
            Job.worker.is_not(None),
            Job.started_at.is_not(None),
        )
        .order_by(Job.finished_at.desc())
        .limit(sample_jobs)
        .subquery()
    )
    statement = select(
        recent.c.worker,
        func.min(recent.c.started_at),
        func.max(recent.c.finished_at),
        func.count(),
    ).group_by(recent.c.worker, recent.c.batch_id)
    return [
        BatchSpan(worker=worker, start=start, end=end, jobs=jobs)
        for worker, start, end, jobs in session.execute(statement)
    ]
