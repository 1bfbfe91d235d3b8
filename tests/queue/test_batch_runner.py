"""The worker's batch runner as plain functions: no Celery, embedded database and store."""

from __future__ import annotations

import io
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.jobspec import JobSpec, ParsedJob
from storage.db import make_engine, session_scope
from storage.models import JobStatus
from storage.queries import get_job, load_jobs
from storage.stores import open_store
from storage.submissions import create_submission, insert_jobs, job_id_for
from storage.uploads import UploadPool
from worker.batch import BatchRunner, Outlets
from worker.models import load_model
from worker.sampler import TiUESampler


@pytest.fixture()
def runtime(embedded_settings):
    model = load_model(embedded_settings.model, device="cpu")
    engine = make_engine(embedded_settings.resolved_database_url)
    store = open_store(embedded_settings.resolved_storage_url)
    published = []
    with UploadPool(max_workers=4) as uploads:

        def publish(jobs, countdown):
            published.extend(job.id for job in jobs)

        runner = BatchRunner(
            TiUESampler(model),
            Outlets(engine=engine, store=store, uploads=uploads, publish=publish),
            worker_name="test-worker",
            # The webhook test's receiver listens on loopback, which only an allow-list opens.
            settings=embedded_settings.model_copy(
                update={"max_batch": 4, "webhook_allow": "127.0.0.1"}
            ),
        )
        try:
            yield runner, engine, store, published
        finally:
            runner.close()


def add_jobs(engine, model: str, prompts: list[tuple[str, int, int]]) -> list[str]:
    """Insert (prompt, seed, size) jobs as one submission; returns their ids."""
    with session_scope(engine) as session:
        ref = create_submission(session, source="test", defaults={}, job_count=len(prompts))
        insert_jobs(
            session,
            ref.id,
            [
                ParsedJob(
                    JobSpec(prompt=prompt, seed=seed, height=size, width=size, model=model),
                    line_number=i + 1,
                    position=i,
                )
                for i, (prompt, seed, size) in enumerate(prompts)
            ],
        )
    return [job_id_for(ref.id, i) for i in range(len(prompts))]


def test_a_delivery_renders_every_job_and_records_one_image_each(runtime, embedded_settings):
    runner, engine, store, _ = runtime
    prompts = [("a cat", 1, 64), ("a dog", 2, 80), ("a cat", 3, 64), ("a bird", 4, 64)]
    ids = add_jobs(engine, runner.sampler.model.name, prompts)
    report = runner.run(ids)
    assert sorted(report.succeeded) == sorted(ids), report
    assert sorted(report.groups) == [1, 3]  # 80 px alone, the three 64 px jobs together
    with session_scope(engine) as session:
        jobs = load_jobs(session, ids)
    for job, (prompt, seed, size) in zip(jobs, prompts, strict=True):
        assert job.status is JobStatus.SUCCEEDED
        assert job.attempts == 1 and job.batch_id == report.batch_id
        data = store.get(job.image_uri)
        image = Image.open(io.BytesIO(data))
        assert image.size == (size, size)
        # The queued image equals the same prompt and seed rendered alone.
        alone, _ = runner.sampler.generate([prompt], [seed], size, size)
        pixels = torch.from_numpy(np.array(image.convert("RGB")))
        assert int((pixels.int() - alone.images[0].int()).abs().max()) <= 1


def test_a_stored_png_names_its_model_without_the_servers_path(runtime):
    runner, engine, store, _ = runtime
    model = runner.sampler.model.name  # a local folder: an absolute path on this machine
    (job_id,) = add_jobs(engine, model, [("a fox", 5, 64)])
    runner.run([job_id])
    with session_scope(engine) as session:
        (job,) = load_jobs(session, [job_id])
    image = Image.open(io.BytesIO(store.get(job.image_uri)))
    image.load()
    assert model.startswith("/") and image.text["model"] == Path(model).name
    assert image.text["prompt"] == "a fox" and image.text["seed"] == "5"


def test_identical_prompts_in_flight_share_one_text_encoding(runtime):
    runner, engine, _, _ = runtime
    ids = add_jobs(engine, runner.sampler.model.name, [("same prompt", s, 64) for s in range(4)])
    runner.run(ids)
    assert runner.texts.encoded == 1 and runner.texts.reused == 3


def test_a_second_delivery_of_finished_or_cancelled_jobs_renders_nothing(runtime):
    from storage.jobs import cancel_queued

    runner, engine, _, _ = runtime
    ids = add_jobs(engine, runner.sampler.model.name, [("a", 1, 64), ("b", 2, 64), ("c", 3, 64)])
    with session_scope(engine) as session:
        cancel_queued(session, job_ids=[ids[2]])
    first = runner.run(ids[:2] + ids[:2])  # a duplicated message inside one delivery too
    second = runner.run(ids)
    assert sorted(first.succeeded) == sorted(ids[:2]) and first.skipped == 2
    assert second.claimed == 0 and second.groups == []
    with session_scope(engine) as session:
        statuses = [job.status for job in load_jobs(session, ids)]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.CANCELLED]


class PoisonedSampler(TiUESampler):
    """Crashes on one seed, as a job that breaks the model would."""

    POISON_SEED = 666

    def sample(self, text, seeds, *args, **kwargs):
        if self.POISON_SEED in seeds:
            raise RuntimeError("poisoned input")
        return super().sample(text, seeds, *args, **kwargs)


def test_a_poison_job_fails_alone_and_its_batch_mates_succeed(runtime):
    runner, engine, _, _ = runtime
    poisoned = PoisonedSampler(runner.sampler.model)
    runner.sampler = runner.renderer.sampler = runner.texts.sampler = poisoned
    seeds = [1, 2, PoisonedSampler.POISON_SEED, 4]
    ids = add_jobs(engine, runner.sampler.model.name, [(f"p{s}", s, 64) for s in seeds])
    report = runner.run(ids)
    assert report.failed == [ids[2]]
    assert sorted(report.succeeded) == sorted(ids[:2] + ids[3:])
    with session_scope(engine) as session:
        poisoned = load_jobs(session, [ids[2]])[0]
    assert poisoned.status is JobStatus.FAILED and "poisoned input" in poisoned.error


def test_a_message_for_another_models_job_goes_back_to_its_queue_untouched(runtime):
    """Observed: a misrouted message (or one from an old queue) failed its job for good."""
    runner, engine, _, _ = runtime
    rerouted: list[tuple[str, str, int]] = []
    set_aside: list[str] = []
    runner.outlets = replace(runner.outlets, reroute=rerouted.extend, set_aside=set_aside.extend)
    other = add_jobs(engine, "someone/other-model", [("x", 1, 64)])
    mine = add_jobs(engine, runner.sampler.model.name, [("y", 2, 64)])
    unknown = str(uuid.uuid4())
    report = runner.run([*other, *mine, unknown])
    assert report.succeeded == mine and report.failed == []
    assert (report.rerouted, rerouted) == (1, [(other[0], "someone/other-model", 5)])
    assert set_aside == [unknown]
    with session_scope(engine) as session:
        job = get_job(session, other[0])
    assert job is not None
    assert (job.status, job.attempts, job.worker, job.error) == (JobStatus.QUEUED, 0, None, None)


def test_a_finished_submission_posts_its_summary_to_the_webhook_once(runtime):
    import http.server
    import json
    import threading

    received = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    runner, engine, _, _ = runtime
    try:
        with session_scope(engine) as session:
            ref = create_submission(
                session,
                source="hooked.txt",
                defaults={},
                job_count=2,
                webhook_url=f"http://127.0.0.1:{server.server_port}/done",
            )
            insert_jobs(
                session,
                ref.id,
                [
                    ParsedJob(
                        JobSpec(prompt=f"p{i}", seed=i, height=64, width=64,
                                model=runner.sampler.model.name),
                        line_number=i + 1,
                        position=i,
                    )
                    for i in range(2)
                ],  # fmt: skip
            )
        ids = [job_id_for(ref.id, i) for i in range(2)]
        runner.run(ids[:1])
        assert runner.finisher.flush(timeout_s=60)
        assert received == []  # one job still queued: not finished
        runner.run(ids[1:])
        runner.run(ids)  # a duplicate delivery must not send it again
        runner.close()  # the finisher's thread finishes what it was handed, then stops
    finally:
        server.shutdown()
    assert len(received) == 1
    summary = received[0]
    assert summary["submission_id"] == ref.id and summary["jobs"] == 2
    assert summary["counts"]["succeeded"] == 2 and summary["source"] == "hooked.txt"


def take_over(engine, job_id: str) -> None:
    """What another worker's reclaim leaves behind: the job running under someone else's claim."""
    from sqlalchemy import update

    from storage.models import Job

    with session_scope(engine) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(worker="gpu-new", batch_id="batch-new")
        )


@pytest.mark.parametrize("upload", ["stored", "refused"])
def test_a_job_taken_over_during_its_upload_is_left_to_its_new_owner(runtime, upload):
    from core.errors import StoreUnavailable

    runner, engine, _, published = runtime
    ids = add_jobs(engine, runner.sampler.model.name, [("a", 1, 64), ("b", 2, 64)])
    store_image = runner.recorder.store_image

    def store_while_taken_over(rendered):
        if rendered.job.id != ids[0]:
            return store_image(rendered)
        take_over(engine, ids[0])
        if upload == "refused":
            raise StoreUnavailable("store down")
        return store_image(rendered)

    runner.recorder.store_image = store_while_taken_over
    report = runner.run(ids)

    assert report.succeeded == [ids[1]]
    assert (report.failed, report.retried, published) == ([], [], [])
    with session_scope(engine) as session:
        lost = load_jobs(session, [ids[0]])[0]
    assert (lost.status, lost.worker, lost.batch_id) == (JobStatus.RUNNING, "gpu-new", "batch-new")


def test_workers_retry_the_database_for_loopfree_db_retry_s(embedded_settings, monkeypatch):
    from pydantic import ValidationError

    from core.settings import Settings
    from worker.service import build_runtime

    monkeypatch.setenv("LOOPFREE_DB_RETRY_S", "0")
    with pytest.raises(ValidationError, match="db_retry_s"):
        Settings()
    runtime = build_runtime(embedded_settings.model_copy(update={"db_retry_s": 42.5}))
    try:
        # One source: every part of the runner takes its bound from the settings.
        assert runtime.runner.settings.db_retry_s == 42.5
        assert runtime.runner.claims.record_timeout_s == 42.5
        assert runtime.runner.recorder.record_timeout_s == 42.5
    finally:
        runtime.close()
