"""What the fleet tools read from the database: open work per model, the oldest queued job, and
the spans of recent batches that worker throughput is measured from.

The exporter (``fleet.exporter``) runs these every few seconds and ``loopfree scale`` once per
call, so each reads the flows' counters (``storage.counters``): open work per model is a sum over
its open flows (the partial index ``ix_flows_open``), whatever the backlog's length (timings:
BENCHMARKS.md, fleet). The arithmetic on the results lives in ``fleet.scaling``, which needs no
database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from storage.models import Flow, Job, JobStatus, aware_utc, utcnow

_FLOW_OPEN = text("(flows.queued > 0 OR flows.running > 0)")  # the partial index ix_flows_open

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
    """Jobs per model and status, every status present: a sum over the flows."""
    sums = [func.sum(Flow.__table__.c[status.value]) for status in JobStatus]
    counts: dict[str, dict[JobStatus, int]] = {}
    for model, *values in session.execute(select(Flow.model, *sums).group_by(Flow.model)):
        counts[model] = {
            status: int(value or 0) for status, value in zip(JobStatus, values, strict=True)
        }
    return counts


def count_open_jobs(session: Session) -> dict[str, dict[JobStatus, int]]:
    """Queued and running jobs per model, over the open flows only."""
    statement = (
        select(Flow.model, func.sum(Flow.queued), func.sum(Flow.running))
        .where(_FLOW_OPEN)
        .group_by(Flow.model)
    )
    return {
        model: {JobStatus.QUEUED: int(queued or 0), JobStatus.RUNNING: int(running or 0)}
        for model, queued, running in session.execute(statement)
    }


def rendering_by_model(session: Session) -> dict[str, int]:
    """Running jobs in a sampler call now, per model (of the running jobs: the work in hand)."""
    statement = (
        select(Job.model, func.count())
        .where(text("jobs.status = 'running'"), Job.rendering_at.is_not(None))
        .group_by(Job.model)
    )
    return {model: int(count) for model, count in session.execute(statement)}


def count_pending(session: Session, model: str) -> int:
    """Queued + running jobs of one model: a sum over its open flows."""
    statement = select(func.sum(Flow.queued + Flow.running)).where(Flow.model == model, _FLOW_OPEN)
    return int(session.scalar(statement) or 0)


def oldest_queued_at(session: Session, model: str) -> datetime | None:
    """When the oldest submission with a queued job of ``model`` was made (its flow's creation);
    ``None`` when none is queued."""
    statement = select(func.min(Flow.created_at)).where(
        Flow.model == model, _FLOW_OPEN, Flow.queued > 0
    )
    return aware_utc(session.scalar(statement))


def oldest_queued_by_model(session: Session) -> dict[str, datetime]:
    """``oldest_queued_at`` for every model with a queued job, in one read of the open flows."""
    statement = (
        select(Flow.model, func.min(Flow.created_at))
        .where(_FLOW_OPEN, Flow.queued > 0)
        .group_by(Flow.model)
    )
    return {model: aware_utc(oldest) for model, oldest in session.execute(statement)}


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
