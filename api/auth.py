"""Who is asking, and may they ask now: bearer tokens and the per-token rate limit.

Every ``/v1`` request carries ``Authorization: Bearer lf_...``; the token is checked against its
stored hash (``storage.tokens``) and becomes a ``Caller``: the owner it acts for, whether it is an
admin, its quotas. The one exception: an API listening on loopback whose database has no token
at all (a fresh single-user install) lets requests without a token act as the local operator
(``LOOPFREE_OWNER`` or the user name, an admin); once a token exists, every request needs one.
Off loopback the API refuses to start without a token (``check_bind``).

The rate limit is a token bucket per token in this process: ``LOOPFREE_API_RATE_PER_S`` on
average, bursts of ``LOOPFREE_API_RATE_BURST``. Several replicas each keep their own buckets, so
a token may send N times as much through N replicas: size the limit per replica, or put the
shared limit in front (the ingress).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from api.problems import Problem
from core.errors import UserError
from core.settings import Settings
from storage.db import Engine, session_scope
from storage.tokens import Caller, any_token, caller_of, verify_token

BUCKETS_KEPT = 100_000
"""Token buckets a process keeps at most (a full bucket is forgotten first)."""


class TokenRequired(UserError):
    """``loopfree api`` was asked to listen beyond loopback while no token exists."""


def check_bind(host: str, engine: Engine) -> None:
    """Refuse to serve the API beyond loopback while no token could authenticate a request."""
    from status.web.security import is_loopback

    if is_loopback(host):
        return
    with session_scope(engine) as session:
        if any_token(session):
            return
    raise TokenRequired(
        f"`loopfree api --host {host}` would accept requests from the network, and no token "
        "exists to check them with: create one first (`loopfree tokens create --owner NAME "
        "--admin`), or bind to 127.0.0.1"
    )


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    """A token bucket per caller: ``rate`` requests a second, bursts of ``burst``."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key: str) -> float:
        """Spend one request of ``key``'s bucket: 0 if it had one, else the seconds until it
        will (nothing spent)."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= BUCKETS_KEPT:
                    self._forget_full(now)
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.stamp) * self.rate >= self.burst
        ]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]


class Authenticator:
    """Turns a request's ``Authorization`` header into a ``Caller``, or a 401 problem."""

    def __init__(self, settings: Settings, engine: Engine, *, open_when_empty: bool) -> None:
        self.engine = engine
        self.open_when_empty = open_when_empty
        self.limiter = RateLimiter(settings.api_rate_per_s, settings.api_rate_burst)
        self._local = Caller(owner=settings.resolved_owner, admin=True)
        self._tokens_exist = False

    def caller(self, request: Request) -> Caller:
        """The caller of ``request`` (a blocking database read: run it in a worker thread)."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            if self._open():
                return self._limited(self._local)
            raise _unauthorized(
                "this request carries no token: send 'Authorization: Bearer lf_...' (an "
                "operator makes one with `loopfree tokens create --owner NAME`)"
            )
        with session_scope(self.engine) as session:
            token = verify_token(session, credentials)
        if token is None:
            raise _unauthorized(
                "the token is unknown, revoked or expired: ask an operator for a new one "
                "(`loopfree tokens create`; `loopfree tokens list` shows which are live)"
            )
        return self._limited(caller_of(token))

    def _open(self) -> bool:
        """Whether a request without a token may act as the local operator: only on loopback,
        and only while no token was ever made (checked until one is, then never again)."""
        if not self.open_when_empty or self._tokens_exist:
            return False
        with session_scope(self.engine) as session:
            self._tokens_exist = any_token(session)
        return not self._tokens_exist

    def _limited(self, caller: Caller) -> Caller:
        wait = self.limiter.take(caller.token_id or "local")
        if wait:
            seconds = max(1, math.ceil(wait))
            raise Problem(
                429,
                "rate-limited",
                "Too many requests",
                f"this token sent more than {self.limiter.burst} requests in a burst (the limit "
                f"is {self.limiter.rate:g} a second on average); retry after {seconds} s",
                headers={"Retry-After": str(seconds)},
                quota="requests",
            )
        return caller


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "unauthorized",
        "A valid token is required",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="loopfree", error="invalid_token"'},
    )
