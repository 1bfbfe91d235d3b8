"""Workers that die or are told to stop: SIGKILL mid-batch, SIGTERM mid-batch, a bad timeout."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from core.errors import UserError
from core.settings import Settings
from status.queries import cancel
from storage.models import JobStatus
from tests.fault.fleet import rows
from tests.fault.reconcile import assert_reconciled
from worker.service import PIPELINE_DEPTH

pytestmark = pytest.mark.slow

FAULTY = "tests.fault.faulty_worker"
# Kubernetes' default terminationGracePeriodSeconds: SIGKILL follows SIGTERM after this long.
GRACE_S = 30


def test_a_worker_killed_mid_batch_loses_nothing_and_another_renders_its_jobs_once(
    make_fleet, redis_server
):
    fleet = make_fleet(broker_url=redis_server.url, visibility_timeout_s=20)
    victim = fleet.start_worker(module=FAULTY, env={"LOOPFREE_TEST_RENDER_DELAY_S": "0.5"})
    survivor = fleet.start_worker()
    victim.wait_ready()
    survivor.wait_ready()
    report = fleet.submit(rows(40))

    fleet.wait(lambda: fleet.running_on(victim), timeout=60, what="the victim to hold a batch")
    victim.kill()
    assert victim.process.returncode == -signal.SIGKILL

    # Its messages come back after the visibility timeout; its claimed jobs are taken over once
    # their heartbeats are stale. The reconciler is left with at most the message it was popping.
    lost = fleet.republish_lost(redis_server, report.submission_id, timeout=20 + 90)
    assert lost <= 1
    fleet.wait_settled(report.submission_id, timeout=60)
    outcome = assert_reconciled(fleet, report.submission_id, submitted=40)
    assert outcome.counts["succeeded"] == 40
    taken_over = [job for job in outcome.jobs if job.attempts == 2]
    assert taken_over, "no job was claimed by the victim and finished by the survivor"
    assert all(job.worker == survivor.name for job in taken_over)
    assert all(job.attempts <= 2 for job in outcome.jobs)


def test_sigterm_finishes_the_batch_in_hand_takes_nothing_more_and_exits_in_time(
    make_fleet, redis_server
):
    fleet = make_fleet(broker_url=redis_server.url)
    worker = fleet.start_worker(module=FAULTY, env={"LOOPFREE_TEST_RENDER_DELAY_S": "1.0"})
    worker.wait_ready()
    report = fleet.submit(rows(40))
    in_hand = fleet.wait(lambda: fleet.running_on(worker), timeout=60, what="a batch in hand")

    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    try:
        returncode = worker.process.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running {GRACE_S}s after SIGTERM:\n{worker.log_text()}")
    took = time.monotonic() - started
    assert returncode == 0, worker.log_text()

    jobs = {job.id: job for job in fleet.jobs(report.submission_id)}
    for held in in_hand:  # the batch in hand was finished and recorded by this worker
        assert jobs[held.id].status is JobStatus.SUCCEEDED, jobs[held.id]
        assert jobs[held.id].worker == worker.name
    # Took nothing more: after the signal it ran only the deliveries already in its pool threads
    # and handed back every one that had not started.
    after_signal = worker.log_text(tail=10_000_000).split("warm shutdown:", 1)[1]
    ran = re.findall(r"batch \w+: (\d+) delivered", after_signal)
    assert len(ran) <= PIPELINE_DEPTH, after_signal
    assert not [j for j in jobs.values() if j.status is JobStatus.RUNNING]
    left = [j for j in jobs.values() if j.status is JobStatus.QUEUED]
    assert len(left) >= 4, "the worker ran everything before it stopped; the test proves nothing"
    # Cancelled before anything renders them: their messages are delivered, nothing is generated.
    cancelled = {job.id for job in left[:3]}
    assert sum(cancel(fleet.engine, fleet.app, job_id).cancelled for job_id in cancelled) == 3

    # What it had prefetched went back to the broker: another worker finishes the submission.
    with fleet.embedded_worker():
        fleet.wait_settled(report.submission_id, timeout=120)
    outcome = assert_reconciled(fleet, report.submission_id, submitted=40, cancelled=3)
    assert outcome.counts["succeeded"] == 37
    assert {job.id for job in outcome.with_status("cancelled")} == cancelled
    assert all(job.attempts == 0 for job in outcome.with_status("cancelled"))
    assert all(job.attempts == 1 for job in outcome.with_status("succeeded")), "claimed twice"
    assert took < GRACE_S


def test_the_worker_refuses_a_visibility_timeout_shorter_than_its_longest_batch(
    tmp_path, fault_model_dir
):
    from worker.service import build_runtime

    settings = Settings(
        home=tmp_path / "home",
        model=str(fault_model_dir),
        device="cpu",
        max_batch=256,
        visibility_timeout_s=10,
    )
    with pytest.raises(UserError) as refused:
        build_runtime(settings)
    message = str(refused.value)
    assert "visibility timeout (10s) is shorter than the longest batch" in message
    assert "LOOPFREE_VISIBILITY_TIMEOUT_S" in message
