"""Read-side queries for looking at results: the web view (``status.web``) and contact sheets.

Every query is bounded: a page of submissions, a page of one submission's jobs, counts that are
index-only scans of ``ix_jobs_submission_id_status``, and recent activity found through
``ix_jobs_finished_at`` (a range of the last minutes, not the whole table). So a page costs the
same for a 100-job submission as for a 10,000-job one (BENCHMARKS.md, "Web view").
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from storage.models import Job, JobStatus, Submission
from storage.queries import with_line_metadata

LIKE_ESCAPE = "\\"
"""Escape character of prompt-text filters: ``%`` and ``_`` typed by a user match themselves."""


@dataclass(frozen=True)
class JobFilter:
    """Which of a submission's jobs a page shows: some statuses (all when empty) and, optionally,
    only prompts containing ``text`` (case-insensitive, a plain substring, no wildcards)."""

    statuses: tuple[JobStatus, ...] = ()
    text: str = ""


def escape_like(text: str) -> str:
    """``text`` as a LIKE pattern that matches it literally (``50%_off`` is not a wildcard)."""
    escaped = text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
    return escaped.replace("%", LIKE_ESCAPE + "%").replace("_", LIKE_ESCAPE + "_")


def list_submissions(session: Session, *, limit: int, offset: int = 0) -> list[Submission]:
    """A page of submissions, newest first."""
    statement = (
        select(Submission)
        .order_by(Submission.created_at.desc(), Submission.id)
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(statement))


def count_submissions(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Submission)) or 0


def status_counts_for(
    session: Session, submission_ids: Collection[str]
) -> dict[str, dict[JobStatus, int]]:
    """Jobs per status of each submission (every status present, zero if none): one GROUP BY
    over ``ix_jobs_submission_id_status``, which holds both grouped columns."""
    counts: dict[str, dict[JobStatus, int]] = {
        submission_id: dict.fromkeys(JobStatus, 0) for submission_id in submission_ids
    }
    if not counts:
        return counts
    statement = (
        select(Job.submission_id, Job.status, func.count())
        .where(Job.submission_id.in_(list(counts)))
        .group_by(Job.submission_id, Job.status)
    )
    for submission_id, status, count in session.execute(statement):
        counts[submission_id][status] = int(count)
    return counts


def succeeded_since_for(
    session: Session, submission_ids: Collection[str], since: datetime
) -> dict[str, int]:
    """Jobs of each submission that succeeded at or after ``since``: a range of
    ``ix_jobs_finished_at``, so the cost follows the recent work, not the table's size."""
    done = dict.fromkeys(submission_ids, 0)
    if not done:
        return done
    statement = (
        select(Job.submission_id, func.count())
        .where(
            Job.finished_at >= since,
            Job.status == JobStatus.SUCCEEDED,
            Job.submission_id.in_(list(done)),
        )
        .group_by(Job.submission_id)
    )
    for submission_id, count in session.execute(statement):
        done[submission_id] = int(count)
    return done


def _filter_conditions(submission_id: str, wanted: JobFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Job.submission_id == submission_id]
    if wanted.statuses:
        conditions.append(Job.status.in_(list(wanted.statuses)))
    if wanted.text:
        # lower() LIKE lower(): ILIKE is PostgreSQL-only, and SQLite's LIKE folds ASCII only; both
        # sides lowered by the database fold the same way.
        pattern = f"%{escape_like(wanted.text.lower())}%"
        conditions.append(func.lower(Job.prompt).like(pattern, escape=LIKE_ESCAPE))
    return conditions


def find_jobs(
    session: Session,
    submission_id: str,
    wanted: JobFilter = JobFilter(),
    *,
    limit: int,
    offset: int = 0,
) -> list[Job]:
    """One page of a submission's jobs that match ``wanted``, in position order.

    LIMIT/OFFSET over the ``(submission_id, position)`` unique index: skipping rows of the index
    costs microseconds each, so page 100 of a 10,000-job submission is as quick as page 1, and the
    pages can be numbered (a user jumps to page 40; keyset paging could only step).
    """
    statement = (
        select(Job)
        .where(*_filter_conditions(submission_id, wanted))
        .order_by(Job.position)
        .limit(limit)
        .offset(offset)
    )
    return with_line_metadata(session, list(session.scalars(statement)))


def count_jobs(session: Session, submission_id: str, wanted: JobFilter = JobFilter()) -> int:
    """How many of a submission's jobs match ``wanted`` (for the number of pages)."""
    statement = (
        select(func.count()).select_from(Job).where(*_filter_conditions(submission_id, wanted))
    )
    return session.scalar(statement) or 0


def run_span(session: Session, submission_id: str) -> tuple[datetime | None, datetime | None]:
    """When the submission's first job started and its last one finished (None before that)."""
    statement = select(func.min(Job.started_at), func.max(Job.finished_at)).where(
        Job.submission_id == submission_id
    )
    first, last = session.execute(statement).one()
    return _aware(first), _aware(last)


def job_for_image(session: Session, job_id: str) -> tuple[str | None, str | None] | None:
    """``(image_uri, image_sha256)`` of a job, or None if there is no such job: what serving its
    image or thumbnail needs, without loading the row."""
    row = session.execute(
        select(Job.image_uri, Job.image_sha256).where(Job.id == job_id)
    ).one_or_none()
    return None if row is None else (row.image_uri, row.image_sha256)


def _aware(value: datetime | str | None) -> datetime | None:
    """An aware UTC datetime from an aggregate, whichever way the driver typed it."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
