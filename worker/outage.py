"""Outages pause a worker; they do not fail its jobs.

When the object store or the database stops answering, failing jobs (or handing them back, each
one attempt closer to failing) turns a 30-second outage into hundreds of failed jobs. Instead the
worker's ``OutageGate`` closes:

- deliveries wait at the gate *before claiming* (``BatchRunner.run``, and ``worker.tasks`` where a
  warm shutdown can end the wait), so no job is claimed, and no attempt spent, while the outage
  lasts;
- jobs already in hand keep their rendered pixels: their uploads are tried again once the gate
  opens (``worker.recording``), while the heartbeat keeps them this worker's;
- one prober thread per dependency asks it again with jittered exponential backoff, up to
  ``LOOPFREE_OUTAGE_PROBE_MAX_S`` apart (the store: a tiny write, ``ObjectStore.probe``; the
  database: ``SELECT 1``, ``storage.jobs.ping``), and opens the gate when it answers.

One line is logged when the gate closes (what failed, how often it will probe) and one when it
opens (how long the outage lasted); ``loopfree_worker_paused`` is 1 in between.

Why block the delivery's pool thread instead of cancelling the Celery consumer: the prefetch window
is bounded (``worker.service.pool_options``: ``PIPELINE_DEPTH`` batches, late acks), so a paused
worker holds at most that many messages and takes no more, with no consumer state to restore
afterwards. Messages it holds unacknowledged longer than ``LOOPFREE_STUCK_AFTER_S`` are published
again by the reconciler (``fleet.reconcile``), so a worker that alone lost its store does not sit
on work that healthy workers could do; the guarded claim makes the duplicate harmless.

How long a pause may last: as long as the outage, with no bound. A *store* outage costs nothing
but time: the database still answers, the heartbeat keeps the jobs in hand owned, and the
messages held are re-published as above. During a *database* outage the heartbeat fails too:
a result in hand is retried for ``LOOPFREE_DB_RETRY_S`` (``worker.retrying``), after which the
delivery gives up and its jobs are published again; jobs whose heartbeat went stale past
``LOOPFREE_STUCK_AFTER_S`` may be taken over once the database is back (a takeover counts an
attempt, as for a crashed worker: from the row alone a worker that lost its database cannot be
told from a dead one). The guarded writes let only one result land either way.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping

from core.errors import RetryableError

log = logging.getLogger(__name__)

STORE = "object store"
DATABASE = "database"

FIRST_PROBE_S = 0.5
"""The first probe's pause: a blip (one refused connection) ends the pause in about a second."""

Probe = Callable[[], None]
"""Asks a dependency something cheap; raises ``RetryableError`` while it does not answer."""


class OutageGate:
    """Closed while a dependency is down; deliveries wait here before claiming.

    Thread-safe: deliveries, upload threads and probers share one gate per worker process.
    """

    def __init__(
        self,
        probes: Mapping[str, Probe],
        *,
        probe_max_s: float,
        first_probe_s: float = FIRST_PROBE_S,
    ) -> None:
        self.probes = dict(probes)
        self.probe_max_s = probe_max_s
        self.first_probe_s = min(first_probe_s, probe_max_s)
        self._condition = threading.Condition()
        self._down: dict[str, float] = {}  # dependency -> monotonic time it went down
        self._stopping = False
        self._waiting = 0  # deliveries blocked in ``wait_open``
        self._on_open: list[Callable[[str], None]] = []

    @property
    def paused(self) -> bool:
        """True while any dependency is down (``loopfree_worker_paused``)."""
        with self._condition:
            return bool(self._down)

    @property
    def waiting(self) -> int:
        """How many threads wait for the gate to open now."""
        with self._condition:
            return self._waiting

    def on_open(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(dependency)`` on the prober's thread when ``dependency`` is back."""
        self._on_open.append(callback)

    def confirm(self, dependency: str, error: BaseException) -> bool:
        """After a call to ``dependency`` failed as unavailable: is this an outage?

        Yes if the gate is already closed for it. Otherwise probe once, now: if the dependency
        answers, the failure was that call's own (a request the store could not take, while it
        takes others) and the caller handles it as before (False); if not, close the gate and
        start probing (True)."""
        with self._condition:
            if dependency in self._down:
                return True
        try:
            self.probes[dependency]()
        except RetryableError:
            self.report(dependency, error)
            return True
        except Exception:  # noqa: BLE001 - it answered (e.g. refused): not an outage
            return False
        return False

    def report(self, dependency: str, error: BaseException) -> None:
        """Close the gate for ``dependency`` (a call to it failed after its own retries) and
        start probing it; a no-op while it is already closed for it."""
        with self._condition:
            if dependency in self._down:
                return
            self._down[dependency] = time.monotonic()
            stopping = self._stopping
        log.warning(
            "%s unavailable (%s): worker paused, no new jobs claimed, jobs in hand kept; "
            "probing it with backoff up to %.0fs apart until it answers",
            dependency,
            error,
            self.probe_max_s,
        )
        if stopping:
            return  # shutting down: waiters give their jobs back instead (``wait_open``)
        threading.Thread(
            target=self._probe_until_back,
            args=(dependency,),
            name=f"loopfree-probe-{dependency.replace(' ', '-')}",
            daemon=True,
        ).start()

    def wait_open(self, timeout_s: float | None = None) -> bool:
        """Block while the gate is closed. True once it is open; False if it is still closed
        when ``stop`` is called (a warm shutdown) or ``timeout_s`` passes."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._condition:
            self._waiting += 1
            try:
                while self._down:
                    if self._stopping:
                        return False
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._condition.wait(left)
                return True
            finally:
                self._waiting -= 1

    def stop(self) -> None:
        """Warm shutdown: waiters return (False while closed), probers end."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()

    def _probe_until_back(self, dependency: str) -> None:
        probe = self.probes[dependency]
        attempt = 0
        while True:
            attempt += 1
            with self._condition:
                self._condition.wait_for(lambda: self._stopping, self._pause(attempt))
                if self._stopping:
                    return
            try:
                probe()
            except RetryableError as error:
                log.debug("%s still unavailable (probe %d): %s", dependency, attempt, error)
                continue
            except Exception as error:  # noqa: BLE001 - it answered, if with a refusal
                log.warning("%s answers again, with an error: %s", dependency, error)
            break
        with self._condition:
            down_since = self._down.pop(dependency)
            self._condition.notify_all()
        log.warning(
            "%s is back after a %.1fs outage (%d probes): worker resumed",
            dependency,
            time.monotonic() - down_since,
            attempt,
        )
        for callback in self._on_open:
            try:
                callback(dependency)
            except Exception as error:  # noqa: BLE001 - a callback must not stop the gate
                log.warning("after the %s came back: %s", dependency, error)

    def _pause(self, attempt: int) -> float:
        """Exponential backoff with jitter in its upper half: spreads a fleet's probes out, yet
        never probes much sooner than planned."""
        ceiling = min(self.probe_max_s, self.first_probe_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)
