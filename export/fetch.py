"""Images fetched from the store in export order, a bounded number of requests at a time.

Jobs go in, ``Fetched`` items come out in the same order: with the image's bytes, as stored
(never decoded), or with the reason there is none. At most ``parallel`` fetches run at once and
at most ``2 x parallel`` images wait to be written, so memory does not grow with the export.
Every image's SHA-256 is checked against the one its worker recorded; an image that differs, or
is missing from the store, is left out and counted, never exported as if it were the job's.
A store that does not answer (after its own retries) stops the export: running it again resumes.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from export.samples import ExportJob
from storage.models import JobStatus
from storage.objects import ObjectNotFound, ObjectStore

DEFAULT_PARALLEL = 16
"""Fetches in flight: an S3 GET of a few hundred KB waits on latency, not bandwidth, so a
dozen or two in parallel fill a link that one at a time would leave idle."""
MAX_PARALLEL = 256

MISSING_OBJECT = "missing_object"
SHA256_MISMATCH = "sha256_mismatch"
FINISHED_AFTER_START = "finished_after_start"
FETCH_FAILURES = (MISSING_OBJECT, SHA256_MISMATCH)


@dataclass(frozen=True)
class Fetched:
    """One job of the export: its image's bytes, or why it has none in the export."""

    job: ExportJob
    data: bytes | None
    reason: str | None  # a job status (failed, queued, ...) or one of the reasons above


def exportable_reason(job: ExportJob, as_of: datetime) -> str | None:
    """Why ``job`` has no image to export as of the snapshot, or None if it has one."""
    if job.status is not JobStatus.SUCCEEDED or not job.image_uri:
        return job.status.value
    if job.finished_at is not None and job.finished_at > as_of:
        return FINISHED_AFTER_START
    return None


def fetch_in_order(
    store: ObjectStore,
    jobs: Iterable[ExportJob],
    *,
    as_of: datetime,
    parallel: int = DEFAULT_PARALLEL,
) -> Iterator[Fetched]:
    """``Fetched`` for every job, in the order of ``jobs``."""
    window: deque[tuple[ExportJob, Future[bytes] | None, str | None]] = deque()
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="export-fetch") as pool:
        try:
            for job in jobs:
                reason = exportable_reason(job, as_of)
                future = None if reason else pool.submit(store.get, job.image_uri or "")
                window.append((job, future, reason))
                while len(window) > 2 * parallel or (window and window[0][1] is None):
                    yield _settle(*window.popleft())
            while window:
                yield _settle(*window.popleft())
        finally:
            for _, future, _ in window:  # stopped early: do not wait for the rest
                if future is not None:
                    future.cancel()


def _settle(job: ExportJob, future: Future[bytes] | None, reason: str | None) -> Fetched:
    if future is None:
        return Fetched(job, None, reason)
    try:
        data = future.result()
    except ObjectNotFound:
        return Fetched(job, None, MISSING_OBJECT)
    if job.image_sha256 and hashlib.sha256(data).hexdigest() != job.image_sha256:
        return Fetched(job, None, SHA256_MISMATCH)
    return Fetched(job, data, None)
