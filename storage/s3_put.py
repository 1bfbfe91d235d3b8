"""One S3 PutObject as a signed HTTP PUT: the request every rendered image makes, at a third of
boto3's CPU and a fifth of its GIL time.

``client.put_object`` costs 2-5 ms of CPU per call on the shared 2-core VM, most of it holding the
GIL (parameter validation, a dozen event hooks, serialization, response parsing), whatever the
size of the body: a worker that stores 150 images/s spends a core on it and caps its upload
threads at the GIL (bench/results/host.md has the side-by-side). ``SignedPut`` sends the same
request with the two pieces of botocore that do the work and nothing around them:

- botocore's SigV4 signer (``S3SigV4Auth``), with the payload hash set to the SHA-256 the encoder
  already computed: the body is not hashed a second time (boto3 hashes it again over plain HTTP);
- the boto3 client's own HTTP session, so the PUT uses the client's connection pool, timeouts,
  proxies and CA bundle: configuration for MinIO, R2 or GCS stays where it was.

Credentials come from the same boto3 session (environment, profile, SSO, instance role; refreshed
when they expire). The reply is returned as boto3's would be (``ETag``, ``ChecksumSHA256``), and
an error reply becomes the ``ClientError`` botocore would raise, so callers map both as before.
Retries follow botocore's "standard" mode: connection failures, timeouts, HTTP 5xx, 429 and the
transient S3 codes, with jittered exponential backoff capped at 20 s, each attempt signed anew.

Images are a few MB at most, far below S3's 5 GB single-PUT limit (R2 and GCS allow as much):
there is no multipart upload here. Other operations (get, list, delete, presign) stay on boto3.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

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
        headers = {
            "Content-Type": content_type,
            "x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(sha256)).decode("ascii"),
            # Naming the algorithm asks the server to return the checksum it checked.
            "x-amz-sdk-checksum-algorithm": "SHA256",
            **{f"x-amz-meta-{name}": value for name, value in metadata.items()},
        }
        url = self.url_for(object_key)
        for attempt in range(1, self.max_attempts + 1):
            request = AWSRequest("PUT", url, data=data, headers=headers)
            request.context["payload_sha256"] = sha256
            self._signer().add_auth(request)
            try:
                response = self._http.send(request.prepare())
            except SSLError:
                raise  # a certificate problem: retrying will not fix it
            except (BotoConnectionError, HTTPClientError):
                if attempt == self.max_attempts:
                    raise
                self._pause(attempt)
                continue
            if response.status_code < 300:
                return reply_of(response)
            error = error_of(response)
            code = error["Error"]["Code"]
            retryable = response.status_code in RETRYABLE_STATUS or code in RETRYABLE_CODES
            if not retryable or attempt == self.max_attempts:
                raise ClientError(error, "PutObject")  # type: ignore[arg-type]
            self._pause(attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _signer(self) -> _SignedDigest:
        if self._credentials is None:
            raise NoCredentialsError()
        # Frozen per request: refreshable credentials (roles, SSO) renew here when they expire.
        return _SignedDigest(self._credentials.get_frozen_credentials(), "s3", self.region)

    @staticmethod
    def _pause(attempt: int) -> None:
        time.sleep(random.random() * min(2.0**attempt, MAX_BACKOFF_S))


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


def reply_of(response: AWSResponse) -> dict[str, str]:
    """The fields of a PutObject reply that ``verify_put_reply`` reads, named as boto3 does."""
    reply = {"ETag": response.headers.get("ETag", "")}
    checksum = response.headers.get("x-amz-checksum-sha256")
    if checksum:
        reply["ChecksumSHA256"] = checksum
    return reply


def error_of(response: AWSResponse) -> dict[str, Any]:
    """An error reply as botocore's parsed error (``Error.Code``, ``Error.Message``, the HTTP
    status); a body that is not S3's XML (a proxy's HTML page) leaves the status as the code."""
    code, message = str(response.status_code), ""
    try:
        root = ElementTree.fromstring(response.content)
        code = root.findtext("Code") or code
        message = root.findtext("Message") or ""
    except ElementTree.ParseError:
        message = response.content[:200].decode("utf-8", "replace")
    return {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": response.status_code},
    }
