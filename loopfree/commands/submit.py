"""``loopfree submit``: validate a prompt file, record its jobs, queue them. No torch here."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core.jobspec import (
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_PRIORITY_NAME,
    DEFAULT_STEPS,
    IMAGE_FORMATS,
    PRIORITY_LEVELS,
)
from core.settings import get_settings
from loopfree.commands.planning import check_models_served, report_plan

if TYPE_CHECKING:
    from producer.prompts import ParseResult

# The priority names a job accepts, as typer's choices.
Priority = Enum("Priority", {name: name for name in PRIORITY_LEVELS}, type=str)
# The image formats, as typer's choices.
ImageFormat = Enum("ImageFormat", {name: name for name in IMAGE_FORMATS}, type=str)


class InputFormat(str, Enum):
    txt = "txt"
    jsonl = "jsonl"
    csv = "csv"


def submit(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(help="Prompts: .txt (one per line), .jsonl or .csv; - reads stdin."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model of lines without one (default: LOOPFREE_MODEL's value)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Job i gets SEED+i; random if unset.")] = None,
    height: Annotated[int | None, typer.Option(help="Default height (model's native).")] = None,
    width: Annotated[int | None, typer.Option(help="Default width (model's native).")] = None,
    steps: Annotated[int, typer.Option(help="Default DDIM steps.")] = DEFAULT_STEPS,
    priority: Annotated[Priority, typer.Option()] = Priority[DEFAULT_PRIORITY_NAME],
    num_images: Annotated[int, typer.Option(help="Images per prompt line.")] = 1,
    image_format: Annotated[
        ImageFormat,
        typer.Option("--format", help="Image format: png (lossless), webp or jpeg (lossy)."),
    ] = ImageFormat[DEFAULT_IMAGE_FORMAT],
    quality: Annotated[
        int | None, typer.Option(help="Quality 1-100 of webp/jpeg (default 90).")
    ] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Queue the valid lines anyway.")] = False,
    key: Annotated[
        str | None, typer.Option(help="Idempotency key (default: from file content and options).")
    ] = None,
    webhook: Annotated[str | None, typer.Option(help="POST a JSON summary here when done.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow progress until every job is done.")] = False,
    input_format: Annotated[
        InputFormat | None,
        typer.Option(
            "--input-format",
            help="Format of the prompts (default: the file's extension; txt for -).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and report; queue nothing.")
    ] = False,
    require_worker: Annotated[
        bool,
        typer.Option(
            "--require-worker",
            help="Refuse (exit 2, queue nothing) if no live worker serves a model of the file.",
        ),
    ] = False,
    owner: Annotated[
        str | None,
        typer.Option(
            help="Who submits: the fleet is shared fairly between owners (default: "
            "LOOPFREE_OWNER, else your user name)."
        ),
    ] = None,
    new: Annotated[
        bool,
        typer.Option(
            "--new", help="A new submission even if this file was submitted with these options."
        ),
    ] = False,
    # Re-roll (loopfree/commands/reroll.py): jobs of an earlier submission instead of FILE.
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Re-roll jobs of this submission instead of reading FILE."),
    ] = None,
    status_: Annotated[
        list[str] | None,
        typer.Option("--status", help="--from: only jobs in this status (repeatable)."),
    ] = None,
    jobs_: Annotated[
        str | None, typer.Option("--jobs", help="--from: only these job ids, comma-separated.")
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(help="--from: only jobs whose metadata has KEY=VALUE (repeatable)."),
    ] = None,
    prompt_contains: Annotated[
        str | None, typer.Option(help="--from: only prompts containing this text.")
    ] = None,
    reseed: Annotated[
        bool, typer.Option("--reseed", help="--from: new random seeds (default: the same).")
    ] = False,
) -> None:
    """Validate FILE, record its jobs in the database, queue them; prints the submission id.
    With --from ID instead: re-roll chosen jobs of that submission as a new one.

    Warns when no live worker serves a model it queues for (see `loopfree workers`), and refuses a
    hub id the hub does not know."""
    from core.jobspec import check_owner
    from loopfree import resources
    from loopfree.commands.reroll import check_options, submit_from
    from producer.options import check_submission_options
    from producer.prompts import JobDefaults
    from producer.submit import plan_file, submit_file

    settings = get_settings()
    check_options(ctx, rerolling=from_ is not None)
    if from_ is not None:
        if file is not None:
            raise typer.BadParameter("give a prompt FILE or --from ID, not both")
        submit_from(ctx, settings, locals())  # every option, by name
        return
    if file is None:
        raise typer.BadParameter("give a prompt FILE (or - for stdin), or --from ID to re-roll")
    owner = check_owner(owner) if owner is not None else settings.resolved_owner
    defaults = JobDefaults(
        model=model or settings.model,
        seed_base=seed,
        height=height,
        width=width,
        steps=steps,
        priority=priority.value,
        num_images=num_images,
        image_format=image_format.value,
        image_quality=quality,
    )
    format = input_format.value if input_format else None
    with _prompt_source(file, format) as (path, format):
        if dry_run:
            check_submission_options(settings, webhook_url=webhook, key=key, source=path.name)
            plan = plan_file(settings, path, defaults, skip_invalid=skip_invalid, format=format)
            _report_skipped(plan.parse)
            report_plan(plan)
            check_models_served(plan, require=require_worker)
            return
        report = submit_file(
            settings,
            path,
            defaults,
            engine=resources.engine(),
            app=resources.celery_app(),
            skip_invalid=skip_invalid,
            key=key,
            new=new,
            webhook_url=webhook,
            owner=owner,
            format=format,
            check=lambda plan: check_models_served(plan, require=require_worker),
            progress=sys.stderr.isatty(),
        )
    _report_skipped(report.parse)
    if not report.created:
        typer.secho(
            f"already submitted with these options: {report.inserted} missing job(s) added "
            "(the rest were there)",
            err=True,
        )
    elif report.published < report.jobs:
        typer.secho(
            f"{report.jobs} jobs recorded; the workers send them a window at a time, sharing "
            f"the fleet fairly (owner {owner})",
            err=True,
        )
    typer.echo(report.submission_id)
    if wait:
        from status.queries import wait_for

        raise typer.Exit(0 if wait_for(resources.engine(), report.submission_id) else 1)


@contextlib.contextmanager
def _prompt_source(file: Path, format: str | None) -> Iterator[tuple[Path, str | None]]:
    """``file`` itself, or for ``-`` the standard input in a temporary file named ``stdin``
    (what the submission's source shows); its content still makes the idempotency key."""
    if str(file) != "-":
        yield file, format
        return
    with tempfile.TemporaryDirectory(prefix="loopfree-stdin-") as folder:
        path = Path(folder) / "stdin"
        with path.open("wb") as copy:  # streamed: stdin may be larger than memory
            shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)
        yield path, format or "txt"


def _report_skipped(parsed: ParseResult) -> None:
    """Each skipped line with its reason, then one line accounting for every line read."""
    if not parsed.skipped_count:
        return
    for error in parsed.skipped:
        typer.secho(f"skipped line {error.line_number}: {error.reason}", err=True)
    typer.secho(parsed.summary(), fg=typer.colors.YELLOW, err=True)


def register(app: typer.Typer) -> None:
    app.command()(submit)
