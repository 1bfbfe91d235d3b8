"""Thumbnails for the web view: 256 px WebP, made on first request and cached on local disk.

Why a cache folder under ``LOOPFREE_HOME`` (``cache/thumbs/``) and not an object next to the image:

- the web view stays read-only towards the shared system: it needs read access to the store and
  the database, never write access (a leaked UI token can't write anywhere either);
- the store keeps exactly one object per job, as the workers and ``results --download`` expect;
- the cache is disposable: delete the folder at any time, thumbnails come back on demand.

The file name carries the job id and the first 16 hex digits of the image's SHA-256, so a job
rendered again (requeued after a failure) gets a new thumbnail instead of a stale one. A WebP of
256 px is 5-20 KB, so 100,000 thumbnails take about a gigabyte.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from status.sheets import fit_thumbnail

THUMB_PX = 256
WEBP_QUALITY = 80
HASH_PREFIX_CHARS = 16
"""Hex digits of the image's SHA-256 in a thumbnail's file name (and in its URL's ``?v=``)."""


class ThumbnailCache:
    """Thumbnail files in ``folder``; safe to share between request threads and processes
    (a file is written under a temporary name and renamed into place, so a reader sees the whole
    thumbnail or none, and two requests making the same one both leave a good file)."""

    def __init__(self, folder: Path, size: int = THUMB_PX) -> None:
        self.folder = folder
        self.size = size

    def path_for(self, job_id: str, image_sha256: str | None) -> Path:
        """The file of a job's thumbnail; ``image_sha256`` may be the hash or its prefix."""
        digest = (image_sha256 or "unknown")[:HASH_PREFIX_CHARS]
        return self.folder / job_id[:2] / f"{job_id}-{digest}-{self.size}.webp"

    def get(self, job_id: str, image_sha256: str | None) -> bytes | None:
        """The cached thumbnail's bytes, or None if it was not made yet."""
        try:
            return self.path_for(job_id, image_sha256).read_bytes()
        except FileNotFoundError:
            return None

    def make(self, job_id: str, image_sha256: str | None, image: bytes) -> bytes:
        """Scale ``image`` (PNG bytes) down to a WebP thumbnail, cache it and return it."""
        picture = fit_thumbnail(image, self.size)
        buffer = io.BytesIO()
        picture.save(buffer, "WEBP", quality=WEBP_QUALITY, method=4)
        data = buffer.getvalue()
        path = self.path_for(job_id, image_sha256)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".thumb-", suffix=".partial")
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temp, path)
        except OSError:
            pass  # a read-only or full disk costs a re-render next time, not the response
        return data
