"""Taking delivered jobs on, and handing them back: the worker's side of job ownership.

A delivery claims its jobs (queued -> running, or running -> running for jobs a dead worker left
behind) under an ``Owner``: this worker and the delivery's batch id. From then until the delivery
is done the jobs are *held*: the worker's heartbeat keeps exactly these alive, so a job it drops
goes stale and is taken over instead of looking busy for as long as the worker lives. Every
database call here goes through ``storage``; this module decides which call and when.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from core.errors import InvalidJob
from storage import jobs as job_store
from storage.db import session_scope
from storage.models import Job, utcnow
from storage.queries import find_suspects, load_jobs
from storage.submissions import spec_of
from worker.outage import DATABASE, OutageGate
from worker.retrying import Publish, backoff_seconds, retry_while_unavailable

if TYPE_CHECKING:
    from storage.db import Engine

log = logging.getLogger(__name__)


class Claims:
    """Claims delivered jobs, remembers which ones this worker holds, gives them back."""

    def __init__(
        self,
        engine: Engine,
        *,
        worker_name: str,
        publish: Publish,
        stuck_after_s: float,
        record_timeout_s: float,
        gate: OutageGate | None = None,
    ) -> None:
        """``gate``: told when the database is unreachable, so the worker's other deliveries
        wait before claiming (``worker.outage``)."""
        self.gate = gate
        self.engine = engine
        self.worker_name = worker_name
        self.publish = publish
        self.stuck_after_s = stuck_after_s
        self.record_timeout_s = record_timeout_s
        self._held: set[str] = set()
        self._held_lock = threading.Lock()

    def find_suspects(self, job_ids: Sequence[str]) -> set[str]:
        """Jobs claimed before whose last attempt ended without an outcome: its worker died, and
        the job may be what killed it."""

        def transaction() -> set[str]:
            with session_scope(self.engine) as session:
                return find_suspects(session, job_ids)

        return retry_while_unavailable(transaction, self.record_timeout_s, self.database_down)

    def database_down(self, error: Exception) -> None:
        """A database call failed after its retries: close the outage gate for the database."""
        if self.gate is not None:
            self.gate.report(DATABASE, error)

    def claim(self, job_ids: Sequence[str], owner: job_store.Owner) -> list[Job]:
        """Move delivered jobs to ``running`` under ``owner`` and hold them; duplicates,
        cancelled and finished jobs, and jobs another live worker runs, drop out."""

        def transaction() -> list[Job]:
            with session_scope(self.engine) as session:
                claim = dict(worker=owner.worker, batch_id=owner.batch_id, batch_size=len(job_ids))
                claimed_ids = job_store.claim_jobs(session, job_ids, **claim)
                rest = [job_id for job_id in job_ids if job_id not in set(claimed_ids)]
                if rest:
                    # Redelivered after a worker died holding them: take them over.
                    stale = utcnow() - timedelta(seconds=self.stuck_after_s)
                    claimed_ids += job_store.reclaim_abandoned(
                        session, rest, heartbeat_before=stale, **claim
                    )
                return load_jobs(session, claimed_ids)

        jobs = retry_while_unavailable(transaction, self.record_timeout_s, self.database_down)
        with self._held_lock:
            self._held.update(job.id for job in jobs)
        return jobs

    def held_job_ids(self) -> list[str]:
        """The jobs this worker is working on now: the ones its heartbeat keeps alive."""
        with self._held_lock:
            return list(self._held)

    def release_hold(self, jobs: Iterable[Job]) -> None:
        """Stop heart-beating ``jobs``: their delivery is done with them, one way or another."""
        with self._held_lock:
            self._held.difference_update(job.id for job in jobs)

    def give_back(
        self, jobs: Sequence[Job], owner: job_store.Owner, error: str, *, outage: bool = False
    ) -> None:
        """After an error the delivery cannot handle, send ``jobs`` (claimed, no outcome yet) back
        to the queue. Best effort, no retries: if the database or broker is down as well, the
        jobs go stale instead and are taken over. ``outage``: the error was a dependency's
        (store or database unreachable), not the jobs', so their attempts are refunded."""
        for job in jobs:
            try:
                with session_scope(self.engine) as session:
                    released = job_store.release_for_retry(
                        session, job.id, error=error, owner=owner, refund_attempt=outage
                    )
                if released:
                    self.publish([job], backoff_seconds(job.attempts))
            except Exception as failure:  # noqa: BLE001 - the caller raises the original error
                log.warning("could not give the delivery's jobs back: %s", failure)
                return


def check(job: Job, *, model: str, max_attempts: int) -> str | None:
    """Why this claimed job must not run (invalid fields, another model, out of attempts), or
    None. The row was validated on submit; this catches rows written by older or other code."""
    if job.attempts > max_attempts:
        last = job.error or "the worker running it stopped each time (crash or kill)"
        return f"gave up after {job.attempts - 1} attempts; last error: {last}"
    if job.model != model:
        return f"job is for model {job.model!r} but this worker serves {model!r}"
    try:
        spec_of(job)
    except InvalidJob as error:
        return str(error)
    return None
