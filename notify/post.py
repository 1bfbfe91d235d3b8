"""One webhook attempt: a signed POST that ends by a deadline, whatever the receiver does.

httpx's timeouts are per socket operation: a receiver that sends one byte every 5 s never trips a
10 s read timeout, and held a sender for minutes. Here every socket operation (connect, TLS,
each write, each read of the status line and headers) gets only what is left of one deadline for
the whole attempt, so an attempt is over after ``deadline_s`` at the latest. The body of the
answer is not read: its status is all that counts.

Connections are made by :class:`_GuardedBackend`, which resolves the host, refuses it unless
every address passes ``core.webhooks`` (public, or listed in ``LOOPFREE_WEBHOOK_ALLOW``) and
connects to exactly those addresses: a name that resolved to a public address at submit and to
an internal one now (DNS rebinding) is refused. TLS still checks the certificate against the
host name. Redirects are not followed.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import httpcore

from core.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Resolver,
    WebhookPolicy,
    WebhookRefused,
    allowed_addresses,
    sign,
    split_webhook_url,
    system_resolver,
)

USER_AGENT = "loopfree-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: ``sent`` (2xx), else whether another attempt may help."""

    sent: bool
    retry: bool
    detail: str  # "HTTP 204", "no answer within 10 s", ... (never the URL: it may hold tokens)


def body_of(payload: dict[str, Any]) -> bytes:
    """The exact bytes POSTed and signed."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def signed_headers(
    body: bytes, *, secret: str | None, event: str, delivery_id: str, now: float | None = None
) -> dict[str, str]:
    """Headers of a POST; ``X-Loopfree-Signature`` only with a secret."""
    timestamp = int(now if now is not None else time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,  # the same on every attempt: receivers can drop repeats
        TIMESTAMP_HEADER: str(timestamp),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return headers


def classify(status: int) -> Outcome:
    """2xx: sent. 408, 429 and 5xx: the receiver may answer later. Anything else (a 3xx, since
    redirects are not followed; a 4xx): it understood and refused, asking again will not help."""
    if 200 <= status < 300:
        return Outcome(sent=True, retry=False, detail=f"HTTP {status}")
    if status in (408, 429) or status >= 500:
        return Outcome(sent=False, retry=True, detail=f"HTTP {status}")
    return Outcome(sent=False, retry=False, detail=f"HTTP {status}: refused, not retried")


# Host lookups of every attempt in this process; see ``_GuardedBackend._resolve_by_deadline``.
_LOOKUPS = ThreadPoolExecutor(4, thread_name_prefix="loopfree-webhook-dns")


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    policy: WebhookPolicy,
    deadline_s: float,
    resolve: Resolver = system_resolver,
) -> Outcome:
    """POST ``body`` to ``url``; over within ``deadline_s`` seconds, whatever happens."""
    try:
        scheme, host, port = split_webhook_url(url)
    except WebhookRefused as error:
        return Outcome(sent=False, retry=False, detail=str(error))
    deadline = time.monotonic() + deadline_s
    default_port = 443 if scheme == "https" else 80
    host_header = host if port == default_port else f"{host}:{port}"
    if ":" in host:
        host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
    request_headers = [
        ("Host", host_header),
        ("Content-Length", str(len(body))),
        *headers.items(),
    ]
    timeouts = {"connect": deadline_s, "read": deadline_s, "write": deadline_s, "pool": deadline_s}
    backend = _GuardedBackend(policy, deadline, resolve)
    try:
        with httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context() if scheme == "https" else None,
            network_backend=backend,
            max_connections=1,
            retries=0,
        ) as pool, pool.stream(
            "POST", url, headers=request_headers, content=body,
            extensions={"timeout": timeouts},
        ) as response:  # fmt: skip
            return classify(response.status)
    except WebhookRefused as error:
        return Outcome(sent=False, retry=False, detail=str(error))
    except httpcore.TimeoutException:
        return Outcome(sent=False, retry=True, detail=f"no complete answer within {deadline_s:g} s")
    except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as error:
        return Outcome(sent=False, retry=True, detail=f"{type(error).__name__}: {error}"[:300])


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every operation gets only what is left of the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("the attempt's deadline has passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, self._left(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """Connects only to addresses the policy allows, as resolved for this very connection."""

    def __init__(self, policy: WebhookPolicy, deadline: float, resolve: Resolver) -> None:
        self._inner = httpcore.SyncBackend()
        self._policy = policy
        self._deadline = deadline
        self._resolve = resolve

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = allowed_addresses(host, port, self._policy, self._resolve_by_deadline)
        error: Exception = httpcore.ConnectError(f"no address of {host} answered")
        for address in addresses:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ConnectTimeout("the attempt's deadline has passed")
            try:
                stream = self._inner.connect_tcp(
                    address, port, min(timeout or left, left), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failed:
                error = failed
                continue
            return _DeadlineStream(stream, self._deadline)
        raise error

    def _resolve_by_deadline(self, host: str, port: int) -> Sequence[str]:
        """The resolver's answer, or ``ConnectTimeout`` once the deadline passes: getaddrinfo
        cannot be interrupted, so it runs on a lookup thread that the attempt stops waiting for
        (a hung lookup holds that thread, never the sender)."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("the attempt's deadline has passed")
        lookup = _LOOKUPS.submit(self._resolve, host, port)
        try:
            return lookup.result(timeout=left)
        except FutureTimeout:
            raise httpcore.ConnectTimeout(f"resolving {host} outlasted the deadline") from None

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are not sent over Unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
