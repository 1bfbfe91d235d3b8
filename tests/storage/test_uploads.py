"""``UploadPool``: background uploads with a hard bound on work in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from core.errors import StoreUnavailable
from storage.local import LocalStore
from storage.objects import StoredObject
from storage.s3 import S3Store
from storage.uploads import UploadPool

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 2048


class SlowStore(LocalStore):
    """A real local store whose writes take ``delay_s``, counting how many run at once."""

    def __init__(self, root: Path, delay_s: float) -> None:
        super().__init__(root)
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.active = 0
        self.most_active = 0

    def put_png(self, key: str, data: bytes, *, metadata: Mapping[str, str]) -> StoredObject:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            time.sleep(self.delay_s)
            return super().put_png(key, data, metadata=metadata)
        finally:
            with self.lock:
                self.active -= 1


def test_a_slow_store_never_has_more_uploads_in_flight_than_the_bound(tmp_path: Path) -> None:
    store = SlowStore(tmp_path, delay_s=0.05)
    most_pending = 0
    with UploadPool(max_workers=2, max_pending=3) as pool:
        futures = []
        for i in range(12):
            futures.append(pool.put_png(store, f"sub/{i}.png", PNG, metadata={}))
            most_pending = max(most_pending, pool.pending)
        results = [future.result(timeout=10) for future in futures]

    assert most_pending <= 3
    assert store.most_active == 2
    assert sorted(store.list_keys()) == sorted(f"sub/{i}.png" for i in range(12))
    assert {result.size for result in results} == {len(PNG)}


def test_submit_blocks_while_the_pool_is_full_and_resumes_when_a_slot_frees() -> None:
    release = threading.Event()
    returned = threading.Event()
    with UploadPool(max_workers=1, max_pending=1) as pool:
        first = pool.submit(release.wait, 10)

        def submit_second() -> None:
            pool.submit(lambda: "second").result(timeout=10)
            returned.set()

        submitter = threading.Thread(target=submit_second)
        submitter.start()
        assert not returned.wait(0.3), "submit returned although the pool was full"
        release.set()
        assert returned.wait(5), "submit stayed blocked after a slot was freed"
        submitter.join()
        assert first.result() is True


def test_a_failed_upload_reaches_the_caller_and_frees_its_slot() -> None:
    def refuse() -> None:
        raise StoreUnavailable("endpoint down")

    with UploadPool(max_workers=1, max_pending=1) as pool:
        with pytest.raises(StoreUnavailable, match="endpoint down"):
            pool.submit(refuse).result(timeout=5)
        assert pool.submit(lambda: 7).result(timeout=5) == 7  # the slot came back
        assert pool.pending == 0


def test_closing_waits_for_queued_uploads_and_refuses_new_ones(tmp_path: Path) -> None:
    store = SlowStore(tmp_path, delay_s=0.02)
    pool = UploadPool(max_workers=1, max_pending=4)
    futures = [pool.put_png(store, f"k/{i}.png", PNG, metadata={}) for i in range(4)]
    pool.close()
    assert all(future.done() for future in futures)
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(print)


def test_the_pool_uploads_to_s3_concurrently(s3_store: S3Store) -> None:
    with UploadPool(max_workers=4) as pool:
        futures = [
            pool.put_png(s3_store, f"sub/{i}.png", PNG, metadata={"seed": str(i)})
            for i in range(16)
        ]
        uris = [future.result(timeout=30).uri for future in futures]
    assert len(set(uris)) == 16
    assert sorted(s3_store.list_keys("sub/")) == sorted(f"sub/{i}.png" for i in range(16))


def test_a_pool_smaller_than_its_threads_is_refused() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        UploadPool(max_workers=4, max_pending=2)
