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

from sqlalchemy import func, select

from producer.prompts import JobDefaults
from producer.submit import SubmitReport, submit_file
from storage.db import make_engine, session_scope
from storage.models import Job, JobStatus
from storage.stores import open_store
from taskqueue.app import PRIORITY_STEPS, REDIS_SEP, queue_name
from tests.harness import (
    RedisServer,
    Services,
    WorkerProcess,
    run_cli,
    settings_from,
    wait_until,
)

OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)


# Batches of 4 at most keep the worker's visibility-timeout check satisfied by 30 s on a busy
# two-core machine; a crashed worker's jobs look abandoned 5 s after its last heartbeat.
FAST_FAULTS: dict[str, object] = dict(
    max_batch=4,
    max_wait_ms=100,
    upload_workers=4,
    visibility_timeout_s=30,
    heartbeat_s=0.5,
    stuck_after_s=5,
    max_attempts=3,
    # Off, so these tests see exactly what the broker and the reconciler they run themselves do;
    # tests/fault/test_self_healing.py turns the workers' own reconcile loop on.
    reconcile_interval_s=0,
)


def fleet_env(
    services: Services, *, home: Path, model: Path, **overrides: object
) -> dict[str, str]:
    """``LOOPFREE_*`` variables for a fleet whose faults show within seconds (``FAST_FAULTS``),
    with ``overrides`` (``max_attempts=1`` is ``LOOPFREE_MAX_ATTEMPTS=1``)."""
    env = services.env(home=home, model=model, **{**FAST_FAULTS, **overrides})
    # Several processes share two cores: one thread each keeps torch from spinning against the
    # others (a tiny model renders 10x slower with contended OpenMP threads).
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def rows(count: int, *, seed: int = 0, steps: int = 4, **fields: object) -> list[dict]:
    """``count`` prompt-file rows with seeds ``seed``, ``seed + 1``, ... (64 px unless given)."""
    return [
        {
            "prompt": f"a lighthouse, take {i}",
            "seed": seed + i,
            "height": 64,
            "width": 64,
            "steps": steps,
            **fields,
        }
        for i in range(count)
    ]


class Fleet:
    """Workers started with ``env``, a producer, and what the database says about the jobs."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.workers: list[WorkerProcess] = []
        self.submissions: list[str] = []

    @cached_property
    def settings(self):
        return settings_from(self.env)

    @cached_property
    def engine(self):
        return make_engine(self.settings.resolved_database_url)

    @cached_property
    def app(self):
        from taskqueue.app import make_celery

        return make_celery(self.settings)

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

    @contextlib.contextmanager
    def embedded_worker(self) -> Iterator[None]:
        """A real Celery worker in a thread of the test process: no second model import, for
        finishing what a broken worker left (the fault itself always hits a real process)."""
        import torch

        from worker.service import embedded_worker

        # One thread, like the worker processes (see ``fleet_env``), or the visibility-timeout
        # check at start would time a sampler fighting itself for two busy cores.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with embedded_worker(self.settings):
                yield
        finally:
            torch.set_num_threads(threads)

    def submit(self, prompt_rows: Sequence[dict], **options: object) -> SubmitReport:
        path = self.folder / f"prompts-{uuid.uuid4().hex[:8]}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in prompt_rows), encoding="utf-8")
        defaults = JobDefaults(model=self.settings.model)
        report = submit_file(
            self.settings,
            path,
            defaults,
            engine=self.engine,
            app=self.app,
            key=str(uuid.uuid4()),
            **options,
        )
        self.submissions.append(report.submission_id)
        return report

    def jobs(self, *submission_ids: str) -> list[Job]:
        statement = select(Job).where(Job.submission_id.in_(submission_ids))
        with session_scope(self.engine) as session:
            return list(session.scalars(statement.order_by(Job.submission_id, Job.position)))

    def counts(self, *submission_ids: str) -> Counter[str]:
        """Jobs per status: one GROUP BY, cheap enough to poll many times a second."""
        statement = (
            select(Job.status, func.count())
            .where(Job.submission_id.in_(submission_ids))
            .group_by(Job.status)
        )
        with session_scope(self.engine) as session:
            return Counter({status.value: count for status, count in session.execute(statement)})

    def logs(self) -> str:
        """The tails of the workers' logs and the state of every open job, for failures."""
        parts = [
            f"--- worker {worker.pid} (alive: {worker.alive()}) ---\n{worker.log_text(3000)}"
            for worker in self.workers
        ]
        open_jobs = [job for job in self.jobs(*self.submissions) if job.status in OPEN]
        parts.append(f"--- {len(open_jobs)} open jobs ---")
        parts += [
            f"{job.id} seed={job.seed} {job.status.value} attempts={job.attempts} "
            f"worker={job.worker} heartbeat={job.heartbeat_at} error={job.error}"
            for job in open_jobs[:40]
        ]
        return "\n".join(parts)

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

        return self.wait(settled, timeout=timeout, what="every job to finish", interval=0.5)

    def broker_messages(self, redis: RedisServer) -> int:
        """Messages in Redis for this fleet: waiting in its queue (one list per priority step) or
        delivered to a worker and not acknowledged yet."""
        name = queue_name(self.settings.model)
        client = redis.client()
        lists = [name] + [f"{name}{REDIS_SEP}{step}" for step in PRIORITY_STEPS[1:]]
        return sum(client.llen(key) for key in lists) + client.hlen("unacked")

    def republish_lost(self, redis: RedisServer, *submission_ids: str, timeout: float) -> int:
        """Wait until the broker holds nothing more and no job runs; the jobs the database still
        says are queued then are the ones the broker lost. Run the reconciler, as an operator's
        timer would, and return how many there were.

        A fault can cost messages even with late acks: kombu's Redis transport pops a message and
        only then records it as unacknowledged, so a worker killed (or cut off) in between takes
        the message with it. The row stays ``queued``; nothing but the reconciler brings it back.
        """
        self.wait(
            lambda: not self.broker_messages(redis) and not self.counts(*submission_ids)["running"],
            timeout=timeout,
            what="the broker to deliver everything it holds",
        )
        lost = self.counts(*submission_ids)["queued"]
        done = run_cli(["requeue", "--stuck"], self.env)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["republished"] + report["released"] >= lost
        return lost

    def running_on(self, worker: WorkerProcess) -> list[Job]:
        statement = select(Job).where(Job.status == JobStatus.RUNNING, Job.worker == worker.name)
        with session_scope(self.engine) as session:
            return list(session.scalars(statement))

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        if "engine" in self.__dict__:
            self.engine.dispose()
