"""The read-only web view of ``loopfree ui``: a Starlette app over the database and the store.

Pages (server-rendered HTML, no scripts) and the JSON API under ``/api`` show the same records
(``status.web.views``). Routes:

    /                               submissions, newest first (?before= cursor)
    /submissions/{id}               thumbnail grid (?status=&q=, ?after=/?before= position;
                                    ?page= without filters)
    /submissions/{id}/manifest.jsonl|.csv   its jobs' records (?status=&q=), streamed
    /jobs/{id}                      one job: full image, prompt, seed, timings, sha256, address
    /jobs/{id}/image                the image (PNG, WebP or JPEG), streamed from the store
    /jobs/{id}/thumb.webp           its 256 px thumbnail (made on first request, then cached)
    /workers                        the worker registry (live, then dead) and queue stats
    /api/submissions[/{id}[/jobs]]  /api/jobs/{id}  /api/workers    the same as JSON
    /healthz                        "ok" (liveness; needs the token like everything else)

Images reach the browser only through the app, never as public objects or presigned URLs, so S3
and local stores behave the same and the token guards images as well as pages. Endpoints are
plain functions: Starlette runs them in its thread pool, where blocking SQL and S3 calls belong.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from core.errors import LoopfreeError, RetryableError, UserError
from core.settings import Settings
from status.queries import stats
from status.web import manifest, views
from status.web.security import ApiTokens, Guard, viewer_owner
from status.web.thumbs import HASH_PREFIX_CHARS, THUMB_PX, ThumbnailCache
from storage.access import resolve_owned
from storage.db import Engine, make_engine, session_scope
from storage.gallery import JobFilter, job_for_image
from storage.ids import AmbiguousId
from storage.objects import ObjectNotFound, ObjectStore
from storage.progress import STAGES
from storage.stores import store_for

REFRESH_S = 5
"""Pages with open work reload themselves this often (a meta refresh: no script needed)."""

MAX_QUERY_CHARS = 200
_HASH_PREFIX = re.compile(f"[0-9a-f]{{{HASH_PREFIX_CHARS}}}")
IMAGE_CACHE = "private, max-age=86400"
"""Image URLs carry the image's hash (``?v=``), so a browser may keep them; ``private``: never
in a shared cache, they may be behind a token."""


@dataclass
class WebView:
    """The app's dependencies and its endpoints."""

    engine: Engine
    store: ObjectStore
    thumbs: ThumbnailCache
    templates: Environment

    def _id(self, request: Request, name: str) -> str:
        """The full id in the path: a whole id, or a unique prefix of one (4+ characters,
        git-style, as the CLI takes them); an ambiguous prefix is a 400 naming the candidates."""
        value = request.path_params[name]
        if viewer_owner(request.scope) is None:
            try:
                return str(uuid.UUID(value))
            except ValueError:
                pass
        kind = "submission" if name == "submission_id" else "job"
        owner = viewer_owner(request.scope)
        try:
            with session_scope(self.engine) as session:
                found = resolve_owned(session, value, kind, owner)
        except AmbiguousId:
            raise
        except UserError:  # not an id prefix at all: no such page
            found = None
        if found is None:
            raise views.NotFound(f"no {kind} has an id starting with {value!r}")
        return found

    # -- HTML ---------------------------------------------------------------------------------

    def submissions(self, request: Request) -> Response:
        summaries, page = views.submissions_page(
            self.engine, request.query_params.get("before"), owner=viewer_owner(request.scope)
        )
        refresh = any(summary["open"] for summary in summaries)
        return self.render("submissions.html", submissions=summaries, page=page, refresh=refresh)

    def submission(self, request: Request) -> Response:
        submission_id = self._id(request, "submission_id")
        summary = views.submission_summary(self.engine, submission_id)
        wanted = _job_filter(request)
        jobs, page = self._jobs_page(request, submission_id, wanted, views.JOBS_PER_PAGE)
        for job in jobs:
            job["thumb_width"], job["thumb_height"] = views.thumb_size(
                job["width"], job["height"], THUMB_PX
            )
        cursors = ("page", "after", "before")
        kept = [(k, v) for k, v in request.query_params.multi_items() if k not in cursors]
        query = urlencode(kept)
        return self.render(
            "submission.html",
            manifest_query=f"?{query}" if query else "",
            commands=manifest.command_lines(submission_id, wanted),
            submission=summary,
            jobs=jobs,
            page=page,
            stages=list(STAGES),
            wanted_stage=wanted.stages[0] if len(wanted.stages) == 1 else "",
            query=wanted.text,
            refresh=summary["open"] > 0,
            link=_link(request),
        )

    def _jobs_page(
        self, request: Request, submission_id: str, wanted: JobFilter, size: int
    ) -> tuple[list[dict[str, Any]], views.JobsPage]:
        """The page a request asks for: ``?after=POS`` or ``?before=POS`` (keyset), or, for an
        unfiltered grid whose positions run 0..n-1, ``?page=N`` (the same keyset underneath)."""
        after = _position_param(request, "after")
        before = _position_param(request, "before")
        if "page" in request.query_params:
            if wanted.stages or wanted.text:
                raise UserError(
                    "page= numbers only the unfiltered grid; follow its next/previous links"
                )
            after = (_page_number(request) - 1) * size - 1
        return views.submission_jobs(
            self.engine,
            submission_id,
            wanted,
            after=-1 if after is None else after,
            before=before,
            size=size,
        )

    def job(self, request: Request) -> Response:
        record = views.job_detail(self.engine, self._id(request, "job_id"))
        return self.render("job.html", job=record, refresh=record["status"] in views.OPEN)

    def workers(self, request: Request) -> Response:
        queue = stats(self.engine)
        workers = views.workers_view(self.engine)
        return self.render(
            "workers.html",
            workers=workers,
            live=sum(1 for worker in workers if worker["live"]),
            stats=queue,
            refresh=any(queue["counts"][stage] for stage in views.OPEN)
            or any(worker["live"] for worker in workers),
        )

    def manifest_jsonl(self, request: Request) -> Response:
        return self._manifest(request, "jsonl", manifest.jsonl, "application/jsonl")

    def manifest_csv(self, request: Request) -> Response:
        return self._manifest(request, "csv", manifest.csv_text, "text/csv; charset=utf-8")

    def _manifest(
        self,
        request: Request,
        suffix: str,
        lines: Callable[[Engine, str, JobFilter], Iterator[str]],
        media_type: str,
    ) -> Response:
        submission_id = self._id(request, "submission_id")
        views.submission_summary(self.engine, submission_id)  # 404 for an unknown submission
        wanted = _job_filter(request)  # a bad filter is a 400 before anything is sent
        name = f"{submission_id[:8]}-manifest.{suffix}"
        return StreamingResponse(
            lines(self.engine, submission_id, wanted),
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    # -- images -------------------------------------------------------------------------------

    def image(self, request: Request) -> Response:
        image_uri, _ = self._image_of(self._id(request, "job_id"))
        data = self.store.get(image_uri)
        return Response(data, media_type=image_type(data), headers={"Cache-Control": IMAGE_CACHE})

    def thumbnail(self, request: Request) -> Response:
        job_id = self._id(request, "job_id")
        # ``?v=`` is the image's hash prefix, which names the cached file: a cached thumbnail is
        # served without a database round trip (on SQLite every transaction takes the write
        # lock, and a grid asks for a hundred thumbnails at once).
        version = request.query_params.get("v", "")
        data = self.thumbs.get(job_id, version) if _HASH_PREFIX.fullmatch(version) else None
        if data is None:
            image_uri, sha256 = self._image_of(job_id)
            data = self.thumbs.get(job_id, sha256)
            if data is None:
                data = self.thumbs.make(job_id, sha256, self.store.get(image_uri))
        return Response(data, media_type="image/webp", headers={"Cache-Control": IMAGE_CACHE})

    def _image_of(self, job_id: str) -> tuple[str, str | None]:
        with session_scope(self.engine) as session:
            found = job_for_image(session, job_id)
        if found is None:
            raise views.NotFound(f"no job has id {job_id}")
        if found[0] is None:
            raise views.NotFound(f"job {job_id} has no image (yet)")
        return found[0], found[1]

    # -- JSON ---------------------------------------------------------------------------------

    def api_submissions(self, request: Request) -> Response:
        summaries, page = views.submissions_page(
            self.engine, request.query_params.get("before"), owner=viewer_owner(request.scope)
        )
        return JSONResponse({"submissions": summaries, **page.as_json()})

    def api_submission(self, request: Request) -> Response:
        submission_id = self._id(request, "submission_id")
        return JSONResponse(views.submission_summary(self.engine, submission_id))

    def api_submission_jobs(self, request: Request) -> Response:
        submission_id = self._id(request, "submission_id")
        views.submission_summary(self.engine, submission_id)  # 404 for an unknown submission
        per_page = _int_param(request, "per_page", views.JOBS_PER_PAGE, views.MAX_JOBS_PER_PAGE)
        jobs, page = self._jobs_page(request, submission_id, _job_filter(request), per_page)
        return JSONResponse({"jobs": jobs, **page.as_json()})

    def api_job(self, request: Request) -> Response:
        return JSONResponse(views.job_detail(self.engine, self._id(request, "job_id")))

    def api_workers(self, request: Request) -> Response:
        return JSONResponse(
            {
                "workers": views.workers_view(self.engine),
                "stats": stats(self.engine),
            }
        )

    def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    # -- plumbing -----------------------------------------------------------------------------

    def render(self, template: str, *, refresh: bool = False, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(template).render(
            refresh_s=REFRESH_S if refresh else None, **context
        )
        return HTMLResponse(html)

    def error(self, request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        html = self.templates.get_template("error.html").render(status=status, message=message)
        return HTMLResponse(html, status_code=status)

    def routes(self) -> list[Route]:
        pages: dict[str, Callable[[Request], Response]] = {
            "/": self.submissions,
            "/submissions/{submission_id}": self.submission,
            "/submissions/{submission_id}/manifest.jsonl": self.manifest_jsonl,
            "/submissions/{submission_id}/manifest.csv": self.manifest_csv,
            "/jobs/{job_id}": self.job,
            "/jobs/{job_id}/image": self.image,
            "/jobs/{job_id}/thumb.webp": self.thumbnail,
            "/workers": self.workers,
            "/api/submissions": self.api_submissions,
            "/api/submissions/{submission_id}": self.api_submission,
            "/api/submissions/{submission_id}/jobs": self.api_submission_jobs,
            "/api/jobs/{job_id}": self.api_job,
            "/api/workers": self.api_workers,
            "/healthz": self.healthz,
        }
        return [Route(path, endpoint, methods=["GET"]) for path, endpoint in pages.items()]


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    store: ObjectStore | None = None,
    require_token: bool = False,
) -> Guard:
    """The web view on the configured database and store, wrapped in its ``Guard``, which
    takes the UI token or a token of the HTTP API. ``require_token``: ask for a token even
    without a UI token (a view listening beyond loopback on API tokens alone)."""
    engine = engine or make_engine(settings.resolved_database_url)
    store = store or store_for(settings)
    view = WebView(
        engine=engine,
        store=store,
        thumbs=ThumbnailCache(settings.home_dir / "cache" / "thumbs"),
        templates=template_environment(),
    )

    def handle(status: int) -> Callable[[Request, Exception], Response]:
        return lambda request, error: view.error(request, status, str(error))

    app = Starlette(
        routes=view.routes(),
        exception_handlers={
            views.NotFound: handle(404),
            ObjectNotFound: handle(404),
            UserError: handle(400),
            RetryableError: handle(503),
            LoopfreeError: handle(500),
            404: lambda request, error: view.error(request, 404, "no such page"),
        },
    )
    token = settings.ui_token.get_secret_value() if settings.ui_token else None
    return Guard(app, token, api_tokens=ApiTokens(engine), required=require_token)


def image_type(data: bytes) -> str:
    """The content type of an image from its first bytes: workers store PNG, WebP or JPEG, and
    the browser must not be left to guess (``nosniff``)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return "application/octet-stream"


def template_environment() -> Environment:
    """Jinja2 with autoescaping on for every template: prompts are user text."""
    environment = Environment(
        loader=PackageLoader("status.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    environment.filters["duration"] = _duration
    environment.filters["when"] = _when
    return environment


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _when(iso: str | None) -> str:
    """``2026-12-01T15:37:44+00:00`` as ``2026-12-01 15:37:44`` (times are UTC throughout)."""
    return "–" if not iso else iso.replace("T", " ").removesuffix("+00:00")


def _int_param(request: Request, name: str, default: int, highest: int) -> int:
    raw = request.query_params.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a whole number") from None
    if not 1 <= value <= highest:
        raise UserError(f"{name}={value} must be between 1 and {highest}")
    return value


def _page_number(request: Request) -> int:
    return _int_param(request, "page", 1, 1_000_000)


def _position_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise UserError(
            f"{name}={raw[:40]!r} is not a job position; follow the page's links"
        ) from None
    if not -1 <= value <= 10**9:
        raise UserError(f"{name}={value} is not a job position; follow the page's links")
    return value


def _job_filter(request: Request) -> JobFilter:
    """``?status=failed`` (repeatable; empty means any; the stages of ``storage.progress``) and
    ``?q=text`` (substring of prompt)."""
    names = [name for name in request.query_params.getlist("status") if name]
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise UserError(f"unknown status {unknown[0]!r}; use one of {', '.join(STAGES)}")
    text = (request.query_params.get("q") or "").strip()
    if len(text) > MAX_QUERY_CHARS:
        raise UserError(f"the text filter is limited to {MAX_QUERY_CHARS} characters")
    return JobFilter(stages=tuple(dict.fromkeys(names)), text=text)


def _link(request: Request) -> Callable[..., str]:
    """``link(after=n)``: this page's address with the filters kept and the cursor replaced
    (``link()``: the first page)."""
    cursors = ("page", "after", "before")
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in cursors]

    def link(**cursor: int) -> str:
        query = urlencode([*kept, *((name, str(value)) for name, value in cursor.items())])
        return f"{request.url.path}?{query}" if query else request.url.path

    return link
