"""The worker registry: one row per worker process, refreshed by its heartbeat, read by operators.

A worker announces itself when it starts (``announce``), refreshes ``last_beat_at`` and its counters
from its heartbeat thread (``beat``) and removes its row on a clean shutdown (``retire``). A worker
killed without a word stops beating: its row is dead once ``last_beat_at`` is older than its
``ttl_s``, and ``list_live`` leaves it out; ``prune`` deletes such rows for good.

The registry is in SQL, not in the broker, so it works the same on the embedded default
(filesystem broker) as on a Redis fleet, and ``submit`` can ask it without a broker round trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from storage.models import Worker, utcnow

PRUNE_AFTER = timedelta(days=1)
"""Dead rows are kept this long past their TTL, so `loopfree workers --all` can show what died."""


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker says about itself when it starts."""

    name: str
    model: str
    queue: str
    host: str
    pid: int
    version: str
    device: str
    ttl_s: float


def announce(session: Session, info: WorkerInfo, *, now: datetime | None = None) -> None:
    """Insert or replace the row of ``info.name`` (a restarted worker may reuse a pid)."""
    now = now or utcnow()
    row = session.get(Worker, info.name)
    if row is None:
        row = Worker(name=info.name, images_done=0, jobs_in_hand=0)
        session.add(row)
    row.model, row.queue, row.host, row.pid = info.model, info.queue, info.host, info.pid
    row.version, row.device, row.ttl_s = info.version, info.device, info.ttl_s
    row.started_at = row.last_beat_at = now
    row.images_done, row.jobs_in_hand = 0, 0


def beat(
    session: Session,
    name: str,
    *,
    images_done: int,
    jobs_in_hand: int,
    now: datetime | None = None,
) -> bool:
    """Refresh a worker's row; False if it is gone (pruned while the worker was cut off), in
    which case the caller announces itself again."""
    result = session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(last_beat_at=now or utcnow(), images_done=images_done, jobs_in_hand=jobs_in_hand)
    )
    return bool(result.rowcount)


def retire(session: Session, name: str) -> None:
    """A clean shutdown: the worker serves nothing from now on."""
    session.execute(delete(Worker).where(Worker.name == name))


def is_live(row: Worker, now: datetime) -> bool:
    return row.last_beat_at >= now - timedelta(seconds=row.ttl_s)


def list_workers(
    session: Session,
    *,
    model: str | None = None,
    include_dead: bool = False,
    now: datetime | None = None,
) -> list[Worker]:
    """Workers by model and name; only live ones unless ``include_dead``.

    Liveness is decided in Python: each row carries its own TTL (its heartbeat interval), and
    the table holds one row per worker process, so reading it whole is cheap.
    """
    now = now or utcnow()
    statement = select(Worker).order_by(Worker.model, Worker.name)
    if model is not None:
        statement = statement.where(Worker.model == model)
    rows = list(session.scalars(statement))
    return rows if include_dead else [row for row in rows if is_live(row, now)]


def models_served(
    session: Session, models: Iterable[str], *, now: datetime | None = None
) -> set[str]:
    """Of ``models``, those that at least one live worker serves."""
    wanted = set(models)
    if not wanted:
        return set()
    now = now or utcnow()
    rows = session.scalars(select(Worker).where(Worker.model.in_(sorted(wanted))))
    return {row.model for row in rows if is_live(row, now)}


def count_live(session: Session, model: str, *, now: datetime | None = None) -> int:
    """Live workers of ``model``: what the dispatcher sizes the model's window from."""
    return len(list_workers(session, model=model, now=now))


def prune(session: Session, *, now: datetime | None = None) -> int:
    """Delete rows dead for longer than ``PRUNE_AFTER``; returns how many."""
    now = now or utcnow()
    dead = [
        row.name
        for row in session.scalars(select(Worker))
        if row.last_beat_at + timedelta(seconds=row.ttl_s) + PRUNE_AFTER < now
    ]
    if dead:
        session.execute(delete(Worker).where(Worker.name.in_(dead)))
    return len(dead)
