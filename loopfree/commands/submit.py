"""``loopfree submit``: validate a prompt file, record its jobs, queue them. No torch here."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from core.settings import get_settings


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
        from status.queries import wait_for

        raise typer.Exit(0 if wait_for(settings, report.submission_id) else 1)



def register(app: typer.Typer) -> None:
    app.command()(submit)
