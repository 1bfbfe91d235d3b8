"""``UploadPool``: I/O work off the caller's thread, with back-pressure.

A worker renders faster than a slow store accepts images. An unbounded executor would queue
rendered images in memory without limit; this pool admits at most ``max_pending`` tasks (running
plus waiting) and makes ``submit`` block until one finishes. A slow store therefore slows the
worker down to the store's pace, and memory stays bounded by ``max_pending`` images.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import ParamSpec, TypeVar

from storage.objects import ObjectStore, StoredObject

DEFAULT_WORKERS = 8
"""Uploads are network-bound: eight threads keep an S3 endpoint busy without many connections."""

P = ParamSpec("P")
T = TypeVar("T")


class UploadPool:
    """A thread pool whose ``submit`` blocks while ``max_pending`` tasks are unfinished."""

    def __init__(
        self,
        max_workers: int = DEFAULT_WORKERS,
        *,
        max_pending: int | None = None,
        thread_name_prefix: str = "upload",
    ) -> None:
        """``max_pending`` defaults to twice ``max_workers``: every thread busy and one task
        waiting per thread, so a thread never idles while the caller produces the next one."""
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        self.max_workers = max_workers
        self.max_pending = max_pending if max_pending is not None else 2 * max_workers
        if self.max_pending < max_workers:
            raise ValueError(
                f"max_pending ({self.max_pending}) must be at least max_workers ({max_workers})"
            )
        self._slots = threading.BoundedSemaphore(self.max_pending)
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished yet (running or waiting for a thread)."""
        with self._lock:
            return self._pending

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a pool thread; blocks while the pool is full."""
        if self._closed:
            raise RuntimeError("UploadPool is closed")
        self._slots.acquire()
        try:
            future = self._executor.submit(fn, *args, **kwargs)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._pending += 1
        # Runs when the task finishes, fails or is cancelled, so a slot is never lost.
        future.add_done_callback(self._task_done)
        return future

    def put_png(
        self, store: ObjectStore, key: str, data: bytes, *, metadata: Mapping[str, str]
    ) -> Future[StoredObject]:
        """``store.put_png`` on a pool thread."""
        return self.submit(store.put_png, key, data, metadata=metadata)

    def close(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop accepting work; with ``wait``, return once running and queued tasks are done."""
        self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=cancel_pending)

    def __enter__(self) -> UploadPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _task_done(self, _future: Future[object]) -> None:
        with self._lock:
            self._pending -= 1
        self._slots.release()
