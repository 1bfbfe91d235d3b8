"""The Celery side of the worker: a thin adapter from batched messages to ``BatchRunner.run``.

The batching itself (how long a message waits for company) is ``taskqueue.batches``.

On a warm shutdown (SIGTERM) the batches already running finish; flushes that have not started
yet (they queue in the thread pool behind the running ones) hand their jobs back to the broker
instead of rendering them, so the worker takes nothing more and exits within its grace period.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from celery import Celery
from celery.signals import worker_shutting_down
from celery_batches import SimpleRequest

from core.errors import BrokerUnavailable, RetryableError
from taskqueue import visibility
from taskqueue.app import GENERATE_TASK, publish_jobs
from taskqueue.batches import batch_task_options, jobs_from
from worker.batch import BatchRunner
from worker.retrying import backoff_seconds

log = logging.getLogger(__name__)


def register_generate_task(
    app: Celery, runner: BatchRunner, *, max_batch: int, max_wait_ms: int
) -> None:
    """Bind the batching ``loopfree.generate`` task of ``app`` to ``runner``."""
    stopping = threading.Event()

    def on_shutting_down(**_: object) -> None:
        stopping.set()
        runner.gate.stop()  # deliveries paused by an outage hand their jobs back, too
        log.info("warm shutdown: the batches in hand finish, the rest go back to the broker")

    worker_shutting_down.connect(on_shutting_down, weak=False)

    visibility.install()

    options = batch_task_options(
        max_batch=max_batch, max_wait_ms=max_wait_ms, on_received=runner.claims.receive
    )

    @app.task(name=GENERATE_TASK, **options)
    def generate(requests: Sequence[SimpleRequest]) -> None:
        # `celery inspect active` and Flower see the batch's messages while it runs.
        try:
            with visibility.in_flight([request.id for request in requests]) as flight:
                handle(requests, flight)
        finally:
            # Acked when this returns: the worker no longer vouches for these messages.
            runner.claims.forget(request.id for request in requests)

    def handle(requests: Sequence[SimpleRequest], flight: visibility.Flight) -> None:
        jobs = jobs_from(requests)
        if not jobs:
            return
        # During a store or database outage the delivery waits here, before claiming anything
        # (worker.outage): blocking this pool thread is what stops the consumer taking more,
        # since the prefetch window is a fixed number of whole batches (late acks).
        if not runner.gate.wait_open() or stopping.is_set():
            log.info("shutting down: handing %d jobs back to the broker", len(jobs))
            redeliver(app, runner, jobs, countdown=None)
            return
        try:
            report = runner.run(list(jobs))
        except RetryableError as error:
            # The database stayed down past the runner's bound: nothing more can be recorded now,
            # and these messages are acked on return. Send the jobs again, late enough for any
            # this delivery claimed to look abandoned and be taken over.
            log.error("batch of %d jobs gave up (%s); publishing them again", len(jobs), error)
            countdown = runner.settings.stuck_after_s + backoff_seconds(1)
            redeliver(app, runner, jobs, countdown=countdown)
            return
        flight.fail(report.failed, "the job failed; `loopfree status JOB_ID` has its error")
        log.info(
            "batch %s: %d delivered, %d ran in groups %s, %d succeeded, %d failed, %d retried",
            report.batch_id,
            report.delivered,
            report.claimed,
            report.groups,
            len(report.succeeded),
            len(report.failed),
            len(report.retried),
        )


def redeliver(
    app: Celery, runner: BatchRunner, jobs: dict[str, int], *, countdown: float | None
) -> None:
    """Publish ``jobs`` (id -> priority) again: their messages are acked when the task returns."""
    model = runner.sampler.model.name
    messages = [(job_id, model, priority) for job_id, priority in jobs.items()]
    try:
        publish_jobs(app, messages, countdown=countdown)
    except BrokerUnavailable as error:
        # The broker is down too, so the acks fail as well: it delivers the messages again.
        log.error("could not publish the jobs again: %s", error)
