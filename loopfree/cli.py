"""The ``loopfree`` command. Each stage's subcommands are in ``loopfree.commands``; this wires them.

Nothing here imports torch: ``submit``, ``status`` and friends run in an image without it, and start
in a fraction of a second. Worker commands import the model stack only when they run.
"""

from __future__ import annotations

import sys

import typer

from core.errors import LoopfreeError, RetryableError

app = typer.Typer(
    name="loopfree",
    help="Queue-driven text-to-image generation with Loopfree (TiUE) models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from loopfree.commands import db, fleet, run, status, submit, worker

    for commands in (worker, run, submit, status, fleet, db):
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
