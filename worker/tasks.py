"""The Celery side of the worker: a thin adapter from batched messages to ``BatchRunner.run``.

celery-batches buffers ``loopfree.generate`` messages and flushes them as one call when
``max_batch`` have arrived or ``max_wait_ms`` has passed since the first, whichever comes first.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from celery import Celery
from celery_batches import Batches, SimpleRequest

from loopfree.queue import GENERATE_TASK
from worker.batch import BatchRunner

log = logging.getLogger(__name__)


def job_ids_from(requests: Sequence[SimpleRequest]) -> list[str]:
    """The job id of each well-formed message; malformed ones are logged and dropped (acked)."""
    job_ids = []
    for request in requests:
        args = request.args
        try:
            if len(args) != 1 or request.kwargs:
                raise ValueError("expected exactly one argument, the job id")
            job_ids.append(str(uuid.UUID(str(args[0]))))
        except (TypeError, ValueError) as error:
            log.error("dropping malformed message %s (args=%.200r): %s", request.id, args, error)
    return job_ids


def register_generate_task(
    app: Celery, runner: BatchRunner, *, max_batch: int, max_wait_ms: int
) -> None:
    """Bind the batching ``loopfree.generate`` task of ``app`` to ``runner``."""

    @app.task(
        name=GENERATE_TASK,
        base=Batches,
        flush_every=max_batch,
        flush_interval=max(max_wait_ms, 1) / 1000,
        acks_late=True,
        ignore_result=True,
    )
    def generate(requests: Sequence[SimpleRequest]) -> None:
        job_ids = job_ids_from(requests)
        if job_ids:
            report = runner.run(job_ids)
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
