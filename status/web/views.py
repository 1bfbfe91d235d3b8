"""What each page of the web view shows, as plain data: the HTML templates and the JSON API render
the same records, so the two can never disagree.

Everything is read through ``storage`` in short transactions (on SQLite a transaction takes the
write lock, so the view must never hold one while it fetches or scales an image).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.errors import UserError
from status.labels import priority_name
from status.summary import SubmissionSummary, summarize
from status.web.thumbs import HASH_PREFIX_CHARS
from status.workers import worker_records
from storage.db import Engine, session_scope
from storage.gallery import JobFilter, count_jobs, find_jobs, list_submissions
from storage.models import Job, JobStatus
from storage.progress import OPEN_STAGES, stage_of
from storage.queries import get_job
from storage.submissions import get_submission

SUBMISSIONS_PER_PAGE = 25
JOBS_PER_PAGE = 100
MAX_JOBS_PER_PAGE = 500
OPEN = OPEN_STAGES


class NotFound(UserError):
    """No submission or job with that id."""


def summary_view(summary: SubmissionSummary) -> dict[str, Any]:
    """A submission's summary as the pages and the API show it."""
    record = summary.as_dict()
    record["short_id"] = summary.id[:8]
    record["model"] = ", ".join(summary.models) or None
    record["progress"] = summary.progress
    record["cancelling"] = summary.cancelling
    return record


@dataclass(frozen=True)
class SubmissionsPage:
    """A page of submissions, newest first; ``older`` is the cursor of the next page."""

    older: str | None
    newest: bool

    def as_json(self) -> dict[str, Any]:
        return {"next_before": self.older}


def submissions_page(
    engine: Engine, before: str | None = None, *, owner: str | None = None
) -> tuple[list[dict[str, Any]], SubmissionsPage]:
    """The ``SUBMISSIONS_PER_PAGE`` submissions created before the cursor ``before``
    (``created_at,id`` of the last one of the previous page), or the newest; only ``owner``'s
    if given (a viewer with an owner's API token)."""
    cursor = parse_cursor(before) if before else None
    with session_scope(engine) as session:
        found = list_submissions(
            session, limit=SUBMISSIONS_PER_PAGE + 1, before=cursor, owner=owner
        )
        shown = found[:SUBMISSIONS_PER_PAGE]
        summaries = summarize(session, shown)
    older = None
    if len(found) > SUBMISSIONS_PER_PAGE:
        last = shown[-1]
        older = f"{last.created_at.isoformat()},{last.id}"
    return [summary_view(s) for s in summaries], SubmissionsPage(older, before is None)


def parse_cursor(text: str) -> tuple[datetime, str]:
    """``created_at,id`` back into a cursor; a clear 400 for anything else."""
    stamp, _, submission_id = text.rpartition(",")
    try:
        return datetime.fromisoformat(stamp), str(uuid.UUID(submission_id))
    except ValueError:
        raise UserError(
            f"before={text[:80]!r} is not a page cursor; follow the page's own links"
        ) from None


def submission_summary(engine: Engine, submission_id: str) -> dict[str, Any]:
    with session_scope(engine) as session:
        submission = get_submission(session, submission_id)
        if submission is None:
            raise NotFound(f"no submission has id {submission_id}")
        (summary,) = summarize(session, [submission])
    return summary_view(summary)


@dataclass(frozen=True)
class JobsPage:
    """Where a page of a submission's jobs stands: keyset cursors, not page offsets."""

    size: int
    total: int | None  # jobs matching the filter (None with a text filter)
    first: int | None  # position of the first job shown
    last: int | None  # position of the last job shown
    has_prev: bool
    has_next: bool
    numbered: bool  # unfiltered: positions are 0..n-1, so pages have numbers

    @property
    def number(self) -> int | None:
        if not self.numbered or self.first is None:
            return None
        return self.first // self.size + 1

    @property
    def count(self) -> int | None:
        if not self.numbered or self.total is None:
            return None
        return max(1, -(-self.total // self.size))

    def as_json(self) -> dict[str, Any]:
        return {
            "per_page": self.size,
            "total": self.total,
            "page": self.number,
            "pages": self.count,
            "next_after": self.last if self.has_next else None,
            "prev_before": self.first if self.has_prev else None,
        }


def submission_jobs(
    engine: Engine,
    submission_id: str,
    wanted: JobFilter,
    *,
    after: int = -1,
    before: int | None = None,
    size: int = JOBS_PER_PAGE,
) -> tuple[list[dict[str, Any]], JobsPage]:
    """A page of a submission's jobs matching ``wanted``, after (or before) a position."""
    with session_scope(engine) as session:
        total = count_jobs(session, submission_id, wanted)
        found = find_jobs(
            session, submission_id, wanted, limit=size + 1, after=after, before=before
        )
        if before is not None:
            has_prev, jobs = len(found) > size, found[-size:]
            has_next = True
        else:
            has_next, jobs = len(found) > size, found[:size]
            has_prev = after >= 0 and bool(
                jobs and find_jobs(session, submission_id, wanted, limit=1, before=jobs[0].position)
            )
    page = JobsPage(
        size=size,
        total=total,
        first=jobs[0].position if jobs else None,
        last=jobs[-1].position if jobs else None,
        has_prev=has_prev,
        has_next=has_next and bool(jobs),
        numbered=not wanted.stages and not wanted.text,
    )
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
        "status": stage_of(job),
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
