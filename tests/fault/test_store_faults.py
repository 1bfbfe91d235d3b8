"""The object store goes away for ten seconds, or refuses uploads for good. And what it holds stays
private. (A longer outage, with the reconcile loop on: tests/fault/test_outages.py.)"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from tests.fault.conftest import open_fleet, private_redis
from tests.fault.fleet import Fleet, rows
from tests.fault.reconcile import assert_reconciled
from tests.helpers_processes import MotoServer, run_cli

pytestmark = pytest.mark.slow

OUTAGE_S = 10
PUBLIC_GRANTEES = {
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
}


@pytest.fixture()
def moto() -> Iterator[MotoServer]:
    """An S3 endpoint of this test's own, on a fixed port, that the test may stop and start."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class StoreFleet:
    fleet: Fleet
    moto: MotoServer


@pytest.fixture(scope="module")
def store(tmp_path_factory, pg_admin, s3_env, fault_model_dir) -> Iterator[StoreFleet]:
    """One worker with a single attempt per job: an outage must not spend it (worker.outage)."""
    folder = tmp_path_factory.mktemp("store-fleet")
    moto = MotoServer()
    moto.start()
    try:
        with (
            private_redis(folder / "redis") as redis,
            open_fleet(
                folder,
                pg_admin=pg_admin,
                s3_endpoint=moto.url,
                model=fault_model_dir,
                broker_url=redis.url,
                max_attempts=1,
                outage_probe_max_s=1,
            ) as fleet,
        ):
            fleet.start_worker().wait_ready()
            yield StoreFleet(fleet, moto)
    finally:
        moto.stop()


def test_uploads_during_a_ten_second_store_outage_wait_for_the_store_and_all_succeed(store):
    fleet, moto = store.fleet, store.moto
    worker = fleet.workers[0]
    log_before = len(worker.log_text(tail=10_000_000))
    report = fleet.submit(rows(120))
    fleet.wait(
        lambda: fleet.counts(report.submission_id)["succeeded"] >= 4,
        timeout=60,
        what="the first uploads",
    )

    moto.stop()
    down_since = time.monotonic()
    # Wait for the outage to bite: some upload has failed (after botocore's own retries), the
    # probe confirmed the store is down, and the worker paused with its jobs in hand.
    fleet.wait(
        lambda: "worker paused" in worker.log_text(tail=10_000_000)[log_before:],
        timeout=60,
        what="the worker to pause while the store is down",
    )
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_since)))  # the outage itself
    moto.start()

    fleet.wait_settled(report.submission_id, timeout=180)
    outcome = assert_reconciled(fleet, report.submission_id, submitted=120)
    assert outcome.counts["succeeded"] == 120
    # Before outages paused workers, uploads refused by the outage sent their jobs back, each
    # one attempt closer to failing: with max_attempts=1, they failed.
    assert [job.attempts for job in outcome.jobs] == [1] * 120, "the outage spent attempts"
    assert "object store is back after" in worker.log_text(tail=10_000_000)[log_before:]


def test_objects_are_private_and_results_hand_out_expiring_presigned_urls(store):
    fleet, moto = store.fleet, store.moto
    report = fleet.submit(rows(3))
    fleet.wait_settled(report.submission_id, timeout=120)
    assert_reconciled(fleet, report.submission_id, submitted=3)

    listing = run_cli(
        ["results", report.submission_id], {**fleet.env, "LOOPFREE_PRESIGN_EXPIRY_S": "120"}
    )
    assert listing.returncode == 0, listing.stderr
    records = [json.loads(line) for line in listing.stdout.splitlines()]
    assert len(records) == 3
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    for record in records:
        url = record["url"]
        # moto checks neither presigned signatures nor expiry (S3 and MinIO do): what can be
        # checked here is that the URL is signed for the configured lifetime, from now.
        query = parse_qs(urlsplit(url).query)
        assert query["X-Amz-Expires"] == ["120"]  # the configured expiry, not a default
        signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
        age = datetime.now(timezone.utc).replace(tzinfo=None) - signed_at
        assert abs(age.total_seconds()) < 120
        with urllib.request.urlopen(url, timeout=10) as reply:  # the signed URL works
            assert hashlib.sha256(reply.read()).hexdigest() == record["image_sha256"]

        unsigned = url.split("?")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(unsigned, timeout=10)
        assert refused.value.code == 403

        bucket, key = record["image_uri"].removeprefix("s3://").split("/", 1)
        grants = client.get_object_acl(Bucket=bucket, Key=key)["Grants"]
        grantees = {grant["Grantee"].get("URI") for grant in grants}
        assert not grantees & PUBLIC_GRANTEES, grants
        assert [grant["Permission"] for grant in grants] == ["FULL_CONTROL"]  # the owner only

    with pytest.raises(ValueError, match="seven days"):
        fleet.store.presigned_url(records[0]["image_uri"], 8 * 24 * 3600)


def test_a_store_that_refuses_uploads_fails_the_jobs_with_the_reason_and_does_not_pause(
    make_fleet, redis_server, moto
):
    """A refusal (here: the bucket does not exist) is not an outage: the store answers, retrying
    will not help, so each job fails at once with the store's reason, and the worker does not
    pause. (Before outages paused workers, this test stopped the store for good and expected
    every job to fail after its attempts; an unreachable store now pauses the worker instead.)"""
    fleet = make_fleet(broker_url=redis_server.url, s3_endpoint=moto.url, upload_workers=8)
    bucket = fleet.store.bucket
    # The worker checks its store before it takes a job (it would refuse to start on a missing
    # bucket): the bucket goes away once it runs, as when someone deletes it under a live fleet.
    worker = fleet.start_worker()
    worker.wait_ready()
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    for key in fleet.store.list_keys():
        fleet.store.delete(key)  # the worker's probe object
    client.delete_bucket(Bucket=bucket)
    first, second = fleet.submit(rows(3)), fleet.submit(rows(2, seed=100))
    fleet.wait_settled(first.submission_id, second.submission_id, timeout=180)

    fleet.store.ensure_bucket()  # only now: nothing may have been stored
    outcome = assert_reconciled(fleet, first.submission_id, second.submission_id, submitted=5)
    assert outcome.counts["failed"] == 5
    for job in outcome.jobs:
        assert job.attempts == 1
        assert job.error.startswith("storing the image failed: Bucket"), job.error
        assert f"{bucket!r} does not exist" in job.error
    assert "worker paused" not in worker.log_text(tail=10_000_000)

    # With the bucket there, an operator sends one submission's failed jobs through again.
    requeue = run_cli(["requeue", "--failed", "--submission", first.submission_id], fleet.env)
    assert requeue.returncode == 0, requeue.stderr
    report = json.loads(requeue.stdout)
    assert (report["released"], report["requeued_failed"]) == (0, 3), report
    fleet.wait_settled(first.submission_id, timeout=120)
    outcome = assert_reconciled(fleet, first.submission_id, second.submission_id, submitted=5)
    assert outcome.counts == {"succeeded": 3, "failed": 2}
    assert {job.submission_id for job in outcome.with_status("failed")} == {second.submission_id}
