"""Hash once: a store takes the caller's SHA-256 instead of hashing the bytes again. S3 sends it
as the only checksum (no Content-MD5) and accepts the upload when the reply's checksum is ours."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from storage.local import LocalStore
from storage.objects import UploadNotVerified
from storage.s3 import S3Store, verify_put_reply

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 32
DIGEST = hashlib.sha256(JPEG).hexdigest()


def test_s3_sends_the_callers_sha256_only_and_checks_the_reply(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[dict[str, Any]] = []
    replies: list[dict[str, Any]] = []
    put_object = s3_store._client.put_object

    def spy(**kwargs: Any) -> dict[str, Any]:
        sent.append(kwargs)
        replies.append(put_object(**kwargs))
        return replies[-1]

    monkeypatch.setattr(s3_store._client, "put_object", spy)
    stored = s3_store.put(
        "sub/job.jpg", JPEG, content_type="image/jpeg", sha256=DIGEST, metadata={"seed": "1"}
    )

    assert stored.sha256 == DIGEST and stored.size == len(JPEG)
    assert "ContentMD5" not in sent[0]
    checksum = base64.b64encode(bytes.fromhex(DIGEST)).decode()
    assert sent[0]["ChecksumSHA256"] == checksum and sent[0]["ContentType"] == "image/jpeg"
    # The server (moto here) returned the checksum, so no MD5 fallback was needed.
    assert replies[0]["ChecksumSHA256"] == checksum
    assert s3_store.get("sub/job.jpg") == JPEG


def test_a_reply_checksum_that_is_not_ours_fails_even_with_a_matching_etag() -> None:
    sha256, md5 = hashlib.sha256(JPEG).digest(), hashlib.md5(JPEG).digest()
    other = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    with pytest.raises(UploadNotVerified, match="retry"):
        verify_put_reply(
            {"ETag": f'"{md5.hex()}"', "ChecksumSHA256": other}, sha256=sha256, where="x"
        )
    # A server that returns no checksum is checked by its ETag, when the caller computed an MD5.
    verify_put_reply({"ETag": f'"{md5.hex()}"'}, sha256=sha256, md5=md5, where="x")
    with pytest.raises(UploadNotVerified):
        verify_put_reply({"ETag": f'"{md5.hex()}"'}, sha256=sha256, where="x")


def test_the_local_store_records_the_callers_digest_without_reading_the_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "outputs")
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read back"))
    stored = store.put(
        store.key_for("sub", "job", "jpg"), JPEG, content_type="image/jpeg", sha256=DIGEST,
        metadata={},
    )
    monkeypatch.undo()
    assert stored.uri == (tmp_path / "outputs" / "sub" / "job.jpg").as_uri()
    assert stored.sha256 == DIGEST and store.get(stored.uri) == JPEG
    assert [path.name for path in (tmp_path / "outputs" / "sub").iterdir()] == ["job.jpg"]
