"""``loopfree workers`` and ``loopfree submissions``: what the fleet is, and what it is working on.

Both read SQL only (the worker registry and the job rows), so they work the same on the embedded
default and on a fleet, and need no broker.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from loopfree import resources
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
    from status.workers import worker_records
    from storage.models import utcnow

    now = utcnow()
    wanted = canonical_model(model) if model else None
    records = worker_records(resources.engine(), model=wanted, include_dead=all_, now=now)
    if json_:
        typer.echo(json.dumps(records, indent=1))
        return
    if not records:
        typer.secho(
            "no live worker"
            + (f" serves {wanted}" if wanted else "")
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
    columns = [Column("id", short=8), *(Column(name) for name in
               ("file", "owner", "model", "created", "done", "failed", "open", "share",
                "images/s"))]  # fmt: skip
    print_table(columns, (_submission_row(record) for record in records), wide=wide)


def _submission_row(record: dict[str, Any]) -> list[str]:
    rate = record["images_per_s"]
    shares = " ".join(f"{100 * share:.0f}%" for share in record["shares"].values())
    return [
        record["id"],
        record["source"],
        record["owner"],
        ", ".join(record["models"]),
        record["created_at"][:19].replace("T", " "),
        f"{record['done']}/{record['job_count']}",
        str(record["counts"]["failed"]),
        str(record["open"]),
        shares or "-",
        "-" if rate is None else f"{rate:.2f}",
    ]


def register(app: typer.Typer) -> None:
    for command in (workers, submissions):
        app.command()(command)
