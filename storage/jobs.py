"""Job status transitions as guarded, atomic UPDATEs.

Each transition is one ``UPDATE jobs ... WHERE id ... AND status IN (<allowed from-states>)``:
a compare-and-set the database does atomically. So a late or duplicated message can never move a
finished job backwards, marking a job succeeded twice is a no-op, and two workers racing to claim
the same job cannot both win. Each function reports what it actually changed.

A worker's writes to a running job also name its ``Owner`` (the worker and the batch it claimed
the job in) in the same WHERE. A worker whose heartbeat went stale while it was still alive (a long
database outage, a stalled process) may have lost its jobs to another worker (``reclaim_abandoned``)
or to the reconciler, and the job may be running again under its new owner; its late success,
failure or give-back then changes nothing, instead of finishing the new owner's run for it or
taking the job back from under it. Writes without an owner (the reconciler, operators) act on the
job whoever holds it.

    queued   -> running     claim_jobs            (attempts + 1; never a cancelled submission's)
    running  -> running     reclaim_abandoned     (a dead worker's job, attempts + 1)
    running  -> succeeded   mark_batch_succeeded
    running  -> failed      mark_failed
    running  -> queued      release_for_retry     (give back; a later attempt will claim it;
                                                   after an outage, with the attempt refunded)
    running  -> queued      release_abandoned     (reconciler: a worker that stopped heart-beating)
    queued   -> cancelled   cancel_queued         (a running job is left to finish)
    failed   -> queued      requeue_failed        (the one way out of a terminal state, by an
                                                   operator; back into the backlog)

Each transition also counts the jobs it moved in their flows (``storage.counters``), in the same
transaction. A job that goes back to ``queued`` to be published at once (give-back, reconciler)
gets ``dispatched_at`` now: it is in the window; one requeued by an operator goes to the backlog.

Not status changes, but fields a worker writes on jobs it holds: ``mark_rendering``,
``mark_prompts_truncated``, and ``hold_dispatched`` on the messages it holds unclaimed.

Functions take a ``Session`` inside the caller's transaction (``storage.db.session_scope``) and
use ``now`` when given, so tests can control time. Objects already loaded in the session are
refreshed from the rows the UPDATE returned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, case, cast, exists, func, literal, select, update
from sqlalchemy.orm import Session

from storage.counters import FlowKey, flow_keys, note_moves, note_times
from storage.models import Job, JobStatus, Submission, UTCDateTime, utcnow

_IDS_PER_STATEMENT = 1_000
"""Job ids per ``IN (...)``: well under SQLite's bound-parameter limit (32,766)."""

_QUEUED, _RUNNING = JobStatus.QUEUED, JobStatus.RUNNING

WORKER_STOPPED = "worker stopped"
"""The error recorded on a job the reconciler takes back from a worker that stopped heart-beating.
Workers run such jobs alone (``storage.queries.find_suspects``): the job may be what stopped it."""

# running -> queued: the claim's fields are cleared, so the next claim starts from scratch.
_RELEASED: dict[str, Any] = {
    "status": _QUEUED,
    "started_at": None,
    "heartbeat_at": None,
    "rendering_at": None,
    "worker": None,
    "batch_id": None,
    "batch_size": None,
}
_KEY_COLUMNS = (Job.submission_id, Job.model, Job.priority)
"""What a transition RETURNs besides the id: the job's flow, whose counts it changes."""


@dataclass(frozen=True)
class Owner:
    """Who holds a running job: the worker that claimed it and the batch it claimed it in, as
    ``claim_jobs`` and ``reclaim_abandoned`` record them. The batch id is the claim token: it is
    fresh for every claim, so it tells two claims by one worker apart (a worker that took its own
    job over after its heartbeat stalled), where the worker name alone would not."""

    worker: str
    batch_id: str

    def holds(self) -> list[ColumnElement[bool]]:
        """WHERE conditions: the job is still this owner's."""
        return [Job.worker == self.worker, Job.batch_id == self.batch_id]


@dataclass(frozen=True)
class JobResult:
    """What a worker records for a rendered and uploaded image."""

    image_uri: str
    image_bytes: int
    image_sha256: str
    sample_s: float
    upload_s: float
    gpu_share_s: float
    # Jobs in the sampler call that rendered it (the delivery's size is ``batch_size``).
    group_size: int | None = None


def claim_jobs(
    session: Session,
    job_ids: Sequence[str],
    *,
    worker: str,
    batch_id: str,
    batch_size: int,
    now: datetime | None = None,
) -> list[str]:
    """queued -> running for a batch. Returns the ids this call claimed; the rest were taken,
    cancelled or finished already (or their submission was cancelled) and must not be rendered."""
    now = now or utcnow()
    claimed: list[str] = []
    for ids in _id_chunks(job_ids):
        statement = (
            update(Job)
            .where(Job.id.in_(ids), Job.status == _QUEUED, ~_cancelled_submission())
            .values(
                status=_RUNNING,
                attempts=Job.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                rendering_at=None,
                worker=worker,
                batch_id=batch_id,
                batch_size=batch_size,
                queue_wait_s=_seconds_since(session, now, Job.created_at),
            )
        )
        claimed.extend(_move(session, statement, _QUEUED, _RUNNING, started=now))
    return claimed


def reclaim_abandoned(
    session: Session,
    job_ids: Sequence[str],
    *,
    worker: str,
    batch_id: str,
    batch_size: int,
    heartbeat_before: datetime,
    now: datetime | None = None,
) -> list[str]:
    """running -> running under a new worker, for jobs whose worker stopped heart-beating before
    ``heartbeat_before``: the broker redelivered them because that worker died mid-batch.
    ``attempts`` goes up, so a job that kills every worker that runs it ends ``failed``."""
    now = now or utcnow()
    claimed: list[str] = []
    for ids in _id_chunks(job_ids):
        statement = (
            update(Job)
            .where(Job.id.in_(ids), Job.status == _RUNNING, Job.heartbeat_at < heartbeat_before)
            .values(
                attempts=Job.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                rendering_at=None,
                worker=worker,
                batch_id=batch_id,
                batch_size=batch_size,
            )
        )
        claimed.extend(_move(session, statement, _RUNNING, _RUNNING))
    return claimed


def mark_batch_succeeded(
    session: Session,
    results: Sequence[tuple[str, JobResult]],
    *,
    owner: Owner | None = None,
    now: datetime | None = None,
) -> list[str]:
    """running -> succeeded for a whole delivery in one statement (per ``_RESULTS_PER_STATEMENT``
    jobs): each job's values are picked by ``CASE WHEN id = ...``, and the guard (running, and
    with ``owner`` still that owner's) is in the WHERE, so it holds for every row on its own.
    Returns the ids it recorded; a job missing from them was not running (a duplicate success,
    or given up on meanwhile) or, with ``owner``, is no longer that owner's (another worker took
    it over): nothing changes for it. Workers always pass ``owner``; without it the write is for
    whoever holds the job (operators, tests).

    One statement instead of one per job: at 100+ images/s a round trip and a plan per image was
    most of the worker's database time. CASE rather than ``UPDATE ... FROM (VALUES ...)``: the
    same SQL on PostgreSQL and SQLite (whose VALUES takes no column names)."""
    now = now or utcnow()
    recorded: list[str] = []
    for start in range(0, len(results), _RESULTS_PER_STATEMENT):
        chunk = results[start : start + _RESULTS_PER_STATEMENT]
        values: dict[str, Any] = {
            name: _case_by_id(
                [(job_id, getattr(result, name)) for job_id, result in chunk],
                Job.__table__.c[name].type,
            )
            for name in _RESULT_FIELDS
        }
        statement = (
            update(Job)
            .where(
                Job.id.in_([job_id for job_id, _ in chunk]),
                Job.status == _RUNNING,
                *_held_by(owner),
            )
            .values(status=JobStatus.SUCCEEDED, finished_at=now, error=None, **values)
        )
        recorded.extend(_move(session, statement, _RUNNING, JobStatus.SUCCEEDED, finished=now))
    return recorded


def mark_failed(
    session: Session,
    job_id: str,
    error: str,
    *,
    owner: Owner | None = None,
    now: datetime | None = None,
) -> bool:
    """running -> failed (permanent error, or out of attempts). False if it was not running, or
    with ``owner``, no longer that owner's."""
    now = now or utcnow()
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.status == _RUNNING, *_held_by(owner))
        .values(status=JobStatus.FAILED, finished_at=now, error=error)
    )
    return bool(_move(session, statement, _RUNNING, JobStatus.FAILED, finished=now))


def release_for_retry(
    session: Session,
    job_id: str,
    *,
    error: str | None = None,
    owner: Owner | None = None,
    refund_attempt: bool = False,
    now: datetime | None = None,
) -> bool:
    """running -> queued, so a later delivery can claim it again; the caller publishes its
    message (it is in the window from now on). ``attempts`` is kept (it counts claims) and
    ``error`` records why this attempt gave up. False if it was not running, or with ``owner``,
    no longer that owner's: a stale worker cannot take a job back from its new owner.

    ``refund_attempt``: the claim is given back too (``attempts - 1``), for a release caused by
    an outage (store or database unreachable), not by the job: attempts count the job's own
    failures, and an outage of any length must not bring a job closer to failing."""
    values = _RELEASED | {"error": error, "dispatched_at": now or utcnow()}
    if refund_attempt:
        values["attempts"] = case((Job.attempts > 0, Job.attempts - 1), else_=0)
    statement = (
        update(Job).where(Job.id == job_id, Job.status == _RUNNING, *_held_by(owner)).values(values)
    )
    return bool(_move(session, statement, _RUNNING, _QUEUED))


def still_held(session: Session, job_ids: Sequence[str], owner: Owner) -> set[str]:
    """Of ``job_ids``, the ones still running under ``owner``: a worker that kept jobs in hand
    through an outage asks before it uploads them again, so it does not redo a job another worker
    took over meanwhile (its heartbeat failed while the database was down)."""
    held: set[str] = set()
    for ids in _id_chunks(job_ids):
        statement = select(Job.id).where(Job.id.in_(ids), Job.status == _RUNNING, *owner.holds())
        held.update(session.scalars(statement))
    return held


def ping(session: Session) -> None:
    """The cheapest round trip (``SELECT 1``): a paused worker's probe of whether the database
    answers again (``worker.outage``). Raises ``DatabaseUnavailable`` (through ``session_scope``)
    while it does not."""
    session.execute(select(literal(1)))


def release_abandoned(
    session: Session,
    job_ids: Sequence[str],
    *,
    heartbeat_before: datetime,
    error: str,
    now: datetime | None = None,
) -> list[tuple[str, str, int]]:
    """running -> queued for jobs whose worker stopped heart-beating before ``heartbeat_before``
    (the reconciler, ``loopfree requeue --stuck``). The stale heartbeat is part of the WHERE, so a
    job a worker reclaimed (or heart-beat) after the reconciler found it is left to that worker,
    and two reconcilers releasing the same job release it once. Returns ``(id, model, priority)``
    of the released jobs, whose messages the caller publishes (they are in the window).

    Rows another transaction holds locked (a stalled worker "idle in transaction") are skipped,
    not waited for (``FOR UPDATE SKIP LOCKED`` on PostgreSQL): the next pass takes them, once the
    server has ended that transaction (``storage.db.PG_IDLE_IN_TRANSACTION_TIMEOUT_S``)."""
    now = now or utcnow()
    changed: list[tuple[str, str, int]] = []
    for ids in _id_chunks(job_ids):
        stale = (
            select(Job.id)
            .where(Job.id.in_(ids), Job.status == _RUNNING, Job.heartbeat_at < heartbeat_before)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(Job)
            .where(Job.id.in_(stale), Job.status == _RUNNING, Job.heartbeat_at < heartbeat_before)
            .values(_RELEASED | {"error": error, "dispatched_at": now})
            .returning(Job.id, *_KEY_COLUMNS)
        )
        rows = session.execute(statement, execution_options=_SYNC).all()
        note_moves(session, flow_keys(rows), source=_RUNNING, target=_QUEUED)
        changed.extend((row.id, row.model, row.priority) for row in rows)
    return changed


def cancel_queued(
    session: Session,
    *,
    job_ids: Sequence[str] | None = None,
    submission_id: str | None = None,
    limit: int | None = None,
    now: datetime | None = None,
) -> list[tuple[str, datetime | None, str]]:
    """queued -> cancelled for the given jobs, or (at most ``limit`` of) a submission's queued
    jobs. Running jobs finish. Returns ``(id, dispatched_at, model)`` of each cancelled job: the
    ones with ``dispatched_at`` have a message in the broker for the caller to take back."""
    if (job_ids is None) == (submission_id is None):
        raise ValueError("pass job_ids or submission_id")
    now = now or utcnow()
    values = {"status": JobStatus.CANCELLED, "finished_at": now}
    if job_ids is not None:
        chosen: Any = list(job_ids)
    else:
        chosen = (
            select(Job.id)
            .where(Job.submission_id == submission_id, Job.status == _QUEUED)
            .limit(limit)
            .scalar_subquery()
        )
    cancelled: list[tuple[str, datetime | None, str]] = []
    for ids in _id_chunks(chosen) if job_ids is not None else [chosen]:
        statement = (
            update(Job)
            .where(Job.id.in_(ids), Job.status == _QUEUED)
            .values(values)
            .returning(Job.id, Job.dispatched_at, *_KEY_COLUMNS)
        )
        rows = session.execute(statement, execution_options=_SYNC).all()
        note_moves(session, flow_keys(rows), source=_QUEUED, target=JobStatus.CANCELLED)
        # Jobs still in the backlog leave it: the dispatcher's hint follows.
        backlog = [row for row in rows if row.dispatched_at is None]
        note_moves(session, flow_keys(backlog), source=None, target=None, backlog=-1)
        cancelled.extend((row.id, row.dispatched_at, row.model) for row in rows)
    return cancelled


def requeue_failed(
    session: Session,
    *,
    job_ids: Sequence[str] | None = None,
    submission_id: str | None = None,
) -> list[str]:
    """failed -> queued with a fresh attempt count (``loopfree requeue --failed``): back into the
    backlog, which the dispatcher sends from. Jobs of cancelled submissions stay failed.

    With neither ``job_ids`` nor ``submission_id``, every failed job is requeued. Returns the ids.
    """
    base = (
        update(Job)
        .where(Job.status == JobStatus.FAILED, ~_cancelled_submission())
        .values(
            status=_QUEUED,
            attempts=0,
            started_at=None,
            finished_at=None,
            heartbeat_at=None,
            rendering_at=None,
            dispatched_at=None,
            worker=None,
            batch_id=None,
            batch_size=None,
            error=None,
        )
    )
    if submission_id is not None:
        base = base.where(Job.submission_id == submission_id)
    statements = (
        [base] if job_ids is None else [base.where(Job.id.in_(ids)) for ids in _id_chunks(job_ids)]
    )
    requeued: list[str] = []
    for statement in statements:
        rows = session.execute(
            statement.returning(Job.id, *_KEY_COLUMNS), execution_options=_SYNC
        ).all()
        note_moves(session, flow_keys(rows), source=JobStatus.FAILED, target=_QUEUED, backlog=1)
        requeued.extend(row.id for row in rows)
    return requeued


def heartbeat(
    session: Session,
    worker: str,
    *,
    job_ids: Sequence[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Refresh ``heartbeat_at`` of the worker's running jobs (all of them, or ``job_ids``).
    Returns how many rows it touched; jobs that finished or were taken away are not revived."""
    conditions: list[ColumnElement[bool]] = [Job.worker == worker, Job.status == _RUNNING]
    if job_ids is None:
        statement = update(Job).where(*conditions).values(heartbeat_at=now or utcnow())
        return len(_ids(session, statement))
    touched = 0
    for ids in _id_chunks(job_ids):
        statement = (
            update(Job).where(*conditions, Job.id.in_(ids)).values(heartbeat_at=now or utcnow())
        )
        touched += len(_ids(session, statement))
    return touched


def hold_dispatched(
    session: Session, job_ids: Sequence[str], *, now: datetime | None = None
) -> int:
    """Refresh ``dispatched_at`` of queued jobs whose messages a live worker holds unclaimed
    (prefetched, or waiting for their batch): the reconciler counts a window job whose
    ``dispatched_at`` went stale, and whose message no longer waits in the broker, as lost."""
    touched = 0
    for ids in _id_chunks(job_ids):
        statement = (
            update(Job)
            .where(Job.id.in_(ids), Job.status == _QUEUED, Job.dispatched_at.is_not(None))
            .values(dispatched_at=now or utcnow())
        )
        touched += len(_ids(session, statement))
    return touched


def mark_rendering(
    session: Session, job_ids: Sequence[str], owner: Owner, *, now: datetime | None = None
) -> int:
    """The sampler call rendering these jobs started: ``running`` jobs of ``owner`` now count as
    rendering, not only claimed (``loopfree status`` tells the two apart)."""
    touched = 0
    for ids in _id_chunks(job_ids):
        statement = (
            update(Job)
            .where(Job.id.in_(ids), Job.status == _RUNNING, *owner.holds())
            .values(rendering_at=now or utcnow())
        )
        touched += len(_ids(session, statement))
    return touched


def mark_prompts_truncated(session: Session, job_ids: Sequence[str]) -> int:
    """Flag jobs whose prompt lost tokens to the text encoder's length limit, so ``status`` and
    the results can say the image was drawn from a shortened prompt. Returns the rows touched."""
    touched = 0
    for ids in _id_chunks(job_ids):
        statement = update(Job).where(Job.id.in_(ids)).values(prompt_truncated=True)
        touched += len(_ids(session, statement))
    return touched


_RESULTS_PER_STATEMENT = 500
"""Jobs per ``mark_batch_succeeded`` statement: two parameters per job and result field, well
under SQLite's bound-parameter limit; a delivery (``LOOPFREE_MAX_BATCH``) fits in one."""

_RESULT_FIELDS = tuple(result_field.name for result_field in fields(JobResult))
"""``JobResult``'s fields; each is stored in the ``jobs`` column of the same name."""


def _case_by_id(pairs: Sequence[tuple[str, Any]], type_: Any) -> ColumnElement[Any]:
    """``CASE WHEN id = :id1 THEN :v1 ... END``: each job's own value in one multi-row UPDATE.
    ``Job.id == job_id`` binds the id through the column's type (SQLite stores UUIDs as hex)."""
    return case(*[(Job.id == job_id, literal(value, type_)) for job_id, value in pairs])


def _held_by(owner: Owner | None) -> list[ColumnElement[bool]]:
    return [] if owner is None else owner.holds()


def _cancelled_submission() -> ColumnElement[bool]:
    """The job's submission was cancelled (``Submission.cancelled_at``)."""
    return exists().where(Submission.id == Job.submission_id, Submission.cancelled_at.is_not(None))


# "fetch" refreshes Job objects already in the session from the RETURNING rows, so a caller
# holding a loaded row does not see a stale status after the transition.
_SYNC = {"synchronize_session": "fetch"}


def _move(
    session: Session,
    statement: Any,
    source: JobStatus,
    target: JobStatus,
    *,
    started: datetime | None = None,
    finished: datetime | None = None,
) -> list[str]:
    """Run a status change, count the jobs it moved in their flows, return their ids."""
    rows = session.execute(
        statement.returning(Job.id, *_KEY_COLUMNS), execution_options=_SYNC
    ).all()
    keys: list[FlowKey] = flow_keys(rows)
    if source is not target:
        note_moves(session, keys, source=source, target=target)
    if started is not None or finished is not None:
        note_times(session, keys, started=started, finished=finished)
    return [row.id for row in rows]


def _ids(session: Session, statement: Any) -> list[str]:
    """Run an UPDATE that changes no status; the ids it touched."""
    return list(session.execute(statement.returning(Job.id), execution_options=_SYNC).scalars())


def _seconds_since(session: Session, now: datetime, column: Any) -> ColumnElement[float]:
    """SQL for ``now - column`` in seconds, on PostgreSQL and SQLite."""
    moment = literal(now, UTCDateTime())
    if session.get_bind().dialect.name == "sqlite":
        # julianday() counts days as a double (about 50 microsecond resolution today).
        return (func.julianday(moment) - func.julianday(column)) * 86400.0
    return cast(func.extract("epoch", moment - column), Float)


def _id_chunks(job_ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(job_ids), _IDS_PER_STATEMENT):
        yield list(job_ids[start : start + _IDS_PER_STATEMENT])
