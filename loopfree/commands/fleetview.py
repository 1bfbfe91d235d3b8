"""``loopfree workers`` and ``loopfree submissions``: what the fleet is, and what it is working on.

Both read SQL only (the worker registry and the job rows), so they work the same on the embedded
default and on a fleet, and need no broker.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer

from loopfree import resources


def _ago(moment: datetime, now: datetime) -> str:
    seconds = max(0.0, (now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def workers(
    model: Annotated[str | None, typer.Option(help="Only workers of this model.")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Also workers that stopped beating (dead).")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Live workers (those whose heartbeat is younger than their TTL): model, host, images done."""
    from core.modelinfo import canonical_model
    from storage.db import session_scope
    from storage.models import utcnow
    from storage.workers import is_live, list_workers

    now = utcnow()
    wanted = canonical_model(model) if model else None
    with session_scope(resources.engine()) as session:
        rows = list_workers(session, model=wanted, include_dead=all_, now=now)
    records = [
        {
            "name": row.name,
            "model": row.model,
            "queue": row.queue,
            "host": row.host,
            "pid": row.pid,
            "version": row.version,
            "device": row.device,
            "started_at": row.started_at.isoformat(),
            "last_beat_at": row.last_beat_at.isoformat(),
            "ttl_s": row.ttl_s,
            "images_done": row.images_done,
            "jobs_in_hand": row.jobs_in_hand,
            "live": is_live(row, now),
        }
        for row in rows
    ]
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
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "model", "device", "version", "started", "last beat", "images", "in hand")
    for row, record in zip(rows, records, strict=True):
        table.add_row(
            record["name"] + ("" if record["live"] else " (dead)"),
            record["model"],
            record["device"],
            record["version"],
            _ago(row.started_at, now),
            _ago(row.last_beat_at, now),
            str(record["images_done"]),
            str(record["jobs_in_hand"]),
        )
    Console().print(table)


def submissions(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Recent submissions: id, file, owner, model, created, progress, share of the fleet, rate."""
    from status.summary import summarize
    from storage.db import session_scope
    from storage.gallery import list_submissions

    with session_scope(resources.engine()) as session:
        summaries = summarize(session, list_submissions(session, limit=limit))
    records = [summary.as_dict() for summary in summaries]
    if json_:
        typer.echo(json.dumps(records, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "file", "owner", "model", "created", "done", "failed", "open", "share",
                  "images/s")  # fmt: skip
    for summary, record in zip(summaries, records, strict=True):
        rate = summary.images_per_s
        table.add_row(
            summary.id[:8],
            summary.source,
            summary.owner,
            ", ".join(summary.models),
            record["created_at"][:19].replace("T", " "),
            f"{summary.done}/{summary.job_count}",
            str(summary.counts["failed"]),
            str(summary.open),
            " ".join(f"{100 * share:.0f}%" for share in summary.shares.values()) or "-",
            "-" if rate is None else f"{rate:.2f}",
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    for command in (workers, submissions):
        app.command()(command)
