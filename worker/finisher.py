"""Finishing submissions, off the deliveries' path: one background thread per worker process.

When a delivery has recorded its outcomes, the submissions it touched may have no open job left.
Marking them finished is not the delivery's business: a database blip must hold up neither the
delivery's acks nor the GPU, nor take an upload thread away from images. So deliveries only hand
the submission ids to :class:`SubmissionFinisher`, whose own thread does the rest, in the order
handed over.

A submission is marked finished by the one call that sees its last job done
(``storage.submissions.mark_submission_finished`` is a guarded UPDATE); that call also writes
its webhook to the outbox, in the same transaction. The finisher never POSTs anything: it wakes
the webhook sender (``notify.sender``), whose threads do, each attempt by a deadline.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from storage.db import session_scope
from storage.submissions import mark_submission_finished
from worker.retrying import retry_while_unavailable

if TYPE_CHECKING:
    from storage.db import Engine

log = logging.getLogger(__name__)

_STOP = object()
"""Put on the queue by ``close``: everything handed over before it is finished first."""


class SubmissionFinisher:
    """Marks submissions finished (which owes their webhooks), on a thread of its own.

    ``finish`` never blocks on the database or the network; ``flush`` waits until everything
    handed over so far is done; ``close`` does the same and stops the thread.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        record_timeout_s: float,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.record_timeout_s = record_timeout_s
        # Called after a transaction that finished a submission: wakes the webhook sender.
        self.on_finished = on_finished
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._unfinished = 0  # submission ids handed over and not processed yet
        self._idle = threading.Condition()
        self._closed = False
        # A daemon thread: a process that exits without ``close`` (a test, a crash) must not hang
        # on it. Workers close it on shutdown, after their last delivery.
        self._thread = threading.Thread(target=self._loop, name="loopfree-finisher", daemon=True)
        self._thread.start()

    def finish(self, submission_ids: Iterable[str]) -> None:
        """Finish these submissions if no job of theirs is open, in the background."""
        ids = list(dict.fromkeys(submission_ids))
        if not ids:
            return
        with self._idle:
            if self._closed:
                raise RuntimeError("SubmissionFinisher is closed")
            self._unfinished += len(ids)
        for submission_id in ids:
            self._queue.put(submission_id)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every submission handed over so far is processed; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Process what was handed over, then stop the thread. Safe to call twice."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the submission finisher did not stop within %ss", timeout_s)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:  # everything already waiting, in one transaction
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = _STOP in batch
            ids = [item for item in batch if isinstance(item, str)]
            try:
                if ids:
                    self._finish(list(dict.fromkeys(ids)))
            except Exception as error:  # noqa: BLE001 - the thread must outlive one bad batch
                log.warning("could not finish submissions %s: %s", ids, error)
            finally:
                with self._idle:
                    self._unfinished -= len(ids)
                    self._idle.notify_all()

    def _finish(self, submission_ids: list[str]) -> None:
        def transaction() -> int:
            with session_scope(self.engine) as session:
                return sum(mark_submission_finished(session, sid) for sid in submission_ids)

        if retry_while_unavailable(transaction, self.record_timeout_s) and self.on_finished:
            self.on_finished()
