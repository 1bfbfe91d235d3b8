"""The ``loopfree`` command. Subcommands live next to the code they drive; this file wires them.

Nothing here imports torch: ``submit``, ``status`` and friends run in an image without it, and start
in a fraction of a second. Worker commands import the model stack only when they run.
"""

from __future__ import annotations

import sys

import typer

from loopfree.errors import LoopfreeError, RetryableError

app = typer.Typer(
    name="loopfree",
    help="Queue-driven text-to-image generation with Loopfree (TiUE) models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from producer import cli as producer_cli
    from producer import fleet_cli
    from storage import cli as storage_cli
    from worker import cli as worker_cli

    worker_cli.register(app)
    producer_cli.register(app)
    fleet_cli.register(app)
    storage_cli.register(app)


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
