"""What users ask the database: where a submission or job stands, waiting for it, results, stats.

Only SQL and the object store are consulted; the broker is not needed to answer any of these.
``cancel`` is the one write: it moves queued jobs to ``cancelled`` through ``storage.jobs``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.errors import UserError
from core.settings import Settings
from storage.db import make_engine, session_scope
from storage.models import Job, JobStatus, Submission
from storage.queries import count_by_status, get_job, iter_submission_jobs

JOB_FIELDS = (
    "id",
    "submission_id",
    "position",
    "prompt",
    "seed",
    "height",
    "width",
    "steps",
    "model",
    "priority",
    "status",
    "attempts",
    "image_uri",
    "image_bytes",
    "image_sha256",
    "queue_wait_s",
    "sample_s",
    "upload_s",
    "gpu_share_s",
    "batch_id",
    "batch_size",
    "worker",
    "error",
    "created_at",
    "finished_at",
)
OPEN_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


def job_record(job: Job) -> dict[str, Any]:
    record = {name: getattr(job, name) for name in JOB_FIELDS}
    record["status"] = job.status.value
    for name in ("created_at", "finished_at"):
        record[name] = record[name].isoformat() if record[name] else None
    return record


@dataclass(frozen=True)
class SubmissionStatus:
    id: str
    source: str
    created_at: str
    job_count: int
    counts: dict[str, int]
    finished: bool

    @property
    def done(self) -> int:
        return sum(self.counts[s.value] for s in JobStatus if s not in OPEN_STATUSES)


def engine_for(settings: Settings):
    return make_engine(settings.resolved_database_url)


def submission_status(engine, submission_id: str) -> SubmissionStatus | None:
    with session_scope(engine) as session:
        submission = session.get(Submission, submission_id)
        if submission is None:
            return None
        counts = count_by_status(session, submission_id=submission_id)
    return SubmissionStatus(
        id=submission.id,
        source=submission.source,
        created_at=submission.created_at.isoformat(),
        job_count=submission.job_count,
        counts={status.value: count for status, count in counts.items()},
        finished=not any(counts[s] for s in OPEN_STATUSES),
    )


def lookup(engine, identifier: str) -> SubmissionStatus | dict[str, Any]:
    """A submission's status, or one job's record; a clear error if the id is neither."""
    _check_uuid(identifier)
    status = submission_status(engine, identifier)
    if status is not None:
        return status
    with session_scope(engine) as session:
        job = get_job(session, identifier)
        if job is not None:
            return job_record(job)
    raise UserError(f"no submission or job has id {identifier}; `loopfree jobs` lists them")


def list_jobs(
    engine, *, submission_id: str | None, status: str | None, limit: int | None
) -> Iterator[dict[str, Any]]:
    from sqlalchemy import select

    if submission_id:
        _check_uuid(submission_id)
    wanted = JobStatus(status) if status else None
    with session_scope(engine) as session:
        if submission_id:
            pages = iter_submission_jobs(session, submission_id)
        else:
            statement = select(Job).order_by(Job.created_at, Job.position)
            if wanted:
                statement = statement.where(Job.status == wanted)
            if limit:
                statement = statement.limit(limit)
            pages = iter([list(session.scalars(statement))])
        emitted = 0
        for page in pages:
            for job in page:
                if wanted and job.status != wanted:
                    continue
                if limit and emitted >= limit:
                    return
                emitted += 1
                yield job_record(job)


def wait_for(
    settings: Settings, submission_id: str, *, poll_s: float = 0.5, timeout_s: float | None = None
) -> bool:
    """Follow a submission with a progress bar until no job is open. True if none failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    engine = engine_for(settings)
    status = submission_status(engine, submission_id)
    if status is None:
        raise UserError(f"no submission has id {submission_id}")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(f"submission {submission_id[:8]}", total=status.job_count)
        while True:
            status = submission_status(engine, submission_id)
            assert status is not None
            failed = status.counts["failed"]
            progress.update(
                task, completed=status.done, description=f"{submission_id[:8]} failed={failed}"
            )
            if status.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise UserError(
                    f"submission {submission_id} still has open jobs after {timeout_s}s"
                )
            time.sleep(poll_s)
    return status.counts["failed"] == 0


def stats(engine, *, window_s: float = 300.0) -> dict[str, Any]:
    from storage.stats import recent_stats

    with session_scope(engine) as session:
        counts = count_by_status(session)
        recent = recent_stats(session, window_s=window_s)
    return {
        "counts": {status.value: count for status, count in counts.items()},
        "window_s": window_s,
        "images_per_s": recent.images_per_s,
        "queue_wait_s": {"p50": recent.queue_wait_s.p50, "p95": recent.queue_wait_s.p95},
        "end_to_end_s": {"p50": recent.end_to_end_s.p50, "p95": recent.end_to_end_s.p95},
        "mean_batch_size": recent.mean_batch_size,
    }


def cancel(engine, identifier: str) -> int:
    """Cancel a job or all queued jobs of a submission; running jobs finish."""
    from storage.jobs import cancel_queued

    _check_uuid(identifier)
    with session_scope(engine) as session:
        if session.get(Submission, identifier) is not None:
            return len(cancel_queued(session, submission_id=identifier))
        if get_job(session, identifier) is None:
            raise UserError(f"no submission or job has id {identifier}")
        return len(cancel_queued(session, job_ids=[identifier]))


def results(settings: Settings, submission_id: str) -> Iterator[dict[str, Any]]:
    """One manifest line per job: its fields plus a presigned URL for succeeded ones."""
    from storage.objects import open_store

    _check_uuid(submission_id)
    store = open_store(
        settings.resolved_storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )
    for record in list_jobs(
        engine_for(settings), submission_id=submission_id, status=None, limit=None
    ):
        if record["image_uri"]:
            record["url"] = store.presigned_url(record["image_uri"], settings.presign_expiry_s)
        yield record


def _check_uuid(identifier: str) -> None:
    import uuid

    try:
        uuid.UUID(identifier)
    except ValueError:
        raise UserError(f"{identifier!r} is not a submission or job id (a UUID)") from None
