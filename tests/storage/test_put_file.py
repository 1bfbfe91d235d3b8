"""``ObjectStore.put_file``: a file stored whole without being held whole, on a folder and on
S3 (moto over HTTP), where a file larger than a part goes up as a multipart upload."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from storage import s3
from storage.local import LocalStore
from storage.objects import ObjectStore


def test_a_file_larger_than_a_part_goes_up_in_parts_and_comes_back_the_same(
    s3_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "FILE_PART_BYTES", 5 * 1024 * 1024)  # S3's smallest part
    data = os.urandom(11 * 1024 * 1024 + 17)  # three parts, the last a short one
    path = tmp_path / "shard.tar"
    path.write_bytes(data)
    stored = s3_store.put_file("exports/00000.tar", path, content_type="application/x-tar")
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert s3_store.get("exports/00000.tar") == data
    head = s3_store._client.head_object(  # noqa: SLF001 - what the server keeps
        Bucket=s3_store.bucket, Key=f"{s3_store.prefix}/exports/00000.tar"
    )
    assert head["ContentType"] == "application/x-tar"
    assert head["Metadata"]["sha256"] == stored.sha256
    assert "-3" in head["ETag"]  # a multipart upload's ETag names its part count


def test_a_folder_store_keeps_the_file_s_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    path = tmp_path / "file.parquet"
    path.write_bytes(b"PAR1 not really")
    stored = store.put_file("a/file.parquet", path, content_type="application/octet-stream")
    assert store.get(stored.uri) == b"PAR1 not really"
