"""``loopfree api``: the HTTP front door of a shared fleet, an ASGI app (FastAPI on Starlette,
the stack of the web view).

    POST   /v1/submissions                 jobs as JSON or a prompt file -> a submission
    GET    /v1/submissions                 the caller's submissions, newest first (cursor)
    GET    /v1/submissions/{id}            its counts by stage, rate, ETA (``status --json``)
    GET    /v1/submissions/{id}/jobs       its jobs, a keyset page at a time (?status=&q=)
    DELETE /v1/submissions/{id}            cancel it
    GET    /v1/jobs/{id}                   one job's record
    GET    /v1/jobs/{id}/image             its image (a redirect to S3, or the bytes)
    GET    /v1/models                      models served: workers, queue depth, images/s
    GET    /v1/openapi.json                this API's OpenAPI document
    GET    /healthz, /readyz               liveness; readiness (database and broker answer)

Every ``/v1`` request carries a bearer token (``api.auth``); ids are those of the CLI (unique
prefixes too), within what the token may see. Errors are problem documents (``api.problems``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from api import problems
from api.auth import Authenticator
from api.limits import BodyLimit, BodyTooLarge
from api.routes import Context, router
from core.errors import LoopfreeError
from core.settings import Settings
from storage.models import utcnow

if TYPE_CHECKING:
    from celery import Celery

    from storage.db import Engine
    from storage.objects import ObjectStore

DESCRIPTION = """Submit text-to-image jobs to a shared loopfree fleet and fetch their images.
Every /v1 request carries `Authorization: Bearer lf_...` (`loopfree tokens create`). Errors are
RFC 9457 problem documents whose `detail` says what to do."""


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    celery: Celery | None = None,
    store: ObjectStore | None = None,
    open_when_empty: bool = False,
    clock: Callable[[], datetime] = utcnow,
) -> BodyLimit:
    """The API on the configured database, broker and store (or the ones given), wrapped in
    its body limit. ``open_when_empty``: requests without a token act as the local operator
    while no token exists (for an API on loopback only; see ``api.auth``). ``clock``: the time
    daily quotas count in (tests move it to tomorrow)."""
    from storage.db import make_engine
    from storage.stores import store_for
    from taskqueue.app import make_celery

    engine = engine or make_engine(settings.resolved_database_url)
    context = Context(
        settings=settings,
        engine=engine,
        celery=celery or make_celery(settings),
        store=store or store_for(settings),
        auth=Authenticator(settings, engine, open_when_empty=open_when_empty),
        clock=clock,
    )
    app = FastAPI(
        title="loopfree-queue API",
        version="1",
        description=DESCRIPTION,
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.loopfree = context
    problems.install(app)

    async def body_too_large(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, BodyTooLarge)
        return error.problem.response(request)

    app.add_exception_handler(BodyTooLarge, body_too_large)
    app.include_router(router)

    @app.get("/healthz", include_in_schema=True, response_class=PlainTextResponse)
    def healthz() -> Response:
        """Liveness: the process answers (no token needed)."""
        return PlainTextResponse("ok")

    @app.get("/readyz", include_in_schema=True, response_class=PlainTextResponse)
    def readyz() -> Response:
        """Readiness: the database answers a query and the broker a connection (no token
        needed); 503 naming what does not."""
        return _readiness(context)

    return BodyLimit(app, settings.api_max_body_bytes)


def _readiness(context: Context) -> Response:
    from storage.db import session_scope
    from storage.jobs import ping
    from taskqueue.app import check_broker

    try:
        with session_scope(context.engine) as session:
            ping(session)
        check_broker(context.celery, outcome="the API cannot take submissions")
    except LoopfreeError as error:
        return PlainTextResponse(f"not ready: {error}", status_code=503)
    return PlainTextResponse("ready")


def app_from_environment() -> BodyLimit:
    """The app of one of several processes (``loopfree api --workers N``): built from the
    environment's settings in each; a token is always required."""
    from core.settings import get_settings

    return create_app(get_settings())
