"""``loopfree api`` serves the HTTP API (``api/``); ``loopfree tokens`` makes, lists and revokes
its bearer tokens. Neither imports torch."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Annotated

import typer

from core.errors import UserError
from core.settings import get_settings
from loopfree import resources

DEFAULT_PORT = 8401

tokens_app = typer.Typer(
    name="tokens",
    help="Bearer tokens of the HTTP API and the web view: create, list, revoke.",
    no_args_is_help=True,
)


def api(
    host: Annotated[
        str, typer.Option(help="Address to listen on; off loopback a token must exist.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = DEFAULT_PORT,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Processes (each with its own rate buckets).")
    ] = 1,
) -> None:
    """Serve the HTTP API (/v1, OpenAPI at /v1/openapi.json) for clients with a token."""
    import uvicorn

    from api.app import create_app
    from api.auth import check_bind
    from status.web.security import is_loopback

    settings = get_settings()
    check_bind(host, resources.engine())
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"loopfree api on http://{shown}:{port}/v1 (OpenAPI: /v1/openapi.json)")
    if workers > 1:
        # Each process builds its own app (engine, broker connection, buckets) from the settings.
        uvicorn.run(
            "api.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            proxy_headers=False,
        )
        return
    app = create_app(
        settings,
        engine=resources.engine(),
        celery=resources.celery_app(),
        store=resources.store(),
        open_when_empty=is_loopback(host),
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)


@tokens_app.command("create")
def create(
    owner: Annotated[str, typer.Option(help="Who the token acts for (the fair-share name).")],
    admin: Annotated[bool, typer.Option(help="See and cancel every owner's work.")] = False,
    quota_queued: Annotated[
        int | None, typer.Option(min=0, help="Jobs the owner may have open at once.")
    ] = None,
    quota_daily_images: Annotated[
        int | None,
        typer.Option(
            min=0, help="Cost units a day (one: a 512x512 image at 4 steps; 1024 px 8 steps: 8)."
        ),
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="When it stops working: 30d, 12h, or 2027-01-31T00:00.")
    ] = None,
    note: Annotated[str | None, typer.Option(help="What it is for (shown by list).")] = None,
) -> None:
    """Make a token and print it once: only its hash is stored, so it cannot be shown again."""
    from storage.db import session_scope
    from storage.tokens import TOKEN_PREFIX, create_token

    with session_scope(resources.engine()) as session:
        row, token = create_token(
            session,
            owner=owner,
            admin=admin,
            quota_queued=quota_queued,
            quota_daily_units=quota_daily_images,
            expires_at=parse_expiry(expires) if expires else None,
            note=note,
        )
    typer.secho(
        f"token {TOKEN_PREFIX}{row.id} for {row.owner}{' (admin)' if row.admin else ''}; "
        "shown once, keep it secret:",
        err=True,
    )
    typer.echo(token)


@tokens_app.command("list")
def list_(
    all_: Annotated[bool, typer.Option("--all", help="Revoked tokens too.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per token.")] = False,
) -> None:
    """Tokens by owner: id, admin, quotas, created, expires, revoked (never the secret)."""
    from storage.db import session_scope
    from storage.tokens import TOKEN_PREFIX, list_tokens

    with session_scope(resources.engine()) as session:
        rows = list_tokens(session, include_revoked=all_)
    records = [
        {
            "id": f"{TOKEN_PREFIX}{row.id}",
            "owner": row.owner,
            "admin": row.admin,
            "quota_queued": row.quota_queued,
            "quota_daily_images": row.quota_daily_units,
            "created_at": row.created_at.isoformat(timespec="seconds"),
            "expires_at": row.expires_at.isoformat(timespec="seconds") if row.expires_at else None,
            "revoked_at": row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else None,
            "note": row.note,
        }
        for row in rows
    ]
    if json_:
        for record in records:
            typer.echo(json.dumps(record))
        return
    from loopfree.commands.tables import Column, print_table

    columns = [Column(name) for name in ("id", "owner", "admin", "queued", "daily", "expires",
                                         "revoked", "note")]  # fmt: skip
    print_table(
        columns,
        (
            [
                r["id"],
                r["owner"],
                "yes" if r["admin"] else "",
                _or_dash(r["quota_queued"]),
                _or_dash(r["quota_daily_images"]),
                r["expires_at"] or "-",
                r["revoked_at"] or "",
                r["note"] or "",
            ]  # fmt: skip
            for r in records
        ),
        wide=False,
    )


@tokens_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="lf_<id> as `tokens list` shows.")],
) -> None:
    """Revoke a token: the API and the web view refuse it from the next request on."""
    from storage.db import session_scope
    from storage.tokens import TOKEN_PREFIX, revoke_token

    with session_scope(resources.engine()) as session:
        row = revoke_token(session, token_id)
    typer.echo(f"revoked {TOKEN_PREFIX}{row.id} ({row.owner})")


def parse_expiry(text: str, *, now: datetime | None = None) -> datetime:
    """``30d``, ``12h``, ``90m`` from now, or an ISO 8601 time (UTC unless it says)."""
    now = now or datetime.now(timezone.utc)
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = text[:-1], text[-1:].lower()
    if unit in units and number.isdigit():
        return now + timedelta(**{units[unit]: int(number)})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"--expires {text[:40]!r} is not 30d, 12h, 90m or an ISO 8601 time like "
            "2027-01-31T00:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def register(app: typer.Typer) -> None:
    app.command()(api)
    app.add_typer(tokens_app)
