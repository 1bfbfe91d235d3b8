"""How the worker waits out faults: the database while it is unreachable, and jobs it gives back.

Both back off exponentially with full jitter, so a fleet hit by the same outage does not come back
in one wave.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from core.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from storage.models import Job

log = logging.getLogger(__name__)
T = TypeVar("T")

Publish = Callable[[Sequence["Job"], float], None]
"""Sends jobs' messages again, due after the given number of seconds (``taskqueue.app``)."""

# How long a delivery keeps retrying the database (claims, finished results) while it is
# unreachable. Past it the delivery gives up: its jobs' heartbeats stop, and a redelivery or the
# reconciler hands them to another worker. Workers pass LOOPFREE_DB_RETRY_S (core.settings, same
# default); this default is for runners built without settings (tests, benchmarks).
RECORD_TIMEOUT_S = 300.0


def retry_while_unavailable(
    write: Callable[[], T],
    timeout_s: float,
    on_unavailable: Callable[[DatabaseUnavailable], None] | None = None,
) -> T:
    """Call ``write`` until it stops raising ``DatabaseUnavailable`` or ``timeout_s`` passes.

    ``on_unavailable`` hears of the first failure: the worker's outage gate closes on it, so the
    worker's other deliveries wait instead of claiming (``worker.outage``)."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        try:
            return write()
        except DatabaseUnavailable as error:
            attempt += 1
            if attempt == 1 and on_unavailable is not None:
                on_unavailable(error)
            pause = min(backoff_seconds(attempt, base=0.25, cap=10.0), deadline - time.monotonic())
            if pause <= 0:
                raise
            log.warning("database unavailable (%s); retrying in %.1fs", error, pause)
            time.sleep(pause)


def backoff_seconds(attempt: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: spreads retries of a fleet hit by the same outage."""
    return random.uniform(0, min(cap, base * 2**attempt))
