"""What `submit` and `submit --from` tell before anything is queued: the plan of a dry run, and
whether each model it queues for exists and has a live worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from producer.submit import FilePlan


def report_plan(plan: FilePlan) -> None:
    typer.echo(f"dry run: {plan.jobs} valid job(s), nothing queued")
    for model, count in sorted(plan.models.items()):
        typer.echo(f"  {count} for {model}")


def check_models_served(plan: FilePlan, *, require: bool) -> None:
    """Before anything is queued: refuse a hub id the hub does not know, and say loudly which
    models no live worker serves (their jobs wait until one starts); with ``require``, refuse
    those too."""
    from core.errors import UserError
    from loopfree import resources
    from producer.models import check_models
    from storage.db import session_scope
    from storage.workers import list_workers

    models = sorted(plan.models)
    with session_scope(resources.engine()) as session:
        live = {row.model for row in list_workers(session)}
    for warning in check_models(models, live):
        typer.secho(f"WARNING: {warning}", fg=typer.colors.YELLOW, err=True)
    unserved = [m for m in models if m not in live]
    if not unserved:
        return
    names = ", ".join(unserved)
    start = f"`loopfree worker --model {unserved[0]}`; `loopfree workers` lists live ones"
    if require:
        raise UserError(
            f"no live worker serves {names}, so nothing was queued (--require-worker); start "
            f"one ({start}) and submit again, or submit without --require-worker to let the "
            "jobs wait for one"
        )
    typer.secho(
        f"WARNING: no live worker serves {names}; its jobs wait until one starts ({start})",
        fg=typer.colors.YELLOW,
        bold=True,
        err=True,
    )
