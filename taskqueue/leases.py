"""Taking turns across the fleet: one worker at a time reconciles, one at a time dispatches.

Every worker runs a reconcile loop and a dispatch loop, so a fleet heals and feeds itself with no
operator and no CronJob; but a hundred workers each doing the same pass every few seconds would be
a hundred times the work, and two dispatchers filling one window at once would overfill it. Two
primitives, both on the broker's Redis:

- ``take_turn``: a key set with ``SET NX PX`` and left to expire. Whoever sets it runs this turn;
  it also paces the fleet to one run per interval whatever its size (the reconciler).
- ``exclusive``: a lock (redis-py's ``Lock``: a token, released only by its holder, with a
  timeout so a dead holder frees it), held for the duration of one pass (the dispatcher).

Correctness never depends on either: the reconciler and the dispatcher are safe to run twice at
once (the row is the truth, claims are guarded, window rows are taken with ``SKIP LOCKED``), so a
lease that expires mid-run costs a redundant pass, nothing more.

Brokers other than Redis (the embedded filesystem broker) run one worker in one process: a
process-local lock is the whole fleet there.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from taskqueue.redis_client import redis_client
from taskqueue.redis_lists import supports

if TYPE_CHECKING:
    from celery import Celery

RECONCILE_LEASE_KEY = "loopfree.reconcile.lease"
DISPATCH_LOCK_PREFIX = "loopfree.dispatch.lock."

_local_turns: dict[str, float] = {}
_local_locks: dict[str, threading.Lock] = {}
_local_lock = threading.Lock()


def take_turn(app: Celery, holder: str, *, every_s: float, key: str = RECONCILE_LEASE_KEY) -> bool:
    """True if ``holder`` gets this turn: no one in the fleet took one in the last ``every_s``."""
    if supports(app.conf.broker_url):
        return bool(redis_client(app).set(key, holder, nx=True, px=max(1, int(every_s * 1000))))
    with _local_lock:
        now = time.monotonic()
        if now - _local_turns.get(key, float("-inf")) < every_s:
            return False
        _local_turns[key] = now
        return True


@contextlib.contextmanager
def exclusive(app: Celery, key: str, *, timeout_s: float) -> Iterator[bool]:
    """Hold the fleet-wide lock ``key`` for the ``with`` block if no one else holds it; yields
    whether it was taken (never waits). A holder that dies frees it after ``timeout_s``."""
    if supports(app.conf.broker_url):
        lock = redis_client(app).lock(key, timeout=timeout_s, blocking=False)
        taken = lock.acquire()
        try:
            yield taken
        finally:
            if taken:
                with contextlib.suppress(Exception):  # expired meanwhile: nothing to release
                    lock.release()
        return
    with _local_lock:
        local = _local_locks.setdefault(key, threading.Lock())
    taken = local.acquire(blocking=False)
    try:
        yield taken
    finally:
        if taken:
            local.release()
