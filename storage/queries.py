"""Read-side queries: load jobs, count them, page through them, find stuck ones.

A submission's jobs are listed with keyset pagination (``WHERE position > :last ORDER BY position
LIMIT n``) rather than OFFSET, so page 1,000 of a 100,000-job submission costs the same as page 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from storage.jobs import WORKER_STOPPED
from storage.models import Job, JobStatus

PAGE_SIZE = 1_000
"""Rows per page: one round trip per thousand jobs, a few MB of ORM objects at most."""


def get_job(session: Session, job_id: str) -> Job | None:
    job = session.get(Job, job_id)
    return None if job is None else with_line_metadata(session, [job])[0]


def with_line_metadata(session: Session, jobs: list[Job]) -> list[Job]:
    """``jobs`` with the metadata of their prompt-file line filled in where it is stored once.

    A line asking for ``num_images`` images becomes that many jobs at consecutive positions, but
    its metadata is stored only on the first of them (``storage.submissions.insert_jobs``):
    otherwise a line's 16 KiB of metadata would cost a megabyte at 64 images. Readers get it back
    here, on every job of the line. A job right after its neighbour in ``jobs`` needs no query
    (same line: the neighbour's metadata; another line: it is its line's first job); the rest
    are looked up in one statement. The value is set as if loaded, so a commit never writes it.
    """
    unknown: list[Job] = []
    previous: Job | None = None
    for job in sorted(jobs, key=lambda j: (j.submission_id, j.position)):
        if not job.caller_metadata and job.position > 0:
            adjacent = (
                previous is not None
                and previous.submission_id == job.submission_id
                and previous.position == job.position - 1
            )
            if not adjacent:
                unknown.append(job)
            elif previous.line_number == job.line_number and previous.caller_metadata:
                set_committed_value(job, "caller_metadata", previous.caller_metadata)
        previous = job
    if unknown:
        lines = {(job.submission_id, job.line_number) for job in unknown}
        statement = (
            select(Job.submission_id, Job.line_number, Job.caller_metadata)
            .where(
                Job.submission_id.in_({submission for submission, _ in lines}),
                Job.line_number.in_({line for _, line in lines}),
            )
            .order_by(Job.position)
        )
        first: dict[tuple[str, int], dict] = {}
        for submission, line, metadata in session.execute(statement):
            first.setdefault((submission, line), metadata)  # the line's first job holds it
        for job in unknown:
            if metadata := first.get((job.submission_id, job.line_number)):
                set_committed_value(job, "caller_metadata", metadata)
    return jobs


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
    return with_line_metadata(session, list(session.scalars(statement)))


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


def list_all_jobs(
    session: Session, *, status: JobStatus | None = None, limit: int | None = None
) -> list[Job]:
    """Jobs of every submission (only those in ``status``, if given), oldest first, at most
    ``limit``: ``loopfree jobs`` without ``--submission``."""
    statement = select(Job).order_by(Job.created_at, Job.position)
    if status is not None:
        statement = statement.where(Job.status == status)
    if limit:
        statement = statement.limit(limit)
    return with_line_metadata(session, list(session.scalars(statement)))


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


def find_suspects(session: Session, job_ids: Sequence[str]) -> set[str]:
    """Of ``job_ids``, the jobs claimed before whose last attempt ended without an outcome: its
    worker died (no error recorded) or stopped heart-beating and the reconciler took the job back
    (``WORKER_STOPPED``). The job may be what killed it, so workers run these alone."""
    statement = select(Job.id).where(
        Job.id.in_(list(job_ids)),
        Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
        Job.attempts > 0,
        Job.error.is_(None) | (Job.error == WORKER_STOPPED),
    )
    return set(session.scalars(statement))


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
