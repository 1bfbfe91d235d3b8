"""A worker process: load the model once, wire the batch runner to Celery, keep heartbeats going.

``loopfree worker`` runs :func:`run_worker` (a full Celery worker with signal handling: SIGTERM
finishes the batch in hand and takes no more). ``loopfree run`` embeds the same worker in a thread
with :func:`embedded_worker`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from celery import Celery

from core.errors import UserError
from core.modelinfo import canonical_model
from core.settings import Settings
from storage import jobs as job_store
from storage.db import Engine, make_engine, session_scope
from storage.models import Job
from storage.objects import ObjectStore
from storage.stores import store_for
from storage.uploads import UploadPool
from taskqueue import dead_letters
from taskqueue.app import make_celery, model_queue, publish_jobs
from taskqueue.batches import MaxWaitBatches
from taskqueue.redis_lists import supports
from worker.batch import BatchRunner, Outlets
from worker.dispatching import Dispatcher
from worker.metrics import WorkerMetrics
from worker.outage import DATABASE
from worker.reconciling import start_reconcile_loop
from worker.registry import Registration
from worker.tasks import register_generate_task

log = logging.getLogger(__name__)

# Batches a worker holds at once, each in a pool thread of its own: one sampling, one waiting on
# its uploads, and two claimed and text-encoded ahead (waiting for the sampler, or just flushed).
# The prefetch window is exactly this many full batches (see ``pool_options``), and a warm shutdown
# finishes up to this many batches (the ones in the pool threads).
PIPELINE_DEPTH = 4
# Seconds one image's PNG encoding, upload and share of the result transaction may take on a healthy
# store, per upload thread. S3 answers a PUT of a PNG in tens of milliseconds; one second leaves an
# order of magnitude of headroom. (A store or database outage takes longer; the guarded status
# updates make the redelivery that may cause harmless.)
UPLOAD_ALLOWANCE_S = 1.0


@dataclass
class WorkerRuntime:
    settings: Settings
    app: Celery
    runner: BatchRunner
    uploads: UploadPool
    metrics: WorkerMetrics
    name: str
    queue: str
    stop_heartbeat: threading.Event
    registration: Registration
    dispatcher: Dispatcher

    def close(self) -> None:
        """After the last delivery: stop heart-beating and dispatching, finish what the
        deliveries touched (submissions, webhooks), let the last uploads end, leave the worker
        registry."""
        self.stop_heartbeat.set()
        self.dispatcher.stop()
        self.runner.close()
        self.uploads.close()
        self.registration.retire()


def worker_name() -> str:
    """This process's name in the registry, in Celery and on every job it claims."""
    return f"loopfree-{os.getpid()}@{socket.gethostname()}"


def build_runtime(settings: Settings, model: str | None = None) -> WorkerRuntime:
    """Check the database, broker and store named by ``settings``, load the model, wire the
    batch runner to Celery and start the worker's background loops."""
    from taskqueue.versions import check_versions
    from worker.models import load_model
    from worker.sampler import TiUESampler

    check_versions()  # before the model loads: celery-batches/kombu internals we checked
    model = canonical_model(model or settings.model)
    # Every dependency is checked before the model loads and before any job is taken: a wrong
    # bucket or password is one line now, not a failure on every job it would take.
    engine = make_engine(settings.resolved_database_url)
    app = make_celery(settings)
    store = store_for(settings)
    check_dependencies(settings, engine, app, store)
    loaded = load_model(
        model,
        device=settings.device,
        dtype=settings.dtype,
        compile=settings.compile,
        channels_last=settings.channels_last,
        tiny_vae=settings.tiny_vae if settings.vae == "tiny" else None,
    )
    metrics = WorkerMetrics()
    metrics.model_load.set(loaded.load_seconds)
    uploads = UploadPool(max_workers=settings.upload_workers)
    name = worker_name()
    queue = model_queue(model).name
    dispatcher = Dispatcher(
        engine, app, settings, model=model, queue=queue, prefetch_batches=PIPELINE_DEPTH
    )

    def publish(jobs: Sequence[Job], countdown: float | None) -> None:
        publish_jobs(app, [(job.id, job.model, job.priority) for job in jobs], countdown=countdown)

    def set_aside(job_ids: Sequence[str]) -> None:
        reason = "no job with this id exists (deleted, or sent by another system)"
        log.error("%d messages name no job; %s", len(job_ids), reason)
        if supports(app.conf.broker_url):
            for job_id in job_ids:
                dead_letters.set_aside(app, queue, reason, job_id)

    runner = BatchRunner(
        TiUESampler(loaded, vae_budget=settings.vae_budget),
        Outlets(
            engine=engine,
            store=store,
            uploads=uploads,
            publish=publish,
            reroute=lambda messages: publish_jobs(app, messages),
            set_aside=set_aside,
        ),
        worker_name=name,
        settings=settings,
        metrics=metrics,
        on_claimed=dispatcher.nudge,
    )
    try:
        check_visibility_timeout(runner, settings)
    except BaseException:
        runner.close()
        uploads.close()
        raise
    logging.getLogger("celery.worker.consumer.consumer").addFilter(_BAD_MESSAGE_FILTER)
    register_generate_task(
        app, runner, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms
    )
    metrics.watch_busy(runner.held_job_ids)
    runner.gate.on_open(lambda dependency: _beat_after_outage(runner, dependency))
    registration = Registration(
        engine,
        settings,
        name=name,
        model=model,
        queue=queue,
        device=str(loaded.device),
        images_done=lambda: metrics.succeeded,
        jobs_in_hand=lambda: len(runner.held_job_ids()),
    )
    # Announced once the model is loaded and warmed up: from now on `submit` may count on it.
    registration.announce()
    stop = threading.Event()
    threading.Thread(
        target=_heartbeat_loop,
        args=(runner, settings.heartbeat_s, stop, registration),
        daemon=True,
    ).start()
    # Every worker takes its turn reconciling, so a dead worker's jobs come back in under a
    # minute without an operator (worker.reconciling).
    # Its own held jobs are beaten first: a worker whose heartbeat thread lagged (a starved
    # process) must not take its own live jobs for a dead worker's.
    start_reconcile_loop(
        engine, app, settings, name, stop, before_pass=lambda: _beat_held_jobs(runner)
    )
    # And every worker keeps its model's window full (worker.dispatching).
    dispatcher.start()
    dispatcher.nudge()
    return WorkerRuntime(
        settings, app, runner, uploads, metrics, name, queue, stop, registration, dispatcher
    )


def check_dependencies(settings: Settings, engine: Engine, app: Celery, store: ObjectStore) -> None:
    """Refuse to start, with one line that says what to fix, unless the database answers (its
    schema is checked by ``loopfree worker`` before this), the broker answers and the store takes
    and gives back a probe object."""
    from taskqueue.app import check_broker
    from worker.recording import ping_database

    ping_database(engine)
    check_broker(app, outcome="the worker did not start")
    store.verify_access()


class _NoTracebackForBadMessages(logging.Filter):
    """A message the worker refuses (pickled, not JSON, unknown task) is the sender's mistake:
    Celery's line saying what was refused and why is the whole story, and the traceback it adds
    (of its own decoding code) only buries it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery.worker.consumer import consumer

        refusals = (
            consumer.INVALID_TASK_ERROR,
            consumer.MESSAGE_DECODE_ERROR,
            consumer.UNKNOWN_TASK_ERROR,
        )
        if record.msg in refusals:
            record.exc_info = None
            record.exc_text = None
        return True


_BAD_MESSAGE_FILTER = _NoTracebackForBadMessages()


def check_visibility_timeout(runner: BatchRunner, settings: Settings) -> None:
    """Refuse to start if the broker could redeliver a job while this worker still holds it.

    A message waits at most ``max_wait`` plus one tick of the flush timer in the batching buffer
    (``MaxWaitBatches``), then behind the other batches in hand. The prefetch window, its own
    batch included, is ``PIPELINE_DEPTH`` full batches, so at worst its batch is the last of
    ``PIPELINE_DEPTH`` to sample, each taking one full batch's sampling plus its uploads.
    Sampling is estimated from the fastest of a few one-image runs after an untimed one: the first
    call pays for lazy initialisation and kernel warm-up (seconds on a CPU, absurd for a tiny
    model), and one run on a busy machine can take many times the usual.
    """
    model = runner.sampler.model
    runner.sampler.generate(["warm-up"], [0])
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        runner.sampler.generate(["warm-up"], [0])
        timings.append(time.perf_counter() - started)
    one_image = min(timings)
    uploads = UPLOAD_ALLOWANCE_S * math.ceil(settings.max_batch / settings.upload_workers)
    batch_seconds = one_image * settings.max_batch * 2 + uploads
    max_wait_s = settings.max_wait_ms / 1000
    buffered = max_wait_s * (1 + 1 / MaxWaitBatches.TICKS_PER_WAIT)
    longest = buffered + PIPELINE_DEPTH * batch_seconds
    log.info("warm-up of %s: %.2fs per image; longest batch ~%.0fs", model.name, one_image, longest)
    if settings.visibility_timeout_s < longest:
        raise UserError(
            f"the broker's visibility timeout ({settings.visibility_timeout_s}s) is shorter than "
            f"the longest batch this worker could hold (~{math.ceil(longest)}s), so jobs still "
            "being rendered would be delivered again; raise LOOPFREE_VISIBILITY_TIMEOUT_S or "
            "lower LOOPFREE_MAX_BATCH"
        )


def _heartbeat_loop(
    runner: BatchRunner, interval: float, stop: threading.Event, registration: Registration
) -> None:
    # Only the jobs a delivery holds right now: a job this worker claimed and then dropped must go
    # stale, or it would look busy for as long as the worker lives.
    while not stop.wait(interval):
        registration.beat()  # the worker itself is alive, busy or idle
        try:
            _beat_held_jobs(runner)
        except Exception as error:  # noqa: BLE001 - a missed heartbeat must not kill the worker
            log.warning("heartbeat failed: %s", error)


def _beat_held_jobs(runner: BatchRunner) -> None:
    """Refresh the heartbeat of the jobs this worker's deliveries hold right now, and vouch for
    the messages it holds unclaimed. Not while an outage pauses the worker: those messages are
    then left to go stale, so the reconciler publishes them again for workers that can run
    them (worker.outage)."""
    held = runner.held_job_ids()
    unclaimed = [] if runner.gate.paused else runner.claims.unclaimed_messages()
    if held or unclaimed:
        with session_scope(runner.outlets.engine) as session:
            if held:
                job_store.heartbeat(session, runner.worker_name, job_ids=held)
            if unclaimed:
                job_store.hold_dispatched(session, unclaimed)


def _beat_after_outage(runner: BatchRunner, dependency: str) -> None:
    """The database is back after an outage (``worker.outage``): beat the held jobs at once
    rather than up to a heartbeat later, so a reconcile pass right after the outage finds them
    fresh and leaves them to this worker instead of taking them for a dead worker's."""
    if dependency == DATABASE:
        _beat_held_jobs(runner)


def pool_options(max_batch: int) -> dict[str, object]:
    """The pool and prefetch window of a worker: ``PIPELINE_DEPTH`` threads, and exactly
    ``PIPELINE_DEPTH`` full batches of unacknowledged messages.

    Messages are acknowledged when their batch is done (late acks), so the window is everything
    the worker holds: the batches in the pool threads plus the one filling in the buffer. A
    window of whole batches is what lets every batch fill under a burst: with any remainder (it
    was 3 threads x 22 = 66 = 4 batches + 2), the remainder is all that can arrive while the
    whole batches are in hand, and it leaves as a batch of its own once it has waited max_wait.
    """
    return dict(
        pool_cls="threads",
        concurrency=PIPELINE_DEPTH,
        prefetch_multiplier=max_batch,
    )


def worker_options(runtime: WorkerRuntime) -> dict:
    return dict(
        hostname=runtime.name,
        queues=[runtime.queue],
        **pool_options(runtime.settings.max_batch),
        without_mingle=True,
        without_gossip=True,
        task_events=True,
    )


def run_worker(settings: Settings, model: str | None, loglevel: str = "INFO") -> None:
    """Run a Celery worker in this process until SIGTERM/SIGINT (warm shutdown)."""
    runtime = build_runtime(settings, model)
    if settings.metrics_port is not None:
        runtime.metrics.serve(settings.metrics_port)
    try:
        worker = runtime.app.Worker(loglevel=loglevel, **worker_options(runtime))
        worker.start()
    finally:
        runtime.close()
    if worker.exitcode:
        raise SystemExit(worker.exitcode)


@contextlib.contextmanager
def embedded_worker(settings: Settings, model: str | None = None) -> Iterator[WorkerRuntime]:
    """A worker running in a background thread of this process, stopped on exit."""
    runtime = build_runtime(settings, model)
    controller = runtime.app.WorkController(loglevel="WARNING", **worker_options(runtime))
    thread = threading.Thread(target=controller.start, name="loopfree-worker", daemon=True)
    thread.start()
    try:
        yield runtime
    finally:
        controller.stop(in_sighandler=False)
        thread.join(timeout=60)
        runtime.close()
