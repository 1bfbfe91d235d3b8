"""``loopfree submit --from ID``: re-roll chosen jobs of a submission as a new one.

``submit`` takes the options and hands them here when ``--from`` is given; this checks that
they make sense together and calls ``producer.reroll``. Options that describe a prompt file
(``--height``, ``--format``, ...) do not apply to a re-roll, whose jobs keep their own, and are
refused rather than ignored.
"""

from __future__ import annotations

from typing import Any

import typer

from core.settings import Settings

ONLY_WITH_FROM = ("status_", "jobs_", "metadata", "prompt_contains", "reseed")
"""``submit`` parameters that choose or re-seed a re-roll's jobs: meaningless without --from."""
NOT_WITH_FROM = (
    "height", "width", "priority", "num_images", "image_format", "quality", "skip_invalid",
    "input_format",
)  # fmt: skip
"""``submit`` parameters that set a prompt file's jobs: a re-roll's jobs keep their own."""


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the user typed option ``name`` (not its default). By the source's name: typer
    carries its own copy of click, whose ``ParameterSource`` is not ``click.core``'s."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def check_options(ctx: typer.Context, *, rerolling: bool) -> None:
    """Refuse re-roll options without --from, and prompt-file options with it."""
    names = NOT_WITH_FROM if rerolling else ONLY_WITH_FROM
    for name in names:
        if given(ctx, name):
            flag = _flag(ctx, name)
            if rerolling:
                raise typer.BadParameter(
                    f"{flag} does not apply with --from: re-rolled jobs keep their own "
                    "(--model, --steps, --seed and --reseed change them)"
                )
            raise typer.BadParameter(f"{flag} chooses jobs to re-roll: use it with --from ID")


def submit_from(ctx: typer.Context, settings: Settings, options: dict[str, Any]) -> None:
    """Re-roll the jobs of ``options["from_"]`` that the options choose; print the new
    submission's id (and follow it with ``--wait``)."""
    from core.jobspec import check_owner
    from loopfree import resources
    from loopfree.commands.planning import check_models_served, report_plan
    from producer.reroll import Reroll, plan_reroll, submit_reroll
    from status.queries import resolve_id
    from storage.models import JobStatus
    from storage.selections import JobSelection, MetadataMatch

    if options["seed"] is not None and options["reseed"]:
        raise typer.BadParameter("--seed N already gives new seeds; drop --reseed or --seed")
    engine = resources.engine()
    source = resolve_id(engine, options["from_"], kinds=("submission",))
    job_ids = [
        resolve_id(engine, text.strip(), kinds=("job",))
        for text in (options["jobs_"] or "").split(",")
        if text.strip()
    ]
    known = {status.value: status for status in JobStatus}
    for name in options["status_"] or []:
        if name not in known:
            raise typer.BadParameter(f"unknown status {name!r}; use one of {', '.join(known)}")
    reroll = Reroll(
        source_id=source,
        selection=JobSelection(
            statuses=tuple(dict.fromkeys(known[name] for name in options["status_"] or [])),
            prompt_contains=(options["prompt_contains"] or "").strip(),
            metadata=tuple(MetadataMatch.parse(text) for text in options["metadata"] or []),
            job_ids=tuple(dict.fromkeys(job_ids)),
        ),
        reseed=options["reseed"],
        seed_base=options["seed"],
        model=options["model"],
        steps=options["steps"] if given(ctx, "steps") else None,
    )
    require = options["require_worker"]
    if options["dry_run"]:
        plan = plan_reroll(settings, reroll, engine=engine)
        report_plan(plan)
        check_models_served(plan, require=require)
        return
    owner = options["owner"]
    report = submit_reroll(
        settings,
        reroll,
        engine=engine,
        app=resources.celery_app(),
        key=options["key"],
        webhook_url=options["webhook"],
        owner=check_owner(owner) if owner is not None else None,
        check=lambda plan: check_models_served(plan, require=require),
    )
    if not report.created:
        typer.secho(
            f"already submitted: {report.inserted} missing job(s) added (the rest were there)",
            err=True,
        )
    typer.echo(report.submission_id)
    if options["wait"]:
        from status.queries import wait_for

        raise typer.Exit(0 if wait_for(engine, report.submission_id) else 1)


def _flag(ctx: typer.Context, name: str) -> str:
    for parameter in ctx.command.params:
        if parameter.name == name:
            return max(parameter.opts, key=len)
    return name
