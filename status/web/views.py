"""What each page of the web view shows, as plain data: the HTML templates and the JSON API render
the same records, so the two can never disagree.

Everything is read through ``storage`` in short transactions (on SQLite a transaction takes the
write lock, so the view must never hold one while it fetches or scales an image).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core.errors import UserError
from status.labels import priority_name
from status.web.thumbs import HASH_PREFIX_CHARS
from status.workers import worker_records
from storage.db import Engine, session_scope
from storage.gallery import (
    JobFilter,
    count_jobs,
    count_submissions,
    find_jobs,
    list_submissions,
    run_span,
    status_counts_for,
    succeeded_since_for,
)
from storage.models import Job, JobStatus, Submission, utcnow
from storage.queries import get_job
from storage.submissions import get_submission

RATE_WINDOW_S = 60.0
"""Throughput of a running submission is measured over the last minute: long enough to smooth
batch boundaries, short enough that the ETA follows a fleet that scales up or down."""

SUBMISSIONS_PER_PAGE = 25
JOBS_PER_PAGE = 100
MAX_JOBS_PER_PAGE = 500
OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)


class NotFound(UserError):
    """No submission or job with that id."""


@dataclass(frozen=True)
class SubmissionSummary:
    """One row of the submissions page, and the head of a submission's page."""

    id: str
    short_id: str
    source: str
    model: str | None
    created_at: str
    finished_at: str | None
    job_count: int
    counts: dict[str, int]
    done: int
    open: int
    progress: float  # 0..1, terminal jobs over all
    images_per_s: float | None
    eta_s: float | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Page:
    """Where a paged listing stands: 1-based ``number`` of ``count`` pages, ``total`` rows."""

    number: int
    size: int
    total: int
    count: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", max(1, math.ceil(self.total / self.size)))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    def as_json(self) -> dict[str, int]:
        return {
            "page": self.number,
            "per_page": self.size,
            "total": self.total,
            "pages": self.count,
        }


def summarize(
    submission: Submission,
    counts: dict[JobStatus, int],
    recent_succeeded: int,
    now: datetime,
) -> SubmissionSummary:
    """A submission's progress, throughput and ETA from its counts.

    Throughput of an open submission: jobs that succeeded in the last ``RATE_WINDOW_S`` seconds
    (or since it was created, if that is more recent) per second. Of a finished one: all its
    images over the time from creation to the last job finished.
    """
    total = sum(counts.values())
    open_jobs = sum(counts[s] for s in OPEN)
    done = total - open_jobs
    rate: float | None = None
    if open_jobs:
        elapsed = min(RATE_WINDOW_S, (now - submission.created_at).total_seconds())
        rate = recent_succeeded / elapsed if elapsed > 0 and recent_succeeded else None
    elif submission.finished_at is not None and counts[JobStatus.SUCCEEDED]:
        elapsed = (submission.finished_at - submission.created_at).total_seconds()
        rate = counts[JobStatus.SUCCEEDED] / elapsed if elapsed > 0 else None
    return SubmissionSummary(
        id=submission.id,
        short_id=submission.id[:8],
        source=submission.source,
        model=(submission.defaults or {}).get("model"),
        created_at=submission.created_at.isoformat(timespec="seconds"),
        finished_at=_iso(submission.finished_at),
        job_count=submission.job_count,
        counts={status.value: count for status, count in counts.items()},
        done=done,
        open=open_jobs,
        progress=done / total if total else 1.0,
        images_per_s=rate,
        eta_s=open_jobs / rate if rate and open_jobs else None,
    )


def submissions_page(engine: Engine, number: int) -> tuple[list[SubmissionSummary], Page]:
    """A page of submissions, newest first, with their counts and rates (three queries)."""
    now = utcnow()
    with session_scope(engine) as session:
        page = Page(number, SUBMISSIONS_PER_PAGE, count_submissions(session))
        submissions = list_submissions(session, limit=page.size, offset=page.offset)
        ids = [submission.id for submission in submissions]
        counts = status_counts_for(session, ids)
        recent = succeeded_since_for(session, ids, now - timedelta(seconds=RATE_WINDOW_S))
    summaries = [summarize(s, counts[s.id], recent[s.id], now) for s in submissions]
    return summaries, page


def submission_summary(engine: Engine, submission_id: str) -> SubmissionSummary:
    now = utcnow()
    with session_scope(engine) as session:
        submission = get_submission(session, submission_id)
        if submission is None:
            raise NotFound(f"no submission has id {submission_id}")
        counts = status_counts_for(session, [submission_id])[submission_id]
        since = now - timedelta(seconds=RATE_WINDOW_S)
        recent = succeeded_since_for(session, [submission_id], since)[submission_id]
    return summarize(submission, counts, recent, now)


def submission_jobs(
    engine: Engine, submission_id: str, wanted: JobFilter, number: int, size: int = JOBS_PER_PAGE
) -> tuple[list[dict[str, Any]], Page]:
    """A page of a submission's jobs matching ``wanted``, as records."""
    with session_scope(engine) as session:
        total = count_jobs(session, submission_id, wanted)
        page = Page(number, size, total)
        jobs = find_jobs(session, submission_id, wanted, limit=page.size, offset=page.offset)
    return [job_view(job) for job in jobs], page


def job_detail(engine: Engine, job_id: str) -> dict[str, Any]:
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        if job is None:
            raise NotFound(f"no job has id {job_id}")
        submission = get_submission(session, job.submission_id)
    record = job_view(job)
    record["submission_source"] = submission.source if submission else None
    return record


def run_times(engine: Engine, submission_id: str) -> dict[str, str | None]:
    """When a submission's first job started and its last finished, for its page."""
    with session_scope(engine) as session:
        first, last = run_span(session, submission_id)
    return {"first_started_at": _iso(first), "last_finished_at": _iso(last)}


def workers_view(engine: Engine) -> list[dict[str, Any]]:
    """The worker registry: live workers first, then those that died in the last day, each by
    model and name (``status.workers``: the records ``loopfree workers --all --json`` prints)."""
    records = worker_records(engine, include_dead=True)
    return sorted(records, key=lambda record: not record["live"])


def job_view(job: Job) -> dict[str, Any]:
    """A job's fields for a tile, its page and the API; links are relative to the app's root."""
    record = {
        "id": job.id,
        "submission_id": job.submission_id,
        "position": job.position,
        "line_number": job.line_number,
        "prompt": job.prompt,
        "prompt_truncated": job.prompt_truncated,
        "seed": job.seed,
        "width": job.width,
        "height": job.height,
        "steps": job.steps,
        "model": job.model,
        "priority": job.priority,
        "priority_name": priority_name(job.priority),
        "status": job.status.value,
        "attempts": job.attempts,
        "worker": job.worker,
        "batch_id": job.batch_id,
        "batch_size": job.batch_size,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "queue_wait_s": job.queue_wait_s,
        "sample_s": job.sample_s,
        "upload_s": job.upload_s,
        "gpu_share_s": job.gpu_share_s,
        "image_uri": job.image_uri,
        "image_bytes": job.image_bytes,
        "image_sha256": job.image_sha256,
        "error": job.error,
        "page_url": f"/jobs/{job.id}",
        "image_url": None,
        "thumb_url": None,
    }
    if job.status is JobStatus.SUCCEEDED and job.image_uri:
        version = (job.image_sha256 or "")[:HASH_PREFIX_CHARS]
        record["image_url"] = f"/jobs/{job.id}/image?v={version}"
        record["thumb_url"] = f"/jobs/{job.id}/thumb.webp?v={version}"
    return record


def thumb_size(width: int, height: int, box: int) -> tuple[int, int]:
    """The size a ``width`` x ``height`` image has as a thumbnail in a ``box`` square (what
    ``fit_thumbnail`` makes): the grid reserves it, so tiles do not jump as images arrive."""
    scale = min(1.0, box / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None
