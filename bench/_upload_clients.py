"""The S3 upload clients compared by ``bench_host.py``, each as a ``put(key)`` of one encoded image
into one bucket of a local S3 endpoint, with the same content type, metadata and SHA-256 checksum
the store sends. A client whose package is missing is reported, not skipped silently.

- ``boto3 put_object`` (the store's upload until issue 20; ``TodaysS3Store`` keeps it for the
  whole-path baseline);
- ``boto3 + CRT``: s3transfer's CRT transfer manager (``awscrt``), the client boto3 uses for
  ``upload_fileobj`` with ``preferred_transfer_client="crt"``, pointed at the endpoint by hand:
  boto3's own CRT path (``boto3.crt``) ignores ``endpoint_url`` and forces TLS;
- ``obstore`` (Rust ``object_store``, the GIL released for the whole request), computing its own
  SHA-256 checksum (it takes no precomputed one);
- ``presigned PUT``: a URL from boto3's ``generate_presigned_url`` per image, PUT over a urllib3
  pool;
- ``signed PUT`` (``storage.s3_put.SignedPut``, the store's fallback where a proxy is configured);
- ``awscrt S3 client`` (``storage.s3_put.CrtPut``, the store's upload now).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Mapping
from typing import Any

from storage.objects import StoredObject
from storage.s3 import S3Store, verify_put_reply

Put = Callable[[str], object]


class TodaysS3Store(S3Store):
    """The S3 store with its upload as it was before issue 20: boto3's ``put_object``."""

    def put(self, key: str, data: bytes, *, content_type: str, sha256: str,
            metadata: Mapping[str, str]) -> StoredObject:  # fmt: skip
        object_key = self._object_key(key)
        digest = bytes.fromhex(sha256)
        with self._errors("uploading", object_key):
            reply = self._client.put_object(
                Bucket=self.bucket, Key=object_key, Body=data, ContentType=content_type,
                Metadata={**metadata, "sha256": sha256}, ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digest).decode(),
            )  # fmt: skip
        verify_put_reply(reply, sha256=digest, where=self.uri_for(key))
        return StoredObject(uri=self.uri_for(key), size=len(data), sha256=sha256)


def clients(endpoint: str, bucket: str, data: bytes, sha256: str) -> dict[str, Put | str]:
    """Each candidate's ``put(key)``, or why it cannot run here."""
    metadata = {"job-id": "0b8e1c1e-0000-5000-8000-000000000001", "seed": "42"}
    checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
    found: dict[str, Put | str] = {}
    store_args = {"endpoint_url": endpoint, "region": "us-east-1"}

    today = TodaysS3Store(bucket, "bench", **store_args)  # type: ignore[arg-type]
    found["boto3 put_object (before)"] = lambda key: today.put(
        key, data, content_type="image/png", sha256=sha256, metadata=metadata
    )
    found["boto3 + CRT (s3transfer)"] = _crt(endpoint, bucket, data, checksum, metadata)
    found["obstore"] = _obstore(endpoint, bucket, data, metadata)
    found["presigned PUT + urllib3"] = _presigned(today, data, checksum, metadata)
    for name, transport in (("signed PUT (ours, fallback)", "signed"),
                            ("awscrt S3 client (ours)", "crt")):  # fmt: skip
        ours = S3Store(bucket, "bench", transport=transport, **store_args)  # type: ignore[arg-type]
        found[name] = lambda key, ours=ours: ours.put(
            key, data, content_type="image/png", sha256=sha256, metadata=metadata
        )
    return found


def _crt(endpoint: str, bucket: str, data: bytes, checksum: str,
         metadata: Mapping[str, str]) -> Put | str:  # fmt: skip
    try:
        import awscrt  # noqa: F401
        import botocore.session
        from botocore.config import Config
        from s3transfer.crt import (
            BotocoreCRTCredentialsWrapper,
            BotocoreCRTRequestSerializer,
            CRTTransferManager,
            create_s3_crt_client,
        )
    except ImportError as exc:
        return f"not installed ({exc.name}): pip install -e '.[bench]'"
    session = botocore.session.get_session()
    credentials = BotocoreCRTCredentialsWrapper(session.get_credentials())
    provider = credentials.to_crt_credentials_provider()
    crt = create_s3_crt_client("us-east-1", provider, use_ssl=endpoint.startswith("https"))
    serializer = BotocoreCRTRequestSerializer(session, {
        "region_name": "us-east-1", "endpoint_url": endpoint,
        "config": Config(s3={"addressing_style": "path"})})  # fmt: skip
    manager = CRTTransferManager(crt, serializer)
    extra = {"ContentType": "image/png", "Metadata": dict(metadata), "ChecksumSHA256": checksum}

    def put(key: str) -> object:
        # The future returns None: the reply's checksum is not available to verify.
        args = {**extra, "Metadata": dict(metadata)}  # the manager adds to the dict it is given
        return manager.upload(io.BytesIO(data), bucket, f"bench/{key}", extra_args=args).result()

    return put


def _obstore(endpoint: str, bucket: str, data: bytes, metadata: Mapping[str, str]) -> Put | str:
    try:
        import obstore
        from obstore.store import S3Store as ObStore
    except ImportError as exc:
        return f"not installed ({exc.name}): pip install -e '.[bench]'"
    store = ObStore(
        bucket, endpoint=endpoint, region="us-east-1", virtual_hosted_style_request=False,
        client_options={"allow_http": True}, checksum_algorithm="sha256",
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    attributes: dict[str, str] = {"Content-Type": "image/png", **metadata}

    def put(key: str) -> object:
        return obstore.put(store, f"bench/{key}", data, attributes=attributes)  # type: ignore[arg-type]

    return put


def _presigned(store: S3Store, data: bytes, checksum: str, metadata: Mapping[str, str]) -> Put:
    import urllib3

    pool = urllib3.PoolManager(maxsize=64, retries=False)
    headers = {"Content-Type": "image/png", "x-amz-checksum-sha256": checksum,
               **{f"x-amz-meta-{k}": v for k, v in metadata.items()}}  # fmt: skip
    client: Any = store._client

    def put(key: str) -> object:
        url = client.generate_presigned_url("put_object", ExpiresIn=600, Params={
            "Bucket": store.bucket, "Key": f"bench/{key}", "ContentType": "image/png",
            "Metadata": dict(metadata), "ChecksumSHA256": checksum})  # fmt: skip
        reply = pool.request("PUT", url, body=data, headers=headers)
        if reply.status != 200:
            raise RuntimeError(f"presigned PUT failed: HTTP {reply.status} {reply.data[:200]!r}")
        return reply

    return put
