"""The exporter against real databases and a real Redis, scraped over HTTP like Prometheus does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select

from core.settings import Settings
from fleet.exporter import FleetCollector, collect_fleet_metrics, render
from migrations.runner import upgrade
from storage import jobs as job_store
from storage.db import make_engine, session_scope
from storage.models import Job, JobStatus, utcnow
from storage.progress import STAGES
from taskqueue.app import make_celery, publish_jobs, queue_name
from tests.conftest import free_port
from tests.fleet.conftest import MODEL_A, MODEL_B, Seeded, add_jobs
from tests.storage.helpers import mark_succeeded

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def scrape(collector: FleetCollector) -> Samples:
    """Serve the collector on a loopback port the OS picks, GET /metrics once, stop serving."""
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        return parse(fetch(f"http://127.0.0.1:{server.server_port}/metrics"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def sqlite_engine(sqlite_url: str):
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_a_scrape_reports_every_status_of_every_model_with_zeros_included(
    engine: Engine, seeded: Seeded
):
    collector = FleetCollector(engine, None, models=["fleet-test/no-jobs"])
    collector.refresh()
    samples = scrape(collector)

    # Stages, the words `status` and the web view use: running jobs are claimed or rendering.
    expected_a = {"succeeded": 17, "claimed": 2, "rendering": 0, "queued": 3, "failed": 1,
                  "cancelled": 1}  # fmt: skip
    for status, count in expected_a.items():
        assert value(samples, "loopfree_jobs", model=MODEL_A, status=status) == count
    assert value(samples, "loopfree_jobs", model=MODEL_A, status="running") is None
    for stage in STAGES:
        want = 2 if stage == "succeeded" else 0
        assert value(samples, "loopfree_jobs", model=MODEL_B, status=stage) == want
        assert value(samples, "loopfree_jobs", model="fleet-test/no-jobs", status=stage) == 0
    assert value(samples, "loopfree_database_up") == 1
    # No Celery app given: nothing about the broker, rather than a made-up "up".
    assert "loopfree_broker_up" not in names(samples)


def test_pending_jobs_count_queued_and_running_and_an_idle_model_reads_zero(
    engine: Engine, seeded: Seeded
):
    collector = FleetCollector(engine, None, models=["fleet-test/no-jobs"])
    collector.refresh()
    samples = scrape(collector)
    assert value(samples, "loopfree_pending_jobs", model=MODEL_A) == 5
    assert value(samples, "loopfree_pending_jobs", model=MODEL_B) == 0
    assert value(samples, "loopfree_pending_jobs", model="fleet-test/no-jobs") == 0


def test_throughput_is_the_median_workers_rate_over_busy_time_within_the_lookback(
    engine: Engine, seeded: Seeded
):
    collector = FleetCollector(engine, None, models=["fleet-test/no-jobs"])
    collector.refresh()
    samples = scrape(collector)
    rate = "loopfree_worker_throughput_images_per_second"
    assert value(samples, rate, model=MODEL_A) == pytest.approx(seeded.median_rate_a)
    assert value(samples, "loopfree_throughput_workers", model=MODEL_A) == 3
    assert value(samples, rate, model=MODEL_B) == pytest.approx(seeded.rate_b)
    assert value(samples, "loopfree_throughput_workers", model=MODEL_B) == 1
    # Nothing measured: no rate at all (a 0 would read as "workers drain nothing").
    assert value(samples, rate, model="fleet-test/no-jobs") is None
    assert value(samples, "loopfree_throughput_workers", model="fleet-test/no-jobs") == 0


def test_the_oldest_queued_jobs_age_and_the_recommended_workers_are_served_per_model(
    engine: Engine, seeded: Seeded
):
    collector = FleetCollector(engine, None, models=["fleet-test/no-jobs"])
    collector.refresh()
    samples = scrape(collector)
    age = "loopfree_oldest_queued_age_seconds"
    recommended = "loopfree_recommended_workers"
    # MODEL_A's 3 queued jobs were created three days before seeded.base (an hour ago): long
    # late, so new workers get the 30 s floor: 5 / (2.667 x 30) -> 1 worker.
    assert value(samples, age, model=MODEL_A) == pytest.approx(3 * 86_400 + 3_600, abs=60)
    assert value(samples, recommended, model=MODEL_A) == 1
    # Nothing queued: age 0 and no worker, rather than no series (KEDA would read "no data").
    for idle in (MODEL_B, "fleet-test/no-jobs"):
        assert value(samples, age, model=idle) == 0
        assert value(samples, recommended, model=idle) == 0


def test_recommended_workers_use_the_exporters_target_and_start_up(engine: Engine, seeded: Seeded):
    # MODEL_B's workers drain 0.5 jobs/s. 250 jobs queued 100 s ago: 200 s left of 300 s, 140 s
    # after a 60 s start-up: 250 / (0.5 x 140) = 3.6 -> 4; without a start-up 250 / 100 -> 3.
    add_jobs(engine, MODEL_B, 250, now=utcnow() - timedelta(seconds=100))
    for startup_s, workers in ((60.0, 4), (0.0, 3)):
        collector = FleetCollector(engine, None, target_s=300, startup_s=startup_s)
        snapshot = collector.refresh()
        assert snapshot.oldest_queued_age_s[MODEL_B] == pytest.approx(100, abs=20)
        samples = scrape(collector)
        assert value(samples, "loopfree_recommended_workers", model=MODEL_B) == workers


def test_scrapes_serve_the_last_refresh_until_the_next_one(engine: Engine, seeded: Seeded):
    collector = FleetCollector(engine, None)
    assert scrape(collector) == {}  # nothing before the first refresh
    collector.refresh()
    add_jobs(engine, MODEL_A, 4)
    assert value(scrape(collector), "loopfree_pending_jobs", model=MODEL_A) == 5
    collector.refresh()
    assert value(scrape(collector), "loopfree_pending_jobs", model=MODEL_A) == 9


def test_pending_is_counted_afresh_every_refresh_and_finished_jobs_on_full_refreshes_only(
    engine: Engine, seeded: Seeded
):
    collector = FleetCollector(engine, None, full_every_s=3600)
    assert collector.refresh().full
    running = _job_ids(engine, MODEL_A, JobStatus.RUNNING)
    assert len(running) == 2
    with session_scope(engine) as session:  # w5 finishes its two jobs in 2 s
        for job_id in running:
            done = mark_succeeded(
                session, job_id, _RESULT, now=seeded.base + timedelta(seconds=202)
            )
            assert done
    add_jobs(engine, "fleet-test/arrived", 1)

    partial = collector.refresh()
    assert not partial.full
    samples = scrape(collector)
    assert value(samples, "loopfree_pending_jobs", model=MODEL_A) == 3
    assert value(samples, "loopfree_jobs", model=MODEL_A, status="claimed") == 0
    assert value(samples, "loopfree_jobs", model=MODEL_A, status="succeeded") == 17  # as before
    assert value(samples, "loopfree_pending_jobs", model="fleet-test/arrived") == 1
    assert value(samples, "loopfree_jobs", model="fleet-test/arrived", status="failed") == 0
    # The oldest queued job is looked up on every refresh; a model not measured yet gets one worker.
    assert value(samples, "loopfree_oldest_queued_age_seconds", model="fleet-test/arrived") < 60
    assert value(samples, "loopfree_recommended_workers", model="fleet-test/arrived") == 1
    rate = "loopfree_worker_throughput_images_per_second"
    assert value(samples, rate, model=MODEL_A) == pytest.approx(seeded.median_rate_a)

    collector.full_every_s = 0
    assert collector.refresh().full
    samples = scrape(collector)
    assert value(samples, "loopfree_jobs", model=MODEL_A, status="succeeded") == 19
    # w5 joins the measured workers at 1/s: the median of 1, 2, 2.667 and 4 is 2.333.
    assert value(samples, "loopfree_throughput_workers", model=MODEL_A) == 4
    assert value(samples, rate, model=MODEL_A) == pytest.approx(7 / 3)


def test_an_unreachable_database_reads_as_down_and_its_gauges_are_left_out():
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
    try:
        snapshot = collect_fleet_metrics(engine, None, models=["fleet-test/x"])
    finally:
        engine.dispose()
    assert snapshot.database_up is False
    samples = parse(render(snapshot))
    assert value(samples, "loopfree_database_up") == 0
    # Left out, not 0: with ignoreNullValues "false", KEDA falls back to one worker instead of
    # reading "nothing pending" and scaling to zero.
    assert not names(samples) & {
        "loopfree_jobs",
        "loopfree_pending_jobs",
        "loopfree_oldest_queued_age_seconds",
        "loopfree_recommended_workers",
    }


def test_a_database_without_the_schema_reads_as_down(sqlite_url: str):
    engine = make_engine(sqlite_url)  # never migrated
    try:
        snapshot = collect_fleet_metrics(engine, None)
    finally:
        engine.dispose()
    assert snapshot.database_up is False
    assert snapshot.pending == {}


def test_queue_depth_counts_the_messages_waiting_in_each_models_redis_queue(
    sqlite_engine: Engine, unique_model: str, redis_broker_url: str, tmp_path: Path
):
    app = make_celery(Settings(home=tmp_path / "home", broker_url=redis_broker_url))
    job_ids = add_jobs(sqlite_engine, unique_model, 4)
    # Different priorities land in different Redis lists; the depth is their sum.
    published = publish_jobs(
        app,
        [(job_ids[0], unique_model, 9)] + [(job_id, unique_model, 5) for job_id in job_ids[1:3]],
    )
    assert published == 3

    collector = FleetCollector(sqlite_engine, app, models=["fleet-test/never-published"])
    collector.refresh()
    samples = scrape(collector)
    assert value(samples, "loopfree_broker_up") == 1
    assert value(samples, "loopfree_queue_depth", queue=queue_name(unique_model)) == 3
    # A model with no queue yet reads 0, and the database still counts all four jobs as pending.
    assert (
        value(samples, "loopfree_queue_depth", queue=queue_name("fleet-test/never-published")) == 0
    )
    assert value(samples, "loopfree_pending_jobs", model=unique_model) == 4


def test_an_unreachable_broker_reads_as_down_while_the_database_gauges_stay(
    sqlite_engine: Engine, tmp_path: Path
):
    add_jobs(sqlite_engine, MODEL_A, 2)
    dead = Settings(home=tmp_path / "home", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    collector = FleetCollector(sqlite_engine, make_celery(dead))
    collector.refresh()
    samples = scrape(collector)
    assert value(samples, "loopfree_broker_up") == 0
    assert "loopfree_queue_depth" not in names(samples)
    assert value(samples, "loopfree_pending_jobs", model=MODEL_A) == 2


def test_the_metrics_command_serves_refreshes_and_exits_cleanly_on_sigterm(
    sqlite_url: str, sqlite_engine: Engine, unique_model: str, redis_broker_url: str, tmp_path: Path
):
    add_jobs(sqlite_engine, unique_model, 2)
    port = free_port()
    env = {
        **os.environ,
        "LOOPFREE_HOME": str(tmp_path / "home"),
        "LOOPFREE_DATABASE_URL": sqlite_url,
        "LOOPFREE_BROKER_URL": redis_broker_url,
        "LOOPFREE_MODEL": "fleet-test/configured",
    }
    program = (
        "import typer; from loopfree.commands.fleet import register; "
        "app = typer.Typer(); register(app); app()"
    )
    command = [sys.executable, "-c", program, "metrics", "--port", str(port)]
    command += ["--address", "127.0.0.1", "--interval", "0.2"]
    command += ["--target-seconds", "600", "--startup-seconds", "120"]
    log = tmp_path / "exporter.log"
    process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        samples = _scrape_when_up(url, process, log)
        assert value(samples, "loopfree_pending_jobs", model=unique_model) == 2
        # LOOPFREE_MODEL is reported even though it has no job: KEDA reads 0, not "no data".
        assert value(samples, "loopfree_pending_jobs", model="fleet-test/configured") == 0
        assert value(samples, "loopfree_broker_up") == 1
        assert value(samples, "loopfree_recommended_workers", model=unique_model) == 1
        assert value(samples, "loopfree_recommended_workers", model="fleet-test/configured") == 0

        add_jobs(sqlite_engine, unique_model, 3)
        deadline = time.monotonic() + 20
        while value(parse(fetch(url)), "loopfree_pending_jobs", model=unique_model) != 5:
            assert time.monotonic() < deadline, "the exporter never refreshed"
            time.sleep(0.1)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(urllib.error.URLError):
        fetch(url)


def _scrape_when_up(url: str, process: subprocess.Popen[bytes], log: Path) -> Samples:
    """Scrape once the exporter listens; fail with its output if it exits or never listens."""
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"the exporter exited with {process.returncode}:\n{log.read_text()}")
        try:
            return parse(fetch(url))
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, "the exporter never started listening"
            time.sleep(0.1)


_RESULT = job_store.JobResult(
    image_uri="file:///x.png",
    image_bytes=1,
    image_sha256="0" * 64,
    sample_s=0.1,
    upload_s=0.1,
    gpu_share_s=0.1,
)


def _job_ids(engine: Engine, model: str, status: JobStatus) -> list[str]:
    with session_scope(engine) as session:
        statement = select(Job.id).where(Job.model == model, Job.status == status)
        return list(session.scalars(statement))
