"""Read-side queries: load jobs, count them, find stuck ones, sort a delivery.

Listings page by key and live in ``storage.gallery``; counts come from the flows' counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from core.jobspec import MAX_NUM_IMAGES
from storage.jobs import WORKER_STOPPED
from storage.models import Flow, Job, JobStatus


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
    ordered = sorted(jobs, key=lambda j: (j.submission_id, j.position))
    follows = [
        previous is not None
        and previous.submission_id == job.submission_id
        and previous.position == job.position - 1
        for previous, job in zip([None, *ordered], ordered, strict=False)
    ]
    unknown = [
        job
        for job, adjacent in zip(ordered, follows, strict=True)
        if not adjacent and not job.caller_metadata and job.position > 0
    ]
    first = _first_jobs_metadata(session, unknown) if unknown else {}
    previous: Job | None = None
    for job, adjacent in zip(ordered, follows, strict=True):
        if not job.caller_metadata and job.position > 0:
            if not adjacent:
                metadata = first.get((job.submission_id, job.line_number))
            elif previous.line_number == job.line_number:
                metadata = previous.caller_metadata  # filled in already, if the line has any
            else:
                metadata = None  # the first job of its line: its own (empty) metadata is right
            if metadata:
                set_committed_value(job, "caller_metadata", metadata)
        previous = job
    return jobs


# A line's jobs sit at consecutive positions, at most MAX_NUM_IMAGES of them: its first job is
# within that many positions before any of its jobs.
_RANGES_PER_STATEMENT = 500


def _first_jobs_metadata(session: Session, jobs: list[Job]) -> dict[tuple[str, int], dict]:
    """``(submission_id, line_number)`` -> metadata of the line's first job, for ``jobs``'
    lines. Each job is looked for by position range on ``(submission_id, position)``'s unique
    index: filtering by ``line_number`` alone would read the whole submission once per page."""
    spans: dict[str, list[tuple[int, int]]] = {}
    lines: dict[str, set[int]] = {}
    for job in jobs:
        spans.setdefault(job.submission_id, []).append(
            (max(0, job.position - MAX_NUM_IMAGES + 1), job.position)
        )
        lines.setdefault(job.submission_id, set()).add(job.line_number)
    first: dict[tuple[str, int], dict] = {}
    for submission_id, ranges in spans.items():
        merged = _merge_ranges(ranges)
        for start in range(0, len(merged), _RANGES_PER_STATEMENT):
            chunk = merged[start : start + _RANGES_PER_STATEMENT]
            statement = (
                select(Job.line_number, Job.caller_metadata)
                .where(
                    Job.submission_id == submission_id,
                    or_(*(Job.position.between(low, high) for low, high in chunk)),
                    Job.line_number.in_(lines[submission_id]),
                )
                .order_by(Job.position)
            )
            for line, metadata in session.execute(statement):
                if metadata:  # the line's first job holds it
                    first.setdefault((submission_id, line), metadata)
    return first


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


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

    Read from the flows' counters (``storage.counters``), which every status change keeps: a few
    rows per submission, whatever its size. This transaction's own changes are counted first."""
    from storage.counters import COUNTED, apply_pending

    apply_pending(session)
    wanted = list(JobStatus) if statuses is None else list(dict.fromkeys(statuses))
    sums = [func.coalesce(func.sum(Flow.__table__.c[s.value]), 0) for s in wanted]
    statement = select(*sums)
    if submission_id is not None:
        statement = statement.where(Flow.submission_id == submission_id)
    row = session.execute(statement).one()
    assert all(status.value in COUNTED for status in wanted)
    return {status: int(value) for status, value in zip(wanted, row, strict=True)}


def find_stuck_running(session: Session, *, heartbeat_before: datetime) -> list[Job]:
    """Running jobs whose worker has not sent a heartbeat since ``heartbeat_before``: the worker
    probably died, and the reconciler should release them. A range of the partial index of
    running jobs (``ix_jobs_running``): the jobs in flight, not the table."""
    statement = (
        select(Job)
        .where(text("jobs.status = 'running'"), Job.heartbeat_at < heartbeat_before)
        .order_by(Job.heartbeat_at)
    )
    return list(session.scalars(statement))


def delivery_facts(
    session: Session, job_ids: Sequence[str]
) -> dict[str, tuple[str, int, JobStatus]]:
    """``id -> (model, priority, status)`` of the delivered jobs that exist: which worker they
    belong to (by model), where to send them if not this one."""
    statement = select(Job.id, Job.model, Job.priority, Job.status).where(Job.id.in_(list(job_ids)))
    return {row.id: (row.model, row.priority, row.status) for row in session.execute(statement)}


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
