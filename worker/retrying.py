"""How the worker waits out faults: the database while it is unreachable, and jobs it gives back.

Both back off exponentially with full jitter, so a fleet hit by the same outage does not come back
in one wave.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from core.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from storage.models import Job

log = logging.getLogger(__name__)
T = TypeVar("T")

Publish = Callable[[Sequence["Job"], "float | None"], None]
"""Sends jobs' messages again, due after the given number of seconds (``taskqueue.app``)."""


def retry_while_unavailable(
    write: Callable[[], T],
    timeout_s: float,
    on_unavailable: Callable[[DatabaseUnavailable], None] | None = None,
) -> T:
    """Call ``write`` until it stops raising ``DatabaseUnavailable`` or ``timeout_s`` passes
    (``LOOPFREE_DB_RETRY_S``), backing off exponentially with full jitter up to 10 s (tenacity).

    ``on_unavailable`` hears of the first failure: the worker's outage gate closes on it, so the
    worker's other deliveries wait instead of claiming (``worker.outage``)."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if state.attempt_number == 1 and on_unavailable is not None:
            on_unavailable(error)  # type: ignore[arg-type]
        pause = state.next_action.sleep if state.next_action else 0.0
        log.warning("database unavailable (%s); retrying in %.1fs", error, pause)

    retrying = Retrying(
        retry=retry_if_exception_type(DatabaseUnavailable),
        stop=stop_after_delay(timeout_s),
        wait=wait_random_exponential(multiplier=0.25, max=10.0),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(write)


def backoff_seconds(attempt: int, base: float = 2.0, cap: float = 300.0) -> float:
    """How long a job given back waits before its next attempt: exponential backoff with full
    jitter, so jobs of a fleet hit by the same fault do not come back in one wave."""
    return random.uniform(0, min(cap, base * 2**attempt))
