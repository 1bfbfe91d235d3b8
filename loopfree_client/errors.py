"""Errors of the API as Python exceptions: each carries the problem document the server sent
(RFC 9457), whose ``detail`` says what to do."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """The API answered with an error (a problem document)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        super().__init__(f"{status}: {self.detail}")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Per-line (or per-field) errors: ``{"line": 3, "detail": ...}``, and for a JSON
        submission ``"index"``, the element of ``jobs`` it concerns."""
        return list(self.problem.get("errors") or [])


class Unauthorized(ApiError):
    """401: no token, or one that is unknown, revoked or expired."""


class NotFound(ApiError):
    """404: no such id among the ones this token may see."""


class Conflict(ApiError):
    """409: the idempotency key was used before with other jobs or options."""


class InvalidJobs(ApiError):
    """422: invalid jobs (``errors`` lists the lines) or options."""


class QuotaExceeded(ApiError):
    """429: a quota (``problem["quota"]``: queued, daily_images) or the request rate;
    ``retry_after_s`` says when to try again."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after_s: float | None) -> None:
        super().__init__(status, problem)
        self.retry_after_s = retry_after_s


class Unavailable(ApiError):
    """5xx after the client's retries: the server or one of its dependencies is down."""


def error_for(status: int, problem: dict[str, Any], retry_after_s: float | None) -> ApiError:
    if status == 429:
        return QuotaExceeded(status, problem, retry_after_s)
    kinds = {401: Unauthorized, 404: NotFound, 409: Conflict, 422: InvalidJobs}
    if status >= 500:
        return Unavailable(status, problem)
    return kinds.get(status, ApiError)(status, problem)
