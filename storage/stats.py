"""Small aggregates for ``loopfree stats`` and metrics: latency percentiles and batching.

Percentiles are computed in Python over a bounded sample of the most recent finished jobs, which
keeps the SQL portable (SQLite has no ``percentile_cont``) and the cost flat however big the table.
Throughput (images per second of work) is ``storage.progress``'s, one definition for every reader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Job, JobStatus, utcnow

SAMPLE_SIZE = 5_000
"""Recent jobs the percentiles look at: enough for a stable p95, small enough to fetch in ms."""


@dataclass(frozen=True)
class Percentiles:
    """p50 and p95 in seconds; None when no job finished in the window."""

    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class RecentStats:
    """What the queue did over the last ``window_s`` seconds."""

    window_s: float
    succeeded: int
    queue_wait_s: Percentiles
    end_to_end_s: Percentiles
    mean_batch_size: float | None
    sample_size: int
    # Jobs per sampler call (a delivery of ``mean_batch_size`` is split into groups of equal size
    # and steps), averaged over jobs like ``mean_batch_size``.
    mean_group_size: float | None = None


def succeeded_since(session: Session, since: datetime) -> int:
    """How many jobs succeeded at or after ``since``."""
    statement = (
        select(func.count())
        .select_from(Job)
        .where(Job.finished_at >= since, Job.status == JobStatus.SUCCEEDED)
    )
    return session.scalar(statement) or 0


def recent_stats(
    session: Session,
    *,
    window_s: float = 60.0,
    sample_size: int = SAMPLE_SIZE,
    now: datetime | None = None,
) -> RecentStats:
    """p50/p95 of queue wait and end-to-end time (created -> finished), and the mean batch and
    group sizes, over jobs that succeeded in the last ``window_s`` seconds."""
    since = (now or utcnow()) - timedelta(seconds=window_s)
    succeeded = succeeded_since(session, since)
    rows = session.execute(
        select(
            Job.queue_wait_s,
            Job.created_at,
            Job.started_at,
            Job.finished_at,
            Job.batch_size,
            Job.group_size,
        )
        .where(Job.finished_at >= since, Job.status == JobStatus.SUCCEEDED)
        .order_by(Job.finished_at.desc())
        .limit(sample_size)
    ).all()
    waits = [row.queue_wait_s for row in rows if row.queue_wait_s is not None]
    end_to_end = [(row.finished_at - row.created_at).total_seconds() for row in rows]
    batch_sizes = [row.batch_size for row in rows if row.batch_size is not None]
    group_sizes = [row.group_size for row in rows if row.group_size is not None]
    return RecentStats(
        window_s=window_s,
        succeeded=succeeded,
        queue_wait_s=percentiles(waits),
        end_to_end_s=percentiles(end_to_end),
        mean_batch_size=sum(batch_sizes) / len(batch_sizes) if batch_sizes else None,
        sample_size=len(rows),
        mean_group_size=sum(group_sizes) / len(group_sizes) if group_sizes else None,
    )


def percentiles(values: Sequence[float]) -> Percentiles:
    return Percentiles(p50=percentile(values, 50), p95=percentile(values, 95))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation, like numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
