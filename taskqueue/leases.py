"""Taking turns across the fleet: one worker at a time runs the reconciler.

Every worker runs a reconcile loop, so a fleet heals with no operator and no CronJob; but a
hundred workers each reading the whole broker every few seconds would be a hundred times the
work. A lease is a Redis key set with ``SET NX PX``: whoever sets it runs this turn, the others
skip it. The lease is not released at the end of a run but left to expire, so it also paces the
fleet to one run per interval whatever its size. Correctness never depends on it: the
reconciler is safe to run twice at once (the row is the truth, claims are guarded), so a lease
that expires mid-run costs a redundant pass, nothing more.

Brokers other than Redis (the embedded filesystem broker) run one worker in one process: a
process-local lock is the whole fleet there.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from taskqueue.redis_publish import supports

if TYPE_CHECKING:
    from celery import Celery

RECONCILE_LEASE_KEY = "loopfree.reconcile.lease"

_local_turns: dict[str, float] = {}
_local_lock = threading.Lock()


def take_turn(app: Celery, holder: str, *, every_s: float, key: str = RECONCILE_LEASE_KEY) -> bool:
    """True if ``holder`` gets this turn: no one in the fleet took one in the last ``every_s``."""
    if supports(app.conf.broker_url):
        import redis

        client = redis.Redis.from_url(app.conf.broker_url, socket_connect_timeout=5)
        try:
            return bool(client.set(key, holder, nx=True, px=max(1, int(every_s * 1000))))
        finally:
            client.close()
    with _local_lock:
        now = time.monotonic()
        if now - _local_turns.get(key, float("-inf")) < every_s:
            return False
        _local_turns[key] = now
        return True
