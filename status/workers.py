"""The worker registry as people read it: one record per worker, the same for ``loopfree
workers`` (table and ``--json``), the web view's Workers page and ``/api/workers``.

A worker is live while its last heartbeat is younger than its TTL (three heartbeat intervals);
a killed worker's row stays, dead, for a day (``storage.workers.PRUNE_AFTER``); a cleanly
stopped one removes its row at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from storage.db import Engine, session_scope
from storage.models import Worker, utcnow
from storage.workers import is_live, list_workers


def worker_records(
    engine: Engine,
    *,
    model: str | None = None,
    include_dead: bool = False,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The registry's workers (live ones only unless ``include_dead``), by model and name."""
    now = now or utcnow()
    with session_scope(engine) as session:
        rows = list_workers(session, model=model, include_dead=include_dead, now=now)
        return [worker_record(row, now) for row in rows]


def worker_record(row: Worker, now: datetime) -> dict[str, Any]:
    """One worker's row as JSON-ready values, with whether it is live at ``now``."""
    return {
        "name": row.name,
        "model": row.model,
        "queue": row.queue,
        "host": row.host,
        "pid": row.pid,
        "version": row.version,
        "device": row.device,
        "started_at": row.started_at.isoformat(),
        "last_beat_at": row.last_beat_at.isoformat(),
        "last_beat_age_s": round(max(0.0, (now - row.last_beat_at).total_seconds()), 3),
        "ttl_s": row.ttl_s,
        "images_done": row.images_done,
        "jobs_in_hand": row.jobs_in_hand,
        "live": is_live(row, now),
    }
