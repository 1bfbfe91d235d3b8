"""What an owner has in flight and has spent today: the reads and writes behind the API's quotas.

**Cost.** A job costs ``width x height x steps`` pixel-steps; ``PIXEL_STEPS_PER_UNIT`` of them
(a 512 x 512 image at 4 steps) make one unit, the unit daily quotas are counted in, so a
1024 x 1024 image at 8 steps costs 8 units and a 256 x 256 one at 4 steps a quarter. Time on a
GPU grows with pixels and steps about like that (the decoder runs once per step on latents of
``h/8 x w/8``).

**Daily usage** is a row per owner and UTC day (``owner_usage``), charged before a submission's
jobs are written, by one guarded upsert (``charge_day``): the increment and the check that it
stays within the quota are one statement. On PostgreSQL, ``INSERT ... ON CONFLICT DO UPDATE``
locks the owner's row and evaluates the ``WHERE`` on its latest committed version, so of two
concurrent requests the second waits for the first and sees its charge; SQLite runs one writer at
a time. Two requests therefore cannot both pass a quota that only one fits in. A submission that
fails after its charge, or turns out to be an earlier one (same idempotency key), is refunded.

**Jobs open at once** (queued, claimed or rendering) are a sum over the owner's open flows (the
flows' counters, ``storage.counters``; the partial index ``ix_flows_open``), never a scan of
jobs. The check and the insert of the new jobs are not one statement (a submission is written in
chunks, a transaction each), so submits of one owner that check this quota take the owner's
lock (``owner_lock``) from the check until their jobs are written: a PostgreSQL session-level
advisory lock, released by a crash as well (the connection closes).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

from sqlalchemy import Engine, case, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core.errors import RetryableError
from storage.db import dialect_insert
from storage.models import Flow, OwnerUsage

PIXEL_STEPS_PER_UNIT = 512 * 512 * 4
"""One cost unit: a 512 x 512 image at 4 steps (the default job of an SD1.5 Loopfree model)."""

_FLOW_OPEN = text("(flows.queued > 0 OR flows.running > 0)")  # the partial index ix_flows_open


class OwnerBusy(RetryableError):
    """Another submit of the same owner held the owner's lock for longer than we waited."""


def units(pixel_steps: int) -> float:
    """Pixel-steps as cost units."""
    return pixel_steps / PIXEL_STEPS_PER_UNIT


def open_jobs(session: Session, owner: str) -> int:
    """The owner's jobs queued, claimed or rendering: a sum over its open flows."""
    statement = select(func.coalesce(func.sum(Flow.queued + Flow.running), 0)).where(
        _FLOW_OPEN, Flow.owner == owner
    )
    return int(session.scalar(statement) or 0)


def spent_on(session: Session, owner: str, day: date) -> int:
    """Pixel-steps the owner was charged on ``day``."""
    statement = select(OwnerUsage.pixel_steps).where(
        OwnerUsage.owner == owner, OwnerUsage.day == day
    )
    return int(session.scalar(statement) or 0)


def charge_day(
    session: Session, owner: str, day: date, *, pixel_steps: int, jobs: int, limit: int | None
) -> int | None:
    """Add a submission's cost to the owner's day, unless the day's total would pass ``limit``
    pixel-steps (None: no limit). Returns the new total, or None when refused (nothing added)."""
    if limit is not None and pixel_steps > limit:
        return None
    table = OwnerUsage.__table__
    statement = dialect_insert(session, table).values(
        owner=owner, day=day, pixel_steps=pixel_steps, jobs=jobs
    )
    guard = None if limit is None else (table.c.pixel_steps + pixel_steps <= limit)
    statement = statement.on_conflict_do_update(
        index_elements=["owner", "day"],
        set_={
            "pixel_steps": table.c.pixel_steps + pixel_steps,
            "jobs": table.c.jobs + jobs,
        },
        where=guard,
    )
    total = session.execute(statement.returning(table.c.pixel_steps)).scalar_one_or_none()
    return None if total is None else int(total)


def refund_day(session: Session, owner: str, day: date, *, pixel_steps: int, jobs: int) -> None:
    """Take a charge back (never below zero)."""
    new_spent = OwnerUsage.pixel_steps - pixel_steps
    new_jobs = OwnerUsage.jobs - jobs
    session.execute(
        update(OwnerUsage)
        .where(OwnerUsage.owner == owner, OwnerUsage.day == day)
        .values(
            pixel_steps=case((new_spent < 0, 0), else_=new_spent),
            jobs=case((new_jobs < 0, 0), else_=new_jobs),
        )
    )


# -- the owner's lock ----------------------------------------------------------------------------

_LOCAL_LOCKS: dict[str, threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


@contextmanager
def owner_lock(engine: Engine, owner: str, *, timeout_s: float) -> Iterator[None]:
    """Hold the owner's submit lock: a lock of this process first (so one thread per owner at
    most waits on the database), then on PostgreSQL an advisory lock on a connection of its own
    (it outlives the transactions of the submit, serialises the API's replicas, and dies with
    the connection). SQLite serves one host: the process's lock is the lock. ``OwnerBusy``
    after ``timeout_s``."""
    with _LOCAL_GUARD:
        local = _LOCAL_LOCKS.setdefault(owner, threading.Lock())
    if not local.acquire(timeout=timeout_s):
        raise _busy(owner, timeout_s)
    try:
        if engine.dialect.name != "postgresql":
            yield
            return
        with _advisory_lock(engine, owner, timeout_s):
            yield
    finally:
        local.release()


@contextmanager
def _advisory_lock(engine: Engine, owner: str, timeout_s: float) -> Iterator[None]:
    key = int.from_bytes(
        hashlib.sha256(f"loopfree-owner:{owner}".encode()).digest()[:8], "big", signed=True
    )
    with engine.connect() as connection:
        connection.execute(
            select(func.set_config("lock_timeout", f"{int(timeout_s * 1000)}ms", False))
        )
        try:
            connection.execute(select(func.pg_advisory_lock(key)))
        except DBAPIError as error:
            connection.rollback()
            if getattr(error.orig, "sqlstate", None) == "55P03":  # lock_not_available
                raise _busy(owner, timeout_s) from None
            raise
        # Committed at once: the lock is the session's, and a connection left inside a
        # transaction while the submit runs would be ended by idle_in_transaction_session_timeout.
        connection.commit()
        try:
            yield
        finally:
            connection.execute(select(func.pg_advisory_unlock(key)))
            connection.execute(text("RESET lock_timeout"))
            connection.commit()


def _busy(owner: str, timeout_s: float) -> OwnerBusy:
    return OwnerBusy(
        f"another submission of owner {owner!r} has been being written for over {timeout_s:.0f} s "
        "(its jobs are counted against the quota of jobs open at once first); try again shortly"
    )
