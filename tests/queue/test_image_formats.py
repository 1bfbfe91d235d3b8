"""Image format per submission: chosen with ``loopfree submit --format/--quality`` (or a line's
``image_format``/``image_quality``), recorded on the job, and stored with a matching key
extension and content type; the recorded SHA-256 is the digest of the stored bytes."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from core.jobspec import JobSpec, ParsedJob
from core.settings import Settings, get_settings
from loopfree.commands.submit import register
from storage.db import make_engine, session_scope
from storage.objects import ObjectStore
from storage.queries import load_jobs
from storage.submissions import create_submission, insert_jobs, job_id_for
from storage.uploads import UploadPool
from worker import gpu_encode
from worker.batch import BatchRunner, Outlets
from worker.imaging import encode_pixels
from worker.models import load_model
from worker.sampler import TiUESampler

# (format, quality) -> (key extension, content type, what Pillow reads the bytes as)
CASES = {
    ("png", None): ("png", "image/png", "PNG"),
    ("webp", 80): ("webp", "image/webp", "WEBP"),
    ("jpeg", 95): ("jpg", "image/jpeg", "JPEG"),
}


@pytest.fixture()
def runner_on_s3(embedded_settings: Settings, s3_store: ObjectStore) -> Iterator[BatchRunner]:
    model = load_model(embedded_settings.model, device="cpu")
    engine = make_engine(embedded_settings.resolved_database_url)
    with UploadPool(max_workers=2) as uploads:
        runner = BatchRunner(
            TiUESampler(model),
            Outlets(engine=engine, store=s3_store, uploads=uploads, publish=lambda jobs, s: None),
            worker_name="format-worker",
            settings=embedded_settings.model_copy(update={"max_batch": 4}),
        )
        try:
            yield runner
        finally:
            runner.close()
            engine.dispose()


def test_each_job_is_stored_in_its_format_with_matching_key_and_content_type(
    runner_on_s3: BatchRunner, s3_store: ObjectStore
) -> None:
    engine = runner_on_s3.outlets.engine
    model = runner_on_s3.sampler.model.name
    with session_scope(engine) as session:
        ref = create_submission(session, source="test", defaults={}, job_count=len(CASES))
        specs = [
            JobSpec(prompt="a lighthouse", seed=i, height=64, width=64, model=model,
                    image_format=fmt, image_quality=quality)
            for i, (fmt, quality) in enumerate(CASES)
        ]  # fmt: skip
        insert_jobs(session, ref.id, [ParsedJob(s, i + 1, i) for i, s in enumerate(specs)])
    ids = [job_id_for(ref.id, i) for i in range(len(CASES))]

    report = runner_on_s3.run(ids)

    assert sorted(report.succeeded) == sorted(ids), report
    with session_scope(engine) as session:
        jobs = load_jobs(session, ids)
    for job, (fmt, quality) in zip(jobs, CASES, strict=True):
        extension, content_type, pillow_format = CASES[(fmt, quality)]
        assert (job.image_format, job.image_quality) == (fmt, quality)
        assert job.image_uri == s3_store.uri_for(s3_store.key_for(ref.id, job.id, extension))
        data = s3_store.get(job.image_uri)
        assert job.image_sha256 == hashlib.sha256(data).hexdigest()
        assert job.image_bytes == len(data)
        head = s3_store._client.head_object(  # type: ignore[attr-defined]
            Bucket=s3_store.bucket,  # type: ignore[attr-defined]
            Key=f"outputs/{s3_store.key_for(ref.id, job.id, extension)}",
        )
        assert head["ContentType"] == content_type
        image = Image.open(io.BytesIO(data))
        assert image.format == pillow_format and image.size == (64, 64)


@pytest.fixture()
def submit_cli(
    embedded_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[typer.Typer]:
    monkeypatch.setenv("LOOPFREE_HOME", str(embedded_settings.home))
    get_settings.cache_clear()  # settings are read once per process; this test's env applies
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands, so typer keeps "submit" as a subcommand
    yield app
    get_settings.cache_clear()


def stored_formats(settings: Settings, submission_id: str) -> list[tuple[str, int | None]]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine) as session:
            ids = [job_id_for(submission_id, i) for i in range(2)]
            return [(job.image_format, job.image_quality) for job in load_jobs(session, ids)]
    finally:
        engine.dispose()


def test_submit_records_the_format_and_quality_and_a_line_may_choose_its_own(
    submit_cli: typer.Typer, embedded_settings: Settings, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "a fox"}, {"prompt": "a cat", "image_format": "webp"}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    model = ["--model", embedded_settings.model]

    result = CliRunner().invoke(
        submit_cli, ["submit", str(prompts), *model, "--format", "jpeg", "--quality", "80"]
    )

    assert result.exit_code == 0, result.output
    submission = result.stdout.strip().splitlines()[-1]
    assert stored_formats(embedded_settings, submission) == [("jpeg", 80), ("webp", 80)]

    # Quality on the lossless default is refused before anything is queued, saying why.
    bad = CliRunner().invoke(submit_cli, ["submit", str(prompts), *model, "--quality", "80"])
    assert bad.exit_code != 0
    # loopfree's entry point prints a UserError as one line; a bare typer app raises it.
    assert "png is lossless" in str(bad.exception)


def test_gpu_jpeg_without_cuda_or_torchvision_falls_back_to_the_cpu_and_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_encode, "_warned", type(gpu_encode._warned)())
    pixels = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8)
    with caplog.at_level(logging.WARNING, logger="worker.gpu_encode"):
        first = encode_pixels(pixels, "jpeg", quality=90, gpu_jpeg=True)
        second = encode_pixels(pixels, "jpeg", quality=90, gpu_jpeg=True)
    assert Image.open(io.BytesIO(first.data)).format == "JPEG"
    assert first.data == second.data == encode_pixels(pixels, "jpeg", quality=90).data
    messages = [r.getMessage() for r in caplog.records if r.name == "worker.gpu_encode"]
    assert len(messages) == 1
    assert "LOOPFREE_GPU_JPEG is set but" in messages[0] and "on the CPU" in messages[0]
