"""What an operator asks about submissions as a whole: the recent ones, their progress and rate,
and which models their open jobs wait for (``loopfree submissions``, ``status``, ``wait``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Job, JobStatus, Submission, aware_utc

OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class SubmissionSummary:
    """One submission with its jobs counted by status and its active time."""

    id: str
    source: str
    created_at: datetime
    finished_at: datetime | None
    job_count: int
    models: tuple[str, ...]
    counts: dict[str, int]
    first_started_at: datetime | None
    last_finished_at: datetime | None

    @property
    def done(self) -> int:
        return sum(n for status, n in self.counts.items() if JobStatus(status) not in OPEN)

    @property
    def images_per_s(self) -> float | None:
        """Succeeded images over the submission's active time (first start -> last finish)."""
        if self.first_started_at is None or self.last_finished_at is None:
            return None
        active = (self.last_finished_at - self.first_started_at).total_seconds()
        succeeded = self.counts.get(JobStatus.SUCCEEDED.value, 0)
        return succeeded / active if active > 0 else None


def recent_submissions(session: Session, *, limit: int = 20) -> list[SubmissionSummary]:
    """The ``limit`` newest submissions, newest first, each with its counts (one grouped query
    over ``ix_jobs_submission_id_status`` for all of them)."""
    submissions = list(
        session.scalars(select(Submission).order_by(Submission.created_at.desc()).limit(limit))
    )
    return summarize(session, submissions)


def summarize(session: Session, submissions: list[Submission]) -> list[SubmissionSummary]:
    ids = [submission.id for submission in submissions]
    counts: dict[str, dict[str, int]] = {sid: {s.value: 0 for s in JobStatus} for sid in ids}
    models: dict[str, set[str]] = {sid: set() for sid in ids}
    times: dict[str, tuple[datetime | None, datetime | None]] = {}
    if ids:
        grouped = session.execute(
            select(Job.submission_id, Job.status, Job.model, func.count())
            .where(Job.submission_id.in_(ids))
            .group_by(Job.submission_id, Job.status, Job.model)
        )
        for submission_id, status, model, count in grouped:
            counts[submission_id][status.value] += int(count)
            models[submission_id].add(model)
        spans = session.execute(
            select(Job.submission_id, func.min(Job.started_at), func.max(Job.finished_at))
            .where(Job.submission_id.in_(ids))
            .group_by(Job.submission_id)
        )
        for submission_id, first, last in spans:
            times[submission_id] = (aware_utc(first), aware_utc(last))
    return [
        SubmissionSummary(
            id=s.id,
            source=s.source,
            created_at=s.created_at,
            finished_at=s.finished_at,
            job_count=s.job_count,
            models=tuple(sorted(models[s.id])),
            counts=counts[s.id],
            first_started_at=times.get(s.id, (None, None))[0],
            last_finished_at=times.get(s.id, (None, None))[1],
        )
        for s in submissions
    ]


def open_models(session: Session, submission_id: str) -> list[str]:
    """The models that this submission's queued or running jobs wait for."""
    statement = (
        select(Job.model)
        .where(Job.submission_id == submission_id, Job.status.in_(OPEN))
        .distinct()
        .order_by(Job.model)
    )
    return list(session.scalars(statement))


def finished_since(session: Session, submission_id: str, since: datetime) -> int:
    """This submission's jobs that finished (any outcome) at or after ``since``: its recent rate."""
    statement = select(func.count()).where(
        Job.submission_id == submission_id, Job.finished_at >= since
    )
    return int(session.scalar(statement) or 0)
