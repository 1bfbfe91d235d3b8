"""``loopfree run``: the whole path in one process, on the current configuration.

It composes the stages (submit, an embedded worker, wait), which is why it lives with the CLI and
not in any one stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.settings import get_settings


def run(
    file: Annotated[Path, typer.Argument(help="Prompt file: .txt, .jsonl or .csv.")],
    model: Annotated[str | None, typer.Option(help="Hub id or local pipeline folder.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the first job.")] = None,
    tiny: Annotated[
        bool, typer.Option(help="Use (and build if needed) a tiny random-weight model.")
    ] = False,
) -> None:
    """Submit FILE, render it with a worker in this process, wait, and print where images are."""
    from loopfree import resources
    from migrations.runner import upgrade
    from producer.prompts import JobDefaults
    from producer.submit import submit_file
    from status.queries import wait_for
    from worker.service import embedded_worker

    settings = get_settings()
    settings.ensure_home()
    if tiny:
        model = str(_tiny_model(settings.home_dir / "models" / "tiny"))
    model = model or settings.model
    upgrade(settings.resolved_database_url)
    with embedded_worker(settings, model):
        report = submit_file(
            settings,
            file,
            JobDefaults(model=model, seed_base=seed),
            engine=resources.engine(),
            app=resources.celery_app(),
        )
        typer.echo(f"submission {report.submission_id}: {report.jobs} jobs")
        ok = wait_for(resources.engine(), report.submission_id)
    typer.echo(f"images: {settings.resolved_storage_url}/{report.submission_id}/")
    typer.echo(f"list them: {_cli_name()} jobs --submission {report.submission_id[:8]}")
    raise typer.Exit(0 if ok else 1)


def _cli_name() -> str:
    """How the user can run this CLI again: ``loopfree`` when that is on PATH, else the path it
    was started by (``.venv/bin/loopfree`` after `make demo`, whose venv is not activated)."""
    import shutil
    import sys

    started = Path(sys.argv[0])
    on_path = shutil.which("loopfree")
    if started.name == "loopfree" and (on_path is None or Path(on_path) != started.absolute()):
        try:
            return str(started.absolute().relative_to(Path.cwd()))
        except ValueError:
            return str(started.absolute())
    return "loopfree"


def _tiny_model(folder: Path) -> Path:
    if not (folder / "model_index.json").exists():
        from worker.tiny import make_model

        make_model(folder, shape="tiny")
    return folder


def register(app: typer.Typer) -> None:
    app.command()(run)
