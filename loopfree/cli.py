"""The ``loopfree`` command. Each stage's subcommands are in ``loopfree.commands``; this wires them.

Nothing here imports torch: ``submit``, ``status`` and friends run in an image without it, and start
in a fraction of a second. Worker commands import the model stack only when they run.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from core.errors import LoopfreeError, RetryableError

app = typer.Typer(
    name="loopfree",
    help="Queue-driven text-to-image generation with Loopfree (TiUE) models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help: `--wait / --no-wait ... [default: no-wait]` rather than rich's table, whose type
    # column labels every flag `<bool>`; defaults are shown for every option that has one.
    rich_markup_mode=None,
)


# Commands that never open the database, or (db) change its schema only when asked to.
_NO_SCHEMA_CHECK = {"db", "generate", "model"}


def _version(value: bool) -> None:
    if value:
        from loopfree import __version__

        typer.echo(f"loopfree {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Queue-driven text-to-image generation with Loopfree (TiUE) models."""
    # The embedded default needs no setup step: on SQLite (or with LOOPFREE_AUTO_MIGRATE) the
    # schema is created or migrated before the command runs. Help needs no database.
    if ctx.invoked_subcommand in _NO_SCHEMA_CHECK or _asks_for_help():
        return
    from core.settings import get_settings
    from migrations.auto import ensure_schema

    ensure_schema(get_settings())


def _asks_for_help() -> bool:
    return any(arg in ("--help", "-h") for arg in sys.argv[1:])


def _register() -> None:
    from loopfree.commands import (
        api,
        db,
        export,
        fleet,
        fleetview,
        run,
        status,
        submit,
        ui,
        worker,
    )

    for commands in (worker, run, submit, status, export, fleetview, ui, api, fleet, db):
        commands.register(app)


def main() -> None:
    """Entry point: run the app; a LoopfreeError becomes one readable line and an exit code."""
    _register()
    try:
        app()
    except LoopfreeError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        # 75 (EX_TEMPFAIL) tells scripts that trying again later may work.
        sys.exit(75 if isinstance(error, RetryableError) else 2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
