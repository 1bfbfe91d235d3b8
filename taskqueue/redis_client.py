"""The one way this project talks to the broker's Redis outside kombu: a client per broker URL.

Publishing in bulk, reading and taking back messages of the window, leases and locks, the
dead-letter list: each asks ``redis_client(app)``. One client (and its connection pool) per URL and
process, so a dispatcher that runs every second does not open a connection every second; a
connection broken by a Redis restart is replaced and the command retried once, so callers see an
error only when Redis is really down.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from celery import Celery

CONNECT_TIMEOUT_S = 5.0
"""A Redis that does not accept a connection in this long is down for our purposes."""


def redis_client(app: Celery) -> redis.Redis:
    """The client of ``app``'s broker (a ``redis://`` or ``rediss://`` URL)."""
    return _client_for(app.conf.broker_url)


@functools.lru_cache(maxsize=8)
def _client_for(url: str) -> redis.Redis:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=1),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
