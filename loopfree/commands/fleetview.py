"""``loopfree workers`` and ``loopfree submissions``: what the fleet is, and what it is working on.

Both read SQL only (the worker registry and the job rows), so they work the same on the embedded
default and on a fleet, and need no broker.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from core.settings import get_settings
from loopfree.commands.tables import Column, Wide, print_table


def workers(
    model: Annotated[str | None, typer.Option(help="Only workers of this model.")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Also workers that stopped beating (dead).")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    wide: Wide = False,
) -> None:
    """Live workers (those whose heartbeat is younger than their TTL): model, host, images done."""
    from core.modelinfo import canonical_model
    from status.queries import engine_for
    from status.workers import worker_records
    from storage.models import utcnow

    now = utcnow()
    wanted = canonical_model(model) if model else None
    records = worker_records(
        engine_for(get_settings()), model=wanted, include_dead=all_, now=now
    )
    if json_:
        typer.echo(json.dumps(records, indent=1))
        return
    if not records:
        typer.secho(
            "no live worker" + (f" serves {wanted}" if wanted else "")
            + "; start one with `loopfree worker --model MODEL`",
            err=True,
        )
        return
    from datetime import datetime

    from status.labels import ago

    columns = [Column(name) for name in ("name", "model", "device", "version", "started",
                                         "last beat", "images", "in hand")]  # fmt: skip
    print_table(
        columns,
        (
            [
                record["name"] + ("" if record["live"] else " (dead)"),
                record["model"],
                record["device"],
                record["version"],
                ago(datetime.fromisoformat(record["started_at"]), now),
                ago(datetime.fromisoformat(record["last_beat_at"]), now),
                str(record["images_done"]),
                str(record["jobs_in_hand"]),
            ]
            for record in records
        ),
        wide=wide,
    )


def submissions(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    wide: Wide = False,
) -> None:
    """Recent submissions: id, file, model, created, counts, progress and rate."""
    from status.queries import engine_for
    from storage.db import session_scope
    from storage.overview import recent_submissions

    with session_scope(engine_for(get_settings())) as session:
        summaries = recent_submissions(session, limit=limit)
    records = [
        {
            "id": s.id,
            "source": s.source,
            "models": list(s.models),
            "created_at": s.created_at.isoformat(),
            "finished_at": s.finished_at.isoformat() if s.finished_at else None,
            "job_count": s.job_count,
            "done": s.done,
            "counts": s.counts,
            "images_per_s": s.images_per_s,
        }
        for s in summaries
    ]
    if json_:
        typer.echo(json.dumps(records, indent=1))
        return
    columns = [Column("id", short=8), *(Column(name) for name in
               ("file", "model", "created", "done", "failed", "open", "images/s"))]  # fmt: skip
    print_table(columns, (_submission_row(record) for record in records), wide=wide)


def _submission_row(record: dict[str, Any]) -> list[str]:
    counts = record["counts"]
    rate = record["images_per_s"]
    return [
        record["id"],
        record["source"],
        ", ".join(record["models"]),
        record["created_at"][:19].replace("T", " "),
        f"{record['done']}/{record['job_count']}",
        str(counts["failed"]),
        str(counts["queued"] + counts["running"]),
        "-" if rate is None else f"{rate:.2f}",
    ]


def register(app: typer.Typer) -> None:
    for command in (workers, submissions):
        app.command()(command)
