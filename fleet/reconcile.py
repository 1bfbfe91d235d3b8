"""The reconciler: take back what dead workers held, re-publish what the broker lost, finish what
was cancelled. Its cost follows the work in flight, never the backlog.

The database row is the truth and a message is only a hint, so the reconciler is safe to run at
any time, beside workers and beside another run of itself: a duplicate message cannot claim a job
twice (``storage.jobs`` guards every claim). One pass:

1. **Running jobs of dead workers.** A running job whose heartbeat is older than ``stuck_after_s``
   goes back to ``queued``, in the window, and its message is published again.
2. **Lost messages in the window.** A window job (queued, with a message: ``fleet.dispatch``) is
   vouched for by the broker while its message waits there, and by a live worker while the worker
   holds it unclaimed (it refreshes ``jobs.dispatched_at`` with every heartbeat). One whose
   ``dispatched_at`` is older than ``lost_after_s`` (a worker's three beats,
   ``Settings.live_for_s``) and whose message no longer waits in the model's lists was lost: a
   worker died holding it, or Redis lost its data (a restart without persistence, ``FLUSHALL``).
   It is published again. Only the window is read, SQL and Redis
   alike: a few thousand rows and messages per model at most, however long the backlog.
3. **Cancelled submissions** still holding queued rows (``loopfree cancel`` moves what it can in a
   few seconds) have the next chunk of them moved to ``cancelled``, in a short transaction.

Two callers: ``loopfree requeue`` (on demand or from a CronJob) and every live
worker's reconcile loop (``worker.reconciling``, one worker at a time), which is what brings a
killed worker's jobs back within a minute with no operator. Workers import this module (the one
stage-to-stage import, ``worker -> fleet``, one way): the pass needs both ``storage`` and
``taskqueue``, so it cannot live in either base layer.

Nothing here waits on a stalled process: rows locked by another transaction are skipped
(``SKIP LOCKED``) and taken on the next pass, and every other statement waits at most
``storage.db.RECONCILER_LOCK_TIMEOUT_S`` for a lock.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from storage.db import bound_lock_waits, session_scope
from storage.models import utcnow

if TYPE_CHECKING:
    from celery import Celery

    from storage.db import Engine

log = logging.getLogger(__name__)

CANCEL_CHUNK = 20_000
"""Queued rows of a cancelled submission moved to ``cancelled`` per transaction: about a second
of PostgreSQL's time, so no lock is held for long and a pass stays short."""

CANCEL_CHUNKS_PER_PASS = 5
"""A worker's pass moves at most this many chunks; the next pass goes on."""

STALE_PER_PASS = 20_000
"""Window jobs one pass checks per model, oldest first (the window's ceiling, twice)."""


@dataclass(frozen=True)
class ReconcileReport:
    released: int = 0  # running jobs of dead or stalled workers, back in the window
    requeued_failed: int = 0  # failed jobs back in the backlog (--failed)
    republished: int = 0  # window jobs whose message was lost, published again
    cancelled: int = 0  # queued jobs of cancelled submissions moved to cancelled
    window_checked: int = 0  # window jobs old enough to check

    def to_json(self) -> dict[str, int]:
        """What `loopfree requeue` prints; ``published``: messages sent (released plus
        republished)."""
        return asdict(self) | {"published": self.released + self.republished}

    @property
    def changed_anything(self) -> bool:
        return bool(self.released or self.requeued_failed or self.republished or self.cancelled)


def reconcile(
    engine: Engine,
    app: Celery,
    *,
    stuck_after_s: float,
    lost_after_s: float | None = None,
    stuck: bool = True,
    failed: bool = False,
    submission_id: str | None = None,
    publish_when_blind: bool = True,
    cancel_chunks: int | None = CANCEL_CHUNKS_PER_PASS,
) -> ReconcileReport:
    """One pass (see the module's docstring). ``publish_when_blind``: where the broker cannot be
    read, publish every stale window job again (an operator's run) or none (a worker's loop,
    which runs every few seconds and must not flood the queue with duplicates: there, one worker
    in one process holds every message it took). ``cancel_chunks``: chunks of cancelled rows to
    move, None for all of them. ``lost_after_s``: how long nobody may have vouched for a window
    job's message before it counts as lost (default ``stuck_after_s``)."""
    from storage.jobs import WORKER_STOPPED, release_abandoned, requeue_failed
    from storage.queries import find_stuck_running
    from storage.submissions import reopen_submissions
    from taskqueue.app import publish_jobs

    cutoff = utcnow() - timedelta(seconds=stuck_after_s)
    released: list[tuple[str, str, int]] = []
    requeued = 0
    with session_scope(engine) as session:
        bound_lock_waits(session)
        if failed:
            requeued = len(requeue_failed(session, submission_id=submission_id))
            # Their submissions are open again: the next finish is a new one, with a new webhook.
            reopen_submissions(session, submission_id=submission_id)
        if stuck:
            abandoned = [
                job.id
                for job in find_stuck_running(session, heartbeat_before=cutoff)
                if submission_id is None or job.submission_id == submission_id
            ]
            released = release_abandoned(
                session, abandoned, heartbeat_before=cutoff, error=WORKER_STOPPED
            )
    if released:
        publish_jobs(app, released)
    checked, republished = (0, 0)
    if stuck:
        lost_since = utcnow() - timedelta(
            seconds=stuck_after_s if lost_after_s is None else lost_after_s
        )
        checked, republished = _republish_lost(engine, app, lost_since, publish_when_blind)
    cancelled = _finish_cancellations(engine, chunks=cancel_chunks)
    return ReconcileReport(
        released=len(released),
        requeued_failed=requeued,
        republished=republished,
        cancelled=cancelled,
        window_checked=checked,
    )


def _republish_lost(
    engine: Engine, app: Celery, cutoff: datetime, publish_when_blind: bool
) -> tuple[int, int]:
    """Publish again the window jobs whose message is gone; returns (checked, published).

    The database is read first, then the broker: a message popped by a worker after the read
    is vouched for by the worker's next heartbeat, and one popped and not yet recorded is
    published again, harmlessly."""
    from storage.window import models_in_window, redispatch, stale_in_window
    from taskqueue.app import publish_jobs, queue_name
    from taskqueue.redis_lists import supports, waiting_job_ids

    readable = supports(app.conf.broker_url)
    if not readable and not publish_when_blind:
        return 0, 0
    checked = published = 0
    with session_scope(engine) as session:
        models = models_in_window(session)
    for model in models:
        with session_scope(engine) as session:
            stale = stale_in_window(session, model, dispatched_before=cutoff, limit=STALE_PER_PASS)
        if not stale:
            continue
        checked += len(stale)
        if readable:
            try:
                waiting = waiting_job_ids(app, queue_name(model))
            except Exception as error:  # noqa: BLE001 - cannot see: try on the next pass
                log.warning("could not read the broker's queue of %s (%s)", model, error)
                continue
            lost = [job_id for job_id, _ in stale if job_id not in waiting]
        else:
            lost = [job_id for job_id, _ in stale]
        if not lost:
            continue
        with session_scope(engine) as session:
            again = redispatch(session, lost)
        published += publish_jobs(app, again)
        log.info("published again %d window jobs of %s whose messages were lost", len(again), model)
    return checked, published


def _finish_cancellations(engine: Engine, *, chunks: int | None) -> int:
    """Move queued rows of cancelled submissions to ``cancelled``, a chunk per transaction."""
    from storage.submissions import cancel_some, cancelled_with_queued

    with session_scope(engine) as session:
        pending = cancelled_with_queued(session)
    moved = 0
    budget = chunks
    for submission_id in pending:
        while budget is None or budget > 0:
            with session_scope(engine) as session:
                bound_lock_waits(session)
                count = cancel_some(session, submission_id, limit=CANCEL_CHUNK)
            moved += count
            if budget is not None:
                budget -= 1
            if count < CANCEL_CHUNK:
                break
    return moved
