"""Every worker keeps its model's window full: the fleet feeds itself from the backlog.

The broker holds a bounded window of each model's queued jobs (``fleet.dispatch``). Each live
worker runs one dispatch thread for its model: it tops the window up whenever the worker claims
a batch (``nudge``: the window just shrank) and at least every ``LOOPFREE_DISPATCH_INTERVAL_S``
(jobs that came back to the backlog, a new submission, a worker that joined). One worker of a
model dispatches at a time (``taskqueue.leases.exclusive``); a pass that fails (database or
broker down) is logged and tried again on the next tick.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from fleet.dispatch import DispatchReport, top_up
from storage.db import session_scope
from storage.workers import count_live
from taskqueue.leases import DISPATCH_LOCK_PREFIX, exclusive

if TYPE_CHECKING:
    from celery import Celery

    from core.settings import Settings
    from storage.db import Engine

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 30.0
"""A dispatcher that dies holding its model's lock frees it after this long."""


class Dispatcher:
    """The dispatch thread of one worker: ``start``, ``nudge`` after claims, ``stop``."""

    def __init__(
        self,
        engine: Engine,
        app: Celery,
        settings: Settings,
        *,
        model: str,
        queue: str,
        prefetch_batches: int,
    ) -> None:
        self.engine = engine
        self.app = app
        self.settings = settings
        self.model = model
        self.lock_key = DISPATCH_LOCK_PREFIX + queue
        self.prefetch_batches = prefetch_batches
        self.weights = settings.owner_weight_map
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="loopfree-dispatch", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """The window shrank (a claim): top it up soon, without waiting for the next tick."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def dispatch_once(self) -> DispatchReport | None:
        """One top-up if no other worker of the model is dispatching; None if one is, or if the
        pass failed (logged; the next tick tries again)."""
        try:
            with exclusive(self.app, self.lock_key, timeout_s=LOCK_TIMEOUT_S) as mine:
                if not mine:
                    return None
                with session_scope(self.engine) as session:
                    live = count_live(session, self.model)
                report = top_up(
                    self.engine,
                    self.app,
                    self.model,
                    live_workers=max(1, live),  # this worker is live, registered or not yet
                    max_batch=self.settings.max_batch,
                    prefetch_batches=self.prefetch_batches,
                    refill_every_s=self.settings.dispatch_interval_s,
                    floor=self.settings.window_min,
                    ceiling=self.settings.window_max,
                    weights=self.weights,
                )
        except Exception as error:  # noqa: BLE001 - the loop must outlive any outage
            log.warning("dispatching %s failed (will try again): %s", self.model, error)
            return None
        if report.total:
            log.debug(
                "dispatched %d jobs of %s (window %d, target %d)",
                report.total,
                self.model,
                report.window,
                report.target,
            )
        return report

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.dispatch_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.dispatch_once()
