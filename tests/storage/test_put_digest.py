"""Hash once: a store takes the caller's SHA-256 instead of hashing the bytes again. S3 sends it
as the only checksum (no Content-MD5), signs the payload with it, and accepts the upload when the
reply's checksum is ours."""

from __future__ import annotations

import base64
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from storage.local import LocalStore
from storage.objects import UploadNotVerified
from storage.s3 import verify_put_reply
from storage.stores import open_store
from tests.storage.s3_front import FaultFront

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 32
DIGEST = hashlib.sha256(JPEG).hexdigest()


@pytest.mark.parametrize("transport", ["crt", "signed"])
def test_s3_sends_the_callers_sha256_only_and_checks_the_reply(
    s3_server: str, transport: str
) -> None:
    front = FaultFront(s3_server)  # records the headers of every PUT, then passes it on
    store = open_store(f"s3://loopfree-{uuid.uuid4().hex[:12]}/outputs", endpoint_url=front.url,
                       region="us-east-1", transport=transport)  # fmt: skip
    store.ensure_bucket()
    try:
        stored = store.put(
            "sub/job.jpg", JPEG, content_type="image/jpeg", sha256=DIGEST, metadata={"seed": "1"}
        )
        assert store.get("sub/job.jpg") == JPEG
    finally:
        front.close()

    assert stored.sha256 == DIGEST and stored.size == len(JPEG)
    headers = front.put_headers[-1]
    assert "content-md5" not in headers
    checksum = base64.b64encode(bytes.fromhex(DIGEST)).decode()
    assert headers["x-amz-checksum-sha256"] == checksum
    assert headers["content-type"] == "image/jpeg"
    assert headers["x-amz-meta-seed"] == "1" and headers["x-amz-meta-sha256"] == DIGEST
    # The payload is signed with the caller's digest: the body is not hashed a second time.
    assert headers["x-amz-content-sha256"] == DIGEST
    assert "x-amz-content-sha256" in headers["authorization"]


@pytest.mark.parametrize("transport", ["crt", "signed"])
def test_the_put_never_hashes_the_body_again(
    s3_server: str, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = f"s3://loopfree-{uuid.uuid4().hex[:12]}/outputs"
    s3_store = open_store(bucket, endpoint_url=s3_server, region="us-east-1", transport=transport)
    s3_store.ensure_bucket()
    # SigV4 hashes its small canonical request; a hash of the image itself would be a second one.
    real_sha256 = hashlib.sha256

    def sha256_of_small_things(data: bytes = b"", **kwargs: Any) -> Any:
        assert len(data) < len(JPEG), "the image was hashed a second time"
        return real_sha256(data, **kwargs)

    monkeypatch.setattr("botocore.auth.sha256", sha256_of_small_things)
    monkeypatch.setattr("hashlib.sha256", sha256_of_small_things)
    stored = s3_store.put("sub/again.jpg", JPEG, content_type="image/jpeg", sha256=DIGEST,
                          metadata={})  # fmt: skip
    monkeypatch.undo()
    assert stored.sha256 == DIGEST and s3_store.get("sub/again.jpg") == JPEG


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
