"""Submissions with real images to export, written the way workers write them, and helpers to run
``loopfree export`` as a real process (interrupted with a real SIGKILL where a test says so).

Images are real PNG, WebP and JPEG files (seeded noise, so every one differs) stored in a real
store (a folder, or moto's S3 over HTTP); rows go through ``storage``'s own transitions: claimed,
then recorded succeeded with the image's address and SHA-256, or failed, or cancelled.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.jobspec import JobSpec, ParsedJob
from storage import jobs as transitions
from storage.db import Engine, make_engine, session_scope
from storage.jobs import JobResult
from storage.objects import ObjectStore, sha256_hex
from storage.submissions import create_submission, insert_jobs, job_id_for
from tests.harness import REPO_ROOT, wait_until

EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}


@dataclass(frozen=True)
class MadeJob:
    """What a test expects of one job: its id, fields, outcome and (if any) image."""

    id: str
    position: int
    prompt: str
    seed: int
    metadata: dict[str, Any]
    image_format: str
    status: str
    data: bytes | None

    @property
    def sha256(self) -> str | None:
        return sha256_hex(self.data) if self.data is not None else None


@dataclass(frozen=True)
class MadeSubmission:
    id: str
    jobs: list[MadeJob]

    def succeeded(self) -> list[MadeJob]:
        return [job for job in self.jobs if job.status == "succeeded"]


def image_bytes(seed: int, image_format: str = "png", size: int = 64) -> bytes:
    """A ``size`` px image of seeded noise, encoded as ``image_format``."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format.upper(), quality=80)
    return buffer.getvalue()


def default_outcome(position: int) -> str:
    """Most jobs succeed; one in 17 failed, one in 23 was cancelled, one in 29 is still queued."""
    if position % 17 == 5:
        return "failed"
    if position % 23 == 7:
        return "cancelled"
    if position % 29 == 11:
        return "queued"
    return "succeeded"


def make_submission(
    engine: Engine,
    store: ObjectStore,
    count: int,
    *,
    outcome: Callable[[int], str] = default_outcome,
    prompt: str = "a watercolour fox, variation {position}",
    metadata: Callable[[int], dict[str, Any]] = lambda p: {"row": p, "odd": p % 2 == 1},
    image_format: Callable[[int], str] = lambda p: ("png", "png", "webp", "jpeg")[p % 4],
    source: str = "prompts.jsonl",
    now: datetime | None = None,
    image_size: int = 64,
) -> MadeSubmission:
    """A submission of ``count`` jobs at positions 0..count-1, each ending as ``outcome`` says;
    a succeeded job's image is stored at its job's key and recorded with its SHA-256."""
    specs = [
        ParsedJob(
            JobSpec(
                prompt=prompt.format(position=p),
                seed=1000 + p,
                height=image_size,
                width=image_size,
                steps=4,
                model="test/tiny",
                metadata=metadata(p),
                image_format=image_format(p),
            ),
            line_number=p + 1,
            position=p,
        )
        for p in range(count)
    ]
    with session_scope(engine) as session:
        ref = create_submission(
            session, source=source, defaults={"model": "test/tiny"}, job_count=count, now=now
        )
        insert_jobs(session, ref.id, specs, skip_existing=False, now=now)
    made = []
    for job in specs:
        status = outcome(job.position)
        spec = job.spec
        data = None
        if status == "succeeded":
            data = image_bytes(spec.seed, spec.image_format, image_size)
        made.append(
            MadeJob(
                id=job_id_for(ref.id, job.position),
                position=job.position,
                prompt=spec.prompt,
                seed=spec.seed,
                metadata=dict(spec.metadata),
                image_format=spec.image_format,
                status=status,
                data=data,
            )
        )

    def upload(job: MadeJob) -> tuple[str, JobResult]:
        assert job.data is not None
        key = store.key_for(ref.id, job.id, EXTENSIONS[job.image_format])
        stored = store.put(
            key,
            job.data,
            content_type=CONTENT_TYPES[job.image_format],
            sha256=sha256_hex(job.data),
            metadata={},
        )
        return job.id, JobResult(stored.uri, stored.size, stored.sha256, 0.1, 0.01, 0.01)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(upload, [job for job in made if job.status == "succeeded"]))
    by_status = {s: [job.id for job in made if job.status == s] for s in
                 ("succeeded", "failed", "cancelled")}  # fmt: skip
    with session_scope(engine) as session:
        if by_status["cancelled"]:
            transitions.cancel_queued(session, job_ids=by_status["cancelled"], now=now)
        claimed = by_status["succeeded"] + by_status["failed"]
        transitions.claim_jobs(session, claimed, worker="w", batch_id="b", batch_size=16, now=now)
        transitions.mark_batch_succeeded(session, results, now=now)
        for job_id in by_status["failed"]:
            transitions.mark_failed(session, job_id, "the sampler gave up", now=now)
    return MadeSubmission(ref.id, made)


@pytest.fixture()
def sqlite_engine(migrated_sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated_sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture()
def engine(migrated_db_url: str) -> Iterator[Engine]:
    """On SQLite and on PostgreSQL."""
    engine = make_engine(migrated_db_url)
    yield engine
    engine.dispose()


def cli_env(home: Path, database_url: str, store: ObjectStore, s3_endpoint: str | None) -> dict:
    """``LOOPFREE_*`` for a ``loopfree`` process on this database and store."""
    env = {
        "LOOPFREE_HOME": str(home),
        "LOOPFREE_DATABASE_URL": database_url,
        "LOOPFREE_STORAGE_URL": store.url,
        "HF_HUB_OFFLINE": "1",
    }
    if s3_endpoint:
        env.update(LOOPFREE_S3_ENDPOINT_URL=s3_endpoint, LOOPFREE_S3_REGION="us-east-1")
    return env


def run_export(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``loopfree export ARGS`` as its own process, to the end."""
    result = subprocess.run(
        [sys.executable, "-m", "loopfree.cli", "export", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def kill_export_midway(
    args: list[str], env: dict[str, str], *, after_samples: int, folder: Path
) -> None:
    """``loopfree export ARGS`` as its own process, SIGKILLed once it has added
    ``after_samples`` samples to its shards (``tests.export.stalling_export`` holds it there)."""
    marker = folder / "stalled"
    log = folder / "killed-export.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.export.stalling_export", "export", *args],
            cwd=REPO_ROOT,
            env={
                **os.environ,
                **env,
                "LOOPFREE_TEST_STALL_AFTER": str(after_samples),
                "LOOPFREE_TEST_STALL_MARKER": str(marker),
            },
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: marker.exists() or process.poll() is not None,
            timeout=240,
            what="the export to reach its stall point",
        )
        assert process.poll() is None, f"the export ended before the kill:\n{log.read_text()}"
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    assert process.returncode == -signal.SIGKILL


def with_spec(job: ParsedJob, **changes: Any) -> ParsedJob:
    return ParsedJob(replace(job.spec, **changes), job.line_number, job.position)
