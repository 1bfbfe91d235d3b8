"""A delivery's successes are recorded in one guarded statement, and the guard holds row by row:
a job that is not running, or is another owner's, is left alone while the rest are recorded.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, event

from storage import jobs as job_store
from storage.db import session_scope
from storage.jobs import JobResult, Owner
from storage.models import JobStatus
from storage.queries import count_by_status, get_job

from .helpers import add_submission, mark_succeeded

OWNER = Owner(worker="gpu-0", batch_id="batch-1")
OTHER = Owner(worker="gpu-1", batch_id="batch-2")


def result_for(index: int) -> JobResult:
    """Values that differ per job, so a mixed-up row would show."""
    return JobResult(
        image_uri=f"s3://bucket/outputs/sub/{index}.webp",
        image_bytes=1000 + index,
        image_sha256=f"{index:02x}" * 32,
        sample_s=0.5 + index,
        upload_s=0.01 * index,
        gpu_share_s=0.1 * index,
        group_size=index + 1,
    )


def claim(engine: Engine, job_ids: list[str], owner: Owner) -> None:
    with session_scope(engine) as session:
        claimed = job_store.claim_jobs(
            session, job_ids, worker=owner.worker, batch_id=owner.batch_id, batch_size=len(job_ids)
        )
    assert sorted(claimed) == sorted(job_ids)


@contextmanager
def counted_updates(engine: Engine) -> Iterator[list[str]]:
    """The UPDATE statements sent to the database while the block runs."""
    statements: list[str] = []

    def before(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def test_a_batch_of_successes_is_one_statement_with_each_jobs_own_values(engine: Engine) -> None:
    _, job_ids = add_submission(engine, 12)
    claim(engine, job_ids, OWNER)

    with counted_updates(engine) as updates, session_scope(engine) as session:
        recorded = job_store.mark_batch_succeeded(
            session, [(job_id, result_for(i)) for i, job_id in enumerate(job_ids)], owner=OWNER
        )

    assert sorted(recorded) == sorted(job_ids)
    # One statement for the jobs, one for the counters of their one flow (storage.counters).
    assert [statement.split()[1] for statement in updates] == ["jobs", "flows"]
    with session_scope(engine) as session:
        assert count_by_status(session)[JobStatus.SUCCEEDED] == len(job_ids)
        for i, job_id in enumerate(job_ids):
            job = get_job(session, job_id)
            assert job is not None and job.status is JobStatus.SUCCEEDED
            expected = result_for(i)
            assert (job.image_uri, job.image_bytes, job.image_sha256, job.group_size) == (
                expected.image_uri, expected.image_bytes, expected.image_sha256, i + 1,
            )  # fmt: skip
            assert (job.sample_s, job.upload_s, job.gpu_share_s) == (
                expected.sample_s, expected.upload_s, expected.gpu_share_s,
            )  # fmt: skip
            assert job.finished_at is not None and job.error is None


def test_the_guard_holds_per_row_and_only_held_jobs_are_reported(engine: Engine) -> None:
    _, job_ids = add_submission(engine, 4)
    mine, taken, finished, never_claimed = job_ids
    claim(engine, [mine, finished], OWNER)
    claim(engine, [taken], OTHER)
    with session_scope(engine) as session:
        assert mark_succeeded(session, finished, result_for(9), owner=OWNER)

    batch = [(job_id, result_for(i)) for i, job_id in enumerate(job_ids)]
    with session_scope(engine) as session:
        recorded = job_store.mark_batch_succeeded(session, batch, owner=OWNER)

    assert recorded == [mine]
    with session_scope(engine) as session:
        statuses = {job_id: get_job(session, job_id) for job_id in job_ids}
        assert statuses[mine].status is JobStatus.SUCCEEDED  # type: ignore[union-attr]
        assert statuses[mine].image_uri == result_for(0).image_uri  # type: ignore[union-attr]
        # Another owner's job keeps running, untouched, for that owner to record.
        assert statuses[taken].status is JobStatus.RUNNING  # type: ignore[union-attr]
        assert statuses[taken].image_uri is None  # type: ignore[union-attr]
        # A job recorded earlier keeps its first result; a queued one is not finished by it.
        assert statuses[finished].image_uri == result_for(9).image_uri  # type: ignore[union-attr]
        assert statuses[never_claimed].status is JobStatus.QUEUED  # type: ignore[union-attr]


def test_a_batch_larger_than_one_statement_is_recorded_whole(engine: Engine) -> None:
    count = job_store._RESULTS_PER_STATEMENT + 3
    _, job_ids = add_submission(engine, count)
    claim(engine, job_ids, OWNER)
    with counted_updates(engine) as updates, session_scope(engine) as session:
        recorded = job_store.mark_batch_succeeded(
            session, [(job_id, result_for(i % 200)) for i, job_id in enumerate(job_ids)],
            owner=OWNER,
        )
    # Two statements for the jobs (500 per statement), one for the counters of their flow.
    assert len(recorded) == count
    assert [statement.split()[1] for statement in updates] == ["jobs", "jobs", "flows"]
