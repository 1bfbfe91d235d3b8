"""A worker's writes name its claim: once a job is taken over, its previous owner cannot record an
outcome for it, however late or alive it is. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from storage import jobs as job_store
from storage.db import session_scope
from storage.jobs import Owner
from storage.models import Job, JobStatus, utcnow
from storage.queries import get_job

from .helpers import add_submission, mark_succeeded

RESULT = job_store.JobResult(
    image_uri="s3://bucket/outputs/sub/job.png",
    image_bytes=1234,
    image_sha256="ab" * 32,
    sample_s=0.5,
    upload_s=0.1,
    gpu_share_s=0.05,
)
OLD = Owner(worker="gpu-0", batch_id="batch-old")
NEW = Owner(worker="gpu-1", batch_id="batch-new")
# (write, the status it leaves a job in when it takes effect)
WRITES = {
    "succeed": JobStatus.SUCCEEDED,
    "fail": JobStatus.FAILED,
    "release": JobStatus.QUEUED,
}


def write(engine: Engine, job_id: str, operation: str, owner: Owner | None) -> bool:
    with session_scope(engine) as session:
        if operation == "succeed":
            return mark_succeeded(session, job_id, RESULT, owner=owner)
        if operation == "fail":
            return job_store.mark_failed(session, job_id, "boom", owner=owner)
        return job_store.release_for_retry(session, job_id, error="store down", owner=owner)


def claim_stale(engine: Engine, owner: Owner = OLD) -> str:
    """A job claimed by ``owner`` ten minutes ago that has not heart-beaten since."""
    _, (job_id,) = add_submission(engine, 1)
    with session_scope(engine) as session:
        claimed = job_store.claim_jobs(
            session,
            [job_id],
            worker=owner.worker,
            batch_id=owner.batch_id,
            batch_size=1,
            now=utcnow() - timedelta(minutes=10),
        )
    assert claimed == [job_id]
    return job_id


def reclaim(engine: Engine, job_id: str, owner: Owner = NEW) -> None:
    with session_scope(engine) as session:
        taken = job_store.reclaim_abandoned(
            session,
            [job_id],
            worker=owner.worker,
            batch_id=owner.batch_id,
            batch_size=1,
            heartbeat_before=utcnow() - timedelta(minutes=5),
        )
    assert taken == [job_id]


def snapshot(engine: Engine, job_id: str) -> tuple[JobStatus, str | None, str | None, int]:
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        assert job is not None
        return job.status, job.worker, job.batch_id, job.attempts


@pytest.mark.parametrize("operation", list(WRITES))
def test_a_reclaimed_job_cannot_be_written_by_its_previous_owner(
    engine: Engine, operation: str
) -> None:
    job_id = claim_stale(engine)
    reclaim(engine, job_id)

    assert write(engine, job_id, operation, OLD) is False
    assert snapshot(engine, job_id) == (JobStatus.RUNNING, "gpu-1", "batch-new", 2)


@pytest.mark.parametrize("operation", list(WRITES))
def test_the_new_owner_of_a_reclaimed_job_can_write_it(engine: Engine, operation: str) -> None:
    job_id = claim_stale(engine)
    reclaim(engine, job_id)
    assert write(engine, job_id, operation, OLD) is False

    assert write(engine, job_id, operation, NEW) is True
    assert snapshot(engine, job_id)[0] is WRITES[operation]


@pytest.mark.parametrize("operation", list(WRITES))
def test_a_worker_that_reclaimed_its_own_job_owns_it_only_under_the_new_batch(
    engine: Engine, operation: str
) -> None:
    # The worker name alone cannot tell the stalled delivery from the one that took over.
    job_id = claim_stale(engine)
    again = Owner(worker=OLD.worker, batch_id="batch-again")
    reclaim(engine, job_id, again)

    assert write(engine, job_id, operation, OLD) is False
    assert write(engine, job_id, operation, again) is True
    assert snapshot(engine, job_id)[0] is WRITES[operation]


def test_a_job_released_and_claimed_again_is_out_of_its_first_owners_reach(
    engine: Engine,
) -> None:
    # The reconciler takes the job back; a new delivery claims it while the first owner still
    # holds a finished image.
    job_id = claim_stale(engine)
    with session_scope(engine) as session:
        released = job_store.release_abandoned(
            session,
            [job_id],
            heartbeat_before=utcnow() - timedelta(minutes=5),
            error="worker stopped",
        )
        assert [released_id for released_id, _, _ in released] == [job_id]
        claimed = job_store.claim_jobs(
            session, [job_id], worker=NEW.worker, batch_id=NEW.batch_id, batch_size=1
        )
        assert claimed == [job_id]

    for operation in WRITES:
        assert write(engine, job_id, operation, OLD) is False, operation
    assert snapshot(engine, job_id) == (JobStatus.RUNNING, "gpu-1", "batch-new", 2)
    assert write(engine, job_id, "succeed", NEW) is True


def test_the_current_owner_and_ownerless_writes_still_work(engine: Engine) -> None:
    _, ids = add_submission(engine, 2)
    with session_scope(engine) as session:
        job_store.claim_jobs(session, ids, worker=OLD.worker, batch_id=OLD.batch_id, batch_size=2)
    assert write(engine, ids[0], "succeed", OLD) is True
    assert write(engine, ids[1], "fail", None) is True  # an operator, for whoever holds it
    assert [snapshot(engine, i)[0] for i in ids] == [JobStatus.SUCCEEDED, JobStatus.FAILED]


def test_a_stale_owners_write_racing_the_takeover_waits_and_then_changes_nothing(
    engine: Engine,
) -> None:
    # The previous owner writes while the takeover's transaction is open. Its UPDATE waits for the
    # row (PostgreSQL) or the write lock (SQLite) and, once the takeover commits, finds the job no
    # longer its own. A check read before the UPDATE (instead of inside its WHERE) would pass here.
    job_id = claim_stale(engine)
    outcome: list[bool] = []
    with session_scope(engine) as session:
        taken = job_store.reclaim_abandoned(
            session,
            [job_id],
            worker=NEW.worker,
            batch_id=NEW.batch_id,
            batch_size=1,
            heartbeat_before=utcnow() - timedelta(minutes=5),
        )
        assert taken == [job_id]
        stale = threading.Thread(
            target=lambda: outcome.append(write(engine, job_id, "succeed", OLD)), daemon=True
        )
        stale.start()
        stale.join(timeout=0.5)
        assert stale.is_alive(), "the stale write did not wait for the takeover's transaction"
    stale.join(timeout=30)

    assert outcome == [False]
    assert snapshot(engine, job_id) == (JobStatus.RUNNING, "gpu-1", "batch-new", 2)


def test_release_abandoned_leaves_a_job_that_came_back_to_life(engine: Engine) -> None:
    # What the reconciler saw as stuck was reclaimed (or heart-beat) before its UPDATE ran.
    stuck, revived = claim_stale(engine), claim_stale(engine)
    reclaim(engine, revived)
    cutoff = utcnow() - timedelta(minutes=5)
    with session_scope(engine) as session:
        first = job_store.release_abandoned(
            session, [stuck, revived], heartbeat_before=cutoff, error="worker stopped"
        )
    with session_scope(engine) as session:  # a second reconciler, a moment later
        second = job_store.release_abandoned(
            session, [stuck, revived], heartbeat_before=cutoff, error="worker stopped"
        )
        job = session.get(Job, stuck)
        assert job is not None and (job.worker, job.error) == (None, "worker stopped")

    assert ([job_id for job_id, _, _ in first], second) == ([stuck], [])
    assert snapshot(engine, stuck) == (JobStatus.QUEUED, None, None, 1)
    assert snapshot(engine, revived) == (JobStatus.RUNNING, "gpu-1", "batch-new", 2)
