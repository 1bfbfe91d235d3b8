"""Fleet commands: ``requeue`` (the reconciler), ``metrics`` (the Prometheus exporter KEDA scales
on) and ``scale`` (the worker count for one model, for autoscalers without Kubernetes). None of
them imports torch."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated

import typer

from core.settings import get_settings
from fleet.scaling import DEFAULT_STARTUP_S, DEFAULT_TARGET_S

# Shared by `metrics` (loopfree_recommended_workers) and `scale`, so both size alike.
TargetSeconds = Annotated[
    float,
    typer.Option(
        min=1.0, help="Longest a job should wait in the queue: the oldest queued job's deadline."
    ),
]
StartupSeconds = Annotated[
    float,
    typer.Option(
        min=0.0,
        help="Seconds a worker that is not running yet needs before its first batch (model load).",
    ),
]


def metrics(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to serve /metrics on.")] = 9500,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between reads of the database and broker.")
    ] = 5.0,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Report this model even with no jobs (repeatable; default: LOOPFREE_MODEL)."
        ),
    ] = None,
    target_seconds: TargetSeconds = DEFAULT_TARGET_S,
    startup_seconds: StartupSeconds = DEFAULT_STARTUP_S,
) -> None:
    """Serve job counts, pending jobs per model (the scaling signal), the oldest queued job's age,
    the workers `scale` would recommend, queue depths and measured worker throughput for
    Prometheus. Runs until SIGTERM or Ctrl-C."""
    import logging
    import signal
    import threading

    from core.modelinfo import canonical_model
    from fleet.exporter import FleetCollector, serve
    from loopfree import resources

    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    models = [canonical_model(name) for name in (model or [settings.model])]
    collector = FleetCollector(
        resources.engine(),
        resources.celery_app(),
        models=models,
        target_s=target_seconds,
        startup_s=startup_seconds,
    )
    stop = threading.Event()
    # SIGTERM (docker stop, a pod being replaced) ends the loop like Ctrl-C, with a clean exit.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        serve(collector, port=port, address=address, interval_s=interval, stop=stop)


def scale(
    model: Annotated[
        str | None, typer.Option(help="The model whose workers to size (default: LOOPFREE_MODEL).")
    ] = None,
    target_seconds: TargetSeconds = DEFAULT_TARGET_S,
    startup_seconds: StartupSeconds = DEFAULT_STARTUP_S,
    running_workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Workers of MODEL already running (model loaded): they do not pay "
            "--startup-seconds. Default: unknown, every worker is assumed to start from cold.",
        ),
    ] = None,
    min_workers: Annotated[int, typer.Option(min=0, help="Never recommend fewer.")] = 0,
    max_workers: Annotated[int | None, typer.Option(min=0, help="Never recommend more.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the reasoning as JSON.")] = False,
) -> None:
    """Print how many workers drain MODEL's queued and running jobs before its oldest queued job
    has waited --target-seconds, at the rate its workers were measured to work. Prints just the
    number unless --json."""
    from core.modelinfo import canonical_model
    from fleet.exporter import age_s, count_pending, measure_throughput, oldest_queued_at
    from fleet.scaling import plan_scale
    from loopfree import resources
    from storage.db import session_scope
    from storage.models import utcnow

    if max_workers is not None and max_workers < min_workers:
        raise typer.BadParameter(
            f"--max-workers {max_workers} is below --min-workers {min_workers}",
            param_hint="--max-workers",
        )
    settings = get_settings()
    name = canonical_model(model or settings.model)
    with session_scope(resources.engine()) as session:
        pending = count_pending(session, name)
        oldest = oldest_queued_at(session, name)
        throughput = measure_throughput(session, name)
    plan = plan_scale(
        name,
        pending,
        throughput,
        target_seconds,
        oldest_queued_age_s=age_s(oldest, utcnow()),
        startup_s=startup_seconds,
        running_workers=running_workers,
        min_workers=min_workers,
        max_workers=max_workers,
    )
    if json_:
        typer.echo(json.dumps(plan.to_json(), indent=2))
        return
    # The number alone on stdout, so `N=$(loopfree scale --model M)` works; the why on stderr.
    typer.echo(plan.recommended_workers)
    typer.echo(plan.reason, err=True)


def requeue(
    stuck: Annotated[
        bool, typer.Option(help="Take back jobs of dead workers; republish queued.")
    ] = False,
    failed: Annotated[bool, typer.Option(help="Queue failed jobs again.")] = False,
    submission: Annotated[str | None, typer.Option(help="Only this submission.")] = None,
) -> None:
    """Reconcile the broker with the database: take back jobs of dead workers and publish again
    window jobs whose message was lost (--stuck), queue failed jobs again (--failed), move the
    queued jobs of cancelled submissions. Safe to run at any time, alongside workers."""
    from fleet.reconcile import reconcile
    from loopfree import resources

    report = reconcile(
        resources.engine(),
        resources.celery_app(),
        stuck_after_s=get_settings().stuck_after_s,
        lost_after_s=get_settings().live_for_s,
        stuck=stuck,
        failed=failed,
        submission_id=submission,
        cancel_chunks=None,
    )
    typer.echo(json.dumps(report.to_json()))


def dead_letters(
    clear: Annotated[
        bool, typer.Option(help="Empty the list after printing how many it held.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="Print at most this many, newest first.")] = 20,
    json_: Annotated[
        bool, typer.Option("--json", help="Print one JSON list instead of JSON lines.")
    ] = False,
) -> None:
    """List the broker entries workers set aside because they could not be decoded, had the wrong
    shape, named a task other than loopfree.generate or were too large (JSON lines: queue,
    reason, time, the entry). Jobs are never lost this way: `requeue --stuck` republishes any
    queued job whose message went here."""
    from loopfree import resources
    from taskqueue.dead_letters import clear_dead_letters, count_dead_letters, list_dead_letters
    from taskqueue.redis_lists import supports

    app = resources.celery_app()
    if not supports(app.conf.broker_url):
        typer.echo("dead letters are kept on Redis brokers only; this broker has none", err=True)
        if json_ and not clear:
            typer.echo("[]")
        return
    if clear:
        typer.echo(json.dumps({"cleared": clear_dead_letters(app)}))
        return
    letters = list_dead_letters(app, limit=limit)
    if json_:
        typer.echo(json.dumps(list(letters), indent=1))
    else:
        for letter in letters:
            typer.echo(json.dumps(letter))
    typer.echo(f"{count_dead_letters(app)} dead letters in all", err=True)


def register(app: typer.Typer) -> None:
    app.command("dead-letters")(dead_letters)
    for command in (metrics, scale, requeue):
        app.command()(command)
