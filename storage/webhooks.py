"""The webhook outbox: deliveries owed by finished submissions, claimed, sent, retried, given up.

A delivery is written in the transaction that marks its submission finished
(``storage.submissions.mark_submission_finished`` calls :func:`enqueue_finished`), so a finish
and its webhook are recorded together or not at all, and a worker restart loses neither. Sender
threads (``notify.sender``) claim due rows, POST outside any transaction and record the
outcome; every write names the claim (the attempt number it took), so a sender that lost its
claim (its lease ran out while it was stuck) cannot overwrite a newer attempt's result.

Retry schedule: attempt *n* that fails is retried ``min(10 s x 2^(n-1), 10 min)`` later (10 s,
20 s, 40 s, ... 320 s, then every 10 minutes) until ``retry_window_s`` (default an hour) has
passed since the delivery was created; the first attempt that fails after that gives up. So a
receiver that is down for up to an hour still gets its webhook, about 12 attempts in all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.models import Job, Submission, WebhookDelivery, utcnow

PENDING = "pending"
SENT = "sent"
GAVE_UP = "gave_up"

FINISHED_EVENT = "finished"

RETRY_BASE_S = 10.0
"""The first retry's delay; each further one doubles it."""
RETRY_CAP_S = 600.0
"""No two attempts are further apart than this, so a receiver that comes back is served soon."""

_ERROR_LIMIT = 500  # characters of last_error kept: enough for a status line and a reason


@dataclass(frozen=True)
class ClaimedDelivery:
    """One attempt a sender holds: the row's facts as of the claim, and the claim's number."""

    id: str
    submission_id: str
    generation: int
    event: str
    url: str
    payload: dict[str, Any]
    attempt: int  # the row's ``attempts`` after this claim: the claim's token
    created_at: datetime


def retry_delay_s(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return min(RETRY_BASE_S * 2 ** max(attempt - 1, 0), RETRY_CAP_S)


def enqueue_finished(
    session: Session, submission_id: str, *, now: datetime | None = None
) -> str | None:
    """Owe the submission's ``finished`` webhook, if it has a URL; returns the delivery id.

    Call it in the transaction that set ``finished_at`` (and only from the call that set it):
    the payload's counts are the ones that finish saw. The generation is one more than the
    submission's last, so a finish after ``requeue --failed`` owes a new delivery, and the
    unique (submission, generation) key refuses a second row for the same finish.
    """
    submission = session.get(Submission, submission_id)
    if submission is None or not submission.webhook_url:
        return None
    now = now or utcnow()
    generation = 1 + session.scalar(
        select(func.coalesce(func.max(WebhookDelivery.generation), 0)).where(
            WebhookDelivery.submission_id == submission_id
        )
    )
    counts = {
        getattr(status, "value", status): count
        for status, count in session.execute(
            select(Job.status, func.count())
            .where(Job.submission_id == submission_id)
            .group_by(Job.status)
        )
    }
    finished_at = submission.finished_at or now
    payload = {
        "event": FINISHED_EVENT,
        "submission_id": submission_id,
        "generation": generation,
        "source": submission.source,
        "jobs": submission.job_count,
        "counts": counts,
        "finished_at": finished_at.isoformat(),
    }
    delivery_id = str(uuid.uuid4())
    session.add(
        WebhookDelivery(
            id=delivery_id,
            submission_id=submission_id,
            generation=generation,
            event=FINISHED_EVENT,
            url=submission.webhook_url,
            payload=payload,
            status=PENDING,
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )
    )
    session.flush()  # the unique key speaks now, inside the finishing transaction
    return delivery_id


def claim_due(
    session: Session, *, limit: int, lease_s: float, now: datetime | None = None
) -> list[ClaimedDelivery]:
    """Claim up to ``limit`` pending deliveries that are due: each claim counts an attempt and
    pushes ``next_attempt_at`` ``lease_s`` ahead, so a sender that dies mid-attempt leaves the
    row to be tried again once the lease runs out.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so senders of many workers take distinct rows and
    never wait on each other. SQLite has one writer at a time: each row is taken by a guarded
    UPDATE (still pending, still due, same attempt count) and a row another sender took first is
    skipped.
    """
    now = now or utcnow()
    due = (
        select(WebhookDelivery)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        due = due.with_for_update(skip_locked=True)
    rows = list(session.scalars(due))
    lease_until = now + timedelta(seconds=lease_s)
    claimed = []
    for row in rows:
        result = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == row.id,
                WebhookDelivery.status == PENDING,
                WebhookDelivery.attempts == row.attempts,
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(attempts=row.attempts + 1, next_attempt_at=lease_until)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            continue
        claimed.append(
            ClaimedDelivery(
                id=row.id,
                submission_id=row.submission_id,
                generation=row.generation,
                event=row.event,
                url=row.url,
                payload=dict(row.payload),
                attempt=row.attempts + 1,
                created_at=row.created_at,
            )
        )
    return claimed


def _claimed(claim: ClaimedDelivery) -> list[Any]:
    """The WHERE of a write that needs the claim still to be the row's latest."""
    return [
        WebhookDelivery.id == claim.id,
        WebhookDelivery.status == PENDING,
        WebhookDelivery.attempts == claim.attempt,
    ]


def mark_sent(session: Session, claim: ClaimedDelivery, *, now: datetime | None = None) -> bool:
    """The receiver answered 2xx. False if the claim was lost (the row moved on without us)."""
    now = now or utcnow()
    result = session.execute(
        update(WebhookDelivery)
        .where(*_claimed(claim))
        .values(status=SENT, sent_at=now, last_error=None)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    session.execute(
        update(Submission)
        .where(Submission.id == claim.submission_id)
        .values(webhook_sent_at=now)
        .execution_options(synchronize_session=False)
    )
    return True


def mark_failed(
    session: Session,
    claim: ClaimedDelivery,
    error: str,
    *,
    retry: bool,
    retry_window_s: float,
    now: datetime | None = None,
) -> str | None:
    """Record a failed attempt: due again after :func:`retry_delay_s`, or ``gave_up`` when the
    failure is final (``retry`` False: the receiver refused) or the retry window has passed.
    Returns the new status, or None if the claim was lost."""
    now = now or utcnow()
    window_over = now >= claim.created_at + timedelta(seconds=retry_window_s)
    values: dict[str, Any] = {"last_error": error[:_ERROR_LIMIT]}
    if retry and not window_over:
        values.update(next_attempt_at=now + timedelta(seconds=retry_delay_s(claim.attempt)))
        status = PENDING
    else:
        values.update(status=GAVE_UP)
        status = GAVE_UP
    result = session.execute(
        update(WebhookDelivery)
        .where(*_claimed(claim))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return status if result.rowcount == 1 else None


def deliveries_of(session: Session, submission_id: str) -> list[WebhookDelivery]:
    """A submission's deliveries, oldest generation first (for status and tests)."""
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.submission_id == submission_id)
            .order_by(WebhookDelivery.generation)
        )
    )


def next_due_in_s(session: Session, *, now: datetime | None = None) -> float | None:
    """Seconds until the next pending delivery is due (0 if one is), None if none is pending."""
    now = now or utcnow()
    first = session.scalar(
        select(func.min(WebhookDelivery.next_attempt_at)).where(WebhookDelivery.status == PENDING)
    )
    if first is None:
        return None
    if isinstance(first, str):  # func.min bypasses the column type: SQLite hands back text
        first = datetime.fromisoformat(first)
    if first.tzinfo is None:
        first = first.replace(tzinfo=timezone.utc)
    return max((first - now).total_seconds(), 0.0)
