"""PostgreSQL goes away while a worker records results; a wrong password is reported, masked.

The database is a private cluster (``initdb`` into a temporary folder, password-protected over
TCP), so stopping it disturbs nobody else.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager

import psycopg
import pytest

from tests.conftest import service_missing
from tests.fault.conftest import open_fleet, private_redis
from tests.fault.fleet import rows
from tests.fault.reconcile import assert_reconciled
from tests.helpers_processes import PostgresServer, run_cli

pytestmark = pytest.mark.slow

PASSWORD = "pg-Secret-4711"
OUTAGE_S = 6


@pytest.fixture(scope="module")
def postgres():
    try:
        server = PostgresServer(PASSWORD)
    except (OSError, subprocess.CalledProcessError) as error:
        service_missing("PostgreSQL server binaries (initdb, pg_ctl)", error)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def database_url(postgres):
    """A migrated database in the private cluster (thrown away with the cluster)."""
    from migrations.runner import upgrade

    with psycopg.connect(postgres.url().replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute("CREATE DATABASE loopfree")
    url = postgres.url("loopfree")
    upgrade(url)
    return url


@pytest.fixture()
def fleet_on_database(pg_admin, s3_server, s3_env, fault_model_dir, database_url):
    """Opens a fleet on a private Redis and the private cluster's database; yields both."""

    @contextmanager
    def open_on(tmp_path):
        with (
            private_redis(tmp_path / "redis") as redis,
            open_fleet(
                tmp_path / "fleet",
                pg_admin=pg_admin,
                s3_endpoint=s3_server,
                model=fault_model_dir,
                broker_url=redis.url,
                database_url=database_url,
            ) as fleet,
        ):
            yield redis, fleet

    return open_on


def test_results_rendered_while_postgres_is_down_are_recorded_when_it_returns(
    tmp_path, fleet_on_database, postgres
):
    with fleet_on_database(tmp_path) as (_, fleet):
        worker = fleet.start_worker()
        worker.wait_ready()
        report = fleet.submit(rows(160))
        fleet.wait(
            lambda: fleet.counts(report.submission_id)["succeeded"] >= 8,
            timeout=60,
            what="the first results",
        )

        postgres.stop()  # fast shutdown: every connection is cut, open transactions roll back
        time.sleep(OUTAGE_S)  # the outage itself
        postgres.start()

        fleet.wait_settled(report.submission_id, timeout=180)
        outcome = assert_reconciled(fleet, report.submission_id, submitted=160)
        assert outcome.counts["succeeded"] == 160
        assert worker.alive()
        log = worker.log_text(tail=10_000_000)
        assert "database unavailable" in log, "the outage never reached the worker"
        assert PASSWORD not in log


def test_a_wrong_database_password_is_reported_masked_and_without_a_traceback(postgres):
    wrong = "not-the-" + PASSWORD
    env = {"LOOPFREE_DATABASE_URL": postgres.url(password=wrong)}
    done = run_cli(["stats"], env)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output  # a configuration error: retrying will not help
    assert "password authentication failed" in output
    assert "LOOPFREE_DATABASE_URL" in output
    assert "postgres:***@127.0.0.1" in output
    assert wrong not in output and PASSWORD not in output
    assert "Traceback" not in output


def test_a_delivery_the_database_outlasts_is_published_again_and_not_lost(
    tmp_path, fleet_on_database, fault_model_dir, postgres, database_url
):
    """Past the runner's bound for retrying the database, the delivery gives up; its messages
    are acknowledged all the same (celery-batches acks on return), so the task publishes the jobs
    again, due once a job it may have claimed looks abandoned."""
    from celery_batches import SimpleRequest

    from storage.db import make_engine
    from storage.uploads import UploadPool
    from taskqueue.app import GENERATE_TASK, make_celery
    from worker.batch import BatchRunner, Outlets
    from worker.models import load_model
    from worker.sampler import TiUESampler
    from worker.tasks import register_generate_task

    with (
        fleet_on_database(tmp_path) as (redis, fleet),
        UploadPool(max_workers=2) as uploads,
    ):
        report = fleet.submit(rows(3))
        job_ids = [job.id for job in fleet.jobs(report.submission_id)]
        redis.client().flushall()  # the submit's messages: this test delivers by hand
        runner = BatchRunner(
            TiUESampler(load_model(str(fault_model_dir), device="cpu")),
            Outlets(
                engine=make_engine(database_url),
                store=fleet.store,
                uploads=uploads,
                publish=lambda jobs, countdown: None,
            ),
            worker_name="bounded-worker",
            settings=fleet.settings.model_copy(update={"stuck_after_s": 1.0, "db_retry_s": 2.0}),
        )
        app = make_celery(fleet.settings)
        register_generate_task(app, runner, max_batch=4, max_wait_ms=10)
        requests = [
            SimpleRequest(
                job_id, GENERATE_TASK, (job_id,), {}, {"priority": 4}, "test", True, None, None, {}
            )
            for job_id in job_ids
        ]

        postgres.stop()
        try:
            app.tasks[GENERATE_TASK](requests)  # retries for 2 s, gives up, publishes again
        finally:
            postgres.start()
        assert fleet.broker_messages(redis) == 3
        assert fleet.counts(report.submission_id) == {"queued": 3}

        with fleet.embedded_worker():
            fleet.wait_settled(report.submission_id, timeout=120)
        outcome = assert_reconciled(fleet, report.submission_id, submitted=3)
        assert outcome.counts["succeeded"] == 3
