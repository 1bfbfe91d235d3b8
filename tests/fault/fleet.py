"""A small fleet for fault tests: real Redis, PostgreSQL and S3 endpoints, real worker processes,
a producer in the test's process, and the database polls a test waits on (never a bare sleep)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import psycopg
from sqlalchemy import select

from producer.prompts import JobDefaults
from producer.submit import SubmitReport, submit_file
from storage.db import make_engine, session_scope
from storage.models import Job, JobStatus
from storage.objects import open_store
from tests.helpers_processes import WorkerProcess, settings_from, wait_until

OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)


def fleet_env(
    *,
    home: Path,
    database_url: str,
    broker_url: str,
    storage_url: str,
    s3_endpoint: str,
    model: Path,
) -> dict[str, str]:
    """``LOOPFREE_*`` variables for a fleet whose faults show within seconds.

    Batches of 4 at most keep the worker's visibility-timeout check satisfied by 30 s on a busy
    two-core machine; a crashed worker's jobs look abandoned 5 s after its last heartbeat.
    """
    return {
        "LOOPFREE_HOME": str(home),
        "LOOPFREE_DATABASE_URL": database_url,
        "LOOPFREE_BROKER_URL": broker_url,
        "LOOPFREE_STORAGE_URL": storage_url,
        "LOOPFREE_S3_ENDPOINT_URL": s3_endpoint,
        "LOOPFREE_S3_REGION": "us-east-1",
        "LOOPFREE_MODEL": str(model),
        "LOOPFREE_DEVICE": "cpu",
        "LOOPFREE_MAX_BATCH": "4",
        "LOOPFREE_MAX_WAIT_MS": "100",
        "LOOPFREE_UPLOAD_WORKERS": "4",
        "LOOPFREE_VISIBILITY_TIMEOUT_S": "30",
        "LOOPFREE_HEARTBEAT_S": "0.5",
        "LOOPFREE_STUCK_AFTER_S": "5",
        "LOOPFREE_MAX_ATTEMPTS": "3",
        # Several processes share two cores: one thread each keeps torch from spinning against
        # the others (a tiny model renders 10x slower with contended OpenMP threads).
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


@contextlib.contextmanager
def migrated_database(admin: psycopg.Connection, admin_url: str) -> Iterator[str]:
    """A fresh database on the server ``admin`` is connected to, at the newest schema."""
    from sqlalchemy.engine import make_url

    from storage.migrate import upgrade

    name = f"loopfree_fault_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
        rendered = url.render_as_string(hide_password=False)
        upgrade(rendered)
        yield rendered
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on ``endpoint``; returns the storage URL of a prefix in it."""
    bucket = f"fault-{uuid.uuid4().hex[:12]}"
    open_store(f"s3://{bucket}", endpoint_url=endpoint, region="us-east-1").ensure_bucket()
    return f"s3://{bucket}/images"


def rows(count: int, *, seed: int = 0, steps: int = 4, **fields: object) -> list[dict]:
    """``count`` prompt-file rows with seeds ``seed``, ``seed + 1``, ... (64 px unless given)."""
    return [
        {"prompt": f"a lighthouse, take {i}", "seed": seed + i, "height": 64, "width": 64,
         "steps": steps, **fields}
        for i in range(count)
    ]


class Fleet:
    """Workers started with ``env``, a producer, and what the database says about the jobs."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.workers: list[WorkerProcess] = []

    @cached_property
    def settings(self):
        return settings_from(self.env)

    @cached_property
    def engine(self):
        return make_engine(self.settings.resolved_database_url)

    @cached_property
    def store(self):
        return open_store(
            self.settings.resolved_storage_url,
            endpoint_url=self.settings.s3_endpoint_url,
            region="us-east-1",
            max_attempts=2,
        )

    def start_worker(
        self, *, module: str = "loopfree.cli", env: dict[str, str] | None = None
    ) -> WorkerProcess:
        log = self.folder / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess({**self.env, **(env or {})}, log, module=module)
        self.workers.append(worker)
        return worker

    def submit(self, prompt_rows: Sequence[dict], **options: object) -> SubmitReport:
        path = self.folder / f"prompts-{uuid.uuid4().hex[:8]}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in prompt_rows), encoding="utf-8")
        defaults = JobDefaults(model=self.settings.model)
        return submit_file(self.settings, path, defaults, key=str(uuid.uuid4()), **options)

    def jobs(self, *submission_ids: str) -> list[Job]:
        statement = select(Job).where(Job.submission_id.in_(submission_ids))
        with session_scope(self.engine) as session:
            return list(session.scalars(statement.order_by(Job.submission_id, Job.position)))

    def counts(self, *submission_ids: str) -> Counter[str]:
        return Counter(job.status.value for job in self.jobs(*submission_ids))

    def logs(self) -> str:
        return "\n".join(
            f"--- worker {worker.pid} (alive: {worker.alive()}) ---\n{worker.log_text(3000)}"
            for worker in self.workers
        )

    def wait(self, predicate, *, timeout: float, what: str, interval: float = 0.2):
        """``wait_until`` with the fleet's worker logs in the failure message."""
        return wait_until(
            predicate, timeout=timeout, what=what, interval=interval, details=self.logs
        )

    def wait_settled(self, *submission_ids: str, timeout: float) -> Counter[str]:
        """Wait until no job of the submissions is queued or running; returns the counts."""

        def settled() -> Counter[str] | None:
            counts = self.counts(*submission_ids)
            return None if counts["queued"] or counts["running"] else counts

        return self.wait(
            settled,
            timeout=timeout,
            what=f"every job to finish (now {dict(self.counts(*submission_ids))})",
            interval=0.5,
        )

    def running_on(self, worker: WorkerProcess) -> list[Job]:
        statement = select(Job).where(Job.status == JobStatus.RUNNING, Job.worker == worker.name)
        with session_scope(self.engine) as session:
            return list(session.scalars(statement))

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        if "engine" in self.__dict__:
            self.engine.dispose()
