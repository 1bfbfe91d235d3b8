"""A prompt line's metadata is stored once however many images the line asks for, and every
reader still sees it on every one of those images."""

from __future__ import annotations

import json

from sqlalchemy import select

from producer.prompts import JobDefaults, parse_prompts
from status.queries import list_jobs
from storage.db import session_scope
from storage.gallery import find_jobs
from storage.models import Job
from storage.queries import get_job
from storage.submissions import create_submission, insert_jobs, job_id_for
from tests.storage.test_window import captured_selects, plan_of

TAGS = {"campaign": "spring", "sku": "x" * 2000}


def submit_lines(engine, lines: list[dict]) -> str:
    data = "\n".join(json.dumps(line) for line in lines) + "\n"
    parsed = parse_prompts(
        data,
        format="jsonl",
        defaults=JobDefaults(model="test/tiny", seed_base=0, height=64, width=64),
    )
    with session_scope(engine) as session:
        ref = create_submission(session, source="t.jsonl", defaults={}, job_count=len(parsed.jobs))
        insert_jobs(session, ref.id, parsed.jobs)
    return ref.id


def stored_metadata(engine, submission_id: str) -> list[dict]:
    with session_scope(engine) as session:
        statement = (
            select(Job.caller_metadata)
            .where(Job.submission_id == submission_id)
            .order_by(Job.position)
        )
        return list(session.scalars(statement))


def test_metadata_of_a_many_image_line_is_stored_once(engine):
    submission = submit_lines(
        engine,
        [
            {"prompt": "a", "num_images": 3, "metadata": TAGS},
            {"prompt": "b", "metadata": {"one": 1}},
            {"prompt": "c", "num_images": 2},
        ],
    )
    assert stored_metadata(engine, submission) == [TAGS, {}, {}, {"one": 1}, {}, {}]


def test_every_reader_sees_the_lines_metadata_on_every_image(engine):
    submission = submit_lines(
        engine,
        [
            {"prompt": "a", "num_images": 3, "metadata": TAGS},
            {"prompt": "b", "num_images": 2},
        ],
    )
    records = list(list_jobs(engine, submission_id=submission, stage=None, limit=None))
    assert [record["metadata"] for record in records] == [TAGS, TAGS, TAGS, {}, {}]
    with session_scope(engine) as session:
        # A page that starts inside the line, without its first image.
        (second,) = find_jobs(session, submission, limit=1, after=1)
        assert second.caller_metadata == TAGS
        assert get_job(session, job_id_for(submission, 1)).caller_metadata == TAGS
    # Reading filled nothing in for good: still stored once.
    assert stored_metadata(engine, submission) == [TAGS, {}, {}, {}, {}]


def test_a_page_deep_in_a_submission_finds_its_lines_first_job_by_position(engine):
    """A page's first job looks up its line's first job within MAX_NUM_IMAGES positions before
    it, on the (submission_id, position) key: by line number alone it would read the whole
    submission once per page, and a million-job listing would slow page by page."""
    lines = [{"prompt": f"p{i}"} for i in range(200)]
    lines[150] = {"prompt": "many", "num_images": 5, "metadata": TAGS}
    submission = submit_lines(engine, lines)
    with captured_selects(engine) as seen, session_scope(engine) as session:
        page = find_jobs(session, submission, limit=3, after=152)  # inside the line of five
        assert [job.caller_metadata for job in page] == [TAGS, TAGS, {}]
    lookups = [(sql, params) for sql, params in seen if "line_number IN" in sql.replace("\n", " ")]
    assert len(lookups) == 1, seen
    plan = plan_of(engine, *lookups[0])
    keyed = [line for line in plan.splitlines() if "Index Cond" in line or "USING INDEX" in line]
    assert any("position" in line for line in keyed), plan  # a range on the key, not a scan
