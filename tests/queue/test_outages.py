"""Outages pause the batch runner; they do not fail or spend attempts (``worker.outage``).

In-process runner, SQLite, and a real S3 endpoint (moto) of the test's own that is stopped and
started. ``max_attempts=1`` throughout: a single attempt spent on the outage would fail the job.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from storage.db import make_engine, session_scope
from storage.jobs import Owner, claim_jobs, release_for_retry
from storage.models import JobStatus, utcnow
from storage.objects import PROBE_KEY
from storage.queries import load_jobs
from storage.stores import open_store
from storage.uploads import UploadPool
from tests.harness import MotoServer, new_bucket, wait_until
from tests.queue.test_batch_runner import add_jobs
from worker.batch import BatchRunner, Outlets
from worker.models import load_model
from worker.report import BatchReport
from worker.sampler import TiUESampler


@pytest.fixture()
def moto(s3_env) -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def s3_runtime(embedded_settings, moto):
    """A runner storing to a bucket on ``moto``, one S3 attempt per request (no botocore retries:
    the outage is seen at once), probing at most 0.5 s apart (compressed from 30 s)."""
    engine = make_engine(embedded_settings.resolved_database_url)
    store = open_store(
        new_bucket(moto.url, prefix="outage"),
        endpoint_url=moto.url,
        region="us-east-1",
        max_attempts=1,
        connect_timeout_s=2.0,
        read_timeout_s=10.0,
    )
    published: list[str] = []
    with UploadPool(max_workers=4) as uploads:
        runner = BatchRunner(
            TiUESampler(load_model(embedded_settings.model, device="cpu")),
            Outlets(
                engine=engine,
                store=store,
                uploads=uploads,
                publish=lambda jobs, countdown: published.extend(job.id for job in jobs),
            ),
            worker_name="outage-worker",
            settings=embedded_settings.model_copy(
                update={"max_batch": 4, "max_attempts": 1, "outage_probe_max_s": 0.5}
            ),
        )
        try:
            yield runner, engine, store, published
        finally:
            runner.close()


def run_in_thread(runner: BatchRunner, ids: list[str]) -> tuple[threading.Thread, list]:
    reports: list[BatchReport] = []
    thread = threading.Thread(target=lambda: reports.append(runner.run(ids)), daemon=True)
    thread.start()
    return thread, reports


def jobs_of(engine, ids):
    with session_scope(engine) as session:
        return load_jobs(session, ids)


def test_a_store_outage_keeps_the_jobs_in_hand_and_claims_nothing_new_until_it_ends(
    s3_runtime, moto
):
    runner, engine, store, published = s3_runtime
    model = runner.sampler.model.name
    first = add_jobs(engine, model, [(f"first {i}", i, 64) for i in range(3)])
    later = add_jobs(engine, model, [(f"later {i}", i, 64) for i in range(2)])

    moto.stop()
    thread, reports = run_in_thread(runner, first)
    wait_until(lambda: runner.gate.paused, timeout=60, what="the outage to pause the worker")
    # The jobs in hand stay claimed and held: the heartbeat keeps them this worker's.
    assert sorted(runner.held_job_ids()) == sorted(first)
    assert {job.status for job in jobs_of(engine, first)} == {JobStatus.RUNNING}

    # A new delivery waits at the gate before claiming anything (beside the first one's jobs).
    waiting, later_reports = run_in_thread(runner, later)
    wait_until(lambda: runner.gate.waiting == 2, timeout=30, what="the delivery to wait")
    assert [job.attempts for job in jobs_of(engine, later)] == [0, 0]

    back_at = utcnow()
    moto.start()
    thread.join(timeout=120)
    waiting.join(timeout=120)
    assert not thread.is_alive() and not waiting.is_alive()
    assert not runner.gate.paused

    assert sorted(reports[0].succeeded) == sorted(first)
    assert sorted(later_reports[0].succeeded) == sorted(later)
    assert (reports[0].failed, reports[0].retried, published) == ([], [], [])
    jobs = jobs_of(engine, first + later)
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    assert [job.attempts for job in jobs] == [1] * 5  # the outage spent none
    assert all(job.started_at >= back_at for job in jobs_of(engine, later))
    stored = set(store.list_keys())
    assert {store.key_of(job.image_uri) for job in jobs} <= stored
    assert stored - {store.key_of(job.image_uri) for job in jobs} == {PROBE_KEY}


def test_a_warm_shutdown_during_a_store_outage_gives_the_jobs_back_with_their_attempts(
    s3_runtime, moto
):
    runner, engine, _, published = s3_runtime
    ids = add_jobs(engine, runner.sampler.model.name, [("a", 1, 64), ("b", 2, 64)])

    moto.stop()
    thread, reports = run_in_thread(runner, ids)
    wait_until(lambda: runner.gate.paused, timeout=60, what="the outage to pause the worker")
    runner.gate.stop()  # what worker.tasks does on SIGTERM
    thread.join(timeout=60)
    assert not thread.is_alive()

    assert sorted(reports[0].retried) == sorted(ids) and sorted(published) == sorted(ids)
    for job in jobs_of(engine, ids):
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
        assert "object store was unreachable" in job.error


def test_a_release_for_an_outage_refunds_the_attempt_and_others_keep_it(embedded_settings):
    engine = make_engine(embedded_settings.resolved_database_url)
    ids = add_jobs(engine, "owner/model", [("a", 1, 64), ("b", 2, 64)])
    owner = Owner(worker="w", batch_id="b1")
    with session_scope(engine) as session:
        claim_jobs(session, ids, worker="w", batch_id="b1", batch_size=2)
        assert release_for_retry(
            session, ids[0], error="store down", owner=owner, refund_attempt=True
        )
        assert release_for_retry(session, ids[1], error="sampler failed", owner=owner)
    assert [job.attempts for job in jobs_of(engine, ids)] == [0, 1]
