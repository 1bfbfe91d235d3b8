"""The signed PUT on errors: retried where S3 says "try again", mapped to the project's typed
errors where it will not help. A small HTTP front on loopback answers the PUTs it is told to
fail and passes every other request to the real S3 endpoint (moto) behind it."""

from __future__ import annotations

import http.client
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from core.errors import StoreUnavailable
from storage.objects import (
    BucketNotFound,
    StoreAccessDenied,
    StoreRejected,
    UploadNotVerified,
    open_store,
)
from storage.s3 import S3Store
from storage.s3_put import bucket_url

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64


def s3_error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    ).encode()


class FaultFront:
    """Loopback HTTP server in front of ``upstream``: the first PUTs get the scripted replies
    (status, body), every other request is forwarded. ``puts`` counts the PUTs it received."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.script: list[tuple[int, bytes]] = []
        self.puts = 0
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with front.lock:
                    front.puts += 1
                    scripted = front.script.pop(0) if front.script else None
                if scripted is None:
                    self.forward(body)
                    return
                status, reply = scripted
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self) -> None:  # noqa: N802
                self.forward(b"")

            def do_HEAD(self) -> None:  # noqa: N802
                self.forward(b"")

            def forward(self, body: bytes) -> None:
                connection = http.client.HTTPConnection(
                    front.upstream.hostname, front.upstream.port, timeout=10
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                connection.request(self.command, self.path, body=body or None, headers=headers)
                reply = connection.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for name, value in reply.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def front(s3_server: str) -> Iterator[tuple[FaultFront, S3Store]]:
    """A fault front before the moto server, and a store on a fresh bucket that talks to it."""
    fault_front = FaultFront(s3_server)
    store = open_store(
        f"s3://loopfree-{uuid.uuid4().hex[:12]}/outputs",
        endpoint_url=fault_front.url,
        region="us-east-1",
        max_attempts=3,
        connect_timeout_s=2.0,
        read_timeout_s=10.0,
    )
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

    with pytest.raises(StoreUnavailable, match="after retries") as caught:
        store.put_png("sub/job.png", PNG, metadata={})

    assert fault_front.puts == 3  # max_attempts, not one more
    assert "HTTP 502" in str(caught.value)


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
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_store._put, "_credentials", None)
    with pytest.raises(StoreAccessDenied, match="AWS_ACCESS_KEY_ID"):
        s3_store.put_png("sub/job.png", PNG, metadata={})


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
    s3_store: S3Store,
) -> None:
    stored = s3_store.put_png("sub dir/job+1.png", PNG, metadata={})
    assert s3_store._put.url_for("outputs/sub dir/job+1.png").endswith(
        "/outputs/sub%20dir/job%2B1.png"
    )
    assert s3_store.get(stored.uri) == PNG
    assert list(s3_store.list_keys("sub dir/")) == ["sub dir/job+1.png"]
