"""The reconciler: take back what dead workers held and re-publish what the broker lost.

The database row is the truth and a message is only a hint, so the reconciler is safe to run at
any time, beside workers and beside another run of itself: a duplicate message cannot claim a job
twice (``storage.jobs`` guards every claim).

Two callers: ``loopfree requeue`` (:func:`requeue`, on demand or from a CronJob) and every live
worker's reconcile loop (``worker.reconciling``, one worker at a time), which is what brings a
killed worker's jobs back within a minute with no operator. Workers import this module (the one
stage-to-stage import, ``worker -> fleet``, one way): the reconcile pass needs both ``storage``
and ``taskqueue``, so it cannot live in either base layer.

Nothing here waits on a stalled process: rows locked by another transaction are skipped
(``SKIP LOCKED``) and taken on the next pass, and every other statement waits at most
``storage.db.RECONCILER_LOCK_TIMEOUT_S`` for a lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from core.settings import Settings
from storage.db import bound_lock_waits, make_engine, session_scope
from storage.models import utcnow

if TYPE_CHECKING:
    from celery import Celery

    from storage.db import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    released: int = 0  # running jobs of dead or stalled workers put back to queued
    requeued_failed: int = 0  # failed jobs queued again (--failed)
    published: int = 0  # queued jobs that had no live message, published again
    already_in_broker: int = 0  # queued jobs with a message waiting or recently delivered
    lost_unacked: int = 0  # of the published: their only message was an old unacked one

    def to_json(self) -> dict[str, int]:
        """What `loopfree requeue` prints (``lost_unacked`` is part of ``published``)."""
        counts = asdict(self)
        del counts["lost_unacked"]
        return counts

    @property
    def changed_anything(self) -> bool:
        return bool(self.released or self.requeued_failed or self.published)


def requeue(
    settings: Settings, *, stuck: bool, failed: bool, submission_id: str | None
) -> dict[str, int]:
    """Take back what dead workers held and re-publish what the broker lost.

    ``--stuck``: jobs running with a heartbeat older than ``stuck_after_s`` go back to queued.
    ``--failed``: failed jobs are queued again with fresh attempts. Then every queued job with no
    live message in the broker is published again (see :func:`reconcile`); where the broker
    cannot be read (not Redis), every queued job is, which is safe too (a duplicate message cannot
    claim a job twice). Safe to run at any time, beside workers and beside another run.
    """
    from taskqueue.app import make_celery

    engine = make_engine(settings.resolved_database_url)
    try:
        report = reconcile(
            engine,
            make_celery(settings),
            stuck_after_s=settings.stuck_after_s,
            stuck=stuck,
            failed=failed,
            submission_id=submission_id,
        )
    finally:
        engine.dispose()
    return report.to_json()


def reconcile(
    engine: Engine,
    app: Celery,
    *,
    stuck_after_s: float,
    stuck: bool = True,
    failed: bool = False,
    submission_id: str | None = None,
    publish_when_blind: bool = True,
) -> ReconcileReport:
    """One pass: release stale running jobs, requeue failed ones if asked, publish queued jobs
    that have no live message.

    A queued job's message is *live* if it waits in a queue list or was delivered to a worker
    less than ``stuck_after_s`` ago. A message delivered earlier and never acknowledged belongs
    to a worker that died (or holds it far longer than any batch takes): kombu would return it
    only after the visibility timeout, an hour, so the job is published again and the old entry
    dropped. If a live worker did still hold it, its job now has two messages; the second
    delivery claims nothing. ``publish_when_blind``: where the broker cannot be read, publish
    every queued job (an operator's run) or only the ones this pass released (a worker's loop,
    which runs every few seconds and must not flood the queue with duplicates).
    """
    from storage.jobs import WORKER_STOPPED, release_abandoned, requeue_failed
    from storage.queries import find_stuck_running, queued_job_keys
    from storage.submissions import reopen_submissions
    from taskqueue import redis_publish
    from taskqueue.app import publish_jobs, queue_name

    cutoff = utcnow() - timedelta(seconds=stuck_after_s)
    released: list[str] = []
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
                for job in find_stuck_running(session, heartbeat_before=cutoff, limit=1_000_000)
                if submission_id is None or job.submission_id == submission_id
            ]
            released = release_abandoned(
                session, abandoned, heartbeat_before=cutoff, error=WORKER_STOPPED
            )
    # The broker is read after the database: a message delivered since the read above is newer
    # than the cutoff, so it counts as live; one popped and not yet recorded as unacked is
    # missed, and its job gets a harmless second message.
    with session_scope(engine) as session:
        queued = queued_job_keys(session, submission_id=submission_id)
    view: redis_publish.BrokerView | None = None
    if queued and redis_publish.supports(app.conf.broker_url):
        try:
            view = redis_publish.read_broker(app, {queue_name(model) for _, model, _ in queued})
        except Exception as error:  # noqa: BLE001 - any failure here means "cannot see"
            log.warning("could not read the broker's messages (%s)", error)
    delivered_after = time.time() - stuck_after_s
    if view is not None:
        to_publish = [
            job
            for job in queued
            if not view.has_live_message(job[0], delivered_after=delivered_after)
        ]
    elif publish_when_blind:
        to_publish = queued
    else:
        wanted = set(released)
        to_publish = [job for job in queued if job[0] in wanted]
    published = publish_jobs(app, to_publish)
    lost = 0
    if view is not None and to_publish:
        stale = view.stale_tags((job[0] for job in to_publish), delivered_before=delivered_after)
        lost = len({job[0] for job in to_publish} & set(view.unacked))
        try:
            redis_publish.forget_unacked(app, stale)
        except Exception as error:  # noqa: BLE001 - a stale entry left costs a late duplicate
            log.warning("could not drop stale unacknowledged messages: %s", error)
    return ReconcileReport(
        released=len(released),
        requeued_failed=requeued,
        published=published,
        already_in_broker=len(queued) - len(to_publish),
        lost_unacked=lost,
    )
