"""The signed PUT on errors: retried where S3 says "try again", mapped to the project's typed
errors where it will not help. A small HTTP front on loopback answers the PUTs it is told to
fail and passes every other request to the real S3 endpoint (moto) behind it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from core.errors import StoreUnavailable
from storage.objects import BucketNotFound, StoreAccessDenied, StoreRejected, UploadNotVerified
from storage.s3 import S3Store
from storage.s3_put import CrtPut, SignedPut, bucket_url
from storage.stores import open_store
from tests.storage.s3_front import FaultFront, s3_error

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64


@pytest.fixture(params=["crt", "signed"])
def front(s3_server: str, request: pytest.FixtureRequest) -> Iterator[tuple[FaultFront, S3Store]]:
    """A fault front before the moto server, and a store on a fresh bucket that talks to it,
    uploading through each transport in turn."""
    fault_front = FaultFront(s3_server)
    store = open_store(
        f"s3://loopfree-{uuid.uuid4().hex[:12]}/outputs",
        endpoint_url=fault_front.url,
        region="us-east-1",
        max_attempts=3,
        connect_timeout_s=2.0,
        read_timeout_s=10.0,
        transport=request.param,
    )
    assert isinstance(store._put, {"crt": CrtPut, "signed": SignedPut}[request.param])
    assert isinstance(store, S3Store)
    store.ensure_bucket()  # a PUT too (CreateBucket), forwarded
    fault_front.puts = 0
    yield fault_front, store
    fault_front.close()


@pytest.mark.parametrize(
    "refusals",
    [
        [(503, s3_error("SlowDown", "Reduce your request rate.")),
         (500, s3_error("InternalError", "We encountered an internal error."))],
        [(400, s3_error("RequestTimeout", "Your socket connection was not read from."))],
        [(429, b"")],
    ],
    ids=["slow-down-then-internal-error", "request-timeout", "too-many-requests"],
)  # fmt: skip
def test_a_put_that_s3_asks_to_try_again_is_retried_and_stored(
    front: tuple[FaultFront, S3Store], refusals: list[tuple[int, bytes]]
) -> None:
    fault_front, store = front
    fault_front.script = list(refusals)

    stored = store.put_png("sub/job.png", PNG, metadata={"seed": "1"})

    assert fault_front.puts == len(refusals) + 1  # the refusals, then the upload
    assert store.get(stored.uri) == PNG


def test_a_store_that_keeps_failing_is_unavailable_after_the_configured_attempts(
    front: tuple[FaultFront, S3Store],
) -> None:
    fault_front, store = front
    fault_front.script = [(502, b"<html>bad gateway</html>")] * 5

    with pytest.raises(StoreUnavailable, match="after retries"):
        store.put_png("sub/job.png", PNG, metadata={})

    assert fault_front.puts == 3  # max_attempts, not one more


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (403, "AccessDenied", StoreAccessDenied),
        (403, "SignatureDoesNotMatch", StoreAccessDenied),
        (404, "NoSuchBucket", BucketNotFound),
        (400, "BadDigest", UploadNotVerified),
        (400, "EntityTooLarge", StoreRejected),
    ],
)
def test_refusals_that_retrying_cannot_fix_are_typed_errors_after_one_attempt(
    front: tuple[FaultFront, S3Store], status: int, code: str, error: type[Exception]
) -> None:
    fault_front, store = front
    fault_front.script = [(status, s3_error(code, "refused by the test front"))]

    with pytest.raises(error):
        store.put_png("sub/job.png", PNG, metadata={})

    assert fault_front.puts == 1


def test_no_credentials_is_access_denied_naming_the_variables(
    front: tuple[FaultFront, S3Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_front, store = front
    monkeypatch.setattr(store._put, "_credentials", None)
    with pytest.raises(StoreAccessDenied, match="AWS_ACCESS_KEY_ID"):
        store.put_png("sub/job.png", PNG, metadata={})
    assert fault_front.puts == 0


def test_object_urls_are_path_style_on_endpoints_and_virtual_hosted_on_aws() -> None:
    path = {"addressing_style": "path"}
    assert bucket_url("http://127.0.0.1:9000", "images", path) == "http://127.0.0.1:9000/images"
    assert (
        bucket_url("https://acct.r2.cloudflarestorage.com", "images", path)
        == "https://acct.r2.cloudflarestorage.com/images"
    )
    aws = "https://s3.eu-west-1.amazonaws.com"
    assert bucket_url(aws, "images", None) == "https://images.s3.eu-west-1.amazonaws.com"
    # A dotted name cannot be a TLS-valid subdomain: path-style, as botocore does.
    assert bucket_url(aws, "my.images", None) == f"{aws}/my.images"
    assert bucket_url(aws, "images", path) == f"{aws}/images"


def test_keys_are_percent_encoded_in_the_url_and_stored_under_their_name(
    front: tuple[FaultFront, S3Store],
) -> None:
    _, store = front
    stored = store.put_png("sub dir/job+1.png", PNG, metadata={})
    assert store._put.url_for("outputs/sub dir/job+1.png").endswith(  # type: ignore[attr-defined]
        "/outputs/sub%20dir/job%2B1.png"
    )
    assert store.get(stored.uri) == PNG
    assert list(store.list_keys("sub dir/")) == ["sub dir/job+1.png"]


def test_a_closed_port_is_store_unavailable_through_either_transport(
    s3_env: dict[str, str],
) -> None:
    from tests.conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    for transport in ("crt", "signed"):
        store = open_store("s3://bucket/outputs", endpoint_url=endpoint, transport=transport,
                           max_attempts=2, connect_timeout_s=1.0, read_timeout_s=2.0)  # fmt: skip
        with pytest.raises(StoreUnavailable, match="unreachable") as caught:
            store.put_png("sub/job.png", PNG, metadata={})
        assert endpoint in str(caught.value)
