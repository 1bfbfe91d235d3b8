"""Which object store a URL or the settings name: ``s3://bucket/prefix`` or ``file:///path``.

    open_store("s3://bucket/prefix", endpoint_url=..., region=...)   -> S3Store
    open_store("file:///srv/loopfree/outputs")                        -> LocalStore

The backends are imported when asked for: a command that reads a local folder never imports
boto3 (the CLI starts in well under a second). Kept apart from ``storage.objects`` so the
interface module imports no backend and the backends import only the interface.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from core.settings import Settings
from storage.objects import InvalidStorageUrl, ObjectStore


def store_for(settings: Settings) -> ObjectStore:
    """The object store the settings name (``LOOPFREE_STORAGE_URL`` and its S3 endpoint)."""
    return open_store(
        settings.resolved_storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    **s3_options: Any,
) -> ObjectStore:
    """The store for ``url``: ``s3://bucket[/prefix]`` or ``file:///absolute/path``.

    ``endpoint_url`` selects an S3-compatible service (MinIO, moto, R2); ``region`` its region.
    Credentials come from the standard AWS environment (variables, profile, instance role).
    ``s3_options`` (timeouts, retry attempts, pool size) go to ``S3Store``.
    """
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise InvalidStorageUrl(f"{url!r} has no bucket: use s3://bucket/prefix.")
        from storage.s3 import S3Store

        return S3Store(
            parts.netloc,
            parts.path.strip("/"),
            endpoint_url=endpoint_url,
            region=region,
            **s3_options,
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidStorageUrl(
                f"{url!r} names host {parts.netloc!r}: use file:///absolute/path (three slashes)."
            )
        from storage.local import LocalStore

        return LocalStore.from_url(url)
    raise InvalidStorageUrl(
        f"Unsupported storage URL {url!r}: use s3://bucket/prefix or file:///absolute/path."
    )
