"""Taking delivered jobs on, and handing them back: the worker's side of job ownership.

From the moment a message arrives (``receive``) until its delivery is done (``forget``), the
worker vouches for it: its heartbeat refreshes the job's ``dispatched_at``, so the reconciler
does not take an unclaimed message in a live worker's hands for a lost one. A delivery first
sorts its messages (``sort_delivery``): a job of another model goes back to its own queue
untouched, a message for no job at all is set aside. It then claims its jobs (queued -> running,
or running -> running for jobs a dead worker left behind) under an ``Owner``: this worker and the
delivery's batch id. From then until the delivery is done the jobs are *held*: the heartbeat
keeps exactly these alive, so a job it drops goes stale and is taken over instead of looking busy
for as long as the worker lives. Every database call here goes through ``storage``; this module
decides which call and when.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from core.errors import InvalidJob
from storage import jobs as job_store
from storage.db import session_scope
from storage.models import Job, JobStatus, utcnow
from storage.queries import delivery_facts, find_suspects, load_jobs
from storage.submissions import spec_of
from worker.outage import DATABASE, OutageGate
from worker.retrying import Publish, backoff_seconds, retry_while_unavailable

if TYPE_CHECKING:
    from storage.db import Engine

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """A delivery's job ids sorted by what their rows say."""

    mine: list[str] = field(default_factory=list)  # this worker's model: claim them
    elsewhere: list[tuple[str, str, int]] = field(default_factory=list)  # queued, another model
    unknown: list[str] = field(default_factory=list)  # no such job


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
        on_claimed: Callable[[], None] | None = None,
    ) -> None:
        """``gate``: told when the database is unreachable, so the worker's other deliveries
        wait before claiming (``worker.outage``). ``on_claimed``: called after every claim."""
        self.gate = gate
        self.on_claimed = on_claimed
        self._received: set[str] = set()  # messages in hand, claimed or not
        self.engine = engine
        self.worker_name = worker_name
        self.publish = publish
        self.stuck_after_s = stuck_after_s
        self.record_timeout_s = record_timeout_s
        self._held: set[str] = set()
        self._held_lock = threading.Lock()

    def receive(self, job_id: str) -> None:
        """A message for ``job_id`` arrived: vouch for it until ``forget``."""
        with self._held_lock:
            self._received.add(job_id)

    def forget(self, job_ids: Iterable[str]) -> None:
        """The messages' delivery is done (or handed back): stop vouching for them."""
        with self._held_lock:
            self._received.difference_update(job_ids)

    def unclaimed_messages(self) -> list[str]:
        """Jobs whose messages this worker holds but has not claimed (prefetched, buffered, or
        waiting at the outage gate)."""
        with self._held_lock:
            return list(self._received - self._held)

    def sort_delivery(self, job_ids: Sequence[str], *, model: str) -> Delivery:
        """Which delivered jobs are this worker's to claim, which belong to another model's
        queue (misrouted, or from an old queue), and which do not exist."""

        def transaction() -> dict[str, tuple[str, int, JobStatus]]:
            with session_scope(self.engine) as session:
                return delivery_facts(session, job_ids)

        facts = retry_while_unavailable(transaction, self.record_timeout_s, self.database_down)
        delivery = Delivery()
        for job_id in job_ids:
            fact = facts.get(job_id)
            if fact is None:
                delivery.unknown.append(job_id)
            elif fact[0] == model:
                delivery.mine.append(job_id)
            elif fact[2] == JobStatus.QUEUED:
                delivery.elsewhere.append((job_id, fact[0], fact[1]))
            # else: another model's job that is no longer queued: a stale duplicate, dropped.
        return delivery

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
        if self.on_claimed is not None:
            self.on_claimed()
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


def check(job: Job, *, max_attempts: int) -> str | None:
    """Why this claimed job must not run (invalid fields, out of attempts), or None. The row was
    validated on submit; this catches rows written by older or other code."""
    if job.attempts > max_attempts:
        last = job.error or "the worker running it stopped each time (crash or kill)"
        return f"gave up after {job.attempts - 1} attempts; last error: {last}"
    try:
        spec_of(job)
    except InvalidJob as error:
        return str(error)
    return None
