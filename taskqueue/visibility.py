"""Batches in flight, visible to Celery's own tools: ``inspect reserved|active``, events, Flower.

celery-batches buffers each message in its own strategy and runs the buffer as one call, so
Celery's worker state never hears of the messages: ``inspect reserved`` and ``active`` stay empty
while a worker renders sixteen jobs, and no ``task-received``/``-started``/``-succeeded`` event
reaches Flower. This module tells the worker state and the event stream what Celery's default
strategy would have told them:

* a buffered message is *reserved* (``task-received`` event), from the ``task_received`` signal
  celery-batches sends for each one;
* a flushed batch's messages are *active* while the batch runs (``task-started``), and
  *ready* when it returns (``task-succeeded``, or ``task-failed`` for jobs that failed).

Only the bookkeeping changes; acknowledgement stays celery-batches' (late, after the batch).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import signals
from celery.worker import state as worker_state

from taskqueue.app import GENERATE_TASK


def install() -> None:
    """Connect the ``task_received`` handler (once per process)."""
    signals.task_received.connect(_on_received, weak=False, dispatch_uid="loopfree-visibility")


def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is None or getattr(request, "name", None) != GENERATE_TASK:
        return
    worker_state.task_reserved(request)
    request.send_event(
        "task-received",
        name=request.name,
        args=request.argsrepr,
        kwargs=request.kwargsrepr,
        root_id=request.root_id,
        parent_id=request.parent_id,
        retries=0,
        eta=request.eta and request.eta.isoformat(),
        expires=None,
    )


@dataclass
class Flight:
    """The worker-state requests of one running batch; ``failed`` maps job ids to errors."""

    requests: list[Any]
    started: float = field(default_factory=time.monotonic)
    failed: dict[str, str] = field(default_factory=dict)

    def fail(self, job_ids: Collection[str], error: str) -> None:
        self.failed.update(dict.fromkeys(job_ids, error))


@contextlib.contextmanager
def in_flight(task_ids: Sequence[str]) -> Iterator[Flight]:
    """Mark the messages ``task_ids`` (a flushed batch) active while the block runs."""
    requests = [r for r in map(worker_state.requests.get, dict.fromkeys(task_ids)) if r]
    flight = Flight(requests)
    now = time.time()
    for request in requests:
        request.worker_pid = os.getpid()
        request.time_start = now
        worker_state.task_accepted(request)
        request.send_event("task-started")
    try:
        yield flight
    finally:
        runtime = time.monotonic() - flight.started
        for request in requests:
            error = flight.failed.get(request.id)
            if error is None:
                worker_state.task_ready(request, successful=True)
                request.send_event("task-succeeded", result=None, runtime=runtime)
            else:
                worker_state.task_ready(request)
                request.send_event("task-failed", exception=error, traceback=None)
