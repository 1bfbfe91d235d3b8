"""The batching consumer: celery-batches' ``Batches`` with a real maximum wait.

celery-batches buffers ``loopfree.generate`` messages and hands them over as one call (a flush)
when ``max_batch`` have arrived, or once the oldest of them has waited ``max_wait_ms`` (checked
four times per ``max_wait_ms``, so a lone message waits at most 1.25 x ``max_wait_ms``), whichever
comes first: see :class:`MaxWaitBatches`. It acknowledges every message of a flush when the call
returns, whether it succeeded or raised.

This relies on celery-batches' private attributes (``_buffer``, ``_pending``, ``_tref``,
``_do_flush``); ``taskqueue.versions`` refuses versions whose internals were not checked.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

from celery import Celery
from celery.utils.time import timezone
from celery_batches import Batches, SimpleRequest
from kombu.asynchronous.timer import to_timestamp

from core.jobspec import DEFAULT_PRIORITY
from taskqueue.app import job_priority

log = logging.getLogger(__name__)


class MaxWaitBatches(Batches):
    """``Batches`` whose ``flush_interval`` bounds how long a message waits, instead of being a
    period.

    celery-batches (0.11) starts a *periodic* timer with the first buffered message and flushes
    whatever the buffer holds at every tick, however young: a message that arrives 1 ms before a
    tick leaves alone. Under a burst that was one of the two reasons 4-16% of batch slots went
    empty (BENCHMARKS.md, "Batch fill"; the other was the prefetch window, see
    ``worker.service.pool_options``). Here the timer ticks every ``flush_interval /
    TICKS_PER_WAIT`` and flushes a partial buffer only once its *oldest* message has waited
    ``flush_interval``, so a lone message waits ``flush_interval`` plus at most one tick. A buffer
    of ``flush_every`` messages still flushes on arrival, in celery-batches' own message handler,
    which is left as it is.

    Messages with an ETA (celery-batches keeps them in ``_pending``) are flushed at the first tick
    after their ETA, as celery-batches does at its next tick. After a reconnect to the broker the
    timer is started again (celery-batches would keep a dead one: see ``Strategy``).

    The message handler and the timer run in the consumer's event loop thread (Redis); with a
    broker that has no event loop (the filesystem broker of ``loopfree run``) the timer has a
    thread of its own, so the handler and the tick take ``_lock`` around the buffer's bookkeeping.
    """

    TICKS_PER_WAIT = 4

    # Told the job id of every message as it arrives, before it waits in the buffer: the worker
    # vouches for the messages it holds unclaimed (``worker.claiming.Claims.receive``). A task
    # option (``batch_task_options``), so it is set per task.
    on_received: Callable[[str], None] | None = None

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        # When the oldest message now in ``_buffer`` arrived (monotonic); None while it is empty.
        # Every flush (``_do_flush``) drains the whole buffer, so it is reset after each.
        self._oldest: float | None = None

    def Strategy(self, task: Batches, app: Celery, consumer: Any) -> Callable[..., None]:
        handle = super().Strategy(task, app, consumer)
        timer = consumer.timer
        tick = self.flush_interval / self.TICKS_PER_WAIT
        with self._lock:
            # Celery builds the strategies again when it reconnects to the broker, after clearing
            # the event loop's timers without cancelling them: a ``_tref`` from before is dead,
            # and celery-batches, seeing one, would never start another (a lone message would
            # then wait for company forever). Start afresh.
            if self._tref is not None:
                self._tref.cancel()
                self._tref = None
            if not (self._buffer.empty() and self._pending.empty()):
                self._tref = timer.call_repeatedly(tick, self._flush_if_due)

        def task_message_handler(*args: Any, **kwargs: Any) -> None:
            arrived = monotonic()
            if self.on_received is not None and args:
                job_id = (getattr(args[0], "headers", None) or {}).get("id")
                if isinstance(job_id, str):
                    self.on_received(job_id)
            with self._lock:
                # Our timer is in place before celery-batches' handler looks: finding one, it
                # starts none of its own periodic flushes.
                if self._tref is None:
                    self._tref = timer.call_repeatedly(tick, self._flush_if_due)
                handle(*args, **kwargs)  # buffers the message, and flushes if the buffer is full
                if self._buffer.empty():
                    self._oldest = None
                elif self._oldest is None:
                    self._oldest = arrived

        return task_message_handler

    def _flush_if_due(self) -> None:
        with self._lock:
            now = monotonic()
            if self._oldest is None and not self._buffer.empty():
                # Defensive: our handler sets both under the lock; a message buffered some
                # other way starts its wait now.
                self._oldest = now
            due = (
                (self._oldest is not None and now - self._oldest >= self.flush_interval)
                or self._eta_reached()
                # Nothing left to wait for: ``_do_flush`` cancels the timer, as it always has.
                or (self._oldest is None and self._pending.empty())
            )
            if due:
                self._do_flush()
                self._oldest = None

    def _eta_reached(self) -> bool:
        """Whether a message held for its ETA may run now (the test ``_do_flush`` applies)."""
        with self._pending.mutex:
            held = list(self._pending.queue)
        for request in held:
            try:
                if request.utc:
                    eta = to_timestamp(timezone.to_system(request.eta))
                else:
                    eta = to_timestamp(request.eta, self.app.timezone)
            except (OverflowError, ValueError):
                return True  # ``_do_flush`` rejects it
            if eta <= monotonic():
                return True
        return False


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
        delivered = (request.delivery_info or {}).get("priority")
        jobs[job_id] = job_priority(delivered) if isinstance(delivered, int) else DEFAULT_PRIORITY
    return jobs


def batch_task_options(
    *, max_batch: int, max_wait_ms: int, on_received: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The options of the batching ``loopfree.generate`` task (for ``app.task``)."""
    return dict(
        base=MaxWaitBatches,
        on_received=on_received,
        flush_every=max_batch,
        # With MaxWaitBatches, the longest a partial batch waits for company, not a period.
        flush_interval=max(max_wait_ms, 1) / 1000,
        acks_late=True,
        ignore_result=True,
        # Celery adds a task to every app of the process (later ones too) unless told not to:
        # a second worker in one process (`loopfree run`, tests) would run the first's runner.
        shared=False,
    )
