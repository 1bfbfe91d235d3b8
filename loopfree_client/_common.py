"""What the sync and async clients share: the request bodies, the retry policy, reading errors.

**Retries.** Every call this client makes may be repeated: reads, cancel (cancelling twice
changes nothing), and submits, which always carry an ``Idempotency-Key`` (a fresh random one per
``submit`` unless you give yours), so the server returns the first submission to a repeat. So a
connection error, a timeout, a 5xx (503 names a dependency that is down) and a 429 of the
request rate are retried with jittered exponential backoff (a ``Retry-After`` is honoured), up
to ``retries`` attempts. A 4xx other than that is the caller's to fix and is raised at once, as
is a 429 of a quota (its ``Retry-After`` may be hours).
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
from tenacity import wait_exponential_jitter

from loopfree_client.errors import ApiError, error_for

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 5
MAX_RETRY_AFTER_S = 30.0
"""A ``Retry-After`` longer than this is not waited for: the error is raised instead."""

FILE_TYPES = {".jsonl": "application/jsonl", ".csv": "text/csv", ".txt": "text/plain"}

backoff = wait_exponential_jitter(multiplier=0.5, max=10.0)


class Retry(Exception):
    """A transient answer worth another attempt, after ``wait_s`` if the server said."""

    def __init__(self, error: ApiError, wait_s: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait_s = wait_s


def new_key() -> str:
    return uuid.uuid4().hex


def submit_body(jobs: Iterable[str | Mapping[str, Any]], options: Mapping[str, Any]) -> dict:
    """The JSON body of a submit: the jobs (prompts or dicts of JSONL fields) and options."""
    body: dict[str, Any] = {"jobs": [job if isinstance(job, str) else dict(job) for job in jobs]}
    body.update({name: value for name, value in options.items() if value is not None})
    return body


def file_upload(path: Path, options: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The content type of a prompt file sent as the body, and the options as query params."""
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        guessed = mimetypes.guess_type(path.name)[0]
        raise ValueError(f"{path.name}: not .jsonl, .csv or .txt ({guessed or 'unknown type'})")
    params = {"source": path.name}
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, Mapping):
            import json

            value = json.dumps(value)
        params[name] = str(value)
    return kind, params


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def check(response: httpx.Response) -> httpx.Response:
    """``response`` if it succeeded (2xx, or a redirect to an image); ``Retry`` for a transient
    error, else the ``ApiError`` the problem document describes."""
    if response.status_code < 400:
        return response
    try:
        problem = response.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    wait = retry_after(response)
    error = error_for(response.status_code, problem, wait)
    rate_limited = response.status_code == 429 and problem.get("quota") == "requests"
    transient = response.status_code >= 500 or rate_limited
    if transient and (wait is None or wait <= MAX_RETRY_AFTER_S):
        raise Retry(error, wait)
    raise error


TRANSIENT = (httpx.TransportError, Retry)
"""What the retry loop retries: connection errors and timeouts, and ``Retry``."""


def wait_for(retry_state: Any) -> float:
    """tenacity's wait: the server's ``Retry-After`` if it sent one, else jittered backoff."""
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    if isinstance(error, Retry) and error.wait_s is not None:
        return error.wait_s
    return backoff(retry_state)


def unwrap(error: BaseException) -> BaseException:
    """What to raise once retries are spent: the API's error rather than ``Retry``."""
    return error.error if isinstance(error, Retry) else error
