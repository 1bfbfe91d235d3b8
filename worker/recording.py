"""Storing images and recording outcomes: what a delivery leaves behind for each job.

An image is encoded in its job's format (PNG by default, WebP or JPEG on request) and stored in
the upload pool while the next group samples; the encoder's SHA-256 is the one the store checks
and the row records (hashed once). Outcomes (succeeded, failed, given back for a retry) are
guarded writes that name the delivery's claim (``storage.jobs.Owner``): a job another worker took
over meanwhile stays that worker's. A delivery's successes are one statement
(``storage.jobs.mark_batch_succeeded``), not one per job.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from core.errors import BrokerUnavailable, LoopfreeError, RetryableError, StoreUnavailable
from core.modelinfo import public_model_name
from core.settings import Settings
from storage import jobs as job_store
from storage.db import session_scope
from storage.models import Job
from storage.objects import ObjectStore, StoredObject
from storage.uploads import UploadPool
from worker.imaging import encode_pixels
from worker.metrics import WorkerMetrics
from worker.outage import DATABASE, STORE, OutageGate
from worker.rendering import Rendered
from worker.retrying import Publish, backoff_seconds, retry_while_unavailable

if TYPE_CHECKING:
    from storage.db import Engine
    from worker.report import BatchReport

log = logging.getLogger(__name__)


class Recorder:
    """Stores rendered images and records every job's outcome. One per worker process."""

    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        uploads: UploadPool,
        *,
        worker_name: str,
        publish: Publish,
        max_attempts: int,
        record_timeout_s: float,
        metrics: WorkerMetrics,
        gpu_jpeg: bool = False,
        gate: OutageGate | None = None,
    ) -> None:
        """``gpu_jpeg``: encode JPEG jobs on the GPU where the pixels are on one
        (``LOOPFREE_GPU_JPEG``). ``gate``: the worker's outage gate (``worker.outage``); by
        default one of this recorder's own that probes ``store`` and ``engine``."""
        self.gate = gate or OutageGate(
            {STORE: store.probe, DATABASE: lambda: ping_database(engine)},
            probe_max_s=Settings.model_fields["outage_probe_max_s"].default,
        )
        self.gpu_jpeg = gpu_jpeg
        self.engine = engine
        self.store = store
        self.uploads = uploads
        self.worker_name = worker_name
        self.publish = publish
        self.max_attempts = max_attempts
        self.record_timeout_s = record_timeout_s
        self.metrics = metrics

    def owner(self, report: BatchReport) -> job_store.Owner:
        """The delivery's claim on its jobs, named by every write of an outcome."""
        return job_store.Owner(worker=self.worker_name, batch_id=report.batch_id)

    # -- storing (in the upload pool) -----------------------------------------------------------

    def upload(self, rendered: Rendered) -> Future[tuple[StoredObject, float]]:
        """Encode and store ``rendered`` on an upload thread; blocks while the pool is full."""
        return self.uploads.submit(self.store_image, rendered)

    def store_image(self, rendered: Rendered) -> tuple[StoredObject, float]:
        """Encode one image in its job's format and store it at the job's fixed key; returns it
        and the upload time. A retried upload overwrites the same key instead of adding a second
        image."""
        job = rendered.job
        started = time.perf_counter()
        image = encode_pixels(
            rendered.pixels,
            job.image_format,  # type: ignore[arg-type]  # validated by core.jobspec
            quality=job.image_quality,
            # A tiny-VAE image says in its own PNG text that it is not the reference image.
            text={
                "prompt": job.prompt,
                "seed": str(job.seed),
                "model": public_model_name(job.model),
            }
            | ({"vae": rendered.vae_note} if rendered.vae_note else {}),
            gpu_jpeg=self.gpu_jpeg,
        )
        encoded = time.perf_counter()
        stored = self.store.put(
            self.store.key_for(job.submission_id, job.id, image.extension),
            image.data,
            content_type=image.content_type,
            sha256=image.sha256,
            metadata={"job-id": job.id, "seed": str(job.seed)},
        )
        finished = time.perf_counter()
        self.metrics.stored(encoded - started, finished - encoded)
        return stored, finished - encoded

    # -- recording ------------------------------------------------------------------------------

    def record(
        self,
        pending: list[tuple[Rendered, Future[tuple[StoredObject, float]]]],
        report: BatchReport,
    ) -> None:
        """Wait for this delivery's uploads and record every outcome in one transaction.

        An upload that failed because the store is down (the outage gate's probe confirms it)
        keeps its job in hand, pixels and claim: it is uploaded again once the store answers,
        with no attempt spent (``upload_after_outage``)."""
        results: list[tuple[Rendered, StoredObject, float]] = []
        in_hand: list[Rendered] = []
        for rendered, future in pending:
            self.collect(rendered, future, results, in_hand, report)
        results += self.upload_after_outage(in_hand, report)
        if not results:
            return

        outcomes = [
            (
                rendered.job.id,
                job_store.JobResult(
                    image_uri=stored.uri,
                    image_bytes=stored.size,
                    image_sha256=stored.sha256,
                    sample_s=rendered.sample_s,
                    upload_s=upload_s,
                    gpu_share_s=rendered.gpu_share_s,
                    group_size=rendered.batch_size,
                ),
            )
            for rendered, stored, upload_s in results
        ]

        def write() -> list[str]:
            # One compare-and-set for the delivery whose WHERE names its claim, row by row: a job
            # another worker took over meanwhile stays that worker's, with no lock taken first.
            with session_scope(self.engine) as session:
                return job_store.mark_batch_succeeded(session, outcomes, owner=self.owner(report))

        # The images are stored; losing their results to a database blip would waste the GPU
        # time. Keep them and retry until the database is back, within a bound.
        recorded = retry_while_unavailable(write, self.record_timeout_s, self.database_down)
        report.succeeded.extend(recorded)
        held = set(recorded)
        for rendered, _, _ in results:
            if rendered.job.id in held:
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

    def collect(
        self,
        rendered: Rendered,
        future: Future[tuple[StoredObject, float]],
        results: list[tuple[Rendered, StoredObject, float]],
        in_hand: list[Rendered],
        report: BatchReport,
        *,
        again: bool = False,
    ) -> None:
        """Sort one finished upload: stored (``results``), kept through a store outage
        (``in_hand``), given back for a retry, or failed. ``again``: this was the upload's
        second try, after the outage or after the store answered its probe."""
        try:
            stored, upload_s = future.result()
        except StoreUnavailable as error:
            if self.gate.confirm(STORE, error):
                in_hand.append(rendered)  # an outage: keep the job, its pixels and its claim
            elif not again:
                # The store answers its probe now, but an upload that was retrying through the
                # end of an outage can fail just after it (or on a connection the restart broke):
                # one more try, at once, before it costs the job an attempt.
                in_hand.append(rendered)
            else:
                # The store answers its probe but not this upload, twice: the job's own failure.
                self.retry_later(rendered.job, str(error), report)
        except RetryableError as error:
            self.retry_later(rendered.job, str(error), report)
        except LoopfreeError as error:
            self.fail(rendered.job, f"storing the image failed: {error}", report)
        else:
            results.append((rendered, stored, upload_s))

    def upload_after_outage(
        self, in_hand: list[Rendered], report: BatchReport
    ) -> list[tuple[Rendered, StoredObject, float]]:
        """Upload the jobs kept through a store outage once the gate opens, as often as the
        outage comes back; their heartbeat keeps them this worker's meanwhile. A job another
        worker took over (possible only if the database was down too) is left to it. On a warm
        shutdown during the outage the jobs are given back, their attempts refunded."""
        results: list[tuple[Rendered, StoredObject, float]] = []
        while in_hand:
            if not self.gate.wait_open():
                for rendered in in_hand:
                    self.retry_later(
                        rendered.job,
                        "the worker shut down while the object store was unreachable",
                        report,
                        outage=True,
                    )
                return results
            held = self.still_held([rendered.job.id for rendered in in_hand], report)
            retrying = []
            for rendered in in_hand:
                if rendered.job.id in held:
                    retrying.append((rendered, self.upload(rendered)))
                else:
                    log.warning(
                        "job %s was taken over during the store outage; not uploading it again",
                        rendered.job.id,
                    )
            in_hand = []
            for rendered, future in retrying:
                self.collect(rendered, future, results, in_hand, report, again=True)
        return results

    def drop_taken_over(self, rendered: list[Rendered], report: BatchReport) -> list[Rendered]:
        """Of a group just sampled, the images whose jobs this delivery still holds. The batch
        runner asks only when the group took long enough for its heartbeat to have gone stale
        (the process was stopped, swapped out or starved): another worker may own the job now,
        and uploading this image would overwrite that worker's object at the job's fixed key.
        (A stall between this check and the upload itself is not covered.)"""
        held = self.still_held([item.job.id for item in rendered], report)
        for item in rendered:
            if item.job.id not in held:
                log.warning(
                    "job %s was taken over while this worker was stalled; not uploading it",
                    item.job.id,
                )
        return [item for item in rendered if item.job.id in held]

    def still_held(self, job_ids: list[str], report: BatchReport) -> set[str]:
        """Which of ``job_ids`` this delivery still holds."""

        def transaction() -> set[str]:
            with session_scope(self.engine) as session:
                return job_store.still_held(session, job_ids, self.owner(report))

        return retry_while_unavailable(transaction, self.record_timeout_s, self.database_down)

    def database_down(self, error: Exception) -> None:
        """A database call failed after its retries: close the outage gate for the database."""
        self.gate.report(DATABASE, error)

    def fail(self, job: Job, error: str, report: BatchReport) -> None:
        """Record a permanent failure (invalid job, the sampler failed on it alone, the store
        refused it for good, out of attempts)."""

        def transaction() -> bool:
            with session_scope(self.engine) as session:
                return job_store.mark_failed(session, job.id, error, owner=self.owner(report))

        if not retry_while_unavailable(transaction, self.record_timeout_s, self.database_down):
            log.warning(
                "job %s is no longer held by this delivery; its failure is not recorded", job.id
            )
            return
        report.failed.append(job.id)
        self.metrics.job_done(job.model, "failed", job.queue_wait_s)

    def retry_later(
        self, job: Job, error: str, report: BatchReport, *, outage: bool = False
    ) -> None:
        """Give a job back after a transient fault; it comes again after a jittered backoff,
        until its attempts are spent. ``outage``: the fault was a dependency's, not the job's:
        the attempt is refunded, and the job never runs out of attempts this way."""
        if job.attempts >= self.max_attempts and not outage:
            self.fail(job, f"gave up after {job.attempts} attempts; last error: {error}", report)
            return

        def transaction() -> bool:
            with session_scope(self.engine) as session:
                return job_store.release_for_retry(
                    session, job.id, error=error, owner=self.owner(report), refund_attempt=outage
                )

        if not retry_while_unavailable(transaction, self.record_timeout_s, self.database_down):
            log.warning("job %s is no longer held by this delivery; not giving it back", job.id)
            return
        report.retried.append(job.id)
        try:
            self.publish([job], backoff_seconds(job.attempts))
        except BrokerUnavailable as broker_error:
            # The job is queued in the database; `loopfree requeue` publishes it again.
            log.warning("job %s is queued but its message was not sent: %s", job.id, broker_error)

    def mark_truncated(self, job_ids: list[str]) -> None:
        """Flag jobs whose prompt lost tokens to the text encoder's limit."""

        def transaction() -> None:
            with session_scope(self.engine) as session:
                job_store.mark_prompts_truncated(session, job_ids)

        retry_while_unavailable(transaction, self.record_timeout_s, self.database_down)


def ping_database(engine: Engine) -> None:
    """The outage gate's database probe: ``SELECT 1`` in a transaction of its own."""
    with session_scope(engine) as session:
        job_store.ping(session)
