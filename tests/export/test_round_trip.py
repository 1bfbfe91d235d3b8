"""Each format, on real S3 (moto over HTTP), a few hundred images, interrupted once by a real
SIGKILL of a real ``loopfree export`` process: the rerun keeps the shards it finds, writes the
rest, and ends with the same files as an uninterrupted export; the format's own reader reads
every sample back, in job order, with the image its worker recorded."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest

from export.state import STATE_FILE
from storage.db import Engine
from storage.objects import ObjectStore
from tests.export.conftest import (
    EXTENSIONS,
    MadeSubmission,
    cli_env,
    kill_export_midway,
    make_submission,
    run_export,
)
from tests.export.readers import parquet_through_datasets, read_back

pytestmark = pytest.mark.slow

JOBS = 300
SHARD = 64
STALL_AFTER = 2 * SHARD + 22  # shards 0 and 1 committed, shard 2 a third written


def s3_client(endpoint: str):  # noqa: ANN201 - a boto3 client
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def versioned_bucket(endpoint: str) -> str:
    """A bucket that keeps every version of every key: a rewritten shard would leave two."""
    bucket = f"export-{uuid.uuid4().hex[:12]}"
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


def objects(client, bucket: str, prefix: str) -> dict[str, bytes]:  # noqa: ANN001
    paginator = client.get_paginator("list_objects_v2")
    found = {}
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"][len(prefix) + 1 :]] = body
    return found


def versions(client, bucket: str, prefix: str) -> dict[str, int]:  # noqa: ANN001
    counts: dict[str, int] = {}
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Versions", []):
            name = item["Key"][len(prefix) + 1 :]
            counts[name] = counts.get(name, 0) + 1
    return counts


def is_shard_file(name: str) -> bool:
    return not name.startswith(("_", "."))


@pytest.mark.parametrize("format", ["webdataset", "parquet", "imagefolder"])
def test_an_export_killed_midway_resumes_to_the_same_dataset_its_reader_reads_whole(
    format: str,
    sqlite_engine: Engine,
    migrated_sqlite_url: str,
    s3_store: ObjectStore,
    s3_server: str,
    tmp_path: Path,
) -> None:
    made = make_submission(sqlite_engine, s3_store, JOBS)
    expected = made.succeeded()
    assert 200 < len(expected) < JOBS  # failed, cancelled and queued jobs are in the mix
    env = cli_env(tmp_path / "home", migrated_sqlite_url, s3_store, s3_server)
    bucket = versioned_bucket(s3_server)
    client = s3_client(s3_server)
    options = ["--format", format, "--shard-size", str(SHARD)]

    run_export([made.id[:8], f"s3://{bucket}/straight", *options], env)
    kill_export_midway(
        [made.id, f"s3://{bucket}/resumed", *options],
        env,
        after_samples=STALL_AFTER,
        folder=tmp_path,
    )
    # Killed: two shards whole under their names, nothing of the third.
    before = objects(client, bucket, "resumed")
    state = json.loads(before[STATE_FILE])
    assert [shard["name"] for shard in state["shards"]] == [
        f"{index:05d}{'' if format == 'imagefolder' else '.' + format.replace('webdataset', 'tar')}"
        for index in range(2)
    ]
    assert state["complete"] is False
    assert {name.split("/")[0] for name in before if is_shard_file(name)} == {
        shard["name"] for shard in state["shards"]
    }

    rerun = run_export([made.id, f"s3://{bucket}/resumed", *options], env)
    assert "2 shard(s) of an earlier run kept" in rerun.stdout

    straight = objects(client, bucket, "straight")
    resumed = objects(client, bucket, "resumed")
    shards = {name for name in straight if is_shard_file(name)}
    assert shards == {name for name in resumed if is_shard_file(name)}
    assert all(straight[name] == resumed[name] for name in shards), "shard contents differ"
    stats = {name: json.loads(found["_stats.json"]) for name, found in
             (("straight", straight), ("resumed", resumed))}  # fmt: skip
    for run in stats.values():
        run.pop("as_of")  # the snapshot time: when each export began
    assert stats["straight"] == stats["resumed"]
    assert stats["resumed"]["successes"] == len(expected)
    assert stats["resumed"]["count"] == JOBS
    # The shards of the killed run were kept, not written again.
    kept = [name for name in before if is_shard_file(name)]
    assert kept and all(count == 1 for name, count in versions(client, bucket, "resumed").items()
                        if name in kept)  # fmt: skip

    folder = tmp_path / "downloaded"
    for name, data in resumed.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    check_samples(format, folder, made, tmp_path / "hf-cache")


def check_samples(format: str, folder: Path, made: MadeSubmission, cache: Path) -> None:
    """Every succeeded job once, in position order, with its own image and record."""
    expected = made.succeeded()
    samples = read_back(format, folder, cache)
    assert [sample.record["job_id"] for sample in samples] == [job.id for job in expected]
    assert [sample.key for sample in samples] == [f"{i:09d}" for i in range(len(expected))]
    for sample, job in zip(samples, expected, strict=True):
        assert sample.image_sha256 == job.sha256 == sample.record["sha256"]
        assert sample.extension == EXTENSIONS[job.image_format]
        assert sample.record["prompt"] == job.prompt
        assert sample.record["seed"] == job.seed
        assert sample.record["metadata"] == job.metadata
        assert sample.record["submission_id"] == made.id
        assert sample.record["position"] == job.position
        assert (sample.record["width"], sample.record["height"], sample.record["steps"]) == (
            64, 64, 4,
        )  # fmt: skip
        if sample.caption is not None:
            assert sample.caption == job.prompt
    if format == "parquet":
        rows, image = parquet_through_datasets(folder, cache)
        assert rows == len(expected) and image.size == (64, 64)
