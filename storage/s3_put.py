"""One S3 PutObject per image, sent without holding the GIL: the request every rendered image
makes, at a third of boto3's CPU and a small fraction of its GIL time.

``client.put_object`` costs 2-5 ms of CPU per call on the shared 2-core VM, most of it holding the
GIL (parameter validation, a dozen event hooks, serialization, response parsing), whatever the
size of the body; on a busy host the GIL holder is also preempted mid-call, so eight upload
threads queue for the GIL behind it (bench/results/host.md has the side-by-side). Two ways to send
the same request, both with the headers we choose (content type, metadata, the encoder's SHA-256
in ``x-amz-checksum-sha256`` and as the signed payload hash: the body is never hashed again):

- ``CrtPut`` (the default): the AWS Common Runtime's S3 client (``awscrt``, AWS's own C runtime,
  the engine of boto3's CRT transfers). Signing and sending run in its C threads; the calling
  thread only builds the request and waits, with the GIL released.
- ``SignedPut``: botocore's SigV4 signer and the boto3 client's own HTTP session (connection
  pool, proxies, CA bundle), a third of ``put_object``'s CPU but still Python on the GIL. Used
  where the CRT client cannot follow the configuration (a proxy) or awscrt is not installed.

A CA bundle named by ``AWS_CA_BUNDLE`` or ``REQUESTS_CA_BUNDLE`` is trusted by both.

Both take credentials from the boto3 session (environment, profile, SSO, instance role; renewed
when they expire), return the reply as boto3 would (``ETag``, ``ChecksumSHA256``) and turn an
error reply into the ``ClientError`` botocore would raise (a connection failure into botocore's
connection errors), so ``S3Store`` verifies and maps both as before. Both retry the same way
(``with_retries``, botocore's "standard" mode): connection failures, timeouts, HTTP 5xx, 429 and
the transient S3 codes, with jittered exponential backoff capped at 20 s.

Images are a few MB at most, far below S3's 5 GB single-PUT limit (R2 and GCS allow as much):
there is no multipart upload here. Other operations (get, list, delete, presign) stay on boto3.
"""

from __future__ import annotations

import base64
import concurrent.futures
import importlib.util
import io
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.utils import get_environ_proxies

MAX_BACKOFF_S = 20.0
"""botocore's standard-mode cap on one pause between attempts."""

RETRYABLE_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "InternalError",
        "ServiceUnavailable",
    }
)
"""S3 error codes that say "try again" (botocore's standard mode retries the same ones)."""

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

CRT_SERVER_ERRORS = {
    "AWS_ERROR_S3_INTERNAL_ERROR": (500, "InternalError"),
    "AWS_ERROR_S3_SLOW_DOWN": (503, "SlowDown"),
}
"""How awscrt reports an HTTP 5xx reply (its status and body are not kept): as the status and
code botocore's retry and our error mapping read."""


class Put(Protocol):
    """What ``S3Store.put`` needs of a transport."""

    def put(self, object_key: str, data: bytes, *, content_type: str, sha256: str,
            metadata: Mapping[str, str]) -> dict[str, str]: ...  # fmt: skip


Transport = Literal["auto", "crt", "signed"]


def new_put(
    client: Any,
    credentials: Credentials | None,
    bucket: str,
    *,
    max_attempts: int,
    connect_timeout_s: float,
    read_timeout_s: float,
    transport: Transport = "auto",
) -> Put:
    """The transport for ``client``'s uploads. ``auto``: ``CrtPut``, unless awscrt is missing or
    the endpoint is reached through a proxy (the CRT client takes no proxy settings); then
    ``SignedPut``, which uses the client's own HTTP session."""
    if transport == "auto":
        transport = "crt" if crt_available() and not uses_proxy(client) else "signed"
    if transport == "signed":
        return SignedPut(client, credentials, bucket, max_attempts=max_attempts)
    return CrtPut(client, credentials, bucket, max_attempts=max_attempts,
                  connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)  # fmt: skip


def crt_available() -> bool:
    """Whether awscrt is installed (found, not imported: the import costs ~0.1 s, paid by the
    first upload rather than by every command that opens the store)."""
    return importlib.util.find_spec("awscrt") is not None


def uses_proxy(client: Any) -> bool:
    """Whether boto3 would send ``client``'s requests through a proxy (its config or the
    environment's ``HTTP(S)_PROXY``, as botocore reads them)."""
    return bool(client.meta.config.proxies or get_environ_proxies(client.meta.endpoint_url))


def ca_bundle() -> str | None:
    """The CA bundle botocore would trust instead of the system's, from the environment."""
    return os.environ.get("AWS_CA_BUNDLE") or os.environ.get("REQUESTS_CA_BUNDLE") or None


def put_headers(content_type: str, sha256: str, metadata: Mapping[str, str]) -> dict[str, str]:
    """The PutObject headers both transports send (the signer adds its own)."""
    return {
        "Content-Type": content_type,
        "x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(sha256)).decode("ascii"),
        # Naming the algorithm asks the server to return the checksum it checked.
        "x-amz-sdk-checksum-algorithm": "SHA256",
        **{f"x-amz-meta-{name}": value for name, value in metadata.items()},
    }


class _SignedDigest(S3SigV4Auth):
    """SigV4 for S3 whose payload hash is the caller's SHA-256 of the body, not a new one."""

    def payload(self, request: AWSRequest) -> str:
        return str(request.context["payload_sha256"])


class SignedPut:
    """PutObject requests into ``bucket``, sent through ``client``'s HTTP session.

    ``client`` is a boto3 S3 client; its endpoint, region and addressing style decide the URL
    (path-style on an S3-compatible endpoint, virtual-hosted on AWS where the bucket name allows
    it, as botocore does). Thread-safe, like the client.
    """

    def __init__(self, client: Any, credentials: Credentials | None, bucket: str, *,
                 max_attempts: int) -> None:  # fmt: skip
        self.bucket = bucket
        self.max_attempts = max(1, max_attempts)
        self.region = client.meta.region_name or "us-east-1"
        self._credentials = credentials
        # The client's own pool: timeouts, proxies, CA bundle and connections shared with boto3.
        self._http = client._endpoint.http_session
        self._base = bucket_url(client.meta.endpoint_url, bucket, client.meta.config.s3)

    def url_for(self, object_key: str) -> str:
        """The object's URL; keys are percent-encoded as S3 expects ("/" and "~" kept)."""
        return f"{self._base}/{quote(object_key, safe='/~')}"

    def put(
        self,
        object_key: str,
        data: bytes,
        *,
        content_type: str,
        sha256: str,
        metadata: Mapping[str, str],
    ) -> dict[str, str]:
        """PUT ``data`` at ``object_key`` and return the reply as boto3 would (``ETag`` and, when
        the server returns one, ``ChecksumSHA256``). ``sha256`` is the hex digest of ``data``: it
        signs the payload and goes in ``x-amz-checksum-sha256`` for the server to check.

        Raises ``ClientError`` for an error reply (after retries, where retrying can help),
        botocore's connection errors when the endpoint does not answer, ``NoCredentialsError``
        when there are no credentials."""
        headers = put_headers(content_type, sha256, metadata)
        url = self.url_for(object_key)

        def attempt() -> dict[str, str]:
            request = AWSRequest("PUT", url, data=data, headers=headers)
            request.context["payload_sha256"] = sha256
            self._signer().add_auth(request)  # signed anew for each attempt
            response = self._http.send(request.prepare())
            if response.status_code >= 300:
                error = error_of(response.status_code, response.content)
                raise ClientError(error, "PutObject")  # type: ignore[arg-type]
            return reply_of(response.headers)

        return with_retries(attempt, self.max_attempts)

    def _signer(self) -> _SignedDigest:
        if self._credentials is None:
            raise NoCredentialsError()
        # Frozen per request: refreshable credentials (roles, SSO) renew here when they expire.
        return _SignedDigest(self._credentials.get_frozen_credentials(), "s3", self.region)


def with_retries(attempt: Callable[[], dict[str, str]], max_attempts: int) -> dict[str, str]:
    """``attempt()`` until it returns, at most ``max_attempts`` times, as botocore's standard
    retry mode would: again after a connection failure or timeout, HTTP 5xx or 429, or a
    transient S3 code, after a pause drawn from 0 to min(2^(n-1), 20) s after the n-th attempt
    (1, 2, 4, 8 s: at most 15 s over 5 attempts, as botocore); at once otherwise."""
    for number in range(1, max_attempts + 1):
        try:
            return attempt()
        except SSLError:
            raise  # a certificate problem: retrying will not fix it
        except (BotoConnectionError, HTTPClientError):
            if number == max_attempts:
                raise
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = exc.response.get("Error", {}).get("Code", "")
            retryable = status in RETRYABLE_STATUS or code in RETRYABLE_CODES
            if number == max_attempts or not retryable:
                raise
        time.sleep(random.random() * min(2.0 ** (number - 1), MAX_BACKOFF_S))
    raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")


class CrtPut:
    """PutObject requests into ``bucket`` through awscrt's S3 client, at ``client``'s endpoint
    (the URL ``SignedPut`` would use). One CRT client per process, made on first use, so a forked
    worker process never uses its parent's CRT threads."""

    def __init__(
        self,
        client: Any,
        credentials: Credentials | None,
        bucket: str,
        *,
        max_attempts: int,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self.bucket = bucket
        self.region = client.meta.region_name or "us-east-1"
        self.max_attempts = max(1, max_attempts)
        self.connect_timeout_s = connect_timeout_s
        # A bound on one attempt: the CRT client has no read timeout of its own.
        self.deadline_s = connect_timeout_s + read_timeout_s
        self._credentials = credentials
        self._base = bucket_url(client.meta.endpoint_url, bucket, client.meta.config.s3)
        base = urlsplit(self._base)
        self._host, self._path, self._tls = base.netloc, base.path, base.scheme == "https"
        self._lock = threading.Lock()
        self._crt: Any = None
        self._provider: Any = None
        self._crt_pid = 0

    def url_for(self, object_key: str) -> str:
        """The object's URL; keys are percent-encoded as S3 expects ("/" and "~" kept)."""
        return f"{self._base}/{quote(object_key, safe='/~')}"

    def put(
        self,
        object_key: str,
        data: bytes,
        *,
        content_type: str,
        sha256: str,
        metadata: Mapping[str, str],
    ) -> dict[str, str]:
        """As ``SignedPut.put``; the wait for the reply holds no GIL."""
        from awscrt.auth import AwsSignedBodyHeaderType, AwsSigningConfig
        from awscrt.exceptions import AwsCrtError
        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.s3 import S3RequestType, S3ResponseError

        crt, provider = self._client()
        headers = HttpHeaders([("Host", self._host), ("Content-Length", str(len(data))),
                               *put_headers(content_type, sha256, metadata).items()])  # fmt: skip
        path = f"{self._path}/{quote(object_key, safe='/~')}"
        signing = AwsSigningConfig(
            credentials_provider=provider,
            region=self.region,
            service="s3",
            # S3 signs the path as sent, and the payload hash is the encoder's digest.
            use_double_uri_encode=False,
            should_normalize_uri_path=False,
            signed_body_value=sha256,
            signed_body_header_type=AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
        )
        reply: dict[str, str] = {}

        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
            if status_code < 300:
                reply.update(reply_of({name.lower(): value for name, value in headers}))

        def attempt() -> dict[str, str]:
            request = HttpRequest("PUT", path, headers, io.BytesIO(data))
            sent = crt.make_request(
                type=S3RequestType.DEFAULT,
                operation_name="PutObject",
                request=request,
                signing_config=signing,  # signed by the CRT for each attempt
                on_headers=on_headers,
            )
            try:
                sent.finished_future.result(timeout=self.deadline_s)
            except concurrent.futures.TimeoutError as exc:
                sent.cancel()
                raise ReadTimeoutError(endpoint_url=self.url_for(object_key)) from exc
            except S3ResponseError as exc:
                error = error_of(int(exc.status_code or 0), exc.body or b"")
                raise ClientError(error, "PutObject") from exc  # type: ignore[arg-type]
            except AwsCrtError as exc:
                if exc.name in CRT_SERVER_ERRORS:  # a 5xx reply: the CRT keeps no status or body
                    status, code = CRT_SERVER_ERRORS[exc.name]
                    error = error_of(status, b"")
                    error["Error"] = {"Code": code, "Message": f"{exc.name}: {exc.message}"}
                    raise ClientError(error, "PutObject") from exc  # type: ignore[arg-type]
                # Refused, unreachable, reset, TLS: the connection failed.
                url = self.url_for(object_key)
                raise EndpointConnectionError(endpoint_url=url, error=exc) from exc
            return reply

        return with_retries(attempt, self.max_attempts)

    def _client(self) -> tuple[Any, Any]:
        """This process's CRT S3 client and credentials provider, made on first use."""
        if self._credentials is None:
            raise NoCredentialsError()
        with self._lock:
            if self._crt_pid != os.getpid():
                self._crt, self._provider = self._new_client()
                self._crt_pid = os.getpid()
            return self._crt, self._provider

    def _new_client(self) -> tuple[Any, Any]:
        from awscrt.auth import AwsCredentials, AwsCredentialsProvider
        from awscrt.io import (
            ClientBootstrap,
            ClientTlsContext,
            DefaultHostResolver,
            EventLoopGroup,
            TlsContextOptions,
        )
        from awscrt.s3 import S3Client, S3RequestTlsMode, S3RetryConfig, S3RetryMode

        credentials = self._credentials
        assert credentials is not None

        def current() -> AwsCredentials:
            # Frozen per signing: refreshable credentials (roles, SSO) renew here when they expire.
            frozen = credentials.get_frozen_credentials()
            return AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token)

        provider = AwsCredentialsProvider.new_delegate(current)
        loops = EventLoopGroup()
        tls_options = None
        if self._tls and ca_bundle():
            tls_context = TlsContextOptions()
            tls_context.override_default_trust_store_from_path(None, ca_bundle())
            tls_options = ClientTlsContext(tls_context).new_connection_options()
        crt = S3Client(
            bootstrap=ClientBootstrap(loops, DefaultHostResolver(loops)),
            region=self.region,
            tls_mode=S3RequestTlsMode.ENABLED if self._tls else S3RequestTlsMode.DISABLED,
            tls_connection_options=tls_options,
            credential_provider=provider,
            # Retries are ``with_retries``'s, the same for both transports (the CRT's own do not
            # retry HTTP 429, and count differently).
            retry_config=S3RetryConfig(retry_mode=S3RetryMode.NONE),
            connect_timeout_ms=int(self.connect_timeout_s * 1000),
        )
        return crt, provider


def bucket_url(endpoint_url: str, bucket: str, s3_config: Mapping[str, Any] | None) -> str:
    """The URL that object keys are appended to: ``{endpoint}/{bucket}`` (path-style), or
    ``https://{bucket}.{endpoint host}`` on AWS when the addressing style is not "path" and the
    bucket name is a plain DNS label (botocore's rule: names with dots break TLS wildcards)."""
    style = (s3_config or {}).get("addressing_style", "auto")
    parts = urlsplit(endpoint_url)
    virtual = (
        style != "path"
        and parts.hostname is not None
        and parts.hostname.startswith("s3")
        and parts.hostname.endswith((".amazonaws.com", ".amazonaws.com.cn"))
        and "." not in bucket
        and bucket == bucket.lower()
    )
    if virtual:
        return f"{parts.scheme}://{bucket}.{parts.netloc}"
    return f"{endpoint_url.rstrip('/')}/{bucket}"


def reply_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The fields of a PutObject reply that ``verify_put_reply`` reads, named as boto3 does.
    ``headers``: case-insensitive, or with lower-case names."""
    reply = {"ETag": headers.get("etag", "")}
    checksum = headers.get("x-amz-checksum-sha256")
    if checksum:
        reply["ChecksumSHA256"] = checksum
    return reply


def error_of(status: int, body: bytes) -> dict[str, Any]:
    """An error reply as botocore's parsed error (``Error.Code``, ``Error.Message``, the HTTP
    status); a body that is not S3's XML (a proxy's HTML page) leaves the status as the code."""
    code, message = str(status), ""
    try:
        root = ElementTree.fromstring(body)
        code = root.findtext("Code") or code
        message = root.findtext("Message") or ""
    except ElementTree.ParseError:
        message = body[:200].decode("utf-8", "replace")
    return {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
