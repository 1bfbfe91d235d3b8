"""One delivery of job ids, end to end: claim -> plan -> sample -> store -> record -> finish.

Everything here is plain Python called by the Celery task (``worker.tasks``) and by tests directly.
``BatchRunner.run`` is the whole story; each step lives in a module of its own:

    worker.claiming   claim, take over abandoned jobs, suspects, checks, the held set, give-back
    worker.rendering  groups by size and steps, text encoding, sampling with split on failure
    worker.recording  PNG encoding and upload (upload pool), outcomes, retries, truncation flags
    worker.outage     the gate a store or database outage closes: deliveries wait before claiming
    worker.finisher   finished submissions (and their webhooks owed), on a thread of its own
    notify.sender  the webhook outbox, POSTed by threads of its own, each by a deadline

The GPU never waits on I/O: only sampling holds the GPU lock. PNG encoding and uploads run in the
upload pool while the next group samples, and while this delivery's thread waits for its uploads
and records results, the worker's other pool threads claim, encode and sample the next delivery.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.errors import RetryableError
from notify.sender import WebhookConfig, WebhookSender
from storage import jobs as job_store
from storage.db import session_scope
from storage.models import Job
from storage.objects import ObjectStore, StoredObject
from storage.uploads import UploadPool
from worker.claiming import Claims, check
from worker.finisher import SubmissionFinisher
from worker.metrics import WorkerMetrics
from worker.outage import DATABASE, STORE, OutageGate
from worker.recording import Recorder, ping_database
from worker.rendering import GroupKey, Rendered, Renderer
from worker.report import BatchReport
from worker.retrying import Publish
from worker.sampler import TiUESampler
from worker.text import TextEncoderCache

if TYPE_CHECKING:
    from core.settings import Settings
    from storage.db import Engine

log = logging.getLogger(__name__)

Reroute = Callable[[Sequence[tuple[str, str, int]]], None]
"""Publishes ``(job_id, model, priority)`` messages to those jobs' own model queues."""
SetAside = Callable[[Sequence[str]], None]
"""Sets messages aside whose job no database row has (the broker's dead-letter list)."""


def _log_set_aside(job_ids: Sequence[str]) -> None:
    log.error("dropping %d messages for jobs that do not exist: %s", len(job_ids), job_ids[:5])


@dataclass(frozen=True)
class Outlets:
    """Where a delivery's work goes: rows, images (through the upload pool), messages."""

    engine: Engine
    store: ObjectStore
    uploads: UploadPool
    publish: Publish
    reroute: Reroute | None = None  # None: through ``publish``
    set_aside: SetAside = field(default=_log_set_aside)


class BatchRunner:
    """Turns job ids into stored images and recorded results. One per worker process.

    Deliveries run concurrently, one per pool thread of the worker; ``close`` after the last one.
    Every limit comes from ``settings`` (``core.settings.Settings``), the one place they live.
    """

    def __init__(
        self,
        sampler: TiUESampler,
        outlets: Outlets,
        *,
        worker_name: str,
        settings: Settings,
        metrics: WorkerMetrics | None = None,
        on_claimed: Callable[[], None] | None = None,
    ) -> None:
        """``on_claimed``: called after each claim (the window shrank: the dispatcher tops it
        up)."""
        self.sampler = sampler
        self.outlets = outlets
        self.worker_name = worker_name
        self.settings = settings
        self.metrics = metrics or WorkerMetrics.disabled()
        self.texts = TextEncoderCache(sampler, metrics=self.metrics)
        # One gate per worker process: an outage seen by any delivery pauses them all.
        self.gate = OutageGate(
            {STORE: outlets.store.probe, DATABASE: lambda: ping_database(outlets.engine)},
            probe_max_s=settings.outage_probe_max_s,
        )
        self.metrics.watch_paused(lambda: self.gate.paused)
        self.claims = Claims(
            outlets.engine,
            worker_name=worker_name,
            publish=outlets.publish,
            stuck_after_s=settings.stuck_after_s,
            record_timeout_s=settings.db_retry_s,
            gate=self.gate,
            on_claimed=on_claimed,
        )
        # Small writes that must not hold the GPU up (which jobs are rendering now) go through a
        # thread of their own, in order.
        self.bookkeeping = ThreadPoolExecutor(1, thread_name_prefix="loopfree-bookkeeping")
        self.renderer = Renderer(
            sampler,
            self.texts,
            decoder_chunk=settings.decoder_chunk,
            metrics=self.metrics,
            batch_budget=settings.batch_budget,
            on_call=self._rendering,
        )
        self.recorder = Recorder(
            outlets.engine,
            outlets.store,
            outlets.uploads,
            worker_name=worker_name,
            publish=outlets.publish,
            max_attempts=settings.max_attempts,
            record_timeout_s=settings.db_retry_s,
            metrics=self.metrics,
            gpu_jpeg=settings.gpu_jpeg,
            gate=self.gate,
        )
        # Webhooks leave from the outbox on the sender's own threads, never from a delivery's.
        self.webhooks = WebhookSender(outlets.engine, WebhookConfig.from_settings(settings))
        self.finisher = SubmissionFinisher(
            outlets.engine,
            record_timeout_s=settings.db_retry_s,
            on_finished=self.webhooks.wake,
        )
        # Suspects (see ``run``) run one at a time, so one that kills the process takes no other
        # suspect's attempt with it.
        self.suspect_lock = threading.Lock()

    def run(self, job_ids: Sequence[str]) -> BatchReport:
        """Render and record one delivery. Messages for another model's jobs go back to that
        model's queue, their jobs untouched. Jobs whose last attempt died with its worker (a
        crash, a kill, an out-of-memory kill) may be what killed it: they are claimed and run
        alone, after the rest, so a job that crashes the process costs its batch-mates nothing
        and ends ``failed`` once its attempts are spent.

        While the object store or database is down, the delivery waits at the outage gate
        before it claims anything (``worker.outage``): no job is claimed, no attempt spent."""
        self.gate.wait_open()
        report = BatchReport(batch_id=uuid.uuid4().hex[:16], delivered=len(job_ids))
        delivery = self.claims.sort_delivery(
            list(dict.fromkeys(job_ids)), model=self.sampler.model.name
        )
        if delivery.elsewhere:
            self._reroute(delivery.elsewhere)
            report.rerouted = len(delivery.elsewhere)
        if delivery.unknown:
            self.outlets.set_aside(delivery.unknown)
        suspects = self.claims.find_suspects(delivery.mine)
        jobs = self.process([job_id for job_id in delivery.mine if job_id not in suspects], report)
        for job_id in [job_id for job_id in delivery.mine if job_id in suspects]:
            with self.suspect_lock:
                jobs += self.process([job_id], report)
        report.skipped = len(job_ids) - report.claimed - report.rerouted
        self.finisher.finish(job.submission_id for job in jobs)
        self.metrics.batch_done(report, self.settings.max_batch)
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
                problem = check(job, max_attempts=self.settings.max_attempts)
                if problem is None:
                    runnable.append(job)
                else:
                    self.recorder.fail(job, problem, report)
            pending: list[tuple[Rendered, Future[tuple[StoredObject, float]]]] = []
            for key, group in self.renderer.plan(runnable):
                rendered_group = self.render(key, group, report)
                if time.monotonic() - claimed_at > self.settings.stuck_after_s / 2:
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
        self.bookkeeping.shutdown(wait=True)
        self.finisher.close()
        # What the last deliveries finished is sent now if it can be within one attempt's
        # deadline; anything left waits in the outbox for the next sender.
        self.webhooks.close(drain_s=self.settings.webhook_timeout_s)

    def _reroute(self, messages: Sequence[tuple[str, str, int]]) -> None:
        log.warning(
            "%d messages were for jobs of another model (e.g. job %s of %s); sent to their "
            "own queues",
            len(messages),
            messages[0][0],
            messages[0][1],
        )
        if self.outlets.reroute is not None:
            self.outlets.reroute(messages)

    def _rendering(self, jobs: Sequence[Job]) -> None:
        """A sampler call starts on ``jobs``: say so in their rows, off the GPU's path."""

        def write() -> None:
            by_owner: dict[job_store.Owner, list[str]] = {}
            for job in jobs:
                owner = job_store.Owner(worker=job.worker or "", batch_id=job.batch_id or "")
                by_owner.setdefault(owner, []).append(job.id)
            try:
                with session_scope(self.outlets.engine) as session:
                    for owner, ids in by_owner.items():
                        job_store.mark_rendering(session, ids, owner)
            except Exception as error:  # noqa: BLE001 - a progress mark is not worth a failure
                log.debug("could not mark %d jobs rendering: %s", len(jobs), error)

        with contextlib.suppress(RuntimeError):  # shut down: nobody is watching any more
            self.bookkeeping.submit(write)
