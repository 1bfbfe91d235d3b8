"""Status commands: ``status``, ``jobs``, ``wait``, ``stats``, ``cancel``, ``results``.

They read the database (and the object store for ``results``); none of them imports torch.
"""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from core.settings import get_settings
from loopfree.commands.tables import Column, Wide, print_table


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def status(
    identifier: Annotated[
        str, typer.Argument(metavar="ID", help="A submission or job id, or a unique prefix (4+).")
    ],
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """A submission's counts by status, rate and ETA, or one job's record."""
    from status.queries import SubmissionStatus, engine_for, format_seconds, lookup

    found = lookup(engine_for(get_settings()), identifier)
    if not isinstance(found, SubmissionStatus):
        record = _with_priority_name(found)
        typer.echo(json.dumps({"kind": "job", **record} if json_ else record, indent=2))
        return
    if json_:
        typer.echo(json.dumps({"kind": "submission", **found.as_dict()}, indent=2))
        return
    typer.echo(f"submission {found.id} ({found.source}), created {found.created_at}")
    typer.echo(f"jobs: {found.job_count}  done: {found.done}  finished: {found.finished}")
    for name, count in found.counts.items():
        typer.echo(f"  {name:<10} {count}")
    if found.unserved_models:
        typer.secho(f"warning: {found.waiting_note()}", fg=typer.colors.YELLOW, err=True)
    elif found.eta_s is not None and found.images_per_s:
        typer.echo(f"rate: {found.images_per_s:.2f} images/s  ETA: {format_seconds(found.eta_s)}")


def jobs(
    submission: Annotated[str | None, typer.Option(help="Only this submission's jobs.")] = None,
    status_: Annotated[
        str | None, typer.Option("--status", help="Only jobs in this status.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many.")] = None,
    format: Annotated[Format, typer.Option()] = Format.table,
    json_: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    wide: Wide = False,
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
    if json_ or format is Format.json:
        typer.echo(json.dumps([_with_priority_name(record) for record in records], indent=1))
    elif format is Format.csv:
        from status.queries import JOB_FIELDS

        writer = csv.DictWriter(sys.stdout, fieldnames=JOB_FIELDS, extrasaction="ignore")
        writer.writeheader()
        # Nested values (metadata) as JSON, which CSV readers can parse back; not Python's repr.
        writer.writerows(
            {
                key: json.dumps(value) if isinstance(value, dict | list) else value
                for key, value in record.items()
            }
            for record in records
        )
    else:
        print_table(JOB_COLUMNS, (_job_row(record) for record in records), wide=wide)


# Ids show their first 8 characters and prompts 40 on a terminal; plain rows show them whole.
JOB_COLUMNS = [
    Column("id", short=8), Column("submission", short=8), Column("line"), Column("status"),
    Column("priority"), Column("seed"), Column("size"), Column("prompt", short=40),
    Column("image / error"),
]  # fmt: skip


def _job_row(record: dict[str, Any]) -> list[str]:
    from status.labels import priority_name

    return [
        record["id"],
        record["submission_id"],
        str(record["line_number"]),
        record["status"],
        priority_name(record["priority"]),
        str(record["seed"]),
        f"{record['width']}x{record['height']}",
        record["prompt"],
        record["image_uri"] or record["error"] or "",
    ]


def _with_priority_name(record: dict[str, Any]) -> dict[str, Any]:
    """A job record for JSON: the stored number stays ``priority``, its name is added."""
    from status.labels import priority_name

    return {**record, "priority_name": priority_name(record["priority"])}


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
    active = result["active_s"]
    typer.echo(
        f"last {window:.0f}s: {_fmt(result['active_images_per_s'])} images/s while active "
        f"({_fmt(active)}s active; {result['images_per_s']:.2f} images/s over the whole window)"
    )
    for name in ("queue_wait_s", "end_to_end_s"):
        p = result[name]
        typer.echo(f"{name}: p50={_fmt(p['p50'])} p95={_fmt(p['p95'])}")
    typer.echo(
        f"mean delivery size: {_fmt(result['mean_batch_size'])}  "
        f"mean sampler group size: {_fmt(result['mean_group_size'])}"
    )


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
    contact_sheet: Annotated[
        Path | None,
        typer.Option(help="Draw a JPEG grid of captioned thumbnails (sheet-001.jpg, ... if long)."),
    ] = None,
    columns: Annotated[int, typer.Option(help="Contact sheet: tiles per row.")] = 8,
    thumb: Annotated[int, typer.Option(help="Contact sheet: tile size in pixels.")] = 256,
    status_: Annotated[
        list[str] | None,
        typer.Option("--status", help="Contact sheet: only jobs in this status (repeatable)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Contact sheet: jobs per sheet.")] = 64,
    page: Annotated[
        int | None, typer.Option(help="Contact sheet: write only this sheet (from 1).")
    ] = None,
) -> None:
    """A JSONL manifest with presigned URLs, --download DIR to fetch the images, or
    --contact-sheet FILE.jpg to see them at a glance."""
    from status.queries import results as manifest

    settings = get_settings()
    if contact_sheet is not None:
        _contact_sheet(identifier, contact_sheet, columns, thumb, status_ or [], limit, page)
        return
    if download is None:
        for record in manifest(settings, identifier):
            typer.echo(json.dumps(record))
        return
    from status.download import sync_results
    from storage.objects import store_for

    store = store_for(settings)
    report = sync_results(manifest(settings, identifier), store, download)
    typer.echo(
        f"{download}: {report.downloaded} downloaded, {report.unchanged} already there "
        f"(same sha256), manifest {report.manifest.name}"
    )
    for reason, count in sorted(report.not_downloaded.items()):
        typer.echo(f"  {count} job(s) without an image: {reason}")


def _contact_sheet(
    identifier: str,
    out: Path,
    columns: int,
    thumb: int,
    statuses: list[str],
    per_sheet: int,
    page: int | None,
) -> None:
    from status.queries import engine_for, resolve_id
    from status.sheets import contact_sheets
    from storage.models import JobStatus

    identifier = resolve_id(engine_for(get_settings()), identifier, kinds=("submission",))

    known = {s.value: s for s in JobStatus}
    for name in statuses:
        if name not in known:
            raise typer.BadParameter(f"unknown status {name!r}; use one of {', '.join(known)}")
    written = contact_sheets(
        get_settings(),
        identifier,
        out,
        columns=columns,
        thumb=thumb,
        statuses=[known[name] for name in statuses],
        per_sheet=per_sheet,
        page=page,
    )
    for path in written:
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    for command in (status, jobs, wait, stats, cancel, results):
        app.command()(command)
