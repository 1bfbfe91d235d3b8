"""The reconciler: take back what dead workers held and re-publish what the broker lost.

The database row is the truth and a message is only a hint, so the reconciler is safe to run at
any time, beside workers and beside another run of itself: a duplicate message cannot claim a job
twice (``storage.jobs`` guards every claim).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from core.settings import Settings
from storage.db import make_engine, session_scope
from storage.models import utcnow

log = logging.getLogger(__name__)


def requeue(settings: Settings, *, stuck: bool, failed: bool, submission_id: str | None) -> dict:
    """Take back what dead workers held and re-publish what the broker lost.

    ``--stuck``: jobs running with a heartbeat older than ``stuck_after_s`` go back to queued.
    ``--failed``: failed jobs are queued again with fresh attempts. Then every queued job with no
    message in the broker is published again; where the broker cannot be read (not Redis), every
    queued job is, which is safe too (a duplicate message cannot claim a job twice). Safe to run at
    any time, beside workers and beside another run.
    """
    from storage.jobs import release_abandoned, requeue_failed
    from storage.queries import find_stuck_running, queued_job_keys
    from taskqueue import redis_publish
    from taskqueue.app import WORKER_STOPPED, make_celery, publish_jobs, queue_name

    engine = make_engine(settings.resolved_database_url)
    cutoff = utcnow() - timedelta(seconds=settings.stuck_after_s)
    released = requeued = 0
    with session_scope(engine) as session:
        if failed:
            requeued = len(requeue_failed(session, submission_id=submission_id))
        if stuck:
            abandoned = [
                job.id
                for job in find_stuck_running(session, heartbeat_before=cutoff, limit=1_000_000)
                if submission_id is None or job.submission_id == submission_id
            ]
            released = len(
                release_abandoned(session, abandoned, heartbeat_before=cutoff, error=WORKER_STOPPED)
            )
    with session_scope(engine) as session:
        queued = queued_job_keys(session, submission_id=submission_id)
    app = make_celery(settings)
    in_broker: set[str] = set()
    if queued and redis_publish.supports(app.conf.broker_url):
        try:
            models = {queue_name(model) for _, model, _ in queued}
            in_broker = redis_publish.job_ids_in_broker(app, models)
        except Exception as error:  # noqa: BLE001 - any failure here means "publish them all"
            log.warning(
                "could not read the broker's messages (%s); publishing every queued job", error
            )
    to_publish = [job for job in queued if job[0] not in in_broker]
    published = publish_jobs(app, to_publish)
    return {
        "released": released,
        "requeued_failed": requeued,
        "published": published,
        "already_in_broker": len(queued) - len(to_publish),
    }
