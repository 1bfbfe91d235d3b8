"""What users ask the database: where a submission or job stands, waiting for it, results, stats,
and the one write: cancelling.

Only SQL and the object store are consulted (``cancel`` also takes its messages back from the
broker). Every answer costs what the work in flight costs, not what the backlog does: a
submission's status comes from its flows' counters (``status.summary``); listings stream page by
page (keyset on position), each page in a short transaction of its own, so ``jobs`` of a million
rows writes its first line at once and holds one page in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.errors import UserError
from status.labels import priority_name
from status.summary import SubmissionSummary, format_seconds, summarize
from storage.db import Engine, session_scope
from storage.models import JOB_ATTRIBUTES, Job
from storage.progress import OPEN_STAGES, STAGES, stage_of
from storage.queries import get_job
from storage.submissions import get_submission

if TYPE_CHECKING:
    from celery import Celery

    from storage.objects import ObjectStore

__all__ = ["format_seconds"]

JOB_FIELDS: tuple[str, ...] = (*JOB_ATTRIBUTES, "priority_name")
"""The fields of a job record (``loopfree jobs``, ``status``, the results manifest): every column
of ``jobs``, in table order and by column name, so a new column shows up here by itself, and the
priority's name. ``status`` holds the job's stage (``storage.progress``)."""

PAGE_JOBS = 1_000
"""Jobs per page of a listing: one short transaction and a few MB of rows."""

CANCEL_CHUNK = 20_000
"""Queued rows moved to ``cancelled`` per transaction (about a second of PostgreSQL's time)."""

CANCEL_BUDGET_S = 5.0
"""How long ``cancel`` moves queued rows itself before it leaves the rest to the fleet."""


def job_record(job: Job) -> dict[str, Any]:
    """``job`` as JSON-ready values keyed by ``JOB_FIELDS``: its stage as ``status``, times in
    ISO 8601."""
    record = {name: getattr(job, attribute) for name, attribute in JOB_ATTRIBUTES.items()}
    for name, value in record.items():
        if isinstance(value, datetime):
            record[name] = value.isoformat()
    record["status"] = stage_of(job)
    record["priority_name"] = priority_name(job.priority)
    return record


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


def submission_status(engine: Engine, submission_id: str) -> SubmissionSummary | None:
    """Where one submission stands (a few rows, whatever its size); None if there is none."""
    with session_scope(engine) as session:
        submission = get_submission(session, submission_id)
        if submission is None:
            return None
        (summary,) = summarize(session, [submission])
    return summary


def lookup(engine: Engine, identifier: str) -> SubmissionSummary | dict[str, Any]:
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
    engine: Engine, *, submission_id: str | None, stage: str | None, limit: int | None
) -> Iterator[dict[str, Any]]:
    """Job records, streamed: one submission's in position order, or every submission's, oldest
    submission first; only those in ``stage`` if given (``running``: claimed or rendering)."""
    from storage.gallery import JobFilter, find_jobs

    stages = _stages(stage)
    wanted = JobFilter(stages=stages)
    if submission_id:
        submission_ids: Iterator[str] = iter(
            [resolve_id(engine, submission_id, kinds=("submission",))]
        )
    else:
        submission_ids = _all_submissions(engine)
    emitted = 0
    for current in submission_ids:
        after = -1
        while True:
            with session_scope(engine) as session:
                page = find_jobs(session, current, wanted, limit=PAGE_JOBS, after=after)
                records = [job_record(job) for job in page]
            for record in records:
                if limit is not None and emitted >= limit:
                    return
                emitted += 1
                yield record
            if len(page) < PAGE_JOBS:
                break
            after = page[-1].position


def _stages(stage: str | None) -> tuple[str, ...]:
    if stage is None:
        return ()
    if stage == "running":
        return ("claimed", "rendering")
    if stage not in STAGES:
        raise UserError(f"unknown status {stage!r}; use one of {', '.join(STAGES)} (or running)")
    return (stage,)


def _all_submissions(engine: Engine) -> Iterator[str]:
    """Every submission's id, oldest first, a page at a time."""
    from storage.submissions import submissions_after

    cursor = None
    while True:
        with session_scope(engine) as session:
            page = submissions_after(session, cursor, limit=PAGE_JOBS)
        yield from (submission_id for submission_id, _ in page)
        if len(page) < PAGE_JOBS:
            return
        cursor = page[-1][1], page[-1][0]


def wait_for(
    engine: Engine, submission_id: str, *, poll_s: float = 0.5, timeout_s: float | None = None
) -> bool:
    """Follow a submission with a progress bar until no job is open. True if none failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
            note = status.waiting_note()
            progress.update(
                task,
                completed=status.done,
                description=f"{submission_id[:8]} rendering={status.counts['rendering']} "
                f"failed={status.counts['failed']}" + (f"  {note}" if note else ""),
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
    """Jobs per stage, images/s over the time work was being done in the last ``window_s``
    (``storage.progress``), latency percentiles and batch sizes."""
    from storage.progress import recent_throughput, stage_counts
    from storage.stats import recent_stats

    with session_scope(engine) as session:
        counts = stage_counts(session)
        throughput = recent_throughput(session, window_s=window_s)
        recent = recent_stats(session, window_s=window_s)
    return {
        "counts": counts,
        "window_s": window_s,
        "images": throughput.images,
        "active_s": throughput.active_s,
        "images_per_s": throughput.images_per_s,
        "queue_wait_s": {"p50": recent.queue_wait_s.p50, "p95": recent.queue_wait_s.p95},
        "end_to_end_s": {"p50": recent.end_to_end_s.p50, "p95": recent.end_to_end_s.p95},
        "mean_batch_size": recent.mean_batch_size,
        "mean_group_size": recent.mean_group_size,
    }


@dataclass(frozen=True)
class CancelReport:
    """What ``cancel`` did, and why it did nothing when it did nothing."""

    submission_id: str
    job_id: str | None  # the one job asked for, if a job id was given
    cancelled: int  # jobs moved to cancelled by this call
    remaining: int  # queued jobs of the submission still to move (the fleet moves them)
    unfinished: int  # claimed or rendering: they finish
    note: str | None = None  # why nothing was cancelled

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def cancel(
    engine: Engine, app: Celery, identifier: str, *, budget_s: float = CANCEL_BUDGET_S
) -> CancelReport:
    """Cancel a queued job, or a submission: it is marked cancelled at once (no more of it is
    sent or claimed), its messages are taken out of the broker, and its queued rows move to
    ``cancelled`` in chunks, each a short transaction: for ``budget_s`` here, and the rest by the
    fleet's reconcile pass (``fleet.reconcile``; ``budget_s=None`` moves them all here). Jobs
    already claimed or rendering finish."""
    identifier = resolve_id(engine, identifier)
    with session_scope(engine) as session:
        is_submission = get_submission(session, identifier) is not None
    if not is_submission:
        return _cancel_job(engine, app, identifier)
    return _cancel_submission(engine, app, identifier, budget_s)


def _cancel_submission(
    engine: Engine, app: Celery, submission_id: str, budget_s: float | None
) -> CancelReport:
    from storage.jobs import cancel_queued
    from storage.submissions import cancel_some, mark_cancelled
    from storage.window import window_jobs_of

    started = time.monotonic()
    with session_scope(engine) as session:
        newly = mark_cancelled(session, submission_id)
    # The window first: its messages leave the broker within a second, whatever the backlog.
    with session_scope(engine) as session:
        in_window = cancel_queued(session, job_ids=window_jobs_of(session, submission_id))
    _take_back(app, in_window)
    cancelled = len(in_window)
    while budget_s is None or time.monotonic() - started < budget_s:
        with session_scope(engine) as session:
            moved = cancel_some(session, submission_id, limit=CANCEL_CHUNK)
        cancelled += moved
        if moved < CANCEL_CHUNK:
            break
    status = submission_status(engine, submission_id)
    assert status is not None
    note = None
    if not cancelled and not status.counts["queued"]:
        if status.finished:
            done = ", ".join(f"{status.counts[s]} {s}" for s in STAGES if status.counts[s])
            note = f"nothing to cancel: submission {submission_id} is finished ({done})"
        elif not newly:
            note = f"nothing left to cancel: submission {submission_id} was cancelled before"
        else:
            note = "nothing queued to cancel"
        if status.open:
            note += f"; {status.open} job(s) already claimed or rendering will finish"
    return CancelReport(
        submission_id=submission_id,
        job_id=None,
        cancelled=cancelled,
        remaining=status.counts["queued"],
        unfinished=status.counts["claimed"] + status.counts["rendering"],
        note=note,
    )


def _cancel_job(engine: Engine, app: Celery, job_id: str) -> CancelReport:
    from storage.jobs import cancel_queued
    from storage.submissions import mark_submission_finished

    with session_scope(engine) as session:
        job = get_job(session, job_id)
        if job is None:
            raise UserError(f"no submission or job has id {job_id}")
        stage = stage_of(job)
        moved = cancel_queued(session, job_ids=[job_id])
        if moved:
            mark_submission_finished(session, job.submission_id)
    _take_back(app, moved)
    note = None
    if not moved:
        note = f"nothing to cancel: job {job_id} is {stage}" + (
            "; it finishes" if stage in OPEN_STAGES else ""
        )
    return CancelReport(
        submission_id=job.submission_id,
        job_id=job_id,
        cancelled=len(moved),
        remaining=0,
        unfinished=0 if moved or stage not in OPEN_STAGES else 1,
        note=note,
    )


def _take_back(app: Celery, cancelled: list[tuple[str, datetime | None, str]]) -> None:
    """Take the messages of cancelled window jobs out of the broker (Redis): workers need not
    pop and skip them, and the broker's memory is free at once."""
    from taskqueue.app import queue_name
    from taskqueue.redis_lists import supports, take_back

    if not supports(app.conf.broker_url):
        return  # the filesystem broker's worker pops and skips them
    by_model: dict[str, list[str]] = {}
    for job_id, dispatched_at, model in cancelled:
        if dispatched_at is not None:
            by_model.setdefault(model, []).append(job_id)
    for model, job_ids in by_model.items():
        take_back(app, queue_name(model), job_ids)


def results(
    engine: Engine, store: ObjectStore, submission_id: str, *, expiry_s: int
) -> Iterator[dict[str, Any]]:
    """One manifest line per job, streamed: its fields plus a presigned URL for succeeded ones."""
    submission_id = resolve_id(engine, submission_id, kinds=("submission",))
    for record in list_jobs(engine, submission_id=submission_id, stage=None, limit=None):
        if record["image_uri"]:
            record["url"] = store.presigned_url(record["image_uri"], expiry_s)
        yield record
