"""The webhook outbox in SQL: one delivery per finish, claims, retries, giving up. Both backends."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from storage import jobs as job_store
from storage import webhooks as outbox
from storage.db import session_scope
from storage.models import utcnow
from storage.submissions import (
    create_submission,
    insert_jobs,
    job_id_for,
    mark_submission_finished,
    reopen_submissions,
)

from .helpers import new_jobs

URL = "https://hooks.example.com/done?token=s3cret"


def hooked_submission(engine: Engine, count: int, url: str | None = URL) -> tuple[str, list[str]]:
    with session_scope(engine) as session:
        ref = create_submission(
            session, source="hooked.txt", defaults={}, job_count=count, webhook_url=url
        )
        insert_jobs(session, ref.id, new_jobs(count))
    return ref.id, [job_id_for(ref.id, position) for position in range(count)]


def finish(engine: Engine, submission_id: str, ids: list[str]) -> bool:
    """Run the jobs to failure and mark the submission finished, as a worker's finisher does."""
    with session_scope(engine) as session:
        job_store.claim_jobs(session, ids, worker="w", batch_id="b", batch_size=len(ids))
        for job_id in ids:
            job_store.mark_failed(session, job_id, "boom")
        return mark_submission_finished(session, submission_id)


def finished_submission(engine: Engine) -> str:
    submission_id, ids = hooked_submission(engine, 1)
    assert finish(engine, submission_id, ids)
    return submission_id


def test_a_finish_owes_one_delivery_with_the_counts_it_saw(engine: Engine) -> None:
    submission_id, ids = hooked_submission(engine, 2)
    assert finish(engine, submission_id, ids)
    with session_scope(engine) as session:
        assert mark_submission_finished(session, submission_id) is False  # already finished
        (delivery,) = outbox.deliveries_of(session, submission_id)
    assert delivery.status == outbox.PENDING and delivery.attempts == 0
    assert delivery.url == URL and delivery.generation == 1 and delivery.event == "finished"
    assert delivery.payload["counts"] == {"failed": 2}
    assert delivery.payload["submission_id"] == submission_id and delivery.payload["jobs"] == 2


def test_a_submission_without_a_webhook_owes_nothing(engine: Engine) -> None:
    submission_id, ids = hooked_submission(engine, 1, url=None)
    assert finish(engine, submission_id, ids)
    with session_scope(engine) as session:
        assert outbox.deliveries_of(session, submission_id) == []


def test_a_submission_finished_anew_after_requeue_failed_owes_a_second_delivery(
    engine: Engine,
) -> None:
    submission_id, ids = hooked_submission(engine, 1)
    assert finish(engine, submission_id, ids)
    with session_scope(engine) as session:
        assert reopen_submissions(session) == 0  # nothing open yet: stays finished
        job_store.requeue_failed(session, submission_id=submission_id)
        assert reopen_submissions(session, submission_id=submission_id) == 1
    assert finish(engine, submission_id, ids)
    with session_scope(engine) as session:
        generations = [d.generation for d in outbox.deliveries_of(session, submission_id)]
    assert generations == [1, 2]


def test_claims_are_exclusive_and_a_sent_delivery_is_never_claimed_again(engine: Engine) -> None:
    first, second = finished_submission(engine), finished_submission(engine)
    with session_scope(engine) as session:
        claims = outbox.claim_due(session, limit=10, lease_s=60)
    assert sorted(c.submission_id for c in claims) == sorted([first, second])
    assert all(c.attempt == 1 for c in claims)
    with session_scope(engine) as session:
        assert outbox.claim_due(session, limit=10, lease_s=60) == []  # leased
        assert outbox.mark_sent(session, claims[0]) is True
        assert outbox.mark_sent(session, claims[0]) is False  # not pending any more
    later = utcnow() + timedelta(minutes=5)  # both leases over
    with session_scope(engine) as session:
        again = outbox.claim_due(session, limit=10, lease_s=60, now=later)
    assert [c.id for c in again] == [claims[1].id] and again[0].attempt == 2
    with session_scope(engine) as session:
        # The first claim on that row is stale: its result cannot overwrite the newer attempt.
        assert outbox.mark_sent(session, claims[1]) is False
        assert outbox.mark_sent(session, again[0]) is True
        sent = outbox.deliveries_of(session, claims[0].submission_id)[0]
    assert sent.status == outbox.SENT and sent.sent_at is not None


def test_two_open_transactions_claim_distinct_rows(engine: Engine) -> None:
    ids = {finished_submission(engine) for _ in range(4)}
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time; the guarded UPDATE is covered above")
    with session_scope(engine) as first, session_scope(engine) as second:
        a = outbox.claim_due(first, limit=2, lease_s=60)
        b = outbox.claim_due(second, limit=10, lease_s=60)  # skips a's locked rows, no wait
    assert len(a) == 2 and len(b) == 2
    assert {c.submission_id for c in a} | {c.submission_id for c in b} == ids


def test_failed_attempts_back_off_for_an_hour_then_give_up(engine: Engine) -> None:
    submission_id = finished_submission(engine)
    now = utcnow()
    delays = []
    statuses = []
    while True:
        with session_scope(engine) as session:
            (claim,) = outbox.claim_due(session, limit=1, lease_s=30, now=now)
            status = outbox.mark_failed(
                session, claim, "HTTP 503", retry=True, retry_window_s=3600, now=now
            )
            statuses.append(status)
            delivery = outbox.deliveries_of(session, submission_id)[0]
        if status == outbox.GAVE_UP:
            break
        delays.append((delivery.next_attempt_at - now).total_seconds())
        now = delivery.next_attempt_at
    assert delays[:7] == [10, 20, 40, 80, 160, 320, 600]
    assert max(delays) == 600  # capped
    last_attempt_at = now
    assert last_attempt_at - claim.created_at >= timedelta(hours=1)  # retried for an hour
    assert delivery.status == outbox.GAVE_UP and delivery.last_error == "HTTP 503"
    assert delivery.attempts == len(statuses)
    with session_scope(engine) as session:
        assert outbox.claim_due(session, limit=1, lease_s=30, now=now + timedelta(days=1)) == []


def test_a_refusal_gives_up_at_once(engine: Engine) -> None:
    submission_id = finished_submission(engine)
    with session_scope(engine) as session:
        (claim,) = outbox.claim_due(session, limit=1, lease_s=30)
        assert (
            outbox.mark_failed(session, claim, "HTTP 404", retry=False, retry_window_s=3600)
            == outbox.GAVE_UP
        )
        assert outbox.deliveries_of(session, submission_id)[0].status == outbox.GAVE_UP


def test_next_due_says_how_long_a_sender_may_sleep(engine: Engine) -> None:
    with session_scope(engine) as session:
        assert outbox.next_due_in_s(session) is None
    finished_submission(engine)
    with session_scope(engine) as session:
        assert outbox.next_due_in_s(session) == 0.0
        outbox.claim_due(session, limit=1, lease_s=30)
    with session_scope(engine) as session:
        assert 20 < outbox.next_due_in_s(session) <= 30
