"""One job type from the validator to the row and back: ``job_row`` and ``spec_of``."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from core.errors import InvalidJob
from core.jobspec import FIELD_NAMES, JobSpec
from status.queries import JOB_FIELDS, job_record
from storage.models import JOB_ATTRIBUTES, Job, JobStatus
from storage.submissions import JOB_COLUMNS, job_id_for, job_row, spec_of

CREATED = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
SPEC = JobSpec(
    prompt="a red fox in snow",
    seed=7,
    model="org/model",
    height=64,
    width=80,
    steps=6,
    priority="high",
    metadata={"user": "ada"},
)


def stored(spec: JobSpec, **columns: object) -> Job:
    """The ``Job`` a ``job_row`` of ``spec`` becomes once inserted (no database needed)."""
    row = job_row(spec, submission_id="s", position=3, line_number=4, created_at=CREATED)
    values = dict(zip(JOB_COLUMNS, row, strict=True)) | columns
    return Job(**{JOB_ATTRIBUTES[name]: value for name, value in values.items()})


def test_every_job_spec_field_is_stored_in_the_jobs_column_of_its_name() -> None:
    assert set(FIELD_NAMES) <= set(JOB_ATTRIBUTES)
    assert set(FIELD_NAMES) <= set(JOB_COLUMNS)
    assert len(set(JOB_COLUMNS)) == len(JOB_COLUMNS)
    assert set(JOB_COLUMNS) <= set(Job.__table__.c.keys())


def test_a_row_holds_the_spec_its_place_and_a_queued_start() -> None:
    row = dict(
        zip(
            JOB_COLUMNS,
            job_row(SPEC, submission_id="s", position=3, line_number=4, created_at=CREATED),
            strict=True,
        )
    )
    assert {name: row[name] for name in FIELD_NAMES} == SPEC.to_dict()
    assert (row["id"], row["submission_id"], row["position"], row["line_number"]) == (
        job_id_for("s", 3),
        "s",
        3,
        4,
    )
    assert (row["status"], row["attempts"], row["created_at"]) == ("queued", 0, CREATED)


def test_a_stored_job_reads_back_as_the_spec_it_was_made_from() -> None:
    assert spec_of(stored(SPEC)) == SPEC


def test_a_stored_job_that_no_longer_validates_is_refused_with_the_fix() -> None:
    with pytest.raises(InvalidJob, match="height 500 is not a multiple of 8; use 496 or 504"):
        spec_of(stored(SPEC, height=500))


def test_a_job_record_has_every_column_by_its_name_with_times_as_text() -> None:
    job = stored(SPEC, status=JobStatus.SUCCEEDED, finished_at=CREATED)
    record = job_record(job)
    assert tuple(record) == JOB_FIELDS == (*Job.__table__.c.keys(), "priority_name")
    assert record["priority_name"] == "high"
    assert record["metadata"] == {"user": "ada"}  # the column's name, not the attribute's
    assert (record["status"], record["created_at"], record["finished_at"]) == (
        "succeeded",
        CREATED.isoformat(),
        CREATED.isoformat(),
    )
    assert record["started_at"] is None
