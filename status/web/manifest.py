"""What a submission's page offers to take away: its manifest, streamed as JSONL or CSV, and the
command lines that export or re-roll the jobs it shows.

The manifest holds the records ``loopfree results`` prints (every column of ``jobs``, as
``status.queries.job_record`` makes them), for the jobs matching the page's filter, in position
order. The JSONL lines carry ``image_url``, the image's address on this server, where
``results`` has a presigned store URL: the view never hands out store addresses. The CSV is
``loopfree jobs --format csv``'s: the same header, nested values as JSON. Rows are read a
keyset page at a time, each page in a transaction of its own, and sent as they are read, so a
million-job manifest costs one page of memory and holds no lock while it is sent.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
from collections.abc import Iterator
from typing import Any

from status.queries import JOB_FIELDS, job_record
from status.web.thumbs import HASH_PREFIX_CHARS
from storage.db import Engine
from storage.gallery import JobFilter
from storage.models import JobStatus
from storage.selections import JobSelection, iter_selected

ROWS_PER_CHUNK = 500
"""CSV rows sent per write: a few hundred KB, so a long manifest is not a million tiny writes."""


def selection_of(wanted: JobFilter) -> JobSelection:
    """The page's filter (stages, prompt text) as the selection the CLI takes: claimed and
    rendering are both the stored ``running``."""
    return JobSelection(statuses=_statuses(wanted), prompt_contains=wanted.text)


def _statuses(wanted: JobFilter) -> tuple[JobStatus, ...]:
    running = {"claimed", "rendering"}
    return tuple(
        dict.fromkeys(
            JobStatus.RUNNING if stage in running else JobStatus(stage) for stage in wanted.stages
        )
    )


def records(engine: Engine, submission_id: str, wanted: JobFilter) -> Iterator[dict[str, Any]]:
    for job in iter_selected(engine, submission_id, selection_of(wanted)):
        record = job_record(job)
        record["image_url"] = None
        if job.status is JobStatus.SUCCEEDED and job.image_uri:
            version = (job.image_sha256 or "")[:HASH_PREFIX_CHARS]
            record["image_url"] = f"/jobs/{job.id}/image?v={version}"
        yield record


def jsonl(engine: Engine, submission_id: str, wanted: JobFilter) -> Iterator[str]:
    for record in records(engine, submission_id, wanted):
        yield json.dumps(record) + "\n"


def csv_text(engine: Engine, submission_id: str, wanted: JobFilter) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=JOB_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for count, record in enumerate(records(engine, submission_id, wanted), start=1):
        writer.writerow(
            {
                key: json.dumps(value) if isinstance(value, dict | list) else value
                for key, value in record.items()
            }
        )
        if count % ROWS_PER_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def command_lines(submission_id: str, wanted: JobFilter) -> dict[str, str]:
    """The CLI commands that export, or re-roll with new seeds, the jobs the page shows."""
    filters = [f"--status {status.value}" for status in _statuses(wanted)]
    if wanted.text:
        filters.append(f"--prompt-contains {shlex.quote(wanted.text)}")
    tail = "".join(f" {option}" for option in filters)
    folder = f"./{submission_id[:8]}-webdataset"
    return {
        "export": f"loopfree export {submission_id} {folder} --format webdataset{tail}",
        "reroll": f"loopfree submit --from {submission_id} --reseed{tail}",
    }
