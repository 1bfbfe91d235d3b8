"""``loopfree export``: submissions' images as a webdataset, Parquet or imagefolder dataset."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from core.settings import get_settings

if TYPE_CHECKING:
    from export.run import ExportReport, PlanHook, Progress

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


class DatasetFormat(str, Enum):
    webdataset = "webdataset"
    parquet = "parquet"
    imagefolder = "imagefolder"


def export(
    targets: Annotated[
        list[str],
        typer.Argument(
            metavar="[ID...] DEST",
            help="Submission ids (or unique prefixes), then a folder or s3://bucket/prefix. "
            "With no id, jobs of every submission that match the filters.",
        ),
    ],
    format: Annotated[DatasetFormat, typer.Option(help="Dataset layout.")] = (
        DatasetFormat.webdataset
    ),
    status_: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="Only jobs in this status (repeatable); only succeeded "
            "jobs have images, the rest are counted in _stats.json.",
        ),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(help="Only jobs whose metadata has KEY=VALUE (repeatable: all must hold)."),
    ] = None,
    prompt_contains: Annotated[
        str, typer.Option(help="Only prompts containing this text (case-insensitive).")
    ] = "",
    since: Annotated[
        str | None,
        typer.Option(help="Only jobs finished since: a time (2026-12-01T08:00) or 24h, 7d, ..."),
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 1000,
    shard_bytes: Annotated[
        str, typer.Option(help="Close a shard before it grows past this (e.g. 500MB, 1GB).")
    ] = "1GB",
    parallel: Annotated[int, typer.Option(help="Image fetches in flight.")] = 16,
) -> None:
    """Write submissions' images as a dataset: webdataset tar shards, Parquet files, or an
    imagefolder. Images are copied as stored, never re-encoded. Interrupted, the same command
    again finishes it: shards already written are kept as they are."""
    from export.plan import ExportOptions
    from export.run import run_export
    from loopfree import resources
    from status.queries import resolve_id
    from storage.models import JobStatus
    from storage.selections import MetadataMatch

    if not targets:
        raise typer.BadParameter("give a destination: loopfree export [ID...] DEST")
    *identifiers, dest = targets
    settings = get_settings()
    engine = resources.engine()
    submission_ids = tuple(
        dict.fromkeys(resolve_id(engine, i, kinds=("submission",)) for i in identifiers)
    )
    known = {status.value: status for status in JobStatus}
    for name in status_ or []:
        if name not in known:
            raise typer.BadParameter(f"unknown status {name!r}; use one of {', '.join(known)}")
    options = ExportOptions(
        format=format.value,
        submission_ids=submission_ids,
        statuses=tuple(dict.fromkeys(known[name] for name in status_ or [])),
        metadata=tuple(MetadataMatch.parse(text) for text in metadata or []),
        prompt_contains=prompt_contains.strip(),
        since=since,
        shard_size=shard_size,
        shard_bytes=parse_size(shard_bytes),
    )
    with _progress_bar() as (progress, on_plan):
        report = run_export(
            settings, options, dest, parallel=parallel, progress=progress, on_plan=on_plan
        )
    _print_report(report)


def parse_size(text: str) -> int:
    """``1GB``, ``500MB``, ``64MiB``, ``1000000``: a number of bytes."""
    match = _SIZE.match(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size; write e.g. 500MB or 1GB")
    number, unit = float(match.group(1)), match.group(2).lower()
    prefix = unit[:1] if unit[:1] in "kmgt" else ""
    scale = _BINARY_UNITS[prefix] if "i" in unit and prefix else _UNITS[prefix]
    return int(number * scale)


@contextlib.contextmanager
def _progress_bar() -> Iterator[tuple[Progress | None, PlanHook | None]]:
    """A progress bar on stderr when it is a terminal; nothing otherwise (logs, pipes)."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None, None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    bar = Bar(
        TextColumn("export"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("jobs · {task.fields[samples]} images · {task.fields[mb]:.1f} MB"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("export", total=None, samples=0, mb=0.0)

    def on_plan(total: int | None, state: object) -> None:
        bar.update(task, total=total)

    def progress(looked: int, samples: int, size: int) -> None:
        bar.update(task, completed=looked, samples=samples, mb=size / 1e6)

    with bar:
        yield progress, on_plan


def _print_report(report: ExportReport) -> None:
    if report.already_complete:
        typer.echo(
            f"{report.destination}: already complete ({report.samples} images in "
            f"{report.shards_kept} shards); nothing written"
        )
    else:
        seconds = max(report.seconds, 1e-9)
        megabytes = report.bytes_written / 1e6
        kept = ""
        if report.shards_kept:
            kept = f"; {report.shards_kept} shard(s) of an earlier run kept"
        typer.echo(
            f"{report.destination}: {report.samples} images in "
            f"{report.shards_kept + report.shards_written} shard(s), {report.bytes / 1e6:.1f} MB "
            f"of images{kept}. This run: {report.shards_written} shard(s), {megabytes:.1f} MB in "
            f"{report.seconds:.1f} s ({report.shards_written / seconds:.2f} shards/s, "
            f"{megabytes / seconds:.1f} MB/s)"
        )
    for reason, count in sorted(report.skipped.items()):
        typer.echo(f"  {count} job(s) without an image in the export: {reason}", err=False)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command()(export)
