"""Guarded updates under real concurrency: separate processes writing to one database."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from sqlalchemy import Engine

from storage.db import session_scope
from storage.models import JobStatus
from storage.queries import count_by_status, load_jobs

from .helpers import add_submission, produce, race_to_claim, work

# "spawn": a fresh interpreter per child, as separate worker and producer processes would be
# (forking a parent with open connections and server threads is not a realistic setup).
SPAWN = multiprocessing.get_context("spawn")


def test_two_processes_racing_to_claim_the_same_jobs_claim_each_exactly_once(
    engine: Engine, migrated_db_url: str
) -> None:
    _, ids = add_submission(engine, 600)
    with SPAWN.Manager() as manager, ProcessPoolExecutor(2, mp_context=SPAWN) as pool:
        start = manager.Barrier(2)
        # Both walk the same ids in the same order, so they collide on every chunk.
        futures = [
            pool.submit(race_to_claim, migrated_db_url, ids, worker, 10, start)
            for worker in ("gpu-a", "gpu-b")
        ]
        won_a, won_b = (future.result(timeout=120) for future in futures)

    assert not set(won_a) & set(won_b), "a job was claimed by both processes"
    assert sorted(won_a + won_b) == sorted(ids)
    assert won_a and won_b, "no race happened: one process claimed everything"
    with session_scope(engine) as session:
        jobs = load_jobs(session, ids)
    assert {job.attempts for job in jobs} == {1}
    assert {job.id for job in jobs if job.worker == "gpu-a"} == set(won_a)


def test_a_producer_and_a_worker_in_two_processes_share_one_sqlite_file(
    engine: Engine, migrated_sqlite_url: str
) -> None:
    submissions, jobs_each = 20, 50
    with SPAWN.Manager() as manager, ProcessPoolExecutor(2, mp_context=SPAWN) as pool:
        start = manager.Barrier(2)
        producer = pool.submit(produce, migrated_sqlite_url, submissions, jobs_each, start)
        worker = pool.submit(work, migrated_sqlite_url, submissions * jobs_each, start)
        assert producer.result(timeout=120) == submissions * jobs_each
        assert worker.result(timeout=120) == submissions * jobs_each

    with session_scope(engine) as session:
        counts = count_by_status(session)
    assert counts[JobStatus.SUCCEEDED] == submissions * jobs_each
    assert counts[JobStatus.QUEUED] == counts[JobStatus.RUNNING] == 0
