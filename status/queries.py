"""What users ask the database: where a submission or job stands, waiting for it, results, stats.

Only SQL and the object store are consulted; the broker is not needed to answer any of these.
``cancel`` is the one write: it moves queued jobs to ``cancelled`` through ``storage.jobs``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.errors import UserError
from core.settings import Settings
from storage.db import Engine, make_engine, session_scope
from storage.models import JOB_ATTRIBUTES, Job, JobStatus
from storage.queries import count_by_status, get_job, iter_submission_jobs, list_all_jobs
from storage.submissions import get_submission

JOB_FIELDS: tuple[str, ...] = tuple(JOB_ATTRIBUTES)
"""The fields of a job record (``loopfree jobs``, ``status``, the results manifest): every column
of ``jobs``, in table order and by column name, so a new column shows up here by itself."""
OPEN_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


def job_record(job: Job) -> dict[str, Any]:
    """``job`` as JSON-ready values keyed by ``JOB_FIELDS``: status as text, times in ISO 8601."""
    record = {name: getattr(job, attribute) for name, attribute in JOB_ATTRIBUTES.items()}
    for name, value in record.items():
        if isinstance(value, datetime):
            record[name] = value.isoformat()
    record["status"] = job.status.value
    return record


RATE_WINDOW_S = 60.0
"""The ETA divides the open jobs by the rate of the last minute: recent enough to follow a fleet
that grows or shrinks, long enough to average over several batches."""


@dataclass(frozen=True)
class SubmissionStatus:
    id: str
    source: str
    created_at: str
    job_count: int
    counts: dict[str, int]
    finished: bool
    # Models its open jobs wait for, and those of them no live worker serves (they never run).
    open_models: tuple[str, ...] = ()
    unserved_models: tuple[str, ...] = ()
    images_per_s: float | None = None  # jobs finished per second over the last RATE_WINDOW_S
    eta_s: float | None = None

    @property
    def done(self) -> int:
        return sum(self.counts[s.value] for s in JobStatus if s not in OPEN_STATUSES)

    @property
    def open(self) -> int:
        return self.job_count - self.done if self.job_count >= self.done else 0

    def as_dict(self) -> dict[str, Any]:
        """``status --json``: everything above, plus ``done``."""
        from dataclasses import asdict

        return {**asdict(self), "done": self.done}

    def waiting_note(self) -> str | None:
        """What to tell someone waiting: which models nobody serves, else the ETA."""
        if self.finished:
            return None
        if self.unserved_models:
            names = ", ".join(self.unserved_models)
            return f"no live worker serves {names}; start `loopfree worker --model {names}`"
        if self.eta_s is not None and self.images_per_s:
            return f"{self.images_per_s:.2f} images/s, ETA {format_seconds(self.eta_s)}"
        return None


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def resolve_id(engine: Engine, text: str, *, kinds: tuple[str, ...] = ("submission", "job")) -> str:
    """The full id of the submission or job that ``text`` (an id or a unique prefix of one,
    git-style) names; a clear error if none or several do."""
    from storage.ids import resolve

    with session_scope(engine) as session:
        match = resolve(session, text, kinds=kinds)  # type: ignore[arg-type]
    if match is None:
        what = " or ".join(kinds)
        raise UserError(
            f"no {what} has an id starting with {text!r}; `loopfree submissions` lists them"
        )
    return match.id


def engine_for(settings: Settings) -> Engine:
    return make_engine(settings.resolved_database_url)


def submission_status(engine: Engine, submission_id: str) -> SubmissionStatus | None:
    from datetime import timedelta

    from storage.models import utcnow
    from storage.overview import finished_since, open_models, summarize
    from storage.workers import models_served

    now = utcnow()
    with session_scope(engine) as session:
        submission = get_submission(session, submission_id)
        if submission is None:
            return None
        counts = count_by_status(session, submission_id=submission_id)
        finished = not any(counts[s] for s in OPEN_STATUSES)
        waiting = () if finished else tuple(open_models(session, submission_id))
        served = models_served(session, waiting, now=now)
        (summary,) = summarize(session, [submission])
        rate = None
        if summary.first_started_at is not None and not finished:
            span = min(RATE_WINDOW_S, (now - summary.first_started_at).total_seconds())
            recent = finished_since(session, submission_id, now - timedelta(seconds=span))
            rate = recent / span if span > 0 and recent else None
    open_jobs = sum(counts[s] for s in OPEN_STATUSES)
    return SubmissionStatus(
        id=submission.id,
        source=submission.source,
        created_at=submission.created_at.isoformat(),
        job_count=submission.job_count,
        counts={status.value: count for status, count in counts.items()},
        finished=finished,
        open_models=waiting,
        unserved_models=tuple(model for model in waiting if model not in served),
        images_per_s=rate,
        eta_s=open_jobs / rate if rate else None,
    )


def lookup(engine: Engine, identifier: str) -> SubmissionStatus | dict[str, Any]:
    """A submission's status, or one job's record; a clear error if the id is neither."""
    identifier = resolve_id(engine, identifier)
    status = submission_status(engine, identifier)
    if status is not None:
        return status
    with session_scope(engine) as session:
        job = get_job(session, identifier)
        if job is not None:
            return job_record(job)
    raise UserError(f"no submission or job has id {identifier}; `loopfree jobs` lists them")


def list_jobs(
    engine: Engine, *, submission_id: str | None, status: str | None, limit: int | None
) -> Iterator[dict[str, Any]]:
    if submission_id:
        submission_id = resolve_id(engine, submission_id, kinds=("submission",))
    wanted = JobStatus(status) if status else None
    with session_scope(engine) as session:
        if submission_id:
            pages = iter_submission_jobs(session, submission_id)
        else:
            pages = iter([list_all_jobs(session, status=wanted, limit=limit)])
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
    submission_id = resolve_id(engine, submission_id, kinds=("submission",))
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
            note = status.waiting_note()
            progress.update(
                task,
                completed=status.done,
                description=f"{submission_id[:8]} failed={failed}" + (f"  {note}" if note else ""),
            )
            if status.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise UserError(
                    f"submission {submission_id} still has open jobs after {timeout_s}s"
                )
            time.sleep(poll_s)
    return status.counts["failed"] == 0


def stats(engine: Engine, *, window_s: float = 300.0) -> dict[str, Any]:
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
        "active_s": recent.active_s,
        "active_images_per_s": recent.active_images_per_s,
        "mean_group_size": recent.mean_group_size,
    }


def cancel(engine: Engine, identifier: str) -> int:
    """Cancel a job or all queued jobs of a submission; running jobs finish.

    A submission left with no open job is finished here, in the same transaction, and so owes
    its webhook (``mark_submission_finished`` writes it to the outbox; a worker's sender posts
    it). With jobs still running, the worker that records the last one finishes it."""
    from storage.jobs import cancel_queued
    from storage.submissions import mark_submission_finished

    identifier = resolve_id(engine, identifier)
    with session_scope(engine) as session:
        if get_submission(session, identifier) is not None:
            cancelled = len(cancel_queued(session, submission_id=identifier))
            submission_id = identifier
        else:
            job = get_job(session, identifier)
            if job is None:
                raise UserError(f"no submission or job has id {identifier}")
            submission_id = job.submission_id
            cancelled = len(cancel_queued(session, job_ids=[identifier]))
        if cancelled:
            mark_submission_finished(session, submission_id)
        return cancelled


def results(settings: Settings, submission_id: str) -> Iterator[dict[str, Any]]:
    """One manifest line per job: its fields plus a presigned URL for succeeded ones."""
    from storage.objects import store_for

    submission_id = resolve_id(engine_for(settings), submission_id, kinds=("submission",))
    store = store_for(settings)
    for record in list_jobs(
        engine_for(settings), submission_id=submission_id, status=None, limit=None
    ):
        if record["image_uri"]:
            record["url"] = store.presigned_url(record["image_uri"], settings.presign_expiry_s)
        yield record
