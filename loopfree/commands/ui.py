"""``loopfree ui``: serve the read-only web view (status/web) with uvicorn.

Safe by default: it binds to 127.0.0.1; any other address needs ``LOOPFREE_UI_TOKEN``, and once a
token is set every request must carry it (see ``status.web.security``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from core.settings import get_settings

DEFAULT_PORT = 8400


def ui(
    host: Annotated[
        str, typer.Option(help="Address to listen on; off loopback LOOPFREE_UI_TOKEN is required.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = DEFAULT_PORT,
) -> None:
    """Serve a read-only web view of submissions, images and workers (and a JSON API)."""
    import uvicorn

    from loopfree import resources
    from status.web.app import create_app
    from status.web.security import check_bind, is_loopback
    from storage.db import session_scope
    from storage.tokens import any_token

    settings = get_settings()
    token = settings.ui_token.get_secret_value() if settings.ui_token else None
    with session_scope(resources.engine()) as session:
        api_tokens = any_token(session)
    check_bind(host, token, api_tokens=api_tokens)
    app = create_app(
        settings,
        engine=resources.engine(),
        store=resources.store(),
        require_token=not is_loopback(host),
    )
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"loopfree ui on http://{shown}:{port}/" + (" (token required)" if token else ""))
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)


def register(app: typer.Typer) -> None:
    app.command()(ui)
