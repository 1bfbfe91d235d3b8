"""The end of every fault test: the database, the store and the submitted count must agree.

submitted == succeeded + failed (+ cancelled)   nothing lost, nothing left queued or running
every failed job says why                       a reason, not a traceback
every succeeded job has exactly one object      at its fixed key, whose bytes hash to the
                                                recorded sha256 and have the recorded size
no other object under the submissions           no duplicates, nothing for failed jobs
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from storage.models import Job, JobStatus
from tests.fault.fleet import Fleet


@dataclass(frozen=True)
class Outcome:
    counts: Counter[str]
    jobs: list[Job]

    def with_status(self, status: str) -> list[Job]:
        return [job for job in self.jobs if job.status.value == status]


def assert_reconciled(
    fleet: Fleet, *submission_ids: str, submitted: int, cancelled: int = 0
) -> Outcome:
    jobs = fleet.jobs(*submission_ids)
    counts = Counter(job.status.value for job in jobs)
    assert len(jobs) == submitted, f"{submitted} jobs submitted, {len(jobs)} in the database"
    open_jobs = [job for job in jobs if job.status in (JobStatus.QUEUED, JobStatus.RUNNING)]
    assert not open_jobs, f"jobs left open: {open_jobs[:10]} ({dict(counts)})"
    assert counts["cancelled"] == cancelled, dict(counts)
    assert counts["succeeded"] + counts["failed"] + counts["cancelled"] == submitted, dict(counts)

    for job in jobs:
        if job.status is JobStatus.FAILED:
            assert job.error and job.error.strip(), f"{job} failed without a reason"
            assert "Traceback" not in job.error, f"{job} failed with a traceback: {job.error}"

    store = fleet.store
    succeeded = [job for job in jobs if job.status is JobStatus.SUCCEEDED]
    expected_keys = {store.key_for(job.submission_id, job.id) for job in succeeded}
    for job in succeeded:
        assert job.image_uri == store.uri_for(store.key_for(job.submission_id, job.id)), job

    def check(job: Job) -> None:
        data = store.get(job.image_uri)
        assert hashlib.sha256(data).hexdigest() == job.image_sha256, (
            f"{job}: the stored object is not the image recorded (sha256 differs)"
        )
        assert len(data) == job.image_bytes, f"{job}: {len(data)} bytes, {job.image_bytes} recorded"

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(check, succeeded))

    stored = {key for sid in submission_ids for key in store.submission_keys(sid)}
    extra = stored - expected_keys
    assert not extra, f"{len(extra)} objects belong to no succeeded job: {sorted(extra)[:5]}"
    assert stored == expected_keys  # and every succeeded job's object is listed
    return Outcome(counts=counts, jobs=jobs)
