"""Load with a fault: 5,000 jobs through two workers, one of them SIGKILLed half-way."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from storage.models import utcnow
from tests.fault.fleet import rows
from tests.fault.reconcile import assert_reconciled
from tests.helpers_processes import run_cli

pytestmark = pytest.mark.slow

JOBS = 5_000


def test_five_thousand_jobs_reconcile_after_one_of_two_workers_is_killed_half_way(
    make_fleet, redis_server
):
    """The victim's claimed and prefetched jobs come back through the visibility timeout. One
    thing does not: a message the victim had just popped from Redis and not yet recorded as
    unacknowledged (kombu's Redis transport pops first, then records) dies with it. The database
    still says ``queued``, so the reconciler an operator runs on a timer republishes it; here it
    runs once, concurrently with the surviving worker, as soon as the victim's jobs look stale."""
    fleet = make_fleet(
        broker_url=redis_server.url,
        max_batch=16,
        max_wait_ms=200,
        upload_workers=8,
        visibility_timeout_s=60,
    )
    victim, survivor = fleet.start_worker(), fleet.start_worker()
    started = time.monotonic()
    # One DDIM step leaves the CPU to the rest of the pipeline: queue, store, database.
    report = fleet.submit(rows(JOBS, steps=1))
    # The database holds the backlog; the workers' dispatchers send it to Redis a window at a time.
    assert report.inserted == JOBS and report.published == 0
    submitted_at = time.monotonic() - started
    victim.wait_ready()
    survivor.wait_ready()

    def half_way_and_victim_busy() -> bool:
        return fleet.counts(report.submission_id)["succeeded"] >= JOBS // 2 and bool(
            fleet.running_on(victim)
        )

    fleet.wait(half_way_and_victim_busy, timeout=240, interval=0.1, what="half of the jobs")
    victim.kill()
    killed_at = time.monotonic() - started

    stale = timedelta(seconds=fleet.settings.stuck_after_s)
    fleet.wait(
        lambda: all(job.heartbeat_at < utcnow() - stale for job in fleet.running_on(victim)),
        timeout=60,
        what="the victim's jobs to stop heart-beating",
    )
    requeue = run_cli(["requeue", "--stuck"], fleet.env)
    assert requeue.returncode == 0, requeue.stderr
    assert json.loads(requeue.stdout)["released"] >= 1

    fleet.wait_settled(report.submission_id, timeout=300)
    settled_at = time.monotonic() - started
    outcome = assert_reconciled(fleet, report.submission_id, submitted=JOBS)
    assert outcome.counts["succeeded"] == JOBS
    taken_over = [job for job in outcome.jobs if job.attempts == 2]
    assert taken_over and all(job.worker == survivor.name for job in taken_over)
    assert max(job.attempts for job in outcome.jobs) == 2
    print(
        f"submitted in {submitted_at:.0f}s, killed at {killed_at:.0f}s, settled at "
        f"{settled_at:.0f}s, reconciled at {time.monotonic() - started:.0f}s; "
        f"{len(taken_over)} jobs taken over from the victim"
    )
