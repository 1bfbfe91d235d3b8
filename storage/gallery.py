"""Read-side queries for looking at results: the web view (``status.web``), contact sheets, the API.

Every query is bounded and pages by key, never by offset: a page of submissions is the next
``limit`` before a (created_at, id) cursor, a page of a submission's jobs the next ``limit``
after (or before) a position, through ``ix_jobs_submission_id_status_position`` or the
``(submission_id, position)`` key. So page 5,000 of a million-job submission costs what page 1
does (BENCHMARKS.md, "Web view"). Counts come from the flows' counters (``storage.counters``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, or_, select, tuple_
from sqlalchemy.orm import Session

from storage.models import Job, JobStatus, Submission
from storage.progress import STAGES, stage_counts
from storage.queries import with_line_metadata

LIKE_ESCAPE = "\\"
"""Escape character of prompt-text filters: ``%`` and ``_`` typed by a user match themselves."""


@dataclass(frozen=True)
class JobFilter:
    """Which of a submission's jobs a page shows: some stages (all when empty; the words of
    ``storage.progress``) and, optionally, only prompts containing ``text`` (case-insensitive,
    a plain substring, no wildcards)."""

    stages: tuple[str, ...] = ()
    text: str = ""


def escape_like(text: str) -> str:
    """``text`` as a LIKE pattern that matches it literally (``50%_off`` is not a wildcard)."""
    escaped = text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
    return escaped.replace("%", LIKE_ESCAPE + "%").replace("_", LIKE_ESCAPE + "_")


def list_submissions(
    session: Session,
    *,
    limit: int,
    before: tuple[datetime, str] | None = None,
    owner: str | None = None,
) -> list[Submission]:
    """A page of submissions, newest first: the ``limit`` created before the ``before`` cursor
    (``(created_at, id)`` of the last one shown), or the newest; only ``owner``'s if given
    (``ix_submissions_owner_created_at_id``)."""
    statement = select(Submission).order_by(Submission.created_at.desc(), Submission.id.desc())
    if owner is not None:
        statement = statement.where(Submission.owner == owner)
    if before is not None:
        statement = statement.where(
            tuple_(Submission.created_at, Submission.id) < tuple_(*_cursor_values(before))
        )
    return list(session.scalars(statement.limit(limit)))


def _cursor_values(cursor: tuple[datetime, str]) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    created_at, submission_id = cursor
    return (
        literal(created_at, Submission.__table__.c.created_at.type),
        literal(submission_id, Submission.__table__.c.id.type),
    )


def _filter_conditions(submission_id: str, wanted: JobFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Job.submission_id == submission_id]
    if wanted.stages:
        conditions.append(or_(*[_stage_condition(stage) for stage in wanted.stages]))
    if wanted.text:
        # lower() LIKE lower(): ILIKE is PostgreSQL-only, and SQLite's LIKE folds ASCII only; both
        # sides lowered by the database fold the same way.
        pattern = f"%{escape_like(wanted.text.lower())}%"
        conditions.append(func.lower(Job.prompt).like(pattern, escape=LIKE_ESCAPE))
    return conditions


def _stage_condition(stage: str) -> ColumnElement[bool]:
    if stage == "claimed":
        return and_(Job.status == JobStatus.RUNNING, Job.rendering_at.is_(None))
    if stage == "rendering":
        return and_(Job.status == JobStatus.RUNNING, Job.rendering_at.is_not(None))
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    return Job.status == JobStatus(stage)


def find_jobs(
    session: Session,
    submission_id: str,
    wanted: JobFilter = JobFilter(),
    *,
    limit: int,
    after: int = -1,
    before: int | None = None,
) -> list[Job]:
    """One page of a submission's jobs that match ``wanted``, in position order: the first
    ``limit`` after position ``after``, or with ``before`` the last ``limit`` before it (the
    previous page). Keyset over ``ix_jobs_submission_id_status_position`` (one stage) or the
    ``(submission_id, position)`` key: page 5,000 costs what page 1 does."""
    conditions = _filter_conditions(submission_id, wanted)
    if before is not None:
        statement = (
            select(Job)
            .where(*conditions, Job.position < before)
            .order_by(Job.position.desc())
            .limit(limit)
        )
        jobs = list(reversed(list(session.scalars(statement))))
    else:
        statement = (
            select(Job).where(*conditions, Job.position > after).order_by(Job.position).limit(limit)
        )
        jobs = list(session.scalars(statement))
    return with_line_metadata(session, jobs)


def count_jobs(session: Session, submission_id: str, wanted: JobFilter = JobFilter()) -> int | None:
    """How many of a submission's jobs match ``wanted``, from its flows' counters; None when a
    text filter is set (only a scan could say, and no page needs it)."""
    if wanted.text:
        return None
    counts = stage_counts(session, submission_id=submission_id)
    return sum(counts[stage] for stage in (wanted.stages or STAGES))


def job_for_image(session: Session, job_id: str) -> tuple[str | None, str | None] | None:
    """``(image_uri, image_sha256)`` of a job, or None if there is no such job: what serving its
    image or thumbnail needs, without loading the row."""
    row = session.execute(
        select(Job.image_uri, Job.image_sha256).where(Job.id == job_id)
    ).one_or_none()
    return None if row is None else (row.image_uri, row.image_sha256)
