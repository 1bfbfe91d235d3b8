"""Poison jobs: one that breaks the sampler, one whose row is corrupt, one that kills its worker.
Each ends ``failed`` with its reason; its batch-mates succeed."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from storage.db import session_scope
from storage.models import Job, JobStatus, utcnow
from tests.fault.fleet import Fleet, rows
from tests.fault.reconcile import assert_reconciled
from tests.helpers_processes import WorkerProcess, run_cli

pytestmark = pytest.mark.slow

FAULTY = "tests.fault.faulty_worker"


def test_a_job_that_breaks_the_sampler_fails_alone_and_its_batch_mates_succeed(
    make_fleet, redis_server
):
    fleet = make_fleet(broker_url=redis_server.url)
    report = fleet.submit(rows(12, seed=1000))
    jobs = fleet.jobs(report.submission_id)
    poison, corrupt = jobs[5], jobs[9]
    with session_scope(fleet.engine) as session:  # corrupted after it was validated and queued
        session.execute(update(Job).where(Job.id == corrupt.id).values(steps=0, height=12))

    worker = fleet.start_worker(module=FAULTY, env={"LOOPFREE_TEST_RAISE_SEED": str(poison.seed)})
    fleet.wait_settled(report.submission_id, timeout=120)
    outcome = assert_reconciled(fleet, report.submission_id, submitted=12)
    by_id = {job.id: job for job in outcome.jobs}

    assert outcome.counts == {"succeeded": 10, "failed": 2}
    assert by_id[poison.id].status is JobStatus.FAILED
    expected = f"sampler failed: RuntimeError: poisoned input (seed {poison.seed})"
    assert by_id[poison.id].error == expected
    assert by_id[corrupt.id].status is JobStatus.FAILED
    assert "height 12" in by_id[corrupt.id].error or "steps 0" in by_id[corrupt.id].error
    mates = [
        job
        for job in outcome.jobs
        if job.batch_id == by_id[poison.id].batch_id and job.id not in (poison.id, corrupt.id)
    ]
    assert mates, "the poison job was not batched with others; the test proves nothing"
    assert all(job.status is JobStatus.SUCCEEDED and job.attempts == 1 for job in mates)
    assert worker.alive()


def next_death(
    fleet: Fleet, workers: list[WorkerProcess], seen: list[WorkerProcess]
) -> WorkerProcess:
    """Wait until a worker not in ``seen`` has been killed by the poison job; return it."""

    def dead() -> WorkerProcess | None:
        return next((w for w in workers if not w.alive() and w not in seen), None)

    return fleet.wait(dead, timeout=120, what="the poison job to kill a worker")


def requeue_when_stale(fleet: Fleet, dead: WorkerProcess) -> None:
    """What an operator's reconciler does: once the dead worker's jobs have stopped
    heart-beating for LOOPFREE_STUCK_AFTER_S, take them back and publish every queued job."""
    stuck_after = timedelta(seconds=fleet.settings.stuck_after_s)

    def stale() -> bool:
        return all(job.heartbeat_at < utcnow() - stuck_after for job in fleet.running_on(dead))

    fleet.wait(stale, timeout=60, what="the dead worker's heartbeats to go stale")
    held = len(fleet.running_on(dead))
    done = run_cli(["requeue", "--stuck"], fleet.env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["released"] >= held


def test_a_job_that_kills_its_worker_ends_failed_and_costs_its_batch_mates_nothing(
    make_fleet, redis_server
):
    fleet = make_fleet(broker_url=redis_server.url, max_attempts=2)
    killer_seed = 2003
    faulty = {"LOOPFREE_TEST_KILL_SEED": str(killer_seed)}
    workers = [fleet.start_worker(module=FAULTY, env=faulty) for _ in range(2)]
    for worker in workers:
        worker.wait_ready()
    report = fleet.submit(rows(16, seed=2000))

    # Its first attempt kills the worker running its batch; the reconciler takes the batch back.
    first = next_death(fleet, workers, seen=[])
    requeue_when_stale(fleet, first)
    # Taken back, each job of that batch runs alone: the poison kills the other worker, alone.
    requeue_when_stale(fleet, next_death(fleet, workers, seen=[first]))
    # Out of attempts, it is failed without being rendered again (here by a worker without the
    # fault: it would render the job just fine, so the budget is all that stops it).
    with fleet.embedded_worker():
        fleet.wait_settled(report.submission_id, timeout=120)

    outcome = assert_reconciled(fleet, report.submission_id, submitted=16)
    killer = next(job for job in outcome.jobs if job.seed == killer_seed)
    assert killer.status is JobStatus.FAILED
    assert killer.error == "gave up after 2 attempts; last error: worker stopped"
    others = [job for job in outcome.jobs if job.seed != killer_seed]
    assert all(job.status is JobStatus.SUCCEEDED for job in others), outcome.counts
    assert any(job.attempts == 2 for job in others), "no batch-mate was caught in the crash"
