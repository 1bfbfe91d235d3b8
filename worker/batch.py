"""One delivery of job ids, end to end: claim -> group -> encode text -> sample -> store -> record.

Everything here is plain Python called by the Celery task (``worker.tasks``) and by tests directly.

The GPU never waits on I/O: only sampling holds the GPU lock. PNG encoding and uploads run in the
upload pool while the next group samples, and while this delivery's thread waits for its uploads
and records results, the worker's other pool threads claim, encode and sample the next delivery.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
from sqlalchemy import select

from core.errors import (
    BrokerUnavailable,
    DatabaseUnavailable,
    InvalidJob,
    LoopfreeError,
    RetryableError,
)
from core.jobspec import validate_job
from storage import jobs as job_store
from storage.db import session_scope
from storage.models import Job, JobStatus, utcnow
from storage.queries import load_jobs
from taskqueue.app import WORKER_STOPPED
from worker.imaging import encode_png
from worker.metrics import WorkerMetrics
from worker.sampler import TiUESampler
from worker.text import TextEncoderCache
from worker.webhooks import post_summary

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a delivery keeps retrying the database (claims, finished results) while it is
# unreachable. Past it the delivery gives up: its jobs' heartbeats stop, and a redelivery or the
# reconciler hands them to another worker. Workers pass LOOPFREE_DB_RETRY_S (core.settings,
# same default); this default is for runners built without settings (tests, benchmarks).
RECORD_TIMEOUT_S = 300.0
Publish = Callable[[Sequence[Job], float], None]


@dataclass(frozen=True)
class GroupKey:
    """Jobs that can share one sampler call."""

    height: int
    width: int
    steps: int


@dataclass
class BatchReport:
    """What happened to one delivery's jobs, for logs, metrics and tests."""

    batch_id: str
    delivered: int = 0
    claimed: int = 0
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    skipped: int = 0  # not claimable: cancelled, finished, running elsewhere, unknown
    groups: list[int] = field(default_factory=list)  # size of each sampler call
    sample_seconds: float = 0.0


@dataclass(frozen=True)
class Rendered:
    job: Job
    pixels: torch.Tensor
    sample_s: float
    gpu_share_s: float
    batch_size: int


class BatchRunner:
    """Turns job ids into stored images and recorded results. One per worker process."""

    def __init__(
        self,
        *,
        sampler: TiUESampler,
        engine,
        store,
        uploads,
        worker_name: str,
        publish: Publish,
        max_batch: int = 16,
        max_attempts: int = 3,
        stuck_after_s: float = 300.0,
        record_timeout_s: float = RECORD_TIMEOUT_S,
        decoder_chunk: int | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.sampler = sampler
        self.texts = TextEncoderCache(sampler)
        self.engine = engine
        self.store = store
        self.uploads = uploads
        self.worker_name = worker_name
        self.publish = publish
        self.max_batch = max_batch
        self.max_attempts = max_attempts
        self.stuck_after_s = stuck_after_s
        self.record_timeout_s = record_timeout_s
        self.decoder_chunk = decoder_chunk
        self.metrics = metrics or WorkerMetrics.disabled()
        self.gpu_lock = threading.Lock()
        # Suspects (see ``run``) run one at a time, so one that kills the process takes no other
        # suspect's attempt with it.
        self.suspect_lock = threading.Lock()
        self._held: set[str] = set()
        self._held_lock = threading.Lock()

    # -- the whole delivery ---------------------------------------------------------------------

    def run(self, job_ids: Sequence[str]) -> BatchReport:
        """Render and record one delivery. Jobs whose last attempt died with its worker (a crash,
        a kill, an out-of-memory kill) may be what killed it: they are claimed and run alone,
        after the rest, so a job that crashes the process costs its batch-mates nothing and ends
        ``failed`` once its attempts are spent."""
        report = BatchReport(batch_id=uuid.uuid4().hex[:16], delivered=len(job_ids))
        unique_ids = list(dict.fromkeys(job_ids))
        suspects = self.database(lambda: self.find_suspects(unique_ids))
        jobs = self.process([job_id for job_id in unique_ids if job_id not in suspects], report)
        for job_id in [job_id for job_id in unique_ids if job_id in suspects]:
            with self.suspect_lock:
                jobs += self.process([job_id], report)
        report.skipped = len(job_ids) - report.claimed
        self.database(lambda: self.finish_submissions({job.submission_id for job in jobs}))
        self.metrics.batch_done(report, self.max_batch)
        return report

    def process(self, job_ids: Sequence[str], report: BatchReport) -> list[Job]:
        """Claim, render, store and record ``job_ids``; returns the jobs claimed."""
        if not job_ids:
            return []
        jobs = self.claim(job_ids, report)
        try:
            pending: list[tuple[Rendered, Future]] = []
            for key, group in self.plan(jobs):
                for rendered in self.render(key, group, report):
                    pending.append((rendered, self.uploads.submit(self.store_image, rendered)))
            self.record(pending, report)
        except Exception as error:
            self.give_back(jobs, report, f"the worker failed: {type(error).__name__}: {error}")
            raise
        finally:
            self.release_hold(jobs)
        return jobs

    def database(self, call: Callable[[], T]) -> T:
        """``call`` (one transaction), retried while the database is unreachable, within a bound."""
        return retry_while_unavailable(call, self.record_timeout_s)

    def held_job_ids(self) -> list[str]:
        """The jobs this worker is working on now: the ones its heartbeat keeps alive. A job it
        dropped (after an unexpected error) goes stale, and is taken over by a redelivery or the
        reconciler instead of looking busy forever."""
        with self._held_lock:
            return list(self._held)

    def release_hold(self, jobs: Sequence[Job]) -> None:
        with self._held_lock:
            self._held.difference_update(job.id for job in jobs)

    def owner(self, report: BatchReport) -> job_store.Owner:
        """This delivery's claim on its jobs. Every write of an outcome names it, so a job taken
        over by another worker meanwhile (this one's heartbeat went stale) is left alone."""
        return job_store.Owner(worker=self.worker_name, batch_id=report.batch_id)

    def give_back(self, jobs: Sequence[Job], report: BatchReport, error: str) -> None:
        """After an error the delivery cannot handle, send its claimed jobs that have no outcome
        back to the queue. Best effort, no retries: if the database or broker is down as well,
        the jobs go stale instead and are taken over."""
        done = set(report.succeeded) | set(report.failed) | set(report.retried)
        for job in jobs:
            if job.id in done:
                continue
            try:
                with session_scope(self.engine) as session:
                    released = job_store.release_for_retry(
                        session, job.id, error=error, owner=self.owner(report)
                    )
                if released:
                    self.publish([job], backoff_seconds(job.attempts))
            except Exception as failure:  # noqa: BLE001 - the original error is raised after this
                log.warning("could not give the delivery's jobs back: %s", failure)
                return

    # -- 1. claim -------------------------------------------------------------------------------

    def find_suspects(self, job_ids: Sequence[str]) -> set[str]:
        """Jobs claimed before whose last attempt ended without an outcome: its worker died."""
        statement = select(Job.id).where(
            Job.id.in_(list(job_ids)),
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
            Job.attempts > 0,
            Job.error.is_(None) | (Job.error == WORKER_STOPPED),
        )
        with session_scope(self.engine) as session:
            return set(session.scalars(statement))

    def claim(self, job_ids: Sequence[str], report: BatchReport) -> list[Job]:
        """Move delivered jobs to ``running``; duplicates, cancelled and finished ones drop out."""

        def transaction() -> list[Job]:
            with session_scope(self.engine) as session:
                claim = dict(
                    worker=self.worker_name, batch_id=report.batch_id, batch_size=len(job_ids)
                )
                claimed_ids = job_store.claim_jobs(session, job_ids, **claim)
                rest = [job_id for job_id in job_ids if job_id not in set(claimed_ids)]
                if rest:
                    # Redelivered after a worker died holding them: take them over.
                    stale = utcnow() - timedelta(seconds=self.stuck_after_s)
                    claimed_ids += job_store.reclaim_abandoned(
                        session, rest, heartbeat_before=stale, **claim
                    )
                return load_jobs(session, claimed_ids)

        jobs = self.database(transaction)
        with self._held_lock:
            self._held.update(job.id for job in jobs)
        report.claimed += len(jobs)
        runnable = []
        for job in jobs:
            problem = self.check(job)
            if problem is None:
                runnable.append(job)
            else:
                self.fail(job, problem, report)
        return runnable

    def check(self, job: Job) -> str | None:
        """Why this job must not run (invalid fields, out of attempts), or None."""
        if job.attempts > self.max_attempts:
            last = job.error or "the worker running it stopped each time (crash or kill)"
            return f"gave up after {job.attempts - 1} attempts; last error: {last}"
        if job.model != self.sampler.model.name:
            served = self.sampler.model.name
            return f"job is for model {job.model!r} but this worker serves {served!r}"
        try:
            validate_job(
                {
                    "prompt": job.prompt,
                    "seed": job.seed,
                    "height": job.height,
                    "width": job.width,
                    "steps": job.steps,
                    "model": job.model,
                }
            )
        except InvalidJob as error:
            return str(error)
        return None

    # -- 2. plan --------------------------------------------------------------------------------

    def batch_cap(self, key: GroupKey) -> int:
        # Decoder activations grow with batch x timesteps x pixels: above the model's native size
        # the cap shrinks in proportion, so a batch costs about the same memory at any size.
        native = self.sampler.model.default_size**2
        return max(1, min(self.max_batch, self.max_batch * native // (key.height * key.width)))

    def plan(self, jobs: Sequence[Job]) -> list[tuple[GroupKey, list[Job]]]:
        """Compatible jobs (same size and steps) together, highest priority first, capped."""
        groups: dict[GroupKey, list[Job]] = defaultdict(list)
        for job in sorted(jobs, key=lambda j: (-j.priority, j.created_at, j.position)):
            groups[GroupKey(job.height, job.width, job.steps)].append(job)
        planned = []
        for key, members in sorted(groups.items(), key=lambda kv: -kv[1][0].priority):
            cap = self.batch_cap(key)
            planned.extend((key, members[i : i + cap]) for i in range(0, len(members), cap))
        return planned

    # -- 3. render ------------------------------------------------------------------------------

    def render(self, key: GroupKey, jobs: list[Job], report: BatchReport) -> list[Rendered]:
        """Sample one group; if it fails as a whole, split it so only the offending job fails."""
        try:
            text = self.texts.encode([job.prompt for job in jobs])
            with self.gpu_lock:
                started = time.perf_counter()
                result = self.sampler.sample(
                    text,
                    [job.seed for job in jobs],
                    key.height,
                    key.width,
                    steps=key.steps,
                    decoder_chunk=self.decoder_chunk,
                )
                elapsed = time.perf_counter() - started
        except Exception as error:  # noqa: BLE001 - any sampler failure is handled by splitting
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            if len(jobs) == 1:
                log.warning("job %s failed in the sampler: %r", jobs[0].id, error)
                self.fail(jobs[0], f"sampler failed: {type(error).__name__}: {error}", report)
                return []
            half = len(jobs) // 2
            log.warning("batch of %d failed (%r); retrying in halves", len(jobs), error)
            return self.render(key, jobs[:half], report) + self.render(key, jobs[half:], report)
        report.groups.append(len(jobs))
        report.sample_seconds += elapsed
        self.metrics.sampled(self.sampler.model.name, len(jobs), elapsed)
        if any(text.truncated):
            cut = [job.id for job, lost in zip(jobs, text.truncated, strict=True) if lost]
            self.mark_truncated(cut)
        return [
            Rendered(job, result.images[i], elapsed, elapsed / len(jobs), len(jobs))
            for i, job in enumerate(jobs)
        ]

    # -- 4. store (in the upload pool) ----------------------------------------------------------

    def store_image(self, rendered: Rendered):
        job = rendered.job
        started = time.perf_counter()
        png = encode_png(
            rendered.pixels.numpy(),
            text={"prompt": job.prompt, "seed": str(job.seed), "model": job.model},
        )
        encoded = time.perf_counter()
        stored = self.store.put_png(
            self.store.key_for(job.submission_id, job.id),
            png.data,
            metadata={"job-id": job.id, "seed": str(job.seed)},
        )
        finished = time.perf_counter()
        self.metrics.stored(encoded - started, finished - encoded)
        return stored, finished - encoded

    # -- 5. record ------------------------------------------------------------------------------

    def record(self, pending: list[tuple[Rendered, Future]], report: BatchReport) -> None:
        """Wait for this delivery's uploads and record every outcome in one transaction."""
        results: list[tuple[Rendered, object, float]] = []
        for rendered, future in pending:
            try:
                stored, upload_s = future.result()
                results.append((rendered, stored, upload_s))
            except RetryableError as error:
                self.retry_later(rendered.job, str(error), report)
            except LoopfreeError as error:
                self.fail(rendered.job, f"storing the image failed: {error}", report)
        if not results:
            return

        def write() -> list[str]:
            # Each success is one compare-and-set that names this delivery's claim: a job another
            # worker took over meanwhile stays that worker's, atomically, with no lock taken first.
            recorded = []
            owner = self.owner(report)
            with session_scope(self.engine) as session:
                for rendered, stored, upload_s in results:
                    result = job_store.JobResult(
                        image_uri=stored.uri,
                        image_bytes=stored.size,
                        image_sha256=stored.sha256,
                        sample_s=rendered.sample_s,
                        upload_s=upload_s,
                        gpu_share_s=rendered.gpu_share_s,
                    )
                    if job_store.mark_succeeded(session, rendered.job.id, result, owner=owner):
                        recorded.append(rendered.job.id)
            return recorded

        # The images are stored; losing their results to a database blip would waste the GPU
        # time. Keep them and retry until the database is back, within a bound.
        recorded = self.database(write)
        report.succeeded.extend(recorded)
        for rendered, _, _ in results:
            if rendered.job.id in recorded:
                self.metrics.job_done(rendered.job.model, "succeeded", rendered.job.queue_wait_s)
            else:
                # Not ours any more: another worker took the job over (this one's heartbeat went
                # stale) or the reconciler gave it up; its outcome is theirs to record. The image
                # this delivery uploaded went to the job's own deterministic key
                # (``storage.objects.job_key``), so at worst it replaced the new owner's upload
                # with an image of the same job (same prompt, seed and model), never another job's.
                # Its bytes can differ from the recorded sha256 and size only as far as sampling
                # is not bit-identical across batch compositions and GPUs.
                log.warning(
                    "job %s is no longer held by this delivery; its result is not recorded",
                    rendered.job.id,
                )

    def fail(self, job: Job, error: str, report: BatchReport) -> None:
        def transaction() -> bool:
            with session_scope(self.engine) as session:
                return job_store.mark_failed(session, job.id, error, owner=self.owner(report))

        if not self.database(transaction):
            log.warning(
                "job %s is no longer held by this delivery; its failure is not recorded", job.id
            )
            return
        report.failed.append(job.id)
        self.metrics.job_done(job.model, "failed", job.queue_wait_s)

    def retry_later(self, job: Job, error: str, report: BatchReport) -> None:
        """Give a job back after a transient fault; it comes again after a jittered backoff."""
        if job.attempts >= self.max_attempts:
            self.fail(job, f"gave up after {job.attempts} attempts; last error: {error}", report)
            return

        def transaction() -> bool:
            with session_scope(self.engine) as session:
                return job_store.release_for_retry(
                    session, job.id, error=error, owner=self.owner(report)
                )

        if not self.database(transaction):
            log.warning("job %s is no longer held by this delivery; not giving it back", job.id)
            return
        report.retried.append(job.id)
        try:
            self.publish([job], backoff_seconds(job.attempts))
        except BrokerUnavailable as broker_error:
            # The job is queued in the database; `loopfree requeue` publishes it again.
            log.warning("job %s is queued but its message was not sent: %s", job.id, broker_error)

    def mark_truncated(self, job_ids: list[str]) -> None:
        from sqlalchemy import update

        def transaction() -> None:
            with session_scope(self.engine) as session:
                statement = update(Job).where(Job.id.in_(job_ids)).values(prompt_truncated=True)
                session.execute(statement)

        self.database(transaction)

    def finish_submissions(self, submission_ids: set[str]) -> None:
        """Mark submissions with no open job finished; the one call that does sends the webhook."""
        from storage.queries import count_by_status
        from storage.submissions import get_submission, mark_submission_finished, mark_webhook_sent

        summaries = []
        with session_scope(self.engine) as session:
            for submission_id in submission_ids:
                if not mark_submission_finished(session, submission_id):
                    continue
                submission = get_submission(session, submission_id)
                if submission.webhook_url and mark_webhook_sent(session, submission_id):
                    counts = count_by_status(session, submission_id=submission_id)
                    summary = {
                        "submission_id": submission_id,
                        "source": submission.source,
                        "jobs": submission.job_count,
                        "counts": {status.value: n for status, n in counts.items()},
                        "finished_at": submission.finished_at.isoformat(),
                    }
                    summaries.append((submission.webhook_url, summary))
        for url, summary in summaries:
            # Off the batch's thread: a slow receiver must not hold up acks or the GPU.
            self.uploads.submit(post_summary, url, summary)


def retry_while_unavailable(write: Callable[[], T], timeout_s: float) -> T:
    """Call ``write`` until it stops raising ``DatabaseUnavailable`` or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        try:
            return write()
        except DatabaseUnavailable as error:
            attempt += 1
            pause = min(backoff_seconds(attempt, base=0.25, cap=10.0), deadline - time.monotonic())
            if pause <= 0:
                raise
            log.warning("database unavailable (%s); retrying in %.1fs", error, pause)
            time.sleep(pause)


def backoff_seconds(attempt: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: spreads retries of a fleet hit by the same outage."""
    import random

    return random.uniform(0, min(cap, base * 2**attempt))
