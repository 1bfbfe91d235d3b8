"""Errors as RFC 9457 problem documents: ``application/problem+json`` with ``type``, ``title``,
``status`` and a ``detail`` that says what to do, plus members of our own where they help
(``errors``: the bad lines of a prompt file or the bad fields of a request; ``quota``).

Every error the API answers goes through here: the project's typed errors (``core.errors``)
keep their messages, which already name the fix; a request FastAPI cannot read (a query
parameter of the wrong type) lists its fields; an error nobody expected is logged with its
traceback and answered 500 without one.
"""

from __future__ import annotations

import logging
from pathlib import PurePath
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.errors import InvalidJob, ModelNotFound, RetryableError, UserError
from producer.prompts import LISTED_ERRORS, PromptFileError
from producer.submit import OptionsDiffer
from storage.ids import AmbiguousId

log = logging.getLogger("loopfree.api")

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE = "/v1/problems/"
"""Each problem's ``type``, a URI reference relative to the API (the slug appended): an
identifier clients can switch on; the README's table of problems says what each means."""

RETRY_AFTER_S = 5
"""What a 503 (a database, broker or store that did not answer) asks clients to wait."""

ERRORS_LISTED = 1_000
"""Bad lines a problem document lists at most (the count says how many there were)."""


class Problem(Exception):
    """An answer other than success, raised anywhere below an endpoint."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail = status, slug, title, detail
        self.headers = headers or {}
        self.extra = extra

    def response(self, request: Request | None = None) -> JSONResponse:
        body: dict[str, Any] = {
            "type": f"{PROBLEM_TYPE}{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if request is not None:
            body["instance"] = request.url.path
        body.update(self.extra)
        return JSONResponse(
            body, status_code=self.status, headers=self.headers, media_type=PROBLEM_JSON
        )


def not_found(what: str, text: str) -> Problem:
    return Problem(
        404,
        "not-found",
        "Not found",
        f"no {what} has an id starting with {text[:80]!r} that this token may see; "
        f"GET /v1/submissions lists yours",
    )


def problem_of(error: Exception) -> Problem:
    """The problem document for one of the project's errors."""
    if isinstance(error, Problem):
        return error
    if isinstance(error, PromptFileError):
        errors = [
            {"line": item.line_number, "detail": item.reason}
            for item in error.errors[:ERRORS_LISTED]
        ]
        # The source's name only: the file is a temporary one of the server.
        detail = f"{PurePath(error.source).name}: {error.problem}"
        if error.error_count > LISTED_ERRORS:
            detail += f" ({error.error_count:,} lines in all; `errors` lists the first ones)"
        return Problem(
            422,
            "invalid-jobs",
            "The jobs are invalid",
            detail.replace("pass --skip-invalid", 'set "skip_invalid": true'),
            errors=errors,
            error_count=error.error_count,
        )
    if isinstance(error, OptionsDiffer):
        return Problem(
            409,
            "idempotency-key-reused",
            "Idempotency-Key reused with other options",
            str(error).replace("--new (or another --key)", "another Idempotency-Key"),
        )
    if isinstance(error, AmbiguousId):
        return Problem(400, "ambiguous-id", "Ambiguous id prefix", str(error))
    if isinstance(error, ModelNotFound):
        return Problem(422, "unknown-model", "Unknown model", str(error))
    if isinstance(error, InvalidJob):  # the submission's options, checked as every line's defaults
        return Problem(422, "invalid-options", "The submission's options are invalid", str(error))
    if isinstance(error, UserError):
        return Problem(400, "bad-request", "Bad request", str(error))
    if isinstance(error, RetryableError):
        return Problem(
            503,
            "unavailable",
            "A dependency is unavailable",
            f"{error} (retry after {RETRY_AFTER_S} s)",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    raise TypeError(f"no problem document for {type(error).__name__}")


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem document."""

    async def project_error(request: Request, error: Exception) -> JSONResponse:
        return problem_of(error).response(request)

    async def unreadable(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        errors = [
            {
                "field": ".".join(str(part) for part in item.get("loc", ())[1:]) or "body",
                "detail": item.get("msg", ""),
            }
            for item in error.errors()
        ]
        named = "; ".join(f"{item['field']}: {item['detail']}" for item in errors[:5])
        return Problem(
            422,
            "invalid-request",
            "The request's parameters are invalid",
            f"{named}; fix them and send the request again",
            errors=errors,
        ).response(request)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        if error.status_code == 404:
            detail = f"{request.url.path} is not an endpoint of this API; see /v1/openapi.json"
        elif error.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /v1/openapi.json"
        else:
            detail = str(error.detail)
        return Problem(
            error.status_code,
            "http",
            str(error.detail),
            detail,
            headers=dict(error.headers or {}),
        ).response(request)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return Problem(
            500,
            "internal",
            "Internal server error",
            "the server failed to answer (its log has the details); try again, and report it "
            "if it keeps happening",
        ).response(request)

    for kind in (Problem, UserError, RetryableError):
        app.add_exception_handler(kind, project_error)
    app.add_exception_handler(RequestValidationError, unreadable)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
