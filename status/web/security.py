"""The web view's guard: read-only, a token when one is set, and headers that keep pages inert.

- **Read-only.** Only GET and HEAD reach the app; any other method is answered 405 here, before
  routing, so no route added later can change state by accident.
- **Token.** With ``LOOPFREE_UI_TOKEN`` set (or listening beyond loopback), every request must
  carry a token, one of two ways: ``Authorization: Bearer TOKEN`` (scripts, the JSON API), or
  for a browser, open any page once with ``?token=TOKEN``: the answer is a redirect to the same
  address without the token, setting an HttpOnly, SameSite=Strict cookie that holds an HMAC of
  the token (not the token itself), so the token leaves the address bar and the history and is
  never sent to another site. Anything else is answered 401. The token is the UI token or any
  live token of the HTTP API (``loopfree tokens create``, ``storage.tokens``): an admin's sees
  everything, another sees only its owner's submissions (the request's ``viewer``).
- **Clean text.** A query string or path that holds a NUL byte or is not UTF-8 is answered 400
  here, saying which: no text that PostgreSQL cannot hold (NUL) or that would be silently
  replaced (bad UTF-8) reaches a query.
- **Inert pages.** Jinja2 autoescapes every prompt and error; as a second line, the
  Content-Security-Policy forbids scripts altogether (the pages use none) and only lets images
  and styles come from the app itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes, urlencode

import anyio.to_thread
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from core.errors import UserError
from storage.db import Engine, session_scope
from storage.tokens import Caller, caller_of, cookie_proof, looks_like_token, verify_cookie
from storage.tokens import verify_token as verify_api_token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE_NAME = "loopfree_ui"
# A token guards every prompt and image: 32 characters of `openssl rand -hex 32` carry 128 bits,
# past any online guessing; a short, human-chosen one (a 10-letter word) is not.
MIN_TOKEN_LENGTH = 32
MAKE_TOKEN = "openssl rand -hex 32"
READ_METHODS = frozenset({"GET", "HEAD"})

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class TokenRequired(UserError):
    """``loopfree ui`` was asked to listen beyond loopback without a token, or with a weak one."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None, *, api_tokens: bool = False) -> None:
    """Refuse to serve prompts and images to the network without a token (the UI token, or
    ``api_tokens``: tokens of the HTTP API exist), or with a short one."""
    check_token(token)
    if token or api_tokens or is_loopback(host):
        return
    raise TokenRequired(
        f"`loopfree ui --host {host}` would serve every prompt and image to the network without "
        f"a password: set LOOPFREE_UI_TOKEN to a long random string (`{MAKE_TOKEN}`) "
        "and open the view once with ?token=..., or bind to 127.0.0.1"
    )


def check_token(token: str | None) -> None:
    """A token that is set must be at least ``MIN_TOKEN_LENGTH`` characters long."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise TokenRequired(
            f"LOOPFREE_UI_TOKEN has {len(token)} characters; it needs at least "
            f"{MIN_TOKEN_LENGTH}, so that it cannot be guessed: make one with `{MAKE_TOKEN}`"
        )


def cookie_value(token: str) -> str:
    """What the cookie holds: proof of the token that is useless as the token itself."""
    return hmac.new(token.encode(), b"loopfree-ui-cookie", hashlib.sha256).hexdigest()


class ApiTokens:
    """The HTTP API's tokens, as the web view checks them (a database read each: the guard runs
    these in a worker thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def verify(self, token: str) -> tuple[Caller, str] | None:
        """The caller a live token stands for, and the cookie that remembers it."""
        with session_scope(self.engine) as session:
            row = verify_api_token(session, token)
            return None if row is None else (caller_of(row), cookie_proof(row))

    def verify_cookie(self, value: str) -> Caller | None:
        with session_scope(self.engine) as session:
            row = verify_cookie(session, value)
            return None if row is None else caller_of(row)


VIEWER = "viewer"
"""Where the guard leaves the ``Caller`` of an API token in the request's state; absent for the
UI token or an open view (they see everything)."""


def viewer_owner(scope: Scope) -> str | None:
    """The owner whose work alone a request may see, or None for all."""
    viewer = scope.get("state", {}).get(VIEWER)
    return None if viewer is None or viewer.admin else viewer.owner


class Guard:
    """ASGI middleware enforcing the rules in this module's docstring."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        *,
        api_tokens: ApiTokens | None = None,
        required: bool = False,
    ) -> None:
        check_token(token or None)
        self.app = app
        self.token = token or None
        self.cookie = cookie_value(self.token) if self.token else None
        self.api_tokens = api_tokens
        self.required = required or self.token is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = headers
            await send(message)

        request = Request(scope)
        refusal = self.refusal(request)
        if refusal is None and self.required and not self.carries_token(request):
            refusal = await self.api_token_refusal(request, scope)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def refusal(self, request: Request) -> Response | None:
        """The response that stops this request here, or None to let it through."""
        if request.method not in READ_METHODS:
            return PlainTextResponse(
                "the loopfree web view is read-only: use GET (the CLI changes state)",
                status_code=405,
                headers={"Allow": "GET, HEAD"},
            )
        problem = unclean_text(request.scope)
        if problem is not None:
            return self.bad_request(request, problem)
        if not self.required or self.carries_token(request):
            return None
        offered = request.query_params.get("token")
        if (
            offered is not None
            and self.token is not None
            and hmac.compare_digest(offered.encode(), self.token.encode())
        ):
            assert self.cookie is not None
            return self.remember(request, self.cookie)
        return None  # an API token, perhaps: ``api_token_refusal`` decides

    async def api_token_refusal(self, request: Request, scope: Scope) -> Response | None:
        """Let a live API token through (as its viewer), by header, cookie or ``?token=``;
        otherwise the 401."""
        if self.api_tokens is not None:
            scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
            credentials = credentials.strip()
            offered = request.query_params.get("token", "")
            cookie = request.cookies.get(COOKIE_NAME, "")
            if scheme.lower() == "bearer" and looks_like_token(credentials):
                found = await anyio.to_thread.run_sync(self.api_tokens.verify, credentials)
                if found is not None:
                    scope.setdefault("state", {})[VIEWER] = found[0]
                    return None
            elif looks_like_token(offered):
                found = await anyio.to_thread.run_sync(self.api_tokens.verify, offered)
                if found is not None:
                    return self.remember(request, found[1])
            elif cookie and "." in cookie:
                viewer = await anyio.to_thread.run_sync(self.api_tokens.verify_cookie, cookie)
                if viewer is not None:
                    scope.setdefault("state", {})[VIEWER] = viewer
                    return None
        return self.unauthorized(request)

    def carries_token(self, request: Request) -> bool:
        """Whether the request carries the UI token (header or cookie)."""
        if self.token is None or self.cookie is None:
            return False
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self.token.encode()
        ):
            return True
        cookie = request.cookies.get(COOKIE_NAME, "")
        return hmac.compare_digest(cookie.encode(), self.cookie.encode())

    def remember(self, request: Request, cookie: str) -> Response:
        """Redirect to the same address without ``?token=``, setting the cookie."""
        kept = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = URL(path=request.url.path, query=urlencode(kept))
        response = RedirectResponse(str(target), status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            cookie,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @staticmethod
    def bad_request(request: Request, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=400)
        return PlainTextResponse(message, status_code=400)

    @staticmethod
    def unauthorized(request: Request) -> Response:
        message = (
            "this loopfree web view needs a token (LOOPFREE_UI_TOKEN, or an API token of "
            "`loopfree tokens create`): send 'Authorization: Bearer TOKEN', or open the page "
            "once with ?token=TOKEN"
        )
        headers = {"WWW-Authenticate": 'Bearer realm="loopfree"'}
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=401, headers=headers)
        return PlainTextResponse(message, status_code=401, headers=headers)


def unclean_text(scope: Scope) -> str | None:
    """Why the request's path or query string cannot be used as text, or None if it can."""
    raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return "the address is not valid UTF-8; percent-encode text as UTF-8"
    if "\x00" in path:
        return "the address contains a NUL byte (%00); remove it"
    query = scope.get("query_string", b"")
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return "the query string is not valid UTF-8; percent-encode text as UTF-8"
    for name, value in pairs:
        if "\x00" in name:
            return "a query parameter name contains a NUL byte (%00); remove it"
        if "\x00" in value:
            return f"query parameter {name!r} contains a NUL byte (%00); remove it"
    return None
