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

    queued   -> running     claim_jobs        (attempts + 1)
    running  -> running     reclaim_abandoned (a dead worker's job, attempts + 1)
    running  -> succeeded   mark_succeeded
    running  -> failed      mark_failed
    running  -> queued      release_for_retry (give back; a later attempt will claim it;
                                               after an outage, with the attempt refunded)
    running  -> queued      release_abandoned (reconciler: a worker that stopped heart-beating)
    queued   -> cancelled   cancel_queued     (a running job is left to finish)
    queued|running -> failed  fail_jobs       (reconciler / give up)
    failed   -> queued      requeue_failed    (the one way out of a terminal state, by an operator)

Not a status change, but a field a worker writes on jobs it holds: ``mark_prompts_truncated``.

Functions take a ``Session`` inside the caller's transaction (``storage.db.session_scope``) and
use ``now`` when given, so tests can control time. Objects already loaded in the session are
refreshed from the rows the UPDATE returned.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, case, cast, func, literal, select, update
from sqlalchemy.orm import Session

from storage.models import Job, JobStatus, UTCDateTime, utcnow

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
    "worker": None,
    "batch_id": None,
    "batch_size": None,
}


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
    cancelled or finished already and must not be rendered."""
    now = now or utcnow()
    claimed: list[str] = []
    for ids in _id_chunks(job_ids):
        statement = (
            update(Job)
            .where(Job.id.in_(ids), Job.status == _QUEUED)
            .values(
                status=_RUNNING,
                attempts=Job.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                worker=worker,
                batch_id=batch_id,
                batch_size=batch_size,
                queue_wait_s=_seconds_since(session, now, Job.created_at),
            )
            .returning(Job.id)
        )
        claimed.extend(_run(session, statement))
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
                worker=worker,
                batch_id=batch_id,
                batch_size=batch_size,
            )
            .returning(Job.id)
        )
        claimed.extend(_run(session, statement))
    return claimed


def mark_succeeded(
    session: Session,
    job_id: str,
    result: JobResult,
    *,
    owner: Owner | None = None,
    now: datetime | None = None,
) -> bool:
    """running -> succeeded with the image's location and timings. False if the job was not
    running (a duplicate success, or the job was given up on meanwhile) or, with ``owner``, is no
    longer that owner's (another worker took it over): nothing changes.

    Workers always pass ``owner``; without it the write is for whoever holds the job (tests,
    operators)."""
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.status == _RUNNING, *_held_by(owner))
        .values(
            status=JobStatus.SUCCEEDED,
            finished_at=now or utcnow(),
            image_uri=result.image_uri,
            image_bytes=result.image_bytes,
            image_sha256=result.image_sha256,
            sample_s=result.sample_s,
            upload_s=result.upload_s,
            gpu_share_s=result.gpu_share_s,
            group_size=result.group_size,
            error=None,
        )
        .returning(Job.id)
    )
    return bool(_run(session, statement))


def mark_batch_succeeded(
    session: Session,
    results: Sequence[tuple[str, JobResult]],
    *,
    owner: Owner | None = None,
    now: datetime | None = None,
) -> list[str]:
    """``mark_succeeded`` for a whole delivery in one statement (per ``_RESULTS_PER_STATEMENT``
    jobs): each job's values are picked by ``CASE WHEN id = ...``, and the guard (running, and
    with ``owner`` still that owner's) is in the WHERE, so it holds for every row on its own.
    Returns the ids it recorded; a job missing from them was not running or not the owner's.

    One statement instead of one per job: at 100+ images/s a round trip and a plan per image was
    most of the worker's database time. CASE rather than ``UPDATE ... FROM (VALUES ...)``: the
    same SQL on PostgreSQL and SQLite (whose VALUES takes no column names)."""
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
            .values(status=JobStatus.SUCCEEDED, finished_at=now or utcnow(), error=None, **values)
            .returning(Job.id)
        )
        recorded.extend(_run(session, statement))
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
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.status == _RUNNING, *_held_by(owner))
        .values(status=JobStatus.FAILED, finished_at=now or utcnow(), error=error)
        .returning(Job.id)
    )
    return bool(_run(session, statement))


def release_for_retry(
    session: Session,
    job_id: str,
    *,
    error: str | None = None,
    owner: Owner | None = None,
    refund_attempt: bool = False,
) -> bool:
    """running -> queued, so a later delivery can claim it again. ``attempts`` is kept (it counts
    claims) and ``error`` records why this attempt gave up. False if it was not running, or with
    ``owner``, no longer that owner's: a stale worker cannot take a job back from its new owner.

    ``refund_attempt``: the claim is given back too (``attempts - 1``), for a release caused by
    an outage (store or database unreachable), not by the job: attempts count the job's own
    failures, and an outage of any length must not bring a job closer to failing."""
    values = _RELEASED | {"error": error}
    if refund_attempt:
        values["attempts"] = case((Job.attempts > 0, Job.attempts - 1), else_=0)
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.status == _RUNNING, *_held_by(owner))
        .values(values)
        .returning(Job.id)
    )
    return bool(_run(session, statement))


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
    session: Session, job_ids: Sequence[str], *, heartbeat_before: datetime, error: str
) -> list[str]:
    """running -> queued for jobs whose worker stopped heart-beating before ``heartbeat_before``
    (the reconciler, ``loopfree requeue --stuck``). The stale heartbeat is part of the WHERE, so a
    job a worker reclaimed (or heart-beat) after the reconciler found it is left to that worker,
    and two reconcilers releasing the same job release it once.

    Rows another transaction holds locked (a stalled worker "idle in transaction") are skipped,
    not waited for (``FOR UPDATE SKIP LOCKED`` on PostgreSQL): the next pass takes them, once the
    server has ended that transaction (``storage.db.PG_IDLE_IN_TRANSACTION_TIMEOUT_S``)."""
    changed: list[str] = []
    for ids in _id_chunks(job_ids):
        stale = (
            select(Job.id)
            .where(Job.id.in_(ids), Job.status == _RUNNING, Job.heartbeat_at < heartbeat_before)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(Job)
            .where(Job.id.in_(stale), Job.status == _RUNNING, Job.heartbeat_at < heartbeat_before)
            .values(_RELEASED | {"error": error})
            .returning(Job.id)
        )
        changed.extend(_run(session, statement))
    return changed


def cancel_queued(
    session: Session,
    *,
    job_ids: Sequence[str] | None = None,
    submission_id: str | None = None,
    now: datetime | None = None,
) -> list[str]:
    """queued -> cancelled for the given jobs or a whole submission. Running jobs finish."""
    return _bulk_transition(
        session,
        from_statuses=(_QUEUED,),
        values={"status": JobStatus.CANCELLED, "finished_at": now or utcnow()},
        job_ids=job_ids,
        submission_id=submission_id,
        allow_all=False,
    )


def fail_jobs(
    session: Session,
    job_ids: Sequence[str],
    error: str,
    *,
    now: datetime | None = None,
) -> list[str]:
    """queued|running -> failed: the reconciler gives up on jobs (e.g. out of attempts).

    No caller yet outside the tests; kept because the state-machine test in
    tests/storage/test_lifecycle.py documents it as the operator's give-up transition."""
    return _bulk_transition(
        session,
        from_statuses=(_QUEUED, _RUNNING),
        values={"status": JobStatus.FAILED, "finished_at": now or utcnow(), "error": error},
        job_ids=job_ids,
        submission_id=None,
        allow_all=False,
    )


def requeue_failed(
    session: Session,
    *,
    job_ids: Sequence[str] | None = None,
    submission_id: str | None = None,
) -> list[str]:
    """failed -> queued with a fresh attempt count (``loopfree requeue --failed``).

    With neither ``job_ids`` nor ``submission_id``, every failed job is requeued. Returns the ids,
    whose messages the caller must publish again.
    """
    return _bulk_transition(
        session,
        from_statuses=(JobStatus.FAILED,),
        values={
            "status": _QUEUED,
            "attempts": 0,
            "started_at": None,
            "finished_at": None,
            "heartbeat_at": None,
            "worker": None,
            "batch_id": None,
            "batch_size": None,
            "error": None,
        },
        job_ids=job_ids,
        submission_id=submission_id,
        allow_all=True,
    )


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
        return len(_run(session, statement.returning(Job.id)))
    touched = 0
    for ids in _id_chunks(job_ids):
        statement = (
            update(Job)
            .where(*conditions, Job.id.in_(ids))
            .values(heartbeat_at=now or utcnow())
            .returning(Job.id)
        )
        touched += len(_run(session, statement))
    return touched


def mark_prompts_truncated(session: Session, job_ids: Sequence[str]) -> int:
    """Flag jobs whose prompt lost tokens to the text encoder's length limit, so ``status`` and
    the results can say the image was drawn from a shortened prompt. Returns the rows touched."""
    touched = 0
    for ids in _id_chunks(job_ids):
        statement = (
            update(Job).where(Job.id.in_(ids)).values(prompt_truncated=True).returning(Job.id)
        )
        touched += len(_run(session, statement))
    return touched


def _bulk_transition(
    session: Session,
    *,
    from_statuses: Collection[JobStatus],
    values: dict[str, Any],
    job_ids: Sequence[str] | None,
    submission_id: str | None,
    allow_all: bool,
) -> list[str]:
    if job_ids is None and submission_id is None and not allow_all:
        raise ValueError("pass job_ids or submission_id; refusing to change every job")
    base = update(Job).where(Job.status.in_(list(from_statuses))).values(values)
    if submission_id is not None:
        base = base.where(Job.submission_id == submission_id)
    if job_ids is None:
        return _run(session, base.returning(Job.id))
    changed: list[str] = []
    for ids in _id_chunks(job_ids):
        changed.extend(_run(session, base.where(Job.id.in_(ids)).returning(Job.id)))
    return changed


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


def _run(session: Session, statement: Any) -> list[str]:
    # "fetch" refreshes Job objects already in the session from the RETURNING rows, so a caller
    # holding a loaded row does not see a stale status after the transition.
    result = session.execute(statement, execution_options={"synchronize_session": "fetch"})
    return list(result.scalars())


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
