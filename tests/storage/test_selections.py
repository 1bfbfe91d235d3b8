"""``storage.selections``: a submission's chosen jobs streamed in position order by keyset pages,
each page its own transaction, with metadata compared after the line's metadata is filled in,
on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.errors import UserError
from storage import jobs as transitions
from storage.db import session_scope
from storage.models import JobStatus, utcnow
from storage.selections import (
    JobSelection,
    MetadataMatch,
    count_selected,
    iter_selected,
    iter_submissions,
    submission_keys,
)
from tests.harness import job_result
from tests.storage.helpers import add_submission, mark_succeeded


def test_pages_cover_every_match_in_order_even_when_whole_pages_match_nothing(engine) -> None:
    submission, ids = add_submission(engine, 50)  # metadata {"row": position}
    wanted = {3, 4, 41, 49}
    selection = JobSelection(metadata=tuple(MetadataMatch("row", str(row)) for row in wanted))
    # Each match must hold: one job cannot have four rows. One at a time, then:
    assert list(iter_selected(engine, submission, selection, page_size=7)) == []
    found = [
        job.position
        for row in sorted(wanted)
        for job in iter_selected(
            engine, submission, JobSelection(metadata=(MetadataMatch("row", str(row)),)),
            page_size=7,
        )
    ]  # fmt: skip
    assert found == sorted(wanted)
    every = [job.position for job in iter_selected(engine, submission, page_size=7)]
    assert every == list(range(50))
    after = [job.position for job in iter_selected(engine, submission, after_position=44)]
    assert after == [45, 46, 47, 48, 49]


def test_sql_conditions_choose_by_status_text_ids_and_finish_time(engine) -> None:
    submission, ids = add_submission(engine, 12)
    with session_scope(engine) as session:
        transitions.claim_jobs(session, ids[:6], worker="w", batch_id="b", batch_size=6)
        for job_id in ids[:4]:
            mark_succeeded(session, job_id, job_result(job_id))
        transitions.mark_failed(session, ids[4], "boom", now=utcnow() - timedelta(days=2))
    by_status = JobSelection(statuses=(JobStatus.SUCCEEDED, JobStatus.FAILED))
    assert [j.id for j in iter_selected(engine, submission, by_status)] == ids[:5]
    assert count_selected(engine, submission, by_status) == 5
    recent = JobSelection(finished_since=utcnow() - timedelta(hours=1))
    assert [j.id for j in iter_selected(engine, submission, recent)] == ids[:4]
    text = JobSelection(prompt_contains="VARIATION 1")  # variation 1, 10, 11
    assert [j.position for j in iter_selected(engine, submission, text)] == [1, 10, 11]
    some = JobSelection(job_ids=(ids[9], ids[2]))
    assert [j.id for j in iter_selected(engine, submission, some)] == [ids[2], ids[9]]
    other, _ = add_submission(engine, 3)
    assert list(iter_selected(engine, other, some)) == []


def test_metadata_values_match_as_json_or_as_text() -> None:
    metadata = {"row": 5, "tag": "cat", "id": "5", "flag": True, "none": None}
    assert MetadataMatch.parse("row=5").matches(metadata)
    assert MetadataMatch.parse("tag=cat").matches(metadata)
    assert MetadataMatch.parse("id=5").matches(metadata)
    assert MetadataMatch.parse("flag=true").matches(metadata)
    assert MetadataMatch.parse("none=null").matches(metadata)
    assert not MetadataMatch.parse("flag=1").matches(metadata)  # a bool is not a number
    assert not MetadataMatch.parse("row=6").matches(metadata)
    assert not MetadataMatch.parse("missing=").matches(metadata)
    assert MetadataMatch.parse("k = v = w") == MetadataMatch("k", " v = w")
    with pytest.raises(UserError, match="is not KEY=VALUE"):
        MetadataMatch.parse("=v")


def test_submissions_come_oldest_first_by_keyset_up_to_a_time(engine) -> None:
    now = utcnow()
    made = [add_submission(engine, 1, now=now - timedelta(hours=h))[0] for h in (5, 4, 4, 1)]
    keys = list(iter_submissions(engine, created_until=now, page_size=2))
    assert {key.id for key in keys} == set(made)
    assert [key.created_at for key in keys] == sorted(key.created_at for key in keys)
    assert keys[0].id == made[0] and keys[-1].id == made[3]
    before = list(iter_submissions(engine, created_until=now - timedelta(hours=2)))
    assert {key.id for key in before} == set(made[:3])
    resumed = list(iter_submissions(engine, created_until=now, after=keys[1]))
    assert resumed == keys[2:]
    assert submission_keys(engine, [made[3]])[made[3]].id == made[3]
