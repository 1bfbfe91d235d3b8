"""Every worker is also a reconciler: the fleet heals itself with no operator.

When a worker dies (SIGKILL, OOM, a node gone), the jobs it had claimed stop heart-beating and the
messages it had prefetched sit in the broker's ``unacked`` hash, which kombu hands back only after
the visibility timeout (an hour). A live worker's loop notices within ``reconcile_interval_s`` of
those jobs' heartbeats going stale (``stuck_after_s``) and runs ``fleet.reconcile.reconcile``:
the jobs go back to queued and get a fresh message. With the defaults (heartbeat 10 s, stale after
30 s, a pass every 10 s) a killed worker's jobs are sampling again within about 45 s.

One worker at a time runs a pass (``taskqueue.leases.take_turn``). A pass that fails (database or
broker down) is logged and tried again next interval; it never touches the batches in hand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleet.reconcile import reconcile
from taskqueue.leases import take_turn

if TYPE_CHECKING:
    from celery import Celery

    from core.settings import Settings
    from storage.db import Engine

log = logging.getLogger(__name__)


def reconcile_once(
    engine: Engine,
    app: Celery,
    settings: Settings,
    holder: str,
    before_pass: Callable[[], None] | None = None,
) -> bool:
    """Run one pass if it is this worker's turn; True if it ran. Errors are logged, not raised.
    ``before_pass`` runs first when it is (the worker beats the jobs it holds)."""
    try:
        if not take_turn(app, holder, every_s=settings.reconcile_interval_s):
            return False
        if before_pass is not None:
            before_pass()
        report = reconcile(
            engine,
            app,
            stuck_after_s=settings.stuck_after_s,
            lost_after_s=settings.live_for_s,
            publish_when_blind=False,
        )
    except Exception as error:  # noqa: BLE001 - the loop must outlive any outage
        log.warning("reconcile pass failed (will try again): %s", error)
        return False
    if report.changed_anything:
        log.info("reconciled: %s", report.to_json())
    return True


def start_reconcile_loop(
    engine: Engine,
    app: Celery,
    settings: Settings,
    holder: str,
    stop: threading.Event,
    *,
    before_pass: Callable[[], None] | None = None,
) -> threading.Thread | None:
    """Run :func:`reconcile_once` every ``reconcile_interval_s`` until ``stop``; None if off."""
    interval = settings.reconcile_interval_s
    if interval <= 0:
        return None

    def loop() -> None:
        while not stop.wait(interval):
            reconcile_once(engine, app, settings, holder, before_pass)

    thread = threading.Thread(target=loop, name="loopfree-reconcile", daemon=True)
    thread.start()
    return thread
