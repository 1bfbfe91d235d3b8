"""The S3 backend against a real HTTP endpoint (moto server on loopback), including failures."""

from __future__ import annotations

import base64
import hashlib
import time
import urllib.request
import uuid
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from moto.server import ThreadedMotoServer

from core.errors import StoreUnavailable, UserError
from storage.objects import BucketNotFound, InvalidStorageUrl, ObjectNotFound, UploadNotVerified
from storage.s3 import S3Store, verify_put_reply
from storage.stores import open_store
from tests.conftest import free_port

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
METADATA = {"job-id": "0b8e1c1e-0000-5000-8000-000000000001", "seed": "42"}
FAST_FAILURE = {"max_attempts": 2, "connect_timeout_s": 1.0, "read_timeout_s": 2.0}


def raw_client(endpoint: str):  # noqa: ANN201 - a boto3 client, untyped
    """A plain boto3 client, to look at what the store wrote without going through it."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_keys_are_deterministic_per_job_under_the_store_prefix_led_by_a_hash(
    s3_store: S3Store,
) -> None:
    # S3 rate-limits PUTs per key prefix: keys lead with the job id's first two hex digits.
    job_id = "3f6b7e3c-7bb3-585a-b557-45d1b484609c"
    key = s3_store.key_for("sub-1", job_id)
    assert key == f"3f/sub-1/{job_id}.png"
    assert s3_store.uri_for(key) == f"s3://{s3_store.bucket}/outputs/3f/sub-1/{job_id}.png"


def test_keys_of_many_jobs_spread_over_many_leading_prefixes(s3_store: S3Store) -> None:
    from storage.submissions import job_id_for

    leads = {s3_store.key_for("sub", job_id_for("sub", n)).split("/")[0] for n in range(2000)}
    assert len(leads) == 256  # every two-hex-digit lead is used


def test_an_upload_is_a_private_png_carrying_job_id_seed_and_checksum(
    s3_store: S3Store, s3_server: str
) -> None:
    stored = s3_store.put_png("sub/job.png", PNG, metadata=METADATA)

    assert stored.size == len(PNG)
    assert stored.sha256 == hashlib.sha256(PNG).hexdigest()
    client = raw_client(s3_server)
    head = client.head_object(Bucket=s3_store.bucket, Key="outputs/sub/job.png")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {**METADATA, "sha256": stored.sha256}
    grants = client.get_object_acl(Bucket=s3_store.bucket, Key="outputs/sub/job.png")["Grants"]
    assert [grant["Permission"] for grant in grants] == ["FULL_CONTROL"]  # the owner only
    assert all("URI" not in grant["Grantee"] for grant in grants)  # no AllUsers / AuthUsers


def test_an_object_reads_back_by_uri_and_by_key(s3_store: S3Store) -> None:
    stored = s3_store.put_png("sub/job.png", PNG, metadata=METADATA)
    assert s3_store.get(stored.uri) == PNG
    assert s3_store.get("sub/job.png") == PNG
    assert s3_store.exists(stored.uri) and not s3_store.exists("sub/other.png")


def test_a_presigned_url_serves_the_bytes_and_expires(s3_store: S3Store) -> None:
    stored = s3_store.put_png("sub/job.png", PNG, metadata=METADATA)
    url = s3_store.presigned_url(stored.uri, 600)

    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == PNG
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["600"]
    assert "loopfree-test-secret" not in url  # signed with the secret, never carrying it


def test_a_presigned_url_cannot_outlive_seven_days(s3_store: S3Store) -> None:
    with pytest.raises(ValueError, match="seven days"):
        s3_store.presigned_url("sub/job.png", 8 * 24 * 3600)


def test_uploading_the_same_key_twice_leaves_one_object_with_the_new_bytes(
    s3_store: S3Store,
) -> None:
    s3_store.put_png("sub/job.png", b"first attempt", metadata=METADATA)
    s3_store.put_png("sub/job.png", PNG, metadata=METADATA)

    assert list(s3_store.list_keys()) == ["sub/job.png"]
    assert s3_store.get("sub/job.png") == PNG


def test_listing_and_deleting_work_under_the_prefix(s3_store: S3Store) -> None:
    for key in ("a/1.png", "a/2.png", "b/1.png"):
        s3_store.put_png(key, PNG, metadata=METADATA)
    assert sorted(s3_store.list_keys("a/")) == ["a/1.png", "a/2.png"]

    s3_store.delete("a/1.png")
    s3_store.delete("a/1.png")  # deleting twice is fine
    assert sorted(s3_store.list_keys()) == ["a/2.png", "b/1.png"]
    with pytest.raises(ObjectNotFound):
        s3_store.get("a/1.png")


def test_a_uri_of_another_bucket_is_refused(s3_store: S3Store) -> None:
    with pytest.raises(InvalidStorageUrl, match="not in the configured store"):
        s3_store.get("s3://someone-elses-bucket/outputs/sub/job.png")


def test_keys_that_could_escape_the_prefix_are_refused(s3_store: S3Store) -> None:
    for key in ("../secrets.png", "/abs.png", "a//b.png", ""):
        with pytest.raises(ValueError, match="invalid object key"):
            s3_store.put_png(key, PNG, metadata=METADATA)


def test_a_missing_bucket_is_a_user_error_that_names_the_fix(s3_server: str) -> None:
    store = open_store(f"s3://missing-{uuid.uuid4().hex[:8]}", endpoint_url=s3_server)
    with pytest.raises(BucketNotFound, match="does not exist") as caught:
        store.put_png("sub/job.png", PNG, metadata=METADATA)
    assert isinstance(caught.value, UserError)
    assert "LOOPFREE_STORAGE_URL" in str(caught.value)


def test_a_closed_port_is_reported_as_store_unavailable_quickly(s3_env: dict[str, str]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_store("s3://bucket/outputs", endpoint_url=endpoint, **FAST_FAILURE)

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable") as caught:
        store.put_png("sub/job.png", PNG, metadata=METADATA)

    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert endpoint in message
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in message


def test_a_server_that_goes_away_turns_uploads_into_store_unavailable(s3_env: object) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    store = open_store(
        "s3://vanishing/outputs", endpoint_url=f"http://{host}:{port}", **FAST_FAILURE
    )
    store.ensure_bucket()
    store.put_png("sub/before.png", PNG, metadata=METADATA)

    server.stop()

    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.put_png("sub/after.png", PNG, metadata=METADATA)
    assert time.monotonic() - started < 10


def test_a_reply_that_does_not_prove_the_bytes_is_not_accepted() -> None:
    md5, sha256 = hashlib.md5(PNG).digest(), hashlib.sha256(PNG).digest()
    verify_put_reply({"ETag": f'"{md5.hex()}"'}, md5=md5, sha256=sha256, where="x")
    # Where the ETag is not an MD5 (SSE-KMS), the server's own SHA-256 checksum must match.
    checksum = base64.b64encode(sha256).decode()
    verify_put_reply(
        {"ETag": '"kms"', "ChecksumSHA256": checksum}, md5=md5, sha256=sha256, where="x"
    )
    with pytest.raises(UploadNotVerified, match="retry"):
        verify_put_reply({"ETag": '"0123abcd"'}, md5=md5, sha256=sha256, where="x")
    with pytest.raises(UploadNotVerified):
        verify_put_reply({}, md5=md5, sha256=sha256, where="x")


def test_storage_urls_that_name_no_store_are_user_errors() -> None:
    for url in ("s3://", "ftp://host/path", "/plain/path", "file://server/share"):
        with pytest.raises(InvalidStorageUrl):
            open_store(url)


def test_a_submissions_spread_keys_are_found_under_every_lead(s3_store: S3Store) -> None:
    assert s3_store.spread_keys  # S3 keys lead with the job id's first two hex digits
    mine = [s3_store.key_for("sub-a", job) for job in ("00aa", "7fbb", "ffcc")]
    other = s3_store.key_for("sub-b", "7fdd")
    for key in (*mine, other):
        s3_store.put_png(key, PNG, metadata=METADATA)

    assert mine[0] == "00/sub-a/00aa.png"
    assert sorted(s3_store.submission_keys("sub-a")) == sorted(mine)


def test_workers_checking_the_store_at_once_do_not_spoil_each_others_check(
    s3_store: S3Store,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from storage.objects import ACCESS_CHECK_PREFIX

    def check_and_probe(_: int) -> None:
        s3_store.verify_access()  # as a worker does at start
        s3_store.probe()  # as a paused worker does, on the shared probe key

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(check_and_probe, range(32)))
    assert not list(s3_store.list_keys(ACCESS_CHECK_PREFIX))  # each check cleans up after itself
