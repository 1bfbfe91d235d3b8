"""Status commands: ``status``, ``jobs``, ``wait``, ``stats``, ``cancel``, ``results``.

They read the database (and the object store for ``results``); none of them imports torch.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from core.settings import get_settings
from loopfree import resources
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
    """A submission's jobs by stage (queued, claimed, rendering, succeeded, failed, cancelled),
    owner, share of the fleet, rate and ETA; or one job's record."""
    from status.queries import lookup
    from status.summary import SubmissionSummary, format_seconds

    found = lookup(resources.engine(), identifier)
    if not isinstance(found, SubmissionSummary):
        typer.echo(json.dumps({"kind": "job", **found} if json_ else found, indent=2, default=str))
        return
    if json_:
        typer.echo(json.dumps({"kind": "submission", **found.as_dict()}, indent=2))
        return
    created = found.created_at.isoformat(timespec="seconds")
    typer.echo(f"submission {found.id} ({found.source}) by {found.owner}, created {created}")
    typer.echo(f"jobs: {found.job_count}  done: {found.done}  finished: {found.finished}")
    for name, count in found.counts.items():
        typer.echo(f"  {name:<10} {count}")
    if found.cancelled_at is not None:
        moving = f"; {found.cancelling} queued job(s) still moving" if found.cancelling else ""
        typer.echo(f"cancelled at {found.cancelled_at.isoformat(timespec='seconds')}{moving}")
    for model, share in found.shares.items():
        typer.echo(f"share of {model}'s images (last minute): {100 * share:.0f}%")
    if found.unserved_models:
        typer.secho(f"warning: {found.waiting_note()}", fg=typer.colors.YELLOW, err=True)
    elif found.images_per_s:
        eta = f"  ETA: {format_seconds(found.eta_s)}" if found.eta_s is not None else ""
        typer.echo(f"rate: {found.images_per_s:.2f} images/s{eta}")


def jobs(
    submission: Annotated[str | None, typer.Option(help="Only this submission's jobs.")] = None,
    status_: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only jobs in this stage: queued, claimed, rendering (running: both), "
            "succeeded, failed, cancelled.",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many.")] = None,
    format: Annotated[Format, typer.Option()] = Format.table,
    json_: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    wide: Wide = False,
) -> None:
    """List jobs from the database (streamed: the first line comes at once, whatever the size)."""
    from status.queries import list_jobs

    records = list_jobs(resources.engine(), submission_id=submission, stage=status_, limit=limit)
    if json_ or format is Format.json:
        _write_json_array(records)
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
    return [
        record["id"],
        record["submission_id"],
        str(record["line_number"]),
        record["status"],
        record["priority_name"],
        str(record["seed"]),
        f"{record['width']}x{record['height']}",
        record["prompt"],
        record["image_uri"] or record["error"] or "",
    ]


def wait(
    identifier: Annotated[str, typer.Argument(metavar="SUBMISSION_ID")],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Follow a submission until every job is done; exits 1 if any failed."""
    from status.queries import wait_for

    raise typer.Exit(0 if wait_for(resources.engine(), identifier, timeout_s=timeout) else 1)


def stats(
    window: Annotated[float, typer.Option(help="Seconds of recent history.")] = 300.0,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Jobs by stage, images/s while work was being done, p50/p95 queue wait and end-to-end
    latency, batch fill."""
    from status.queries import stats as compute

    result = compute(resources.engine(), window_s=window)
    if json_:
        typer.echo(json.dumps(result, indent=2))
        return
    counts = "  ".join(f"{name}={count}" for name, count in result["counts"].items())
    typer.echo(f"jobs: {counts}")
    typer.echo(
        f"last {window:.0f}s: {_fmt(result['images_per_s'])} images/s "
        f"({result['images']} images in {_fmt(result['active_s'])}s of work)"
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


def cancel(
    identifier: Annotated[str, typer.Argument(metavar="ID")],
    wait: Annotated[
        bool, typer.Option(help="Move every queued row now rather than leave the rest to workers.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Cancel a queued job, or a submission: nothing more of it is sent or claimed, its messages
    leave the broker, its queued jobs become cancelled. Jobs claimed or rendering finish."""
    from status.queries import CANCEL_BUDGET_S
    from status.queries import cancel as do_cancel

    report = do_cancel(
        resources.engine(),
        resources.celery_app(),
        identifier,
        budget_s=None if wait else CANCEL_BUDGET_S,
    )
    if json_:
        typer.echo(json.dumps(report.as_dict()))
        return
    if report.note:
        typer.echo(report.note)
        return
    typer.echo(f"cancelled {report.cancelled} job(s)")
    if report.remaining:
        typer.echo(
            f"{report.remaining} more queued job(s) of {report.submission_id[:8]} move to "
            "cancelled in the background (the workers' reconcile pass; `loopfree cancel ID "
            "--wait` moves them now); none of them will run"
        )
    if report.unfinished:
        typer.echo(f"{report.unfinished} job(s) already claimed or rendering will finish")


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
    records = manifest(
        resources.engine(), resources.store(), identifier, expiry_s=settings.presign_expiry_s
    )
    if download is None:
        for record in records:
            typer.echo(json.dumps(record))
        return
    from status.download import sync_results

    report = sync_results(records, resources.store(), download)
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
    from status.queries import resolve_id
    from status.sheets import render_contact_sheets
    from storage.progress import STAGES

    identifier = resolve_id(resources.engine(), identifier, kinds=("submission",))
    for name in statuses:
        if name not in STAGES:
            raise typer.BadParameter(f"unknown status {name!r}; use one of {', '.join(STAGES)}")
    written = render_contact_sheets(
        resources.engine(),
        resources.store(),
        identifier,
        out,
        columns=columns,
        thumb=thumb,
        stages=tuple(dict.fromkeys(statuses)),
        per_sheet=per_sheet,
        page=page,
    )
    for path in written:
        typer.echo(str(path))


def _write_json_array(records: Iterator[dict]) -> None:
    """A JSON array written element by element: memory holds one record, not the listing."""
    out = sys.stdout
    first = True
    out.write("[")
    for record in records:
        out.write("\n " if first else ",\n ")
        out.write(json.dumps(record, default=str))
        first = False
    out.write("]\n" if first else "\n]\n")


def register(app: typer.Typer) -> None:
    for command in (status, jobs, wait, stats, cancel, results):
        app.command()(command)
