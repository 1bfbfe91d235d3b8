"""Read-side queries: load jobs, count them, page through them, find stuck ones.

Listings use keyset pagination (``WHERE position > :last ORDER BY position LIMIT n``) rather than
OFFSET, so page 1,000 of a 100,000-job submission costs the same as page 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Job, JobStatus

PAGE_SIZE = 1_000
"""Rows per page: one round trip per thousand jobs, a few MB of ORM objects at most."""


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def load_jobs(session: Session, job_ids: Sequence[str]) -> list[Job]:
    """The jobs with these ids, in the order given; unknown ids are left out."""
    if not job_ids:
        return []
    rows = session.scalars(select(Job).where(Job.id.in_(list(job_ids))))
    by_id = {job.id: job for job in rows}
    return [by_id[job_id] for job_id in job_ids if job_id in by_id]


def count_by_status(
    session: Session,
    *,
    submission_id: str | None = None,
    statuses: Iterable[JobStatus] | None = None,
) -> dict[JobStatus, int]:
    """Number of jobs in each status (zero if none), optionally for one submission and only for
    ``statuses`` (default: all five).

    One statement of ``count(*) WHERE status = ...`` subqueries, each an index-only range scan of
    ``ix_jobs_status`` (or ``ix_jobs_submission_id_status``): about twice as fast as
    ``GROUP BY status``, which compares the group key of every row. The cost is proportional to
    the jobs counted, so a poller that only needs the open work (``queued``, ``running``) should
    pass those and skip scanning a million finished jobs. Timings: BENCHMARKS.md.
    """
    wanted = list(JobStatus) if statuses is None else list(dict.fromkeys(statuses))
    counts = []
    for status in wanted:
        count = select(func.count()).select_from(Job).where(Job.status == status)
        if submission_id is not None:
            count = count.where(Job.submission_id == submission_id)
        counts.append(count.scalar_subquery().label(status.value))
    row = session.execute(select(*counts)).one()
    return {status: int(value) for status, value in zip(wanted, row, strict=True)}


def list_submission_jobs(
    session: Session,
    submission_id: str,
    *,
    after_position: int = -1,
    limit: int = PAGE_SIZE,
) -> list[Job]:
    """One page of a submission's jobs in position order, starting after ``after_position``."""
    statement = (
        select(Job)
        .where(Job.submission_id == submission_id, Job.position > after_position)
        .order_by(Job.position)
        .limit(limit)
    )
    return list(session.scalars(statement))


def iter_submission_jobs(
    session: Session, submission_id: str, *, page_size: int = PAGE_SIZE
) -> Iterator[list[Job]]:
    """All of a submission's jobs, page by page (e.g. to write a results manifest)."""
    after = -1
    while page := list_submission_jobs(
        session, submission_id, after_position=after, limit=page_size
    ):
        yield page
        after = page[-1].position


def list_jobs_by_status(
    session: Session,
    status: JobStatus,
    *,
    submission_id: str | None = None,
    after_id: str | None = None,
    limit: int = PAGE_SIZE,
) -> list[Job]:
    """One page of jobs in ``status``, ordered by id; pass the last id as ``after_id`` for the
    next page."""
    statement = select(Job).where(Job.status == status).order_by(Job.id).limit(limit)
    if submission_id is not None:
        statement = statement.where(Job.submission_id == submission_id)
    if after_id is not None:
        statement = statement.where(Job.id > after_id)
    return list(session.scalars(statement))


def find_stuck_running(
    session: Session, *, heartbeat_before: datetime, limit: int = PAGE_SIZE
) -> list[Job]:
    """Running jobs whose worker has not sent a heartbeat since ``heartbeat_before``: the worker
    probably died, and the reconciler should release or fail them."""
    statement = (
        select(Job)
        .where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < heartbeat_before)
        .order_by(Job.heartbeat_at)
        .limit(limit)
    )
    return list(session.scalars(statement))


def queued_job_keys(
    session: Session, *, submission_id: str | None = None
) -> list[tuple[str, str, int]]:
    """``(id, model, priority)`` of every queued job, oldest first: what a message needs, and
    nothing more (a reconciler run over a backlog of 100,000 jobs reads 100,000 rows)."""
    statement = (
        select(Job.id, Job.model, Job.priority)
        .where(Job.status == JobStatus.QUEUED)
        .order_by(Job.created_at, Job.position)
    )
    if submission_id is not None:
        statement = statement.where(Job.submission_id == submission_id)
    return [(row.id, row.model, row.priority) for row in session.execute(statement)]


def find_stale_queued(
    session: Session, *, created_before: datetime, limit: int = PAGE_SIZE
) -> list[Job]:
    """Queued jobs created before ``created_before``, oldest first: candidates for a lost broker
    message (the reconciler can publish them again; a duplicate message is harmless)."""
    statement = (
        select(Job)
        .where(Job.status == JobStatus.QUEUED, Job.created_at < created_before)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(session.scalars(statement))
