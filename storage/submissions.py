"""Creating submissions and bulk-inserting their jobs, both safe to repeat.

A producer that crashes half-way through a 100,000-line file runs again with the same idempotency
key: the submission is found instead of duplicated, job ids are derived from (submission, position)
so they come out the same, and jobs that are already in the table are skipped.

A job is a validated ``JobSpec`` from the validator to the row and back: ``job_row`` turns one into
a ``jobs`` row, ``spec_of`` turns a stored row into one again. Each JobSpec field lives in the
column of the same name, so a new field needs a column (and a migration) and nothing else here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import case, func, literal, select, text, tuple_, update
from sqlalchemy.orm import Session

from core.jobspec import FIELD_NAMES, JobSpec, ParsedJob
from storage.bulk import insert_job_rows
from storage.counters import apply_pending, note_added
from storage.db import dialect_insert
from storage.models import JOB_ATTRIBUTES, Flow, Job, JobStatus, Submission, aware_utc, utcnow

# Fixed namespace for uuid5 job ids; changing it would change every derived id.
_JOB_ID_NAMESPACE = uuid.UUID("5b0c7d8e-3f4a-4c1e-9a57-6f0e2d1b8c33")


@dataclass(frozen=True)
class SubmissionRef:
    """The result of ``create_submission``: its id, and whether this call created it."""

    id: str
    created: bool


def job_id_for(submission_id: str, position: int) -> str:
    """The job id for a position in a submission: the same every time, so resubmits dedupe.

    Exactly ``str(uuid.uuid5(namespace, f"{submission_id}/{position}"))``, computed without
    ``uuid.UUID``'s validation, which is a third of the client time of a 100,000-job insert.
    """
    name = f"{submission_id}/{position}".encode()
    digest = bytearray(hashlib.sha1(_JOB_ID_NAMESPACE.bytes + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def create_submission(
    session: Session,
    *,
    source: str,
    defaults: Mapping[str, Any],
    job_count: int,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    owner: str = "unknown",
    submission_id: str | None = None,
    now: datetime | None = None,
) -> SubmissionRef:
    """Insert a submission, or return the existing one with the same ``idempotency_key``."""
    values = {
        "id": submission_id or str(uuid.uuid4()),
        "created_at": now or utcnow(),
        "source": source,
        "defaults": dict(defaults),
        "job_count": job_count,
        "idempotency_key": idempotency_key,
        "webhook_url": webhook_url,
        "owner": owner,
    }
    table = Submission.__table__
    statement = dialect_insert(session, table).values(values)
    if idempotency_key is not None:
        # Two producers racing on one key: one inserts, the other gets no row back and reads it.
        statement = statement.on_conflict_do_nothing(index_elements=["idempotency_key"])
    inserted = session.execute(statement.returning(table.c.id)).scalar_one_or_none()
    if inserted is not None:
        return SubmissionRef(id=inserted, created=True)
    existing = session.scalar(
        select(Submission.id).where(Submission.idempotency_key == idempotency_key)
    )
    assert existing is not None, "conflict on idempotency_key but no row has it"
    return SubmissionRef(id=existing, created=False)


def insert_jobs(
    session: Session,
    submission_id: str,
    jobs: Iterable[ParsedJob],
    *,
    skip_existing: bool = True,
    dispatch_below: int = 0,
    now: datetime | None = None,
) -> int:
    """Insert jobs as ``queued`` in bulk and count them in their flows; return how many were
    inserted. ``jobs`` may be a generator; it is streamed, not materialised (a producer calls
    this once per chunk of its file, each in a transaction of its own). Their specs are stored as
    they are: resolve the size (``JobSpec.resolve_size``) and the model's canonical name first.

    Jobs at a position below ``dispatch_below`` are inserted as sent (``dispatched_at``): the
    caller publishes their messages after the commit (a small submission goes straight out). The
    rest wait in the backlog for the dispatcher (``fleet.dispatch``).

    With ``skip_existing`` (the default) positions already in the table are skipped, which makes
    resuming a half-inserted submission safe, and the submission's flows are counted again from
    its rows. Pass ``skip_existing=False`` for positions this submission cannot have yet: nothing
    can conflict, PostgreSQL can ``COPY`` straight into the table (about 1.5x faster), and the
    flows are counted from the stream as it passes.
    """
    created_at = now or utcnow()
    tally: dict[tuple[str, int], list[int]] = {}  # (model, priority) -> [jobs, sent]
    rows = _rows(jobs, submission_id, created_at, dispatch_below, tally)
    inserted = insert_job_rows(session, JOB_COLUMNS, rows, skip_existing=skip_existing)
    if skip_existing:
        recount_flows(session, submission_id)
        return inserted
    ensure_flows(session, submission_id, tally, created_at)
    for (model, priority), (count, sent) in tally.items():
        note_added(session, (submission_id, model, priority), count, backlog=count - sent)
    return inserted


def ensure_flows(
    session: Session, submission_id: str, keys: Iterable[tuple[str, int]], created_at: datetime
) -> None:
    """Create the submission's flows for these (model, priority) pairs, counting nothing yet;
    flows that exist are left as they are."""
    owner = session.scalar(select(Submission.owner).where(Submission.id == submission_id))
    for model, priority in sorted(set(keys)):
        statement = (
            dialect_insert(session, Flow.__table__)
            .values(
                submission_id=submission_id,
                model=model,
                priority=priority,
                owner=owner or "unknown",
                created_at=created_at,
            )
            .on_conflict_do_nothing()
        )
        session.execute(statement)


def recount_flows(session: Session, submission_id: str) -> None:
    """Count a submission's flows again from its rows (a resumed insert; repairs). Its flows are
    locked first, so a worker's count change that commits meanwhile applies on top of this one
    rather than being overwritten by it."""
    submission = session.get(Submission, submission_id)
    if submission is None:
        return
    locked = select(Flow).where(Flow.submission_id == submission_id).with_for_update()
    flows = {(flow.model, flow.priority): flow for flow in session.scalars(locked)}
    counts = [func.sum(case((Job.status == status, 1), else_=0)) for status in JobStatus]
    waiting = func.sum(
        case(((Job.status == JobStatus.QUEUED) & Job.dispatched_at.is_(None), 1), else_=0)
    )
    statement = (
        select(
            Job.model,
            Job.priority,
            func.min(Job.created_at),
            func.min(Job.started_at),
            func.max(Job.finished_at),
            waiting,
            *counts,
        )
        .where(Job.submission_id == submission_id)
        .group_by(Job.model, Job.priority)
    )
    for model, priority, created, started, finished, backlog, *by_status in session.execute(
        statement
    ):
        flow = flows.get((model, priority))
        if flow is None:
            flow = Flow(submission_id=submission_id, model=model, priority=priority)
            session.add(flow)
        flow.owner = submission.owner
        flow.created_at = aware_utc(created) or submission.created_at
        flow.first_started_at = aware_utc(started)
        flow.last_finished_at = aware_utc(finished)
        flow.backlog = int(backlog or 0)
        for status, count in zip(JobStatus, by_status, strict=True):
            setattr(flow, status.value, int(count or 0))
    session.flush()


def mark_cancelled(session: Session, submission_id: str, *, now: datetime | None = None) -> bool:
    """Mark a submission cancelled: the dispatcher sends none of its backlog from now on and
    workers claim none of its jobs. True if this call marked it (False: it already was)."""
    result = session.execute(
        update(Submission)
        .where(Submission.id == submission_id, Submission.cancelled_at.is_(None))
        .values(cancelled_at=now or utcnow())
    )
    return result.rowcount == 1


def cancel_some(session: Session, submission_id: str, *, limit: int) -> int:
    """Move up to ``limit`` of a submission's queued jobs to ``cancelled`` (the caller's
    transaction: keep it short), and finish the submission once none is open. Returns how many
    moved; fewer than ``limit``: none is left."""
    from storage.jobs import cancel_queued

    moved = len(cancel_queued(session, submission_id=submission_id, limit=limit))
    if moved < limit:
        mark_submission_finished(session, submission_id)
    return moved


def submissions_after(
    session: Session, cursor: tuple[datetime, str] | None, *, limit: int
) -> list[tuple[str, datetime]]:
    """``(id, created_at)`` of the ``limit`` submissions created after ``cursor``
    (``(created_at, id)``), oldest first: every submission, a page at a time."""
    statement = select(Submission.id, Submission.created_at).order_by(
        Submission.created_at, Submission.id
    )
    if cursor is not None:
        created_at, submission_id = cursor
        statement = statement.where(
            tuple_(Submission.created_at, Submission.id)
            > tuple_(
                literal(created_at, Submission.__table__.c.created_at.type),
                literal(submission_id, Submission.__table__.c.id.type),
            )
        )
    return [(row.id, row.created_at) for row in session.execute(statement.limit(limit))]


def cancelled_with_queued(session: Session) -> list[str]:
    """Cancelled submissions that still have queued rows to move to ``cancelled`` (the open
    flows are read, not the jobs)."""
    statement = (
        select(Flow.submission_id)
        .join(Submission, Submission.id == Flow.submission_id)
        .where(
            text("(flows.queued > 0 OR flows.running > 0)"),
            Flow.queued > 0,
            Submission.cancelled_at.is_not(None),
        )  # fmt: skip
        .distinct()
    )
    return sorted(session.scalars(statement))


def find_by_key(session: Session, idempotency_key: str) -> Submission | None:
    """The submission made with this idempotency key, if any."""
    return session.scalar(select(Submission).where(Submission.idempotency_key == idempotency_key))


def _rows(
    jobs: Iterable[ParsedJob],
    submission_id: str,
    created_at: datetime,
    dispatch_below: int,
    tally: dict[tuple[str, int], list[int]],
) -> Iterator[tuple[Any, ...]]:
    line = None
    for job in jobs:
        spec = job.spec
        if job.line_number == line and spec.metadata:
            # The 2nd..kth image of a line: its metadata is the first image's, stored once
            # (``storage.queries.with_line_metadata`` reads it back for every image).
            spec = replace(spec, metadata={})
        line = job.line_number
        sent = job.position < dispatch_below
        counts = tally.setdefault((spec.model, spec.priority), [0, 0])
        counts[0] += 1
        counts[1] += sent
        yield job_row(
            spec,
            submission_id=submission_id,
            position=job.position,
            line_number=job.line_number,
            created_at=created_at,
            dispatched_at=created_at if sent else None,
        )


def get_submission(session: Session, submission_id: str) -> Submission | None:
    return session.get(Submission, submission_id)


def mark_submission_finished(
    session: Session, submission_id: str, *, now: datetime | None = None
) -> bool:
    """Set ``finished_at`` once no job is queued or running. True only for the call that set it.

    That call also owes the submission's webhook, if it has one: the delivery is written to the
    outbox in this same transaction (``storage.webhooks.enqueue_finished``), so the finish and
    its webhook commit together, whatever path finished it (a worker, a cancel). Open jobs are
    read from the submission's flows: a few rows, however many jobs it has (this transaction's own
    status changes are counted in them first)."""
    apply_pending(session)
    open_jobs = (
        select(func.coalesce(func.sum(Flow.queued + Flow.running), 0))
        .where(Flow.submission_id == submission_id)
        .scalar_subquery()
    )
    result = session.execute(
        update(Submission)
        .where(
            Submission.id == submission_id,
            Submission.finished_at.is_(None),
            open_jobs == 0,
        )
        .values(finished_at=now or utcnow())
    )
    if result.rowcount != 1:
        return False
    from storage.webhooks import enqueue_finished  # storage.webhooks reads what this module writes

    enqueue_finished(session, submission_id, now=now)
    return True


def reopen_submissions(session: Session, *, submission_id: str | None = None) -> int:
    """Clear ``finished_at`` of finished submissions that have an open job again (after
    ``requeue --failed``), so their next finish is a new one and owes a new webhook. Returns
    how many were reopened."""
    open_job = (
        select(Job.id)
        .where(
            Job.submission_id == Submission.id,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
        )
        .exists()
    )
    conditions = [Submission.finished_at.is_not(None), open_job]
    if submission_id is not None:
        conditions.append(Submission.id == submission_id)
    result = session.execute(
        update(Submission)
        .where(*conditions)
        .values(finished_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


# The columns of a new row that do not come from its JobSpec, in the order ``job_row`` fills them.
# The rest keep their server defaults: what workers record later (``prompt_truncated`` false, the
# claim, timings and results NULL).
_PLACE_COLUMNS = (
    "id", "submission_id", "position", "line_number", "status", "attempts", "created_at",
    "dispatched_at",
)  # fmt: skip
JOB_COLUMNS: tuple[str, ...] = _PLACE_COLUMNS + FIELD_NAMES
"""Column names (not attribute names: ``metadata``) of a ``job_row``, in order."""

_spec_values = attrgetter(*FIELD_NAMES)
_QUEUED = JobStatus.QUEUED.value  # the plain text: COPY takes it as it is


def job_row(
    spec: JobSpec,
    *,
    submission_id: str,
    position: int,
    line_number: int,
    created_at: datetime,
    dispatched_at: datetime | None = None,
) -> tuple[Any, ...]:
    """``spec`` as a new ``queued`` row of ``jobs``: values in ``JOB_COLUMNS`` order, what
    ``storage.bulk.insert_job_rows`` takes. ``dispatched_at``: its message goes out with the
    submission (else it waits in the backlog)."""
    return (
        job_id_for(submission_id, position),
        submission_id,
        position,
        line_number,
        _QUEUED,
        0,
        created_at,
        dispatched_at,
        *_spec_values(spec),
    )


def _spec_attributes() -> tuple[str, ...]:
    """The ``Job`` attributes that hold JobSpec's fields, in field order."""
    missing = [name for name in FIELD_NAMES if name not in JOB_ATTRIBUTES]
    if missing:
        raise LookupError(
            f"JobSpec fields without a column in jobs: {', '.join(missing)}; add a column of the "
            "same name to storage.models.Job and a migration"
        )
    return tuple(JOB_ATTRIBUTES[name] for name in FIELD_NAMES)


_stored_spec_values = attrgetter(*_spec_attributes())


def spec_of(job: Job) -> JobSpec:
    """The JobSpec a stored job holds, validated again: ``InvalidJob`` says what is wrong with a
    row that no longer passes (edited by hand, or written before a limit was tightened)."""
    return JobSpec(**dict(zip(FIELD_NAMES, _stored_spec_values(job), strict=True)))
