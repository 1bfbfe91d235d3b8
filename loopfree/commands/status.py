"""Status commands: ``status``, ``jobs``, ``wait``, ``stats``, ``cancel``, ``results``.

They read the database (and the object store for ``results``); none of them imports torch.
"""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from core.settings import get_settings


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"



def status(identifier: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """A submission's counts by status, or one job's record."""
    from status.queries import SubmissionStatus, engine_for, lookup

    found = lookup(engine_for(get_settings()), identifier)
    if isinstance(found, SubmissionStatus):
        typer.echo(f"submission {found.id} ({found.source}), created {found.created_at}")
        typer.echo(f"jobs: {found.job_count}  done: {found.done}  finished: {found.finished}")
        for name, count in found.counts.items():
            typer.echo(f"  {name:<10} {count}")
    else:
        typer.echo(json.dumps(found, indent=2))


def jobs(
    submission: Annotated[str | None, typer.Option(help="Only this submission's jobs.")] = None,
    status_: Annotated[
        str | None, typer.Option("--status", help="Only jobs in this status.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many.")] = None,
    format: Annotated[Format, typer.Option()] = Format.table,
) -> None:
    """List jobs from the database."""
    from status.queries import engine_for, list_jobs
    from storage.models import JobStatus

    if status_ is not None and status_ not in {s.value for s in JobStatus}:
        names = ", ".join(s.value for s in JobStatus)
        raise typer.BadParameter(f"unknown status {status_!r}; use one of {names}")
    records = list_jobs(
        engine_for(get_settings()), submission_id=submission, status=status_, limit=limit
    )
    if format is Format.json:
        typer.echo(json.dumps(list(records), indent=1))
    elif format is Format.csv:
        from status.queries import JOB_FIELDS

        writer = csv.DictWriter(sys.stdout, fieldnames=JOB_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("id", "pos", "status", "seed", "size", "prompt", "image / error")
        for record in records:
            table.add_row(
                record["id"][:8],
                str(record["position"]),
                record["status"],
                str(record["seed"]),
                f"{record['width']}x{record['height']}",
                record["prompt"][:40],
                record["image_uri"] or record["error"] or "",
            )
        Console().print(table)


def wait(
    identifier: Annotated[str, typer.Argument(metavar="SUBMISSION_ID")],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Follow a submission until every job is done; exits 1 if any failed."""
    from status.queries import wait_for

    raise typer.Exit(0 if wait_for(get_settings(), identifier, timeout_s=timeout) else 1)


def stats(
    window: Annotated[float, typer.Option(help="Seconds of recent history.")] = 300.0,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Counts by status, images/s, p50/p95 queue wait and end-to-end latency, batch fill."""
    from status.queries import engine_for
    from status.queries import stats as compute

    result = compute(engine_for(get_settings()), window_s=window)
    if json_:
        typer.echo(json.dumps(result, indent=2))
        return
    counts = "  ".join(f"{name}={count}" for name, count in result["counts"].items())
    typer.echo(f"jobs: {counts}")
    typer.echo(f"last {window:.0f}s: {result['images_per_s']:.2f} images/s")
    for name in ("queue_wait_s", "end_to_end_s"):
        p = result[name]
        typer.echo(f"{name}: p50={_fmt(p['p50'])} p95={_fmt(p['p95'])}")
    typer.echo(f"mean batch size: {_fmt(result['mean_batch_size'])}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def cancel(identifier: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Cancel a queued job, or every queued job of a submission. Running jobs finish."""
    from status.queries import cancel as do_cancel
    from status.queries import engine_for

    typer.echo(f"cancelled {do_cancel(engine_for(get_settings()), identifier)} job(s)")


def results(
    identifier: Annotated[str, typer.Argument(metavar="SUBMISSION_ID")],
    download: Annotated[Path | None, typer.Option(help="Save the images into this folder.")] = None,
) -> None:
    """A JSONL manifest with presigned URLs, or --download DIR to fetch the images."""
    from status.queries import results as manifest

    settings = get_settings()
    if download is None:
        for record in manifest(settings, identifier):
            typer.echo(json.dumps(record))
        return
    from storage.objects import open_store

    store = open_store(
        settings.resolved_storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )
    download.mkdir(parents=True, exist_ok=True)
    count = 0
    for record in manifest(settings, identifier):
        if record["image_uri"]:
            (download / f"{record['position']:05d}.png").write_bytes(store.get(record["image_uri"]))
            count += 1
    typer.echo(f"downloaded {count} image(s) to {download}")



def register(app: typer.Typer) -> None:
    for command in (status, jobs, wait, stats, cancel, results):
        app.command()(command)
