"""Submissions, bulk inserts and read queries. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from core.jobspec import MAX_SEED, PRIORITY_LEVELS, JobSpec, ParsedJob
from storage import jobs as job_store
from storage.bulk import insert_job_rows
from storage.db import session_scope
from storage.gallery import JobFilter, find_jobs
from storage.models import JobStatus, utcnow
from storage.queries import count_by_status, find_stuck_running, get_job
from storage.submissions import (
    JOB_COLUMNS,
    create_submission,
    get_submission,
    insert_jobs,
    job_id_for,
    job_row,
    mark_submission_finished,
    spec_of,
)

from .helpers import add_submission, new_jobs


def test_job_ids_are_uuid5_of_submission_and_position() -> None:
    namespace = uuid.UUID("5b0c7d8e-3f4a-4c1e-9a57-6f0e2d1b8c33")
    submission_id = str(uuid.uuid4())
    for position in (0, 1, 99_999):
        expected = uuid.uuid5(namespace, f"{submission_id}/{position}")
        assert job_id_for(submission_id, position) == str(expected)


def test_every_field_of_a_job_round_trips(engine: Engine) -> None:
    job = JobSpec(
        prompt='a lighthouse at dusk, "quoted", tab\there, newline\nthere, back\\slash',
        seed=MAX_SEED,
        height=768,
        width=512,
        steps=8,
        model="org/model",
        priority=PRIORITY_LEVELS["high"],
        metadata={"user": "ada", "tags": ["a", "b"], "n": 1.5},
    )
    with session_scope(engine) as session:
        ref = create_submission(session, source="in.jsonl", defaults={"steps": 8}, job_count=1)
        placed = ParsedJob(job, line_number=7, position=0)
        assert insert_jobs(session, ref.id, [placed], skip_existing=False) == 1
        # A worker's finding, not the producer's: set the way a worker sets it.
        job_store.mark_prompts_truncated(session, [job_id_for(ref.id, 0)])
    with session_scope(engine) as session:
        stored = get_job(session, job_id_for(ref.id, 0))
        assert stored is not None
        assert spec_of(stored) == job
        assert (stored.prompt, stored.seed, stored.height, stored.width, stored.steps) == (
            job.prompt,
            MAX_SEED,
            768,
            512,
            8,
        )
        assert (stored.model, stored.priority, stored.prompt_truncated) == ("org/model", 9, True)
        assert stored.caller_metadata == {"user": "ada", "tags": ["a", "b"], "n": 1.5}
        assert (stored.status, stored.attempts, stored.line_number) == (JobStatus.QUEUED, 0, 7)
        assert stored.created_at.tzinfo is not None
        submission = get_submission(session, ref.id)
        assert submission is not None
        assert (submission.source, submission.defaults, submission.job_count) == (
            "in.jsonl",
            {"steps": 8},
            1,
        )


def test_resubmitting_with_the_same_idempotency_key_returns_the_first_submission(
    engine: Engine,
) -> None:
    with session_scope(engine) as session:
        first = create_submission(
            session, source="a.txt", defaults={}, job_count=3, idempotency_key="nightly-42"
        )
    with session_scope(engine) as session:
        again = create_submission(
            session, source="a.txt", defaults={}, job_count=3, idempotency_key="nightly-42"
        )
        other = create_submission(
            session, source="a.txt", defaults={}, job_count=3, idempotency_key="nightly-43"
        )
    assert first.created and not again.created and other.created
    assert again.id == first.id != other.id


def test_resuming_an_insert_skips_the_positions_already_stored(engine: Engine) -> None:
    with session_scope(engine) as session:
        ref = create_submission(session, source="a.txt", defaults={}, job_count=100)
        assert insert_jobs(session, ref.id, new_jobs(60), skip_existing=False) == 60
    with session_scope(engine) as session:
        inserted = insert_jobs(session, ref.id, iter(new_jobs(100)))  # a generator is fine
        assert inserted == 40
        stored = [job.id for job in find_jobs(session, ref.id, limit=1000)]
        assert stored == [job_id_for(ref.id, p) for p in range(100)]
        assert count_by_status(session, submission_id=ref.id)[JobStatus.QUEUED] == 100


def test_inserting_a_stored_position_without_skip_existing_is_an_integrity_error(
    engine: Engine,
) -> None:
    submission_id, _ = add_submission(engine, 3)
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        insert_jobs(session, submission_id, new_jobs(1, start=2), skip_existing=False)


def test_a_negative_seed_is_refused_by_the_database(engine: Engine) -> None:
    # JobSpec refuses a negative seed, so the row is written past it, as a buggy producer would.
    (valid,) = new_jobs(1)
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        ref = create_submission(session, source="a.txt", defaults={}, job_count=1)
        row = job_row(
            valid.spec, submission_id=ref.id, position=0, line_number=1, created_at=utcnow()
        )
        bad = dict(zip(JOB_COLUMNS, row, strict=True)) | {"seed": -1}
        insert_job_rows(session, JOB_COLUMNS, [tuple(bad.values())], skip_existing=True)


def test_status_counts_cover_every_status_overall_and_per_submission(engine: Engine) -> None:
    first, first_ids = add_submission(engine, 5)
    _, second_ids = add_submission(engine, 2)
    with session_scope(engine) as session:
        job_store.claim_jobs(session, first_ids[:2], worker="w", batch_id="b", batch_size=2)
        job_store.cancel_queued(session, job_ids=second_ids[:1])
    with session_scope(engine) as session:
        overall = count_by_status(session)
        mine = count_by_status(session, submission_id=first)
    assert overall == {
        JobStatus.QUEUED: 4,
        JobStatus.RUNNING: 2,
        JobStatus.SUCCEEDED: 0,
        JobStatus.FAILED: 0,
        JobStatus.CANCELLED: 1,
    }
    assert (mine[JobStatus.QUEUED], mine[JobStatus.RUNNING], mine[JobStatus.CANCELLED]) == (3, 2, 0)
    with session_scope(engine) as session:
        open_work = count_by_status(session, statuses=[JobStatus.QUEUED, JobStatus.RUNNING])
    assert open_work == {JobStatus.QUEUED: 4, JobStatus.RUNNING: 2}


def test_keyset_pages_of_a_submission_hold_every_job_once_in_position_order(
    engine: Engine,
) -> None:
    submission_id, ids = add_submission(engine, 50)
    add_submission(engine, 5)  # another submission's jobs must not leak in
    pages, after = [], -1
    while True:
        with session_scope(engine) as session:
            page = find_jobs(session, submission_id, limit=7, after=after)
        if not page:
            break
        pages.append(page)
        after = page[-1].position
    assert [len(page) for page in pages] == [7] * 7 + [1]
    assert [job.id for page in pages for job in page] == ids
    with session_scope(engine) as session:
        previous = find_jobs(session, submission_id, limit=7, before=14)
    assert [job.position for job in previous] == list(range(7, 14))


def test_all_jobs_are_listed_oldest_submission_first_by_stage_and_up_to_a_limit(
    engine: Engine,
) -> None:
    from status.queries import list_jobs

    now = utcnow()
    _, newer = add_submission(engine, 3, now=now)
    _, older = add_submission(engine, 3, now=now - timedelta(hours=1))
    with session_scope(engine) as session:
        job_store.cancel_queued(session, job_ids=[older[1]])
        job_store.claim_jobs(session, [newer[2]], worker="w", batch_id="b", batch_size=1)
    everything = [
        job["id"] for job in list_jobs(engine, submission_id=None, stage=None, limit=None)
    ]
    queued = [job["id"] for job in list_jobs(engine, submission_id=None, stage="queued", limit=3)]
    claimed = list(list_jobs(engine, submission_id=None, stage="running", limit=None))
    assert everything == older + newer
    assert queued == [older[0], older[2], newer[0]]
    assert [(job["id"], job["status"]) for job in claimed] == [(newer[2], "claimed")]
    with session_scope(engine) as session:
        failed_only = find_jobs(session, older[0] and _submission_of(session, older[0]),
                                JobFilter(stages=("cancelled",)), limit=10)  # fmt: skip
    assert [job.id for job in failed_only] == [older[1]]


def _submission_of(session, job_id: str) -> str:
    job = get_job(session, job_id)
    assert job is not None
    return job.submission_id


def test_stuck_running_jobs_are_found_by_heartbeat_age(engine: Engine) -> None:
    now = utcnow()
    _, old_ids = add_submission(engine, 3, now=now - timedelta(hours=2))
    _, new_ids = add_submission(engine, 2, now=now)
    with session_scope(engine) as session:
        job_store.claim_jobs(
            session, old_ids[:2], worker="dead", batch_id="b", batch_size=2,
            now=now - timedelta(minutes=30),
        )  # fmt: skip
        job_store.claim_jobs(session, new_ids[:1], worker="alive", batch_id="c", batch_size=1)
    cutoff = now - timedelta(minutes=5)
    with session_scope(engine) as session:
        stuck = find_stuck_running(session, heartbeat_before=cutoff)
    assert sorted(job.id for job in stuck) == sorted(old_ids[:2])


def test_a_submission_finishes_once_no_job_is_open(
    engine: Engine,
) -> None:
    submission_id, ids = add_submission(engine, 2)
    with session_scope(engine) as session:
        job_store.claim_jobs(session, ids, worker="w", batch_id="b", batch_size=2)
        job_store.mark_failed(session, ids[0], "boom")
        assert mark_submission_finished(session, submission_id) is False  # ids[1] still running
        job_store.mark_failed(session, ids[1], "boom")
        assert mark_submission_finished(session, submission_id) is True
        assert mark_submission_finished(session, submission_id) is False
    with session_scope(engine) as session:
        submission = get_submission(session, submission_id)
        assert submission is not None
        assert submission.finished_at is not None
