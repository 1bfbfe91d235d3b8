"""The ``/v1`` endpoints. Each reads through the functions the CLI and the web view use
(``status.queries``, ``status.summary``, ``storage.gallery``), so the numbers agree, and each
resolves ids within what the caller may see (``storage.access``): another owner's id is a 404.

Endpoints that only read are plain functions (FastAPI runs them in its thread pool, where
blocking SQL belongs); the submit is async because it streams the body, and hands the submit
itself to a thread.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.auth import Authenticator
from api.intake import FILE_TYPES, JsonSubmission, receive
from api.problems import Problem, not_found, problem_of
from api.submitting import submit
from core.settings import Settings
from producer.prompts import PromptFileError
from status.queries import CANCEL_BUDGET_S, cancel, job_record, submission_status
from status.summary import summarize
from status.web.views import parse_cursor
from storage.access import resolve_owned
from storage.db import Engine, session_scope
from storage.gallery import JobFilter, find_jobs, list_submissions
from storage.progress import STAGES
from storage.queries import get_job
from storage.tokens import Caller

if TYPE_CHECKING:
    from celery import Celery

    from storage.objects import ObjectStore

IMAGE_URL_EXPIRY_S = 300
"""A presigned image URL lives this long: enough to follow the redirect, short enough that a URL
copied out of a log is soon useless."""
MAX_SUBMISSIONS_PER_PAGE = 100
MAX_JOBS_PER_PAGE = 1000
CONTENT_TYPES = {".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg"}


@dataclass
class Context:
    """What every endpoint needs, built once per app (``api.app.create_app``)."""

    settings: Settings
    engine: Engine
    celery: Celery
    store: ObjectStore
    auth: Authenticator
    clock: Any  # () -> aware datetime: the day a daily quota counts in


def context(request: Request) -> Context:
    return request.app.state.loopfree


def caller(request: Request) -> Caller:
    """The request's caller (``api.auth``); a 401 or 429 problem otherwise."""
    return context(request).auth.caller(request)


Ctx = Annotated[Context, Depends(context)]
Who = Annotated[Caller, Depends(caller)]
router = APIRouter(prefix="/v1", responses=schemas.PROBLEMS)


def _owner_filter(who: Caller) -> str | None:
    return None if who.admin else who.owner


def _submission_id(ctx: Context, who: Caller, text: str) -> str:
    with session_scope(ctx.engine) as session:
        found = resolve_owned(session, text, "submission", _owner_filter(who))
    if found is None:
        raise not_found("submission", text)
    return found


def _job_id(ctx: Context, who: Caller, text: str) -> str:
    with session_scope(ctx.engine) as session:
        found = resolve_owned(session, text, "job", _owner_filter(who))
    if found is None:
        raise not_found("job", text)
    return found


def _summary(ctx: Context, submission_id: str) -> dict[str, Any]:
    status = submission_status(ctx.engine, submission_id)
    if status is None:  # deleted between the lookup and now
        raise not_found("submission", submission_id)
    return status.as_dict()


def _job(record: dict[str, Any]) -> dict[str, Any]:
    has_image = record["status"] == "succeeded" and record.get("image_uri")
    record["image_url"] = f"/v1/jobs/{record['id']}/image" if has_image else None
    return record


@router.post(
    "/submissions",
    status_code=201,
    response_model=schemas.SubmittedOut,
    summary="Submit jobs (a JSON array, or a JSONL/CSV/TXT prompt file)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": JsonSubmission.model_json_schema()},
                **{kind: {"schema": {"type": "string"}} for kind in FILE_TYPES},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "additionalProperties": {"type": "string"},
                    }
                },
            },
        }
    },
    responses={200: {"model": schemas.SubmittedOut, "description": "An earlier submission"}},
)
async def create_submission(
    request: Request,
    ctx: Ctx,
    who: Who,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Validate every job as ``loopfree submit`` does (nothing is written if one is invalid,
    unless ``skip_invalid``), check the token's quotas, record and queue them for the token's
    owner. Options go beside ``jobs`` in a JSON body, in the query string for a raw prompt file,
    or as form fields beside a multipart ``file``. 201: a new submission; 200: the
    ``Idempotency-Key`` named an earlier one (the same request again)."""
    with tempfile.TemporaryDirectory(prefix="loopfree-api-") as folder:
        upload = await receive(request, Path(folder))
        try:
            intake = await run_in_threadpool(
                submit,
                ctx.settings,
                ctx.engine,
                ctx.celery,
                who,
                upload,
                idempotency_key,
                now=ctx.clock(),
            )
        except PromptFileError as error:
            problem = problem_of(error)
            if upload.from_json:  # line i + 1 of the JSONL written from the body is jobs[i]
                problem.extra["errors"] = [
                    {"index": item["line"] - 1, "pointer": f"/jobs/{item['line'] - 1}", **item}
                    for item in problem.extra["errors"]
                ]
            raise problem from None
    body = {**_summary(ctx, intake.submission_id), "intake": intake.as_dict()}
    return JSONResponse(
        body,
        status_code=201 if intake.created else 200,
        headers={"Location": f"/v1/submissions/{intake.submission_id}"},
    )


@router.get("/submissions", response_model=schemas.SubmissionsPageOut)
def list_all(
    ctx: Ctx,
    who: Who,
    before: Annotated[str | None, Query(description="next_before of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_SUBMISSIONS_PER_PAGE)] = 25,
    owner: Annotated[str | None, Query(description="Admin tokens: only this owner's")] = None,
) -> Response:
    """The caller's submissions, newest first, a page at a time (admins: everyone's)."""
    if not who.admin:
        owner = who.owner
    cursor = parse_cursor(before) if before else None
    with session_scope(ctx.engine) as session:
        found = list_submissions(session, limit=limit + 1, before=cursor, owner=owner)
        shown = found[:limit]
        summaries = summarize(session, shown)
    after = None
    if len(found) > limit:
        after = f"{shown[-1].created_at.isoformat()},{shown[-1].id}"
    return JSONResponse(
        {"submissions": [summary.as_dict() for summary in summaries], "next_before": after}
    )


@router.get("/submissions/{submission_id}", response_model=schemas.SubmissionOut)
def get_submission(ctx: Ctx, who: Who, submission_id: str) -> Response:
    """Where a submission stands: the numbers ``loopfree status ID --json`` prints. The id may be
    a unique prefix (4+ characters)."""
    return JSONResponse(_summary(ctx, _submission_id(ctx, who, submission_id)))


@router.get("/submissions/{submission_id}/jobs", response_model=schemas.JobsPageOut)
def list_jobs(
    ctx: Ctx,
    who: Who,
    submission_id: str,
    status: Annotated[
        list[str] | None, Query(description="Stages (repeatable); running: claimed or rendering")
    ] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Prompt contains (any case)")
    ] = None,
    after: Annotated[int, Query(ge=-1, description="next_after of the previous page")] = -1,
    limit: Annotated[int, Query(ge=1, le=MAX_JOBS_PER_PAGE)] = 100,
) -> Response:
    """A page of a submission's jobs in position order (keyset: ``after`` a position)."""
    full = _submission_id(ctx, who, submission_id)
    stages: list[str] = []
    for name in status or []:
        if name == "running":
            stages += ["claimed", "rendering"]
        elif name in STAGES:
            stages.append(name)
        else:
            raise Problem(
                422,
                "invalid-request",
                "Unknown status",
                f"status={name[:40]!r} is unknown; use {', '.join(STAGES)} or running",
            )
    wanted = JobFilter(stages=tuple(dict.fromkeys(stages)), text=(q or "").strip())
    with session_scope(ctx.engine) as session:
        found = find_jobs(session, full, wanted, limit=limit + 1, after=after)
        records = [_job(job_record(job)) for job in found[:limit]]
    next_after = records[-1]["position"] if len(found) > limit else None
    return JSONResponse({"jobs": records, "next_after": next_after})


@router.delete("/submissions/{submission_id}", response_model=schemas.CancelOut)
def cancel_submission(ctx: Ctx, who: Who, submission_id: str) -> Response:
    """Cancel a submission as ``loopfree cancel`` does: nothing more of it is sent or claimed,
    its queued jobs move to cancelled (for a few seconds here, the rest by the fleet), jobs
    already claimed or rendering finish."""
    full = _submission_id(ctx, who, submission_id)
    report = cancel(ctx.engine, ctx.celery, full, budget_s=CANCEL_BUDGET_S)
    return JSONResponse(report.as_dict())


@router.get("/jobs/{job_id}", response_model=schemas.JobOut)
def get_job_record(ctx: Ctx, who: Who, job_id: str) -> Response:
    """One job's record (every column, its stage as ``status``), and ``image_url``."""
    full = _job_id(ctx, who, job_id)
    with session_scope(ctx.engine) as session:
        job = get_job(session, full)
        if job is None:
            raise not_found("job", job_id)
        record = job_record(job)
    return JSONResponse(_job(record))


@router.get(
    "/jobs/{job_id}/image",
    response_class=Response,
    responses={
        200: {"content": {kind: {} for kind in CONTENT_TYPES.values()}, "description": "The image"},
        307: {"description": "A presigned URL of the image in S3, valid for 5 minutes"},
    },
)
def get_image(
    ctx: Ctx,
    who: Who,
    job_id: str,
    redirect: Annotated[
        bool, Query(description="false: the bytes through the API, for clients S3 cannot reach")
    ] = True,
) -> Response:
    """The job's image: on S3 a redirect to a short-lived presigned URL (the bytes never pass
    through the API), on a local store (or with ``redirect=false``) the bytes themselves."""
    full = _job_id(ctx, who, job_id)
    with session_scope(ctx.engine) as session:
        job = get_job(session, full)
        uri = job.image_uri if job is not None and job.status.value == "succeeded" else None
    if not uri:
        raise Problem(
            404,
            "no-image",
            "No image",
            f"job {full} has no image (yet): GET /v1/jobs/{full} says where it stands",
        )
    url = ctx.store.presigned_url(uri, IMAGE_URL_EXPIRY_S)
    if redirect and url.startswith(("http://", "https://")):
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    suffix = PurePosixPath(uri).suffix
    return Response(
        ctx.store.get(uri),
        media_type=CONTENT_TYPES.get(suffix, "application/octet-stream"),
        headers={"Cache-Control": "private, max-age=86400"},
    )


@router.get("/models", response_model=schemas.ModelsOut)
def models(ctx: Ctx, who: Who) -> Response:
    """Models with live workers or open jobs: workers, queued and running jobs, images/s over
    the last minute."""
    from storage.fleet_reads import count_open_jobs
    from storage.models import JobStatus, utcnow
    from storage.progress import recent_throughput
    from storage.workers import list_workers

    now = utcnow()
    with session_scope(ctx.engine) as session:
        workers: dict[str, int] = {}
        for row in list_workers(session, now=now):
            workers[row.model] = workers.get(row.model, 0) + 1
        open_jobs = count_open_jobs(session)
        records = []
        for model in sorted(set(workers) | set(open_jobs)):
            counts = open_jobs.get(model, {})
            rate = recent_throughput(session, model=model, now=now).images_per_s
            records.append(
                {
                    "model": model,
                    "live_workers": workers.get(model, 0),
                    "queued": counts.get(JobStatus.QUEUED, 0),
                    "running": counts.get(JobStatus.RUNNING, 0),
                    "images_per_s": rate,
                }
            )
    return JSONResponse({"models": records})
