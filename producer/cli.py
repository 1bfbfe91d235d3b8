"""Producer and status commands: ``submit``, ``status``, ``jobs``, ``wait``, ``stats``, ``cancel``,
``results``, ``requeue``. None of them imports torch."""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from loopfree.settings import get_settings


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Priority(str, Enum):
    high = "high"
    normal = "normal"
    low = "low"


def submit(
    file: Annotated[Path, typer.Argument(help="Prompts: .txt (one per line), .jsonl or .csv.")],
    model: Annotated[str | None, typer.Option(help="Default model for lines without one.")] = None,
    seed: Annotated[int | None, typer.Option(help="Job i gets SEED+i; random if unset.")] = None,
    height: Annotated[int | None, typer.Option(help="Default height (model's native).")] = None,
    width: Annotated[int | None, typer.Option(help="Default width (model's native).")] = None,
    steps: Annotated[int, typer.Option(help="Default DDIM steps.")] = 4,
    priority: Annotated[Priority, typer.Option()] = Priority.normal,
    num_images: Annotated[int, typer.Option(help="Images per prompt line.")] = 1,
    skip_invalid: Annotated[bool, typer.Option(help="Queue the valid lines anyway.")] = False,
    key: Annotated[
        str | None, typer.Option(help="Idempotency key (default: from file content and options).")
    ] = None,
    webhook: Annotated[str | None, typer.Option(help="POST a JSON summary here when done.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow progress until every job is done.")] = False,
) -> None:
    """Validate FILE, record its jobs in the database, queue them; prints the submission id."""
    from producer.prompts import JobDefaults
    from producer.submit import submit_file

    settings = get_settings()
    defaults = JobDefaults(
        model=model or settings.model,
        seed_base=seed,
        height=height,
        width=width,
        steps=steps,
        priority=priority.value,
        num_images=num_images,
    )
    report = submit_file(
        settings, file, defaults, skip_invalid=skip_invalid, key=key, webhook_url=webhook
    )
    for error in report.parse.skipped:
        typer.secho(f"skipped line {error.line_number}: {error.reason}", err=True)
    if not report.created:
        typer.secho(
            f"already submitted: {report.inserted} missing job(s) added, "
            f"{report.published} queued job(s) published again",
            err=True,
        )
    typer.echo(report.submission_id)
    if wait:
        from producer.status import wait_for

        raise typer.Exit(0 if wait_for(settings, report.submission_id) else 1)


def status(identifier: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """A submission's counts by status, or one job's record."""
    from producer.status import SubmissionStatus, engine_for, lookup

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
    from producer.status import engine_for, list_jobs
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
        from producer.status import JOB_FIELDS

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
    from producer.status import wait_for

    raise typer.Exit(0 if wait_for(get_settings(), identifier, timeout_s=timeout) else 1)


def stats(
    window: Annotated[float, typer.Option(help="Seconds of recent history.")] = 300.0,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Counts by status, images/s, p50/p95 queue wait and end-to-end latency, batch fill."""
    from producer.status import engine_for
    from producer.status import stats as compute

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
    from producer.status import cancel as do_cancel
    from producer.status import engine_for

    typer.echo(f"cancelled {do_cancel(engine_for(get_settings()), identifier)} job(s)")


def results(
    identifier: Annotated[str, typer.Argument(metavar="SUBMISSION_ID")],
    download: Annotated[Path | None, typer.Option(help="Save the images into this folder.")] = None,
) -> None:
    """A JSONL manifest with presigned URLs, or --download DIR to fetch the images."""
    from producer.status import results as manifest

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


def requeue(
    stuck: Annotated[
        bool, typer.Option(help="Take back jobs of dead workers; republish queued.")
    ] = False,
    failed: Annotated[bool, typer.Option(help="Queue failed jobs again.")] = False,
    submission: Annotated[str | None, typer.Option(help="Only this submission.")] = None,
) -> None:
    """Reconcile the broker with the database. Safe to run at any time, alongside workers."""
    from producer.status import requeue as do_requeue

    result = do_requeue(get_settings(), stuck=stuck, failed=failed, submission_id=submission)
    typer.echo(json.dumps(result))


def register(app: typer.Typer) -> None:
    for command in (submit, status, jobs, wait, stats, cancel, results, requeue):
        app.command()(command)
