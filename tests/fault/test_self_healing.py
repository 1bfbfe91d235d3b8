"""No dead or stalled part parks the work: workers take back what a dead or stalled worker held,
on their own, within a minute, and nothing the reconciler does waits on a stalled transaction.

These tests run the recovery timings at their defaults (heartbeat 10 s, stale after 30 s, a
reconcile pass every 10 s, visibility timeout an hour): the bound they assert is the one the
README promises. Only the batch size is small, for two busy cores.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta

import psycopg
import pytest

from core.settings import Settings
from storage.db import make_engine, session_scope
from storage.jobs import claim_jobs
from storage.models import JobStatus, utcnow
from tests.fault.fleet import rows
from tests.fault.reconcile import assert_reconciled
from tests.helpers_processes import run_cli

pytestmark = pytest.mark.slow

FAULTY = "tests.fault.faulty_worker"
DEFAULTS = Settings()
# The recovery timings as shipped, over FAST_FAULTS' compressed ones.
DEFAULT_RECOVERY: dict[str, object] = dict(
    heartbeat_s=DEFAULTS.heartbeat_s,
    stuck_after_s=DEFAULTS.stuck_after_s,
    reconcile_interval_s=DEFAULTS.reconcile_interval_s,
    visibility_timeout_s=DEFAULTS.visibility_timeout_s,
)
RECOVERY_BOUND_S = 60


def test_a_killed_workers_claimed_and_prefetched_jobs_sample_again_within_a_minute(
    make_fleet, redis_server
):
    fleet = make_fleet(broker_url=redis_server.url, **DEFAULT_RECOVERY)
    victim = fleet.start_worker(module=FAULTY, env={"LOOPFREE_TEST_RENDER_DELAY_S": "3"})
    survivor = fleet.start_worker()
    victim.wait_ready()
    survivor.wait_ready()
    report = fleet.submit(rows(40))

    claimed = fleet.wait(lambda: fleet.running_on(victim), timeout=60, what="a batch in hand")
    # Prefetched but not claimed: delivered to a worker (in kombu's unacked hash) yet queued.
    unacked = redis_server.client().hlen("unacked")
    killed_at = utcnow()
    victim.kill()
    assert victim.process.returncode == -signal.SIGKILL
    assert unacked > len(claimed), "the victim had prefetched nothing; the test proves less"

    # No operator: no `requeue`, and the broker would hand the messages back only in an hour.
    fleet.wait_settled(report.submission_id, timeout=RECOVERY_BOUND_S + 60)
    outcome = assert_reconciled(fleet, report.submission_id, submitted=40)
    assert outcome.counts["succeeded"] == 40
    last_claim = max(job.started_at for job in outcome.jobs)
    took = (last_claim - killed_at).total_seconds()
    assert took <= RECOVERY_BOUND_S, f"the last job began sampling {took:.0f}s after the kill"
    for job in claimed:
        final = next(j for j in outcome.jobs if j.id == job.id)
        assert final.worker == survivor.name and final.attempts == 2, final
    print(f"recovery after SIGKILL: every job sampling {took:.1f}s after the kill")


def test_a_stopped_workers_jobs_go_back_once_its_heartbeat_is_stale_and_nothing_waits_on_it(
    make_fleet, redis_server
):
    """SIGSTOP, not SIGKILL: the stalled worker keeps its connections, its row locks and its
    prefetched messages, and may wake up later. Its jobs go back once its heartbeat is stale
    (PostgreSQL ends a session idle in a transaction, and every reconciler statement skips or
    times out on a locked row); when it wakes, its late results are refused: one per job."""
    fleet = make_fleet(broker_url=redis_server.url, **DEFAULT_RECOVERY)
    victim = fleet.start_worker(module=FAULTY, env={"LOOPFREE_TEST_RENDER_DELAY_S": "3"})
    survivor = fleet.start_worker()
    victim.wait_ready()
    survivor.wait_ready()
    report = fleet.submit(rows(40))

    claimed = fleet.wait(lambda: fleet.running_on(victim), timeout=60, what="a batch in hand")
    stopped_at = utcnow()
    os.kill(victim.process.pid, signal.SIGSTOP)
    try:
        # No operator, and the stalled worker still holds what it held.
        fleet.wait_settled(report.submission_id, timeout=RECOVERY_BOUND_S + 120)
        took = (utcnow() - stopped_at).total_seconds()
    finally:
        os.kill(victim.process.pid, signal.SIGCONT)
    # Awake again, the worker finishes its stale batch (a warm stop waits for it to end, so every
    # late write is in before the check); its results must not count.
    victim.stop(timeout=120)
    fleet.wait_settled(report.submission_id, timeout=120)
    outcome = assert_reconciled(fleet, report.submission_id, submitted=40)
    assert outcome.counts["succeeded"] == 40
    for job in claimed:
        final = next(j for j in outcome.jobs if j.id == job.id)
        assert final.worker == survivor.name, final
    print(f"recovery after SIGSTOP: every job done {took:.1f}s after the stop")


def test_requeue_stuck_skips_a_row_a_stalled_transaction_holds_and_takes_it_once_released(
    make_fleet, redis_url
):
    fleet = make_fleet(broker_url=redis_url)
    report = fleet.submit(rows(3))
    jobs = fleet.jobs(report.submission_id)
    stale = utcnow() - timedelta(seconds=3600)
    with session_scope(fleet.engine) as session:
        ids = [job.id for job in jobs]
        claim_jobs(session, ids, worker="gone", batch_id="b", batch_size=3, now=stale)
    # A stalled process: a transaction that locked one job's row and then stopped.
    url = fleet.settings.resolved_database_url.replace("postgresql+psycopg", "postgresql")
    stalled = psycopg.connect(url)
    stalled.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (jobs[0].id,))

    started = time.monotonic()
    done = run_cli(["requeue", "--stuck"], fleet.env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30, "requeue waited on the stalled transaction"
    assert json.loads(done.stdout)["released"] == 2

    stalled.rollback()  # what the server's idle-in-transaction timeout does to a stalled session
    stalled.close()
    done = run_cli(["requeue", "--stuck"], fleet.env, timeout=60)
    assert json.loads(done.stdout)["released"] == 1
    assert {job.status for job in fleet.jobs(report.submission_id)} == {JobStatus.QUEUED}


def test_database_sessions_cannot_sit_idle_in_a_transaction(make_fleet, redis_url):
    fleet = make_fleet(broker_url=redis_url)
    engine = make_engine(fleet.settings.resolved_database_url)
    try:
        with engine.connect() as connection:
            setting = connection.exec_driver_sql("SHOW idle_in_transaction_session_timeout")
            assert setting.scalar() not in ("0", None)
            assert connection.exec_driver_sql("SHOW statement_timeout").scalar() not in ("0",)
    finally:
        engine.dispose()
