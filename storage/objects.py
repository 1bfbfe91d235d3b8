"""Object storage for images: one small interface, two backends, configured by one URL.

    ObjectStore           the interface here, with the key and digest helpers
    S3Store, LocalStore   its backends, in storage.s3 and storage.local
    open_store(url)       in storage.stores: the backend a URL names

Keys are relative to the store's prefix and deterministic per job
(``{submission_id}/{job_id}.{png|webp|jpg}``), so a retried upload overwrites the first attempt
instead of leaving a second copy. The caller hashes the bytes once (the encoder does, as it
writes them) and ``put`` takes that SHA-256: the S3 store sends it for the server to check, and
the recorded ``jobs.image_sha256`` is that same digest.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from core.errors import StoreUnavailable, UserError

log = logging.getLogger(__name__)

PNG_CONTENT_TYPE = "image/png"
PROBE_KEY = "_loopfree/probe"
"""Where ``ObjectStore.probe`` writes: outside every submission's folder (submission ids are
UUIDs), overwritten by each probe, so it is one small object however long an outage lasts."""
ACCESS_CHECK_PREFIX = "_loopfree/access-check/"
"""Where ``ObjectStore.verify_access`` writes, reads back and deletes one object per check."""


class InvalidStorageUrl(UserError):
    """The storage URL is neither ``s3://bucket[/prefix]`` nor ``file:///path``."""


class BucketNotFound(UserError):
    """The configured bucket does not exist."""


class StoreAccessDenied(UserError):
    """Credentials are missing or lack a permission the operation needs."""


class ObjectNotFound(UserError):
    """No object under that key or URI."""


class StoreRejected(UserError):
    """The store refused the request for a reason retrying will not fix."""


class UploadNotVerified(StoreUnavailable):
    """The store did not confirm it holds exactly the bytes sent; the upload should be retried."""


@dataclass(frozen=True)
class StoredObject:
    """Where an upload went and what it holds."""

    uri: str
    size: int
    sha256: str  # hex digest of the bytes, as recorded in ``jobs.image_sha256``


def job_key(
    submission_id: str, job_id: str, extension: str = "png", *, spread: bool = False
) -> str:
    """The store key of a job's image: ``{submission_id}/{job_id}.{extension}`` (under the store
    prefix). The extension follows the job's image format (``png``, ``webp``, ``jpg``).

    ``spread``: led by the job id's first two hex digits, ``{ab}/{submission_id}/...``. S3 serves
    about 3,500 PUTs a second per key prefix and splits its partitions by leading characters:
    256 evenly used leads let a fleet write far faster than one submission's folder could take.
    Job ids are hashes (``storage.submissions.job_id_for``), so the leads are even. Nobody has to
    guess a key: the row, the manifest and ``loopfree results`` carry each image's URI."""
    key = f"{submission_id}/{job_id}.{extension}"
    return f"{job_id[:2]}/{key}" if spread else key


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectStore(ABC):
    """A place to put images and get them back. Implementations are safe to share between threads.

    Methods that take ``uri_or_key`` accept either a key relative to the store (``sub/job.png``)
    or a full URI the store handed out (``s3://bucket/prefix/sub/job.png``).
    """

    #: The store's base URL, e.g. ``s3://bucket/prefix`` or ``file:///srv/outputs``.
    url: str
    #: Whether image keys lead with a hash (``job_key``'s ``spread``): for stores that rate-limit
    #: per key prefix (S3). A local folder keeps one readable folder per submission.
    spread_keys: bool = False

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        sha256: str,
        metadata: Mapping[str, str],
    ) -> StoredObject:
        """Store ``data`` under ``key`` (replacing what was there) and make sure it arrived
        intact. ``sha256`` is the caller's hex digest of ``data``; it is not computed again."""

    def put_png(self, key: str, data: bytes, *, metadata: Mapping[str, str]) -> StoredObject:
        """``put`` for PNG bytes the caller has not hashed (tests, benchmarks, tools)."""
        return self.put(
            key, data, content_type=PNG_CONTENT_TYPE, sha256=sha256_hex(data), metadata=metadata
        )

    def verify_access(self) -> None:
        """Write a probe object, read it back and compare: the bucket exists and the
        credentials may write and read (a worker checks this before it takes a job). Raises the
        store's one-line errors (``BucketNotFound``, ``StoreAccessDenied``, ``StoreUnavailable``)
        or ``StoreRejected`` if the bytes read back differ."""
        # A key of its own: workers starting together, or a paused worker's probe, would
        # otherwise overwrite each other's check between its write and its read.
        check = uuid.uuid4().hex
        key = f"{ACCESS_CHECK_PREFIX}{check}"
        data = f"loopfree access check {check}".encode()
        self.put(key, data, content_type="text/plain", sha256=sha256_hex(data), metadata={})
        try:
            if self.get(key) != data:
                raise StoreRejected(
                    f"the object store at {self.url} gave back other bytes than were written to "
                    f"{key}; check LOOPFREE_STORAGE_URL and that nothing rewrites objects"
                )
        finally:
            try:
                self.delete(key)
            except Exception:  # noqa: BLE001 - writing is what a worker needs, not deleting
                log.info("could not delete the access check %s; it is a few bytes", key)

    def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        """Store the file at ``path`` under ``key`` (exports write shards of up to a GB this
        way). Here: ``put`` of its bytes; a backend that can send a file in parts without
        holding it (S3) overrides this, so memory does not grow with the file."""
        data = path.read_bytes()
        return self.put(key, data, content_type=content_type, sha256=sha256_hex(data), metadata={})

    def probe(self) -> None:
        """Store a few bytes at ``PROBE_KEY``: does the store take writes again? A paused worker
        asks this with backoff during an outage (``worker.outage``). A write, not a read, because
        what the worker waits for is a working upload (a store can list but refuse writes).
        Raises ``StoreUnavailable`` while the store does not answer."""
        data = b"ok"
        self.put(PROBE_KEY, data, content_type="text/plain", sha256=sha256_hex(data), metadata={})

    @abstractmethod
    def get(self, uri_or_key: str) -> bytes:
        """The object's bytes; ``ObjectNotFound`` if there is none."""

    @abstractmethod
    def exists(self, uri_or_key: str) -> bool: ...

    @abstractmethod
    def delete(self, uri_or_key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys (relative to the store) that start with ``prefix``."""

    def submission_keys(self, submission_id: str) -> Iterator[str]:
        """The keys of a submission's images, wherever ``key_for`` put them: one listing per
        hex lead when keys are spread, else the submission's folder."""
        if not self.spread_keys:
            yield from self.list_keys(f"{submission_id}/")
            return
        for lead in range(256):
            yield from self.list_keys(f"{lead:02x}/{submission_id}/")

    @abstractmethod
    def presigned_url(self, uri_or_key: str, expires_s: int) -> str:
        """A URL anyone holding it can GET for ``expires_s`` seconds."""

    @abstractmethod
    def ensure_bucket(self) -> None:
        """Create the bucket or folder if it does not exist (development and tests)."""

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """The full URI of ``key``, as recorded in ``jobs.image_uri``."""

    def key_for(self, submission_id: str, job_id: str, extension: str = "png") -> str:
        """The key of a job's image; see ``job_key``."""
        return job_key(submission_id, job_id, extension, spread=self.spread_keys)

    def key_of(self, uri_or_key: str) -> str:
        """The key relative to this store of a key or of a URI this store handed out."""
        if "://" not in uri_or_key:
            return check_key(uri_or_key)
        base = self.url.rstrip("/") + "/"
        if not uri_or_key.startswith(base):
            raise InvalidStorageUrl(
                f"{uri_or_key} is not in the configured store {self.url}; set LOOPFREE_STORAGE_URL "
                "to the store that holds it."
            )
        return check_key(uri_or_key[len(base) :])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def check_key(key: str) -> str:
    """Refuse keys that could escape the store's prefix or folder."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\0" in key or ".." in parts or "" in parts:
        raise ValueError(f"invalid object key {key!r}: use relative 'a/b/c.png' style keys")
    return key
