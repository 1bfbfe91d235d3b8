"""A Python client of ``loopfree api``: ``Client(url, token)`` (and ``AsyncClient``) to submit
prompts, follow them, and fetch or sync their images. It talks HTTP only (httpx), and imports
nothing of the server but the folder sync of ``status.download``, which needs no database:
``pip install loopfree-queue`` brings it without torch."""

from loopfree_client.aio import AsyncClient, AsyncSubmission
from loopfree_client.client import Client, Submission
from loopfree_client.errors import (
    ApiError,
    Conflict,
    InvalidJobs,
    NotFound,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncSubmission",
    "Client",
    "Conflict",
    "InvalidJobs",
    "NotFound",
    "QuotaExceeded",
    "Submission",
    "Unauthorized",
    "Unavailable",
]
