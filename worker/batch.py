"""One delivery of job ids, end to end: claim -> plan -> sample -> store -> record -> finish.

Everything here is plain Python called by the Celery task (``worker.tasks``) and by tests directly.
``BatchRunner.run`` is the whole story; each step lives in a module of its own:

    worker.claiming   claim, take over abandoned jobs, suspects, checks, the held set, give-back
    worker.rendering  groups by size and steps, text encoding, sampling with split on failure
    worker.recording  PNG encoding and upload (upload pool), outcomes, retries, truncation flags
    worker.outage     the gate a store or database outage closes: deliveries wait before claiming
    worker.finisher   finished submissions (and their webhooks owed), on a thread of its own
    worker.webhook_sender  the webhook outbox, POSTed by threads of its own, each by a deadline

The GPU never waits on I/O: only sampling holds the GPU lock. PNG encoding and uploads run in the
upload pool while the next group samples, and while this delivery's thread waits for its uploads
and records results, the worker's other pool threads claim, encode and sample the next delivery.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.errors import RetryableError
from storage import jobs as job_store
from storage.models import Job
from storage.objects import ObjectStore, StoredObject
from storage.uploads import UploadPool
from worker.claiming import Claims, check
from worker.finisher import SubmissionFinisher
from worker.metrics import WorkerMetrics
from worker.outage import DATABASE, OUTAGE_PROBE_MAX_S, STORE, OutageGate
from worker.recording import Recorder, ping_database
from worker.rendering import GroupKey, Rendered, Renderer
from worker.retrying import RECORD_TIMEOUT_S, Publish
from worker.sampler import TiUESampler
from worker.text import TextEncoderCache
from worker.webhook_sender import WebhookConfig, WebhookSender

if TYPE_CHECKING:
    from core.settings import Settings
    from storage.db import Engine


@dataclass(frozen=True)
class RunnerOptions:
    """The runner's limits. Workers take them from ``Settings``; the defaults are the settings'
    defaults, for runners built without settings (tests, benchmarks)."""

    max_batch: int = 16  # jobs per sampler call at most (the memory budget may allow fewer)
    max_attempts: int = 3  # claims of a job before it is failed
    stuck_after_s: float = 300.0  # a running job's heartbeat older than this: its worker died
    record_timeout_s: float = RECORD_TIMEOUT_S  # how long to retry an unreachable database
    decoder_chunk: int | None = None  # decoder passes per call; None: all timesteps at once
    batch_budget: int | None = None  # latent pixel-samples per call; None: measured or default
    gpu_jpeg: bool = False  # encode JPEG jobs on the GPU where torchvision can
    outage_probe_max_s: float = OUTAGE_PROBE_MAX_S  # longest pause between outage probes
    webhooks: WebhookConfig = WebhookConfig()  # allowed hosts, secret, deadline, retry window

    @classmethod
    def from_settings(cls, settings: Settings) -> RunnerOptions:
        return cls(
            max_batch=settings.max_batch,
            max_attempts=settings.max_attempts,
            stuck_after_s=settings.stuck_after_s,
            record_timeout_s=settings.db_retry_s,
            decoder_chunk=settings.decoder_chunk,
            batch_budget=settings.batch_budget,
            gpu_jpeg=settings.gpu_jpeg,
            outage_probe_max_s=settings.outage_probe_max_s,
            webhooks=WebhookConfig.from_settings(settings),
        )


@dataclass(frozen=True)
class Outlets:
    """Where a delivery's work goes: rows, images (through the upload pool), messages."""

    engine: Engine
    store: ObjectStore
    uploads: UploadPool
    publish: Publish


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


class BatchRunner:
    """Turns job ids into stored images and recorded results. One per worker process.

    Deliveries run concurrently, one per pool thread of the worker; ``close`` after the last one.
    """

    def __init__(
        self,
        sampler: TiUESampler,
        outlets: Outlets,
        *,
        worker_name: str,
        options: RunnerOptions | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        options = options or RunnerOptions()
        self.sampler = sampler
        self.outlets = outlets
        self.worker_name = worker_name
        self.options = options
        self.metrics = metrics or WorkerMetrics.disabled()
        self.texts = TextEncoderCache(sampler, metrics=self.metrics)
        # One gate per worker process: an outage seen by any delivery pauses them all.
        self.gate = OutageGate(
            {STORE: outlets.store.probe, DATABASE: lambda: ping_database(outlets.engine)},
            probe_max_s=options.outage_probe_max_s,
        )
        self.metrics.watch_paused(lambda: self.gate.paused)
        self.claims = Claims(
            outlets.engine,
            worker_name=worker_name,
            publish=outlets.publish,
            stuck_after_s=options.stuck_after_s,
            record_timeout_s=options.record_timeout_s,
            gate=self.gate,
        )
        self.renderer = Renderer(
            sampler,
            self.texts,
            max_batch=options.max_batch,
            decoder_chunk=options.decoder_chunk,
            metrics=self.metrics,
            batch_budget=options.batch_budget,
        )
        self.recorder = Recorder(
            outlets.engine,
            outlets.store,
            outlets.uploads,
            worker_name=worker_name,
            publish=outlets.publish,
            max_attempts=options.max_attempts,
            record_timeout_s=options.record_timeout_s,
            metrics=self.metrics,
            gpu_jpeg=options.gpu_jpeg,
            gate=self.gate,
        )
        # Webhooks leave from the outbox on the sender's own threads, never from a delivery's.
        self.webhooks = WebhookSender(outlets.engine, options.webhooks)
        self.finisher = SubmissionFinisher(
            outlets.engine,
            record_timeout_s=options.record_timeout_s,
            on_finished=self.webhooks.wake,
        )
        # Suspects (see ``run``) run one at a time, so one that kills the process takes no other
        # suspect's attempt with it.
        self.suspect_lock = threading.Lock()

    def run(self, job_ids: Sequence[str]) -> BatchReport:
        """Render and record one delivery. Jobs whose last attempt died with its worker (a crash,
        a kill, an out-of-memory kill) may be what killed it: they are claimed and run alone,
        after the rest, so a job that crashes the process costs its batch-mates nothing and ends
        ``failed`` once its attempts are spent.

        While the object store or database is down, the delivery waits at the outage gate
        before it claims anything (``worker.outage``): no job is claimed, no attempt spent."""
        self.gate.wait_open()
        report = BatchReport(batch_id=uuid.uuid4().hex[:16], delivered=len(job_ids))
        unique_ids = list(dict.fromkeys(job_ids))
        suspects = self.claims.find_suspects(unique_ids)
        jobs = self.process([job_id for job_id in unique_ids if job_id not in suspects], report)
        for job_id in [job_id for job_id in unique_ids if job_id in suspects]:
            with self.suspect_lock:
                jobs += self.process([job_id], report)
        report.skipped = len(job_ids) - report.claimed
        self.finisher.finish(job.submission_id for job in jobs)
        self.metrics.batch_done(report, self.options.max_batch)
        return report

    def process(self, job_ids: Sequence[str], report: BatchReport) -> list[Job]:
        """Claim, render, store and record ``job_ids``; returns the jobs claimed."""
        if not job_ids:
            return []
        owner = job_store.Owner(worker=self.worker_name, batch_id=report.batch_id)
        jobs = self.claims.claim(job_ids, owner)
        claimed_at = time.monotonic()
        report.claimed += len(jobs)
        try:
            runnable = []
            for job in jobs:
                problem = check(
                    job, model=self.sampler.model.name, max_attempts=self.options.max_attempts
                )
                if problem is None:
                    runnable.append(job)
                else:
                    self.recorder.fail(job, problem, report)
            pending: list[tuple[Rendered, Future[tuple[StoredObject, float]]]] = []
            for key, group in self.renderer.plan(runnable):
                rendered_group = self.render(key, group, report)
                if time.monotonic() - claimed_at > self.options.stuck_after_s / 2:
                    rendered_group = self.recorder.drop_taken_over(rendered_group, report)
                for rendered in rendered_group:
                    pending.append((rendered, self.recorder.upload(rendered)))
            self.recorder.record(pending, report)
        except Exception as error:
            done = set(report.succeeded) | set(report.failed) | set(report.retried)
            self.claims.give_back(
                [job for job in jobs if job.id not in done],
                owner,
                f"the worker failed: {type(error).__name__}: {error}",
                outage=isinstance(error, RetryableError),
            )
            raise
        finally:
            self.claims.release_hold(jobs)
        return jobs

    def render(self, key: GroupKey, jobs: list[Job], report: BatchReport) -> list[Rendered]:
        """Sample one planned group; record the jobs the sampler failed on and the prompts it
        had to shorten, and return the images to store."""
        sampled = self.renderer.sample_group(key, jobs)
        for job, error in sampled.failed:
            self.recorder.fail(job, error, report)
        report.groups.extend(sampled.calls)
        report.sample_seconds += sampled.sample_seconds
        if sampled.truncated:
            self.recorder.mark_truncated(sampled.truncated)
        return sampled.rendered

    def held_job_ids(self) -> list[str]:
        """The jobs this worker is working on now: what its heartbeat keeps alive."""
        return self.claims.held_job_ids()

    def close(self) -> None:
        """Finish the submissions the last deliveries touched, then stop the finisher's thread
        and the outage gate's probers."""
        self.gate.stop()
        self.finisher.close()
        # What the last deliveries finished is sent now if it can be within one attempt's
        # deadline; anything left waits in the outbox for the next sender.
        self.webhooks.close(drain_s=self.options.webhooks.timeout_s)
