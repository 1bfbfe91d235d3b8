"""Creating submissions and bulk-inserting their jobs, both safe to repeat.

A producer that crashes half-way through a 100,000-line file runs again with the same idempotency
key: the submission is found instead of duplicated, job ids are derived from (submission, position)
so they come out the same, and jobs that are already in the table are skipped.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.bulk import insert_job_rows
from storage.models import PRIORITY_NORMAL, Job, JobStatus, Submission, utcnow

# Fixed namespace for uuid5 job ids; changing it would change every derived id.
_JOB_ID_NAMESPACE = uuid.UUID("5b0c7d8e-3f4a-4c1e-9a57-6f0e2d1b8c33")


@dataclass(frozen=True)
class NewJob:
    """A validated job, ready to insert. Validation happens at the edges, not here."""

    position: int
    line_number: int
    prompt: str
    seed: int
    height: int
    width: int
    steps: int
    model: str
    priority: int = PRIORITY_NORMAL
    prompt_truncated: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)


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
    }
    table = Submission.__table__
    statement = _insert(session, table).values(values)
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
    jobs: Iterable[NewJob],
    *,
    skip_existing: bool = True,
    now: datetime | None = None,
) -> int:
    """Insert jobs as ``queued`` in bulk and return how many were inserted. ``jobs`` may be a
    generator; it is streamed, not materialised.

    With ``skip_existing`` (the default) positions already in the table are skipped, which makes
    resuming a half-inserted submission safe. Pass ``skip_existing=False`` for a submission this
    transaction just created (``SubmissionRef.created``): nothing can conflict, and PostgreSQL can
    ``COPY`` straight into the table (about 1.5x faster).
    """
    created_at = now or utcnow()
    rows = (_job_row(submission_id, job, created_at) for job in jobs)
    return insert_job_rows(session, JOB_COLUMNS, rows, skip_existing=skip_existing)


def get_submission(session: Session, submission_id: str) -> Submission | None:
    return session.get(Submission, submission_id)


def job_ids_of(session: Session, submission_id: str) -> list[str]:
    """All job ids of a submission in position order (for publishing its messages)."""
    return list(
        session.scalars(
            select(Job.id).where(Job.submission_id == submission_id).order_by(Job.position)
        )
    )


def mark_submission_finished(
    session: Session, submission_id: str, *, now: datetime | None = None
) -> bool:
    """Set ``finished_at`` once no job is queued or running. True only for the call that set it."""
    open_jobs = (
        select(func.count())
        .select_from(Job)
        .where(
            Job.submission_id == submission_id,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
        )
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
    return result.rowcount == 1


def mark_webhook_sent(session: Session, submission_id: str, *, now: datetime | None = None) -> bool:
    """Record that the finished-webhook went out. True only for the first caller, so two
    reconcilers racing for the same submission send it once."""
    result = session.execute(
        update(Submission)
        .where(
            Submission.id == submission_id,
            Submission.finished_at.is_not(None),
            Submission.webhook_sent_at.is_(None),
        )
        .values(webhook_sent_at=now or utcnow())
    )
    return result.rowcount == 1


def _insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing`` on PostgreSQL and SQLite."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")  # pragma: no cover


JOB_COLUMNS = (
    "id",
    "submission_id",
    "position",
    "line_number",
    "prompt",
    "prompt_truncated",
    "seed",
    "height",
    "width",
    "steps",
    "model",
    "priority",
    "metadata",
    "status",
    "attempts",
    "created_at",
)
"""Column names (not attribute names: ``metadata``) that ``_job_row`` fills, in order."""


def _job_row(submission_id: str, job: NewJob, created_at: datetime) -> tuple[Any, ...]:
    return (
        job_id_for(submission_id, job.position),
        submission_id,
        job.position,
        job.line_number,
        job.prompt,
        job.prompt_truncated,
        job.seed,
        job.height,
        job.width,
        job.steps,
        job.model,
        job.priority,
        dict(job.metadata),
        JobStatus.QUEUED,
        0,
        created_at,
    )
