"""The Celery side of the worker: a thin adapter from batched messages to ``BatchRunner.run``.

celery-batches buffers ``loopfree.generate`` messages and flushes them as one call when
``max_batch`` have arrived or ``max_wait_ms`` has passed since the first, whichever comes first.
It acknowledges every message of a flush when the call returns, whether it succeeded or raised.

On a warm shutdown (SIGTERM) the batches already running finish; flushes that have not started
yet (they queue in the thread pool behind the running ones) hand their jobs back to the broker
instead of rendering them, so the worker takes nothing more and exits within its grace period.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence

from celery import Celery
from celery.signals import worker_shutting_down
from celery_batches import Batches, SimpleRequest

from loopfree.errors import BrokerUnavailable, RetryableError
from loopfree.queue import GENERATE_TASK, publish_jobs
from worker.batch import BatchRunner, backoff_seconds

log = logging.getLogger(__name__)


def jobs_from(requests: Sequence[SimpleRequest]) -> dict[str, int]:
    """Job id -> priority of each well-formed message; malformed ones are logged and dropped."""
    jobs = {}
    for request in requests:
        args = request.args
        try:
            if len(args) != 1 or request.kwargs:
                raise ValueError("expected exactly one argument, the job id")
            job_id = str(uuid.UUID(str(args[0])))
        except (TypeError, ValueError) as error:
            log.error("dropping malformed message %s (args=%.200r): %s", request.id, args, error)
            continue
        # delivery_info has the broker's priority (0 = served first); ours is its mirror image.
        broker_priority = (request.delivery_info or {}).get("priority")
        jobs[job_id] = 9 - broker_priority if isinstance(broker_priority, int) else 5
    return jobs


def register_generate_task(
    app: Celery, runner: BatchRunner, *, max_batch: int, max_wait_ms: int
) -> None:
    """Bind the batching ``loopfree.generate`` task of ``app`` to ``runner``."""
    stopping = threading.Event()

    def on_shutting_down(**_: object) -> None:
        stopping.set()
        log.info("warm shutdown: the batches in hand finish, the rest go back to the broker")

    worker_shutting_down.connect(on_shutting_down, weak=False)

    @app.task(
        name=GENERATE_TASK,
        base=Batches,
        flush_every=max_batch,
        flush_interval=max(max_wait_ms, 1) / 1000,
        acks_late=True,
        ignore_result=True,
        # Celery adds a task to every app of the process (later ones too) unless told not to:
        # a second worker in one process (`loopfree run`, tests) would run the first's runner.
        shared=False,
    )
    def generate(requests: Sequence[SimpleRequest]) -> None:
        jobs = jobs_from(requests)
        if not jobs:
            return
        if stopping.is_set():
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
            redeliver(app, runner, jobs, countdown=runner.stuck_after_s + backoff_seconds(1))
            return
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
