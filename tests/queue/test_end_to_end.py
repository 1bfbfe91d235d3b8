"""The whole system with real parts: Redis broker, PostgreSQL, an S3 endpoint over HTTP, and a real
``loopfree worker`` process rendering with a tiny random-weight model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from producer.prompts import JobDefaults, PromptFileError
from producer.submit import submit_file
from status.queries import cancel, list_jobs, wait_for
from storage.db import make_engine, session_scope
from storage.models import Job, Submission
from storage.stores import open_store
from taskqueue.app import make_celery, queue_name
from tests.helpers_processes import WorkerProcess, settings_from
from worker.models import load_model
from worker.sampler import TiUESampler

pytestmark = pytest.mark.slow


def write_jsonl(path: Path, count: int) -> Path:
    lines = []
    for i in range(count):
        size = 80 if i % 5 == 0 else 64
        lines.append(
            json.dumps({"prompt": f"prompt number {i % 37}", "height": size, "width": size})
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_few_hundred_prompts_become_stored_images_equal_to_local_generation(
    tmp_path, fleet_env, queue_model_dir
):
    settings = settings_from(fleet_env)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", 240)
    report = submit_file(settings, prompts, JobDefaults(model=settings.model, seed_base=100))
    assert report.jobs == 240 and report.published == 240

    worker = WorkerProcess(fleet_env, tmp_path / "worker.log")
    engine = make_engine(settings.resolved_database_url)
    try:
        assert wait_for(engine, report.submission_id, poll_s=0.5, timeout_s=300)
        metrics = (
            urllib.request.urlopen(
                f"http://127.0.0.1:{fleet_env['LOOPFREE_METRICS_PORT']}/metrics", timeout=5
            )
            .read()
            .decode()
        )
    finally:
        assert worker.stop() == 0

    engine = make_engine(settings.resolved_database_url)
    records = list(list_jobs(engine, submission_id=report.submission_id, stage=None, limit=None))
    assert [r["status"] for r in records] == ["succeeded"] * 240
    store = open_store(
        settings.resolved_storage_url, endpoint_url=settings.s3_endpoint_url, region="us-east-1"
    )
    # One object per job, no extras.
    assert len(list(store.submission_keys(report.submission_id))) == 240

    sampler = TiUESampler(load_model(str(queue_model_dir), device="cpu"))
    batch_sizes = set()
    for record in records:
        data = store.get(record["image_uri"])
        assert record["image_bytes"] == len(data)
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG"
        assert image.size == (record["width"], record["height"])
        batch_sizes.add(record["batch_size"])
        if record["position"] % 6 == 0:  # 40 of them, rendered alone, must match
            alone, _ = sampler.generate(
                [record["prompt"]], [record["seed"]], record["height"], record["width"]
            )
            pixels = np.asarray(image.convert("RGB")).astype(int)
            assert np.abs(pixels - alone.images[0].numpy().astype(int)).max() <= 1
    assert max(batch_sizes) > 1  # jobs from one submission were batched together

    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    images_total = sum(v for k, v in samples.items() if k.startswith("loopfree_images_total"))
    assert images_total == 240
    assert samples["loopfree_model_load_seconds"] > 0


def test_a_bad_file_is_refused_with_line_numbers_and_nothing_is_queued(tmp_path, fleet_env):
    settings = settings_from(fleet_env)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "fine"}\n{"prompt": ""}\n{"prompt": "x", "height": 500}\nnot json\n',
        encoding="utf-8",
    )
    with pytest.raises(PromptFileError) as refused:
        submit_file(settings, bad, JobDefaults(model=settings.model))
    message = str(refused.value)
    for line in ("line 2", "line 3", "line 4"):
        assert line in message
    client = redis.Redis.from_url(fleet_env["LOOPFREE_BROKER_URL"])
    assert client.llen(queue_name(settings.model)) == 0
    with session_scope(make_engine(settings.resolved_database_url)) as session:
        assert session.query(Submission).count() == 0 and session.query(Job).count() == 0


def test_a_cancelled_job_is_never_generated(tmp_path, fleet_env):
    settings = settings_from(fleet_env)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", 6)
    report = submit_file(settings, prompts, JobDefaults(model=settings.model, seed_base=1))
    engine = make_engine(settings.resolved_database_url)
    victim = next(iter(list_jobs(engine, submission_id=report.submission_id, stage=None, limit=1)))
    assert cancel(engine, make_celery(settings), victim["id"]).cancelled == 1
    worker = WorkerProcess(fleet_env, tmp_path / "worker.log")
    try:
        wait_for(engine, report.submission_id, timeout_s=120)
    finally:
        worker.stop()
    records = {
        r["id"]: r
        for r in list_jobs(engine, submission_id=report.submission_id, stage=None, limit=None)
    }
    assert records[victim["id"]]["status"] == "cancelled"
    assert records[victim["id"]]["image_uri"] is None and records[victim["id"]]["attempts"] == 0
    assert sum(r["status"] == "succeeded" for r in records.values()) == 5
    store = open_store(
        settings.resolved_storage_url, endpoint_url=settings.s3_endpoint_url, region="us-east-1"
    )
    assert not store.exists(store.key_for(report.submission_id, victim["id"]))


def test_submitting_the_same_file_twice_returns_the_same_submission_without_new_jobs(
    tmp_path, fleet_env
):
    settings = settings_from(fleet_env)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", 10)
    first = submit_file(settings, prompts, JobDefaults(model=settings.model, seed_base=1))
    second = submit_file(settings, prompts, JobDefaults(model=settings.model, seed_base=1))
    assert second.submission_id == first.submission_id
    assert (first.created, second.created) == (True, False)
    assert second.inserted == 0
    with session_scope(make_engine(settings.resolved_database_url)) as session:
        assert session.query(Job).count() == 10


def test_the_embedded_defaults_run_a_file_end_to_end_with_one_command(tmp_path, queue_model_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue whale\n\na green forest\n", encoding="utf-8")
    env = {**os.environ, "LOOPFREE_HOME": str(tmp_path / "home")}
    env = {k: v for k, v in env.items() if not k.startswith("LOOPFREE_") or k == "LOOPFREE_HOME"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loopfree.cli",
            "run",
            str(prompts),
            "--model",
            str(queue_model_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = list((tmp_path / "home" / "outputs").rglob("*.png"))
    assert len(outputs) == 3
    assert all(Image.open(path).size == (64, 64) for path in outputs)
    assert "images: file://" in done.stdout
