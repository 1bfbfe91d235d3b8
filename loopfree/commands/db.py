"""``loopfree db upgrade|downgrade|current``: Alembic migrations of the configured database."""

from __future__ import annotations

from typing import Annotated

import typer

from core.settings import get_settings, mask_url

db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)


@db_app.command()
def upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Migrate the database to REVISION (default: the newest)."""
    from migrations import runner as migrate

    settings = get_settings()
    settings.ensure_home()
    url = settings.resolved_database_url
    migrate.upgrade(url, revision)
    typer.echo(f"{mask_url(url)} is at {migrate.current(url)}")


@db_app.command()
def downgrade(revision: Annotated[str, typer.Argument()]) -> None:
    """Migrate the database down to REVISION ("base" removes everything)."""
    from migrations import runner as migrate

    migrate.downgrade(get_settings().resolved_database_url, revision)


@db_app.command()
def current() -> None:
    """Print the database's revision."""
    from migrations import runner as migrate

    typer.echo(
        migrate.current(get_settings().resolved_database_url) or "empty (run `loopfree db upgrade`)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
