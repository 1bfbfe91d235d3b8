"""The local-folder backend: the embedded default object store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from storage.local import LocalStore
from storage.objects import InvalidStorageUrl, ObjectNotFound
from storage.stores import open_store

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 1000


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    opened = open_store((tmp_path / "my outputs").as_uri())  # a space, percent-encoded in the URI
    assert isinstance(opened, LocalStore)
    return opened


def test_an_image_is_written_verified_and_read_back_by_uri(store: LocalStore) -> None:
    stored = store.put_png(store.key_for("sub", "job"), PNG, metadata={"seed": "1"})

    assert stored.uri == (store.root / "sub" / "job.png").as_uri()
    assert (stored.size, stored.sha256) == (len(PNG), hashlib.sha256(PNG).hexdigest())
    assert (store.root / "sub" / "job.png").read_bytes() == PNG
    assert store.get(stored.uri) == PNG and store.get("sub/job.png") == PNG


def test_a_rewrite_replaces_the_file_and_leaves_no_temporary_files(store: LocalStore) -> None:
    store.put_png("sub/job.png", b"first attempt", metadata={})
    store.put_png("sub/job.png", PNG, metadata={})

    assert [p.name for p in (store.root / "sub").iterdir()] == ["job.png"]
    assert list(store.list_keys()) == ["sub/job.png"]
    assert store.get("sub/job.png") == PNG


def test_listing_skips_partial_writes_and_filters_by_prefix(store: LocalStore) -> None:
    store.put_png("a/1.png", PNG, metadata={})
    store.put_png("b/1.png", PNG, metadata={})
    (store.root / "a" / ".2.png.x1y2.partial").write_bytes(b"half")  # a crashed writer's leftover

    assert list(store.list_keys()) == ["a/1.png", "b/1.png"]
    assert list(store.list_keys("b/")) == ["b/1.png"]


def test_missing_objects_are_reported_and_deleting_them_is_fine(store: LocalStore) -> None:
    assert not store.exists("sub/none.png")
    with pytest.raises(ObjectNotFound, match="No image"):
        store.get("sub/none.png")
    store.delete("sub/none.png")


def test_keys_cannot_escape_the_folder(store: LocalStore) -> None:
    for key in ("../escape.png", "/etc/passwd", "a/../../b.png"):
        with pytest.raises(ValueError, match="invalid object key"):
            store.put_png(key, PNG, metadata={})
    assert not (store.root.parent / "escape.png").exists()


def test_the_presigned_url_of_a_folder_is_its_file_uri(store: LocalStore) -> None:
    stored = store.put_png("sub/job.png", PNG, metadata={})
    assert store.presigned_url(stored.uri, 60) == stored.uri


def test_ensure_bucket_creates_the_folder(tmp_path: Path) -> None:
    store = open_store((tmp_path / "new" / "outputs").as_uri())
    store.ensure_bucket()
    assert (tmp_path / "new" / "outputs").is_dir()


def test_a_uri_outside_the_folder_is_refused(store: LocalStore) -> None:
    with pytest.raises(InvalidStorageUrl, match="not in the configured store"):
        store.get("file:///etc/passwd")
