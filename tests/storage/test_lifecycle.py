"""Job status transitions: guarded, atomic, and never backwards. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from storage import jobs as job_store
from storage.db import session_scope
from storage.models import JobStatus, utcnow
from storage.queries import count_by_status, get_job, load_jobs

from .helpers import add_submission, mark_succeeded

RESULT = job_store.JobResult(
    image_uri="s3://bucket/outputs/sub/job.png",
    image_bytes=1234,
    image_sha256="ab" * 32,
    sample_s=0.5,
    upload_s=0.1,
    gpu_share_s=0.05,
)


def claim(engine: Engine, ids: list[str], worker: str = "gpu-0") -> list[str]:
    with session_scope(engine) as session:
        return job_store.claim_jobs(
            session, ids, worker=worker, batch_id="batch-1", batch_size=len(ids)
        )


def status_of(engine: Engine, job_id: str) -> JobStatus:
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        assert job is not None
        return job.status


def test_a_claimed_job_is_running_with_its_worker_batch_and_one_attempt(engine: Engine) -> None:
    _, ids = add_submission(engine, 3)

    assert sorted(claim(engine, ids)) == sorted(ids)

    with session_scope(engine) as session:
        for job in load_jobs(session, ids):
            assert job.status is JobStatus.RUNNING
            assert job.attempts == 1
            assert (job.worker, job.batch_id, job.batch_size) == ("gpu-0", "batch-1", 3)
            assert job.started_at is not None and job.heartbeat_at == job.started_at
            assert job.queue_wait_s is not None and job.queue_wait_s >= 0


def test_claiming_returns_only_the_jobs_that_were_still_queued(engine: Engine) -> None:
    _, ids = add_submission(engine, 4)
    claim(engine, ids[:2], worker="gpu-0")
    with session_scope(engine) as session:
        job_store.cancel_queued(session, job_ids=[ids[2]])

    assert claim(engine, ids, worker="gpu-1") == [ids[3]]
    with session_scope(engine) as session:
        workers = [job.worker for job in load_jobs(session, ids)]
    assert workers == ["gpu-0", "gpu-0", None, "gpu-1"]


def test_queue_wait_is_the_time_from_creation_to_claim(engine: Engine) -> None:
    created = utcnow() - timedelta(seconds=90)
    _, ids = add_submission(engine, 1, now=created)
    with session_scope(engine) as session:
        job_store.claim_jobs(
            session,
            ids,
            worker="gpu-0",
            batch_id="b",
            batch_size=1,
            now=created + timedelta(seconds=2.5),
        )
        job = get_job(session, ids[0])
        assert job is not None
        assert job.queue_wait_s == pytest.approx(2.5, abs=0.01)


def test_marking_a_job_succeeded_twice_is_a_no_op(engine: Engine) -> None:
    _, ids = add_submission(engine, 1)
    claim(engine, ids)
    with session_scope(engine) as session:
        assert mark_succeeded(session, ids[0], RESULT) is True
    other = job_store.JobResult("s3://elsewhere/x.png", 1, "cd" * 32, 9.0, 9.0, 9.0)
    with session_scope(engine) as session:
        assert mark_succeeded(session, ids[0], other) is False
        job = get_job(session, ids[0])
        assert job is not None
        assert job.status is JobStatus.SUCCEEDED
        assert (job.image_uri, job.image_bytes, job.sample_s) == (RESULT.image_uri, 1234, 0.5)
        assert job.finished_at is not None


@pytest.mark.parametrize("terminal", ["succeeded", "failed", "cancelled"])
def test_late_messages_cannot_move_a_finished_job_backwards(engine: Engine, terminal: str) -> None:
    _, ids = add_submission(engine, 1)
    job_id = ids[0]
    with session_scope(engine) as session:
        if terminal == "cancelled":
            job_store.cancel_queued(session, job_ids=ids)
        else:
            job_store.claim_jobs(session, ids, worker="gpu-0", batch_id="b", batch_size=1)
            if terminal == "succeeded":
                mark_succeeded(session, job_id, RESULT)
            else:
                job_store.mark_failed(session, job_id, "sampler crashed")

    with session_scope(engine) as session:
        assert job_store.claim_jobs(session, ids, worker="late", batch_id="b2", batch_size=1) == []
        assert mark_succeeded(session, job_id, RESULT) is False
        assert job_store.mark_failed(session, job_id, "late failure") is False
        assert job_store.release_for_retry(session, job_id, error="late retry") is False
        assert job_store.cancel_queued(session, job_ids=ids) == []
        assert job_store.heartbeat(session, "gpu-0") == 0
    assert status_of(engine, job_id) == JobStatus(terminal)


def test_a_released_job_is_claimed_again_and_counts_both_attempts(engine: Engine) -> None:
    _, ids = add_submission(engine, 1)
    claim(engine, ids, worker="gpu-0")
    with session_scope(engine) as session:
        assert job_store.release_for_retry(session, ids[0], error="store unavailable") is True
        job = get_job(session, ids[0])
        assert job is not None
        assert (job.status, job.worker, job.error) == (JobStatus.QUEUED, None, "store unavailable")

    assert claim(engine, ids, worker="gpu-1") == ids
    with session_scope(engine) as session:
        job = get_job(session, ids[0])
        assert job is not None
        assert (job.status, job.attempts, job.worker) == (JobStatus.RUNNING, 2, "gpu-1")


def test_cancelling_a_submission_leaves_running_jobs_to_finish(engine: Engine) -> None:
    submission_id, ids = add_submission(engine, 3)
    claim(engine, ids[:1])
    with session_scope(engine) as session:
        cancelled = job_store.cancel_queued(session, submission_id=submission_id)
    assert sorted(job_id for job_id, _, _ in cancelled) == sorted(ids[1:])
    assert [status_of(engine, i) for i in ids] == [
        JobStatus.RUNNING,
        JobStatus.CANCELLED,
        JobStatus.CANCELLED,
    ]


def test_cancelling_without_naming_jobs_is_refused(engine: Engine) -> None:
    add_submission(engine, 1)
    with session_scope(engine) as session, pytest.raises(ValueError, match="pass job_ids or"):
        job_store.cancel_queued(session)


def test_requeue_failed_is_the_one_way_out_of_failed_and_resets_attempts(engine: Engine) -> None:
    submission_id, ids = add_submission(engine, 2)
    claim(engine, ids)
    with session_scope(engine) as session:
        job_store.mark_failed(session, ids[0], "sampler crashed")
        mark_succeeded(session, ids[1], RESULT)
    with session_scope(engine) as session:
        assert job_store.requeue_failed(session, submission_id=submission_id) == [ids[0]]
        job = get_job(session, ids[0])
        assert job is not None
        assert (job.status, job.attempts, job.error, job.finished_at) == (
            JobStatus.QUEUED,
            0,
            None,
            None,
        )
    assert status_of(engine, ids[1]) is JobStatus.SUCCEEDED


def test_a_heartbeat_touches_only_that_workers_running_jobs(engine: Engine) -> None:
    _, ids = add_submission(engine, 3)
    claim(engine, ids[:2], worker="gpu-0")
    claim(engine, ids[2:], worker="gpu-1")
    later = utcnow() + timedelta(seconds=30)
    with session_scope(engine) as session:
        assert job_store.heartbeat(session, "gpu-0", now=later) == 2
        assert job_store.heartbeat(session, "gpu-0", job_ids=ids[:1], now=later) == 1
        beats = {job.id: job.heartbeat_at for job in load_jobs(session, ids)}
    assert beats[ids[0]] == beats[ids[1]] == later
    assert beats[ids[2]] != later


# -- every sequence of messages obeys the state machine ------------------------------------------

OPERATIONS = ["claim", "succeed", "fail", "release", "cancel", "requeue", "heartbeat"]
Q, R, S, F, C = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED,
                 JobStatus.CANCELLED)  # fmt: skip
# (operation, from-status) -> to-status; anything not listed must change nothing.
ALLOWED = {
    ("claim", Q): R,
    ("succeed", R): S,
    ("fail", R): F,
    ("release", R): Q,
    ("cancel", Q): C,
    ("requeue", F): Q,
}


def apply(engine: Engine, job_id: str, operation: str) -> bool:
    """Run one operation; True if the store reports it changed the job's status."""
    ids = [job_id]
    with session_scope(engine) as session:
        if operation == "claim":
            return bool(job_store.claim_jobs(session, ids, worker="w", batch_id="b", batch_size=1))
        if operation == "succeed":
            return mark_succeeded(session, job_id, RESULT)
        if operation == "fail":
            return job_store.mark_failed(session, job_id, "boom")
        if operation == "release":
            return job_store.release_for_retry(session, job_id)
        if operation == "cancel":
            return bool(job_store.cancel_queued(session, job_ids=ids))
        if operation == "requeue":
            return bool(job_store.requeue_failed(session, job_ids=ids))
        job_store.heartbeat(session, "w", job_ids=ids)
        return False


@pytest.mark.parametrize("migrated_db_url", ["sqlite"], indirect=True)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=st.lists(st.sampled_from(OPERATIONS), max_size=12))
def test_any_sequence_of_messages_follows_the_state_machine(
    engine: Engine, operations: list[str]
) -> None:
    _, (job_id,) = add_submission(engine, 1)  # a fresh job per example, same database
    status, attempts = Q, 0
    for operation in operations:
        expected = ALLOWED.get((operation, status))
        changed = apply(engine, job_id, operation)
        assert changed == (expected is not None), f"{operation} from {status.value}"
        if expected is not None:
            attempts = 0 if operation == "requeue" else attempts + (operation == "claim")
            status = expected
        with session_scope(engine) as session:
            job = get_job(session, job_id)
            assert job is not None
            assert (job.status, job.attempts) == (status, attempts), f"after {operation}"
            # The flows' counters (storage.counters) follow every change, or its absence.
            counts = count_by_status(session, submission_id=job.submission_id)
            assert counts == {each: int(each is status) for each in JobStatus}, operation


def test_only_a_job_whose_worker_stopped_heart_beating_can_be_reclaimed(engine: Engine) -> None:
    start = utcnow() - timedelta(minutes=10)
    _, ids = add_submission(engine, 2)
    with session_scope(engine) as session:
        job_store.claim_jobs(session, ids, worker="dead", batch_id="b", batch_size=2, now=start)
        job_store.heartbeat(session, "dead", job_ids=ids[1:])  # ids[1] is still alive
    cutoff = utcnow() - timedelta(minutes=5)
    with session_scope(engine) as session:
        reclaim = job_store.reclaim_abandoned
        won = reclaim(
            session, ids, worker="new", batch_id="c", batch_size=2, heartbeat_before=cutoff
        )
        again = reclaim(session, ids, worker="other", batch_id="d", batch_size=2,
                        heartbeat_before=cutoff)  # fmt: skip
        jobs = load_jobs(session, ids)
    assert (won, again) == ([ids[0]], [])
    assert [(job.worker, job.attempts) for job in jobs] == [("new", 2), ("dead", 1)]
