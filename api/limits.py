"""The request body limit, enforced on the bytes as they arrive, before anything is written.

A declared ``Content-Length`` over the limit is answered 413 at once; a body without one (chunked)
is counted as it is read, and the read that passes the limit raises ``BodyTooLarge``, which the
endpoint answers 413 (nothing was validated or stored: bodies go to a temporary file, and the
submit only starts once the whole body is in).

Before answering, the rest of the body is read and thrown away (up to ``DRAIN_BYTES``; past
that the connection is closed): HTTP/1.1 clients (httpx, requests, curl) send the whole body
before they read the answer, and a server that stops reading leaves them with a broken pipe
instead of the 413 that says what to do. Memory stays flat: nothing read is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from api.problems import Problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DRAIN_BYTES = 1 << 30
"""Most bytes read and discarded after the limit so the client can read its 413 (loopback moves
a gigabyte in about a second); a larger body's connection is closed instead."""


def too_large(limit: int, size: int | None = None) -> Problem:
    said = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    return Problem(
        413,
        "body-too-large",
        "Request body too large",
        f"the body is {said}; the limit is {limit:,} (LOOPFREE_API_MAX_BODY_BYTES): split the "
        "jobs into several submissions",
        limit=limit,
    )


class BodyTooLarge(Exception):
    """Raised by the counting ``receive`` when the body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body over {limit} bytes")
        self.problem = too_large(limit)


class BodyLimit:
    """ASGI middleware: see the module's docstring."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            if declared <= DRAIN_BYTES:
                await _drain(receive, DRAIN_BYTES)
            await too_large(self.limit, declared).response()(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_BYTES)
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Receive, most: int) -> None:
    """Read and discard the rest of the body, at most ``most`` bytes."""
    read = 0
    while read <= most:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
