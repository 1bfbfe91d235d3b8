"""Guarded updates under real concurrency: separate processes writing to one database."""

from __future__ import annotations

from sqlalchemy import Engine

from storage.db import make_engine, session_scope
from storage.models import JobStatus
from storage.queries import count_by_status, load_jobs

from .helpers import add_submission, in_processes, produce, race_to_claim, work


def test_two_processes_racing_to_claim_the_same_jobs_claim_each_exactly_once(
    engine: Engine, migrated_db_url: str
) -> None:
    _, ids = add_submission(engine, 600)

    won_a, won_b = in_processes(
        (race_to_claim, migrated_db_url, ids, "gpu-a", 20),
        (race_to_claim, migrated_db_url, ids, "gpu-b", 20),
    )

    assert not set(won_a) & set(won_b), "a job was claimed by both processes"
    assert sorted(won_a + won_b) == sorted(ids)
    assert won_a and won_b, "no race happened: one process claimed everything"
    with session_scope(engine) as session:
        jobs = load_jobs(session, ids)
    assert {job.attempts for job in jobs} == {1}
    assert {job.id for job in jobs if job.worker == "gpu-a"} == set(won_a)


def test_a_producer_and_a_worker_in_two_processes_share_one_sqlite_file(
    migrated_sqlite_url: str,
) -> None:
    submissions, jobs_each = 10, 40
    total = submissions * jobs_each

    produced, finished = in_processes(
        (produce, migrated_sqlite_url, submissions, jobs_each),
        (work, migrated_sqlite_url, total),
    )

    assert (produced, finished) == (total, total)
    engine = make_engine(migrated_sqlite_url)
    try:
        with session_scope(engine) as session:
            counts = count_by_status(session)
    finally:
        engine.dispose()
    assert counts[JobStatus.SUCCEEDED] == total
    assert counts[JobStatus.QUEUED] == counts[JobStatus.RUNNING] == 0
