"""S3-compatible object store (AWS S3, MinIO, Cloudflare R2, GCS's S3 API, moto) through boto3.

Uploads (``put``, once per image) go through awscrt's S3 client, which signs, sends and retries
with the GIL released (``storage.s3_put``): boto3's ``put_object`` cost three times the CPU, most
of it holding the GIL. Everything else goes through boto3.

Uploads are verified, not trusted, and hashed once: each PUT carries ``x-amz-checksum-sha256`` of
the bytes, the digest the caller computed when it encoded them (it also signs the payload; a
server that checks it rejects a corrupted body with ``BadDigest``), and the reply must prove the
server holds those bytes: the
SHA-256 checksum it returns (AWS S3, MinIO, R2 and moto do) must equal ours. Only a server that
returns no checksum costs an MD5, computed then, to compare with its ETag (the server's own MD5
of a single-part, non-KMS upload). Otherwise ``UploadNotVerified`` (retryable) is raised. No
``Content-MD5`` is sent: it was a second hash of every image for a check the SHA-256 already does.

Objects are private (no ACL is sent, so the bucket's default, private, applies); share them with
presigned GET URLs that expire.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from core.errors import StoreUnavailable
from core.settings import mask_url
from storage.objects import (
    BucketNotFound,
    ObjectNotFound,
    ObjectStore,
    StoreAccessDenied,
    StoredObject,
    StoreRejected,
    UploadNotVerified,
    check_key,
)
from storage.s3_put import Transport, new_put

MAX_ATTEMPTS = 5
"""Attempts per request in botocore's "standard" retry mode (exponential backoff with jitter; the
signed PUT retries the same way); together with the timeouts below a dead endpoint is reported
within about a minute."""

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
MAX_POOL_CONNECTIONS = 64
"""HTTP connections per client: more than any upload pool we size, so no thread waits for one."""

FILE_PART_BYTES = 16 * 1024 * 1024
FILE_PART_CONCURRENCY = 4
"""``put_file`` sends files larger than one part as a multipart upload of parts this size, this
many at once: 64 MiB in flight at most, whatever the file's size."""

MAX_PRESIGN_S = 7 * 24 * 3600
"""SigV4 presigned URLs cannot live longer than seven days."""

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_RETRYABLE = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


class S3Store(ObjectStore):
    """Objects in ``bucket`` under ``prefix``; URIs are ``s3://bucket/prefix/key``."""

    spread_keys = True  # S3 rate-limits PUTs per key prefix (storage.objects.job_key)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_pool_connections: int = MAX_POOL_CONNECTIONS,
        transport: Transport = "auto",
    ) -> None:
        """``transport``: how uploads are sent (``storage.s3_put.new_put``); the others are
        botocore's settings (the signed PUT's and the CRT client's too)."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.region = region
        self.endpoint_label = mask_url(endpoint_url) if endpoint_url else "AWS S3"
        config = Config(
            region_name=region,
            signature_version="s3v4",
            # Path-style (endpoint/bucket/key) works with every S3-compatible server and needs no
            # wildcard DNS; on AWS itself, let botocore choose virtual-hosted style.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            max_pool_connections=max_pool_connections,
            # We send our own SHA-256; botocore's default extra CRC32 (in an aws-chunked trailer)
            # is rejected by some S3-compatible servers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client, credentials = _new_client(endpoint_url, config)
        self._put = new_put(
            self._client,
            credentials,
            bucket,
            max_attempts=max_attempts,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            transport=transport,
        )

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        sha256: str,
        metadata: Mapping[str, str],
    ) -> StoredObject:
        object_key = self._object_key(key)
        digest = bytes.fromhex(sha256)
        with self._errors("uploading", object_key):
            reply = self._put.put(
                object_key,
                data,
                content_type=content_type,
                sha256=sha256,
                metadata={**metadata, "sha256": sha256},
            )
        md5 = None
        if "ChecksumSHA256" not in reply:  # a server that does not echo checksums: its ETag
            md5 = hashlib.md5(data, usedforsecurity=False).digest()
        verify_put_reply(reply, md5=md5, sha256=digest, where=self.uri_for(key))
        return StoredObject(uri=self.uri_for(key), size=len(data), sha256=sha256)

    def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        """The file at ``path``, sent by boto3's managed transfer: a multipart upload of
        ``FILE_PART_BYTES`` parts, a few at a time, each checked by the server against the
        SHA-256 sent with it, so a file of any size costs a few parts of memory. The reply of a
        multipart upload holds no checksum of the whole, so the object's size is read back."""
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig

        object_key = self._object_key(key)
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        size = path.stat().st_size
        transfer = TransferConfig(
            multipart_threshold=FILE_PART_BYTES,
            multipart_chunksize=FILE_PART_BYTES,
            max_concurrency=FILE_PART_CONCURRENCY,
        )
        extra = {
            "ContentType": content_type,
            "Metadata": {"sha256": digest.hexdigest()},
            "ChecksumAlgorithm": "SHA256",
        }
        with self._errors("uploading", object_key):
            try:
                self._client.upload_file(
                    str(path), self.bucket, object_key, ExtraArgs=extra, Config=transfer
                )
            except S3UploadFailedError as exc:  # boto3 wraps the ClientError of a failed part
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, ClientError | BotoCoreError):
                    raise cause from exc
                raise
            stored = self._client.head_object(Bucket=self.bucket, Key=object_key)
        if stored.get("ContentLength") != size:
            raise UploadNotVerified(
                f"The store holds {stored.get('ContentLength')} bytes at {self.uri_for(key)} "
                f"after an upload of {size}; retry the upload."
            )
        return StoredObject(uri=self.uri_for(key), size=size, sha256=digest.hexdigest())

    def get(self, uri_or_key: str) -> bytes:
        object_key = self._object_key(self.key_of(uri_or_key))
        with self._errors("downloading", object_key):
            reply = self._client.get_object(Bucket=self.bucket, Key=object_key)
            return reply["Body"].read()

    def exists(self, uri_or_key: str) -> bool:
        object_key = self._object_key(self.key_of(uri_or_key))
        try:
            with self._errors("checking", object_key):
                self._client.head_object(Bucket=self.bucket, Key=object_key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, uri_or_key: str) -> None:
        object_key = self._object_key(self.key_of(uri_or_key))
        with self._errors("deleting", object_key):
            self._client.delete_object(Bucket=self.bucket, Key=object_key)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors("listing", base + prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", []):
                    yield item["Key"][len(base) :]

    def presigned_url(self, uri_or_key: str, expires_s: int) -> str:
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise ValueError(f"expires_s must be 1..{MAX_PRESIGN_S} (seven days), not {expires_s}")
        object_key = self._object_key(self.key_of(uri_or_key))
        with self._errors("signing", object_key):
            return self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": object_key},
                ExpiresIn=expires_s,
            )

    def ensure_bucket(self) -> None:
        try:
            with self._errors("checking bucket", ""):
                self._client.head_bucket(Bucket=self.bucket)
            return
        except (BucketNotFound, ObjectNotFound):
            pass  # head_bucket reports a missing bucket as a bare 404
        arguments: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            # us-east-1 is the default and rejects an explicit LocationConstraint.
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            with self._errors("creating bucket", ""):
                self._client.create_bucket(**arguments)
        except StoreRejected as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):  # another process won the race
                raise

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, action: str, object_key: str) -> Iterator[None]:
        """botocore errors -> our error tree, with messages that name the fix and no secrets."""
        where = f"s3://{self.bucket}/{object_key} at {self.endpoint_label}"
        try:
            yield
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreAccessDenied(
                f"No usable AWS credentials for {action} {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)."
            ) from exc
        except ClientError as exc:
            raise self._client_error(exc, action, where) from exc
        except BotoCoreError as exc:
            # Connection refused, DNS failure, timeouts: what is left after botocore's retries.
            raise StoreUnavailable(
                f"Object store unreachable while {action} {where}: {exc}. Check that it is "
                "running and that the endpoint URL is right; the upload can be retried."
            ) from exc

    def _client_error(self, exc: ClientError, action: str, where: str) -> Exception:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        detail = f"{code}: {error.get('Message', '')}".strip(": ")
        if code == "NoSuchBucket" or (status == 404 and action.endswith("bucket")):
            return BucketNotFound(
                f"Bucket {self.bucket!r} does not exist at {self.endpoint_label}. Create it "
                f"(e.g. `aws s3 mb s3://{self.bucket}`) or fix LOOPFREE_STORAGE_URL."
            )
        if code in _DENIED or status == 403:
            return StoreAccessDenied(
                f"Access denied {action} {where} ({detail}). Check the credentials and that "
                "they allow s3:PutObject, s3:GetObject and s3:ListBucket on the bucket."
            )
        if code in _NOT_FOUND or status == 404:
            return ObjectNotFound(f"No object at {where}.")
        if code in ("BadDigest", "InvalidDigest"):
            return UploadNotVerified(f"The store rejected a corrupted upload to {where}; retry it.")
        if status >= 500 or status == 429 or code in _RETRYABLE:
            return StoreUnavailable(
                f"Object store failed while {action} {where} ({detail}, HTTP {status}) after "
                "retries; try again later."
            )
        return StoreRejected(f"Object store refused {action} {where}: {detail} (HTTP {status}).")


_session_lock = threading.Lock()
_session: boto3.session.Session | None = None


def _new_client(endpoint_url: str | None, config: Config) -> tuple[Any, Credentials | None]:
    """An S3 client from one process-wide session, and the session's credentials (the ones the
    client signs with; None when there are none). Creating clients is not thread-safe (hence the
    lock); sharing the session shares its parsed service models, which makes a client cost ~30 ms
    instead of ~300 ms. The client itself is thread-safe."""
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        client = _session.client("s3", endpoint_url=endpoint_url, config=config)
        return client, _session.get_credentials()


def verify_put_reply(
    reply: Mapping[str, Any], *, sha256: bytes, where: str, md5: bytes | None = None
) -> None:
    """Raise ``UploadNotVerified`` unless the PutObject reply proves the server got our bytes:
    its SHA-256 checksum equals ours, or (``md5`` given, for servers that return no checksum)
    its ETag is the MD5 of the bytes sent."""
    if reply.get("ChecksumSHA256") == _b64(sha256):
        return  # servers that return it have checked it against the body
    etag = str(reply.get("ETag", "")).strip('"')
    if md5 is not None and etag == md5.hex():
        return  # the server's own MD5 of what it stored
    raise UploadNotVerified(
        f"The store did not confirm the upload of {where} (no matching SHA-256 checksum came "
        f"back, and ETag {etag!r} is not the MD5 of the bytes sent); retry the upload."
    )


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
