"""The queries behind the web view and the contact sheets (``storage.gallery``) and the pages they
feed, on SQLite and on PostgreSQL, with rows written through ``storage`` the way workers write
them."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from core.jobspec import JobSpec, ParsedJob
from core.settings import Settings
from status.web.app import create_app, image_type
from storage import jobs as transitions
from storage.db import make_engine, session_scope
from storage.gallery import (
    JobFilter,
    count_jobs,
    escape_like,
    find_jobs,
)
from storage.progress import STAGES, stage_counts
from storage.submissions import create_submission, insert_jobs, job_id_for
from tests.storage.helpers import mark_succeeded

PROMPTS = {
    0: "A Poster: 50% OFF today",
    1: "route 50 at night",  # what an unescaped "50%" matches too
    2: "an off_sale sign",
    3: "an off-sale sign",  # what an unescaped "_" matches too
    4: "a back\\slash",
}


@pytest.fixture()
def engine(migrated_db_url: str):
    engine = make_engine(migrated_db_url)
    yield engine
    engine.dispose()


def add_submission(engine, count: int, *, source: str = "prompts.txt") -> str:
    with session_scope(engine) as session:
        ref = create_submission(
            session, source=source, defaults={"model": "test/tiny"}, job_count=count
        )
        insert_jobs(
            session,
            ref.id,
            (
                ParsedJob(
                    JobSpec(
                        prompt=PROMPTS.get(i, f"prompt number {i}"),
                        seed=i,
                        height=64,
                        width=64,
                        steps=4,
                        model="test/tiny",
                    ),
                    line_number=i + 1,
                    position=i,
                )
                for i in range(count)
            ),
            skip_existing=False,
        )
    return ref.id


def finish(engine, submission_id: str, positions: range, *, fail: set[int] = frozenset()) -> None:
    """Claim the jobs at ``positions`` as worker ``w1`` and record an outcome for each."""
    ids = [job_id_for(submission_id, p) for p in positions]
    with session_scope(engine) as session:
        transitions.claim_jobs(session, ids, worker="w1", batch_id="b1", batch_size=len(ids))
        for position, job_id in zip(positions, ids, strict=True):
            if position in fail:
                transitions.mark_failed(session, job_id, f"broken {position}")
                continue
            result = transitions.JobResult(
                image_uri=f"file:///nowhere/{job_id}.png",
                image_bytes=1,
                image_sha256="0" * 64,
                sample_s=0.1,
                upload_s=0.01,
                gpu_share_s=0.1,
            )
            mark_succeeded(session, job_id, result)


def positions(engine, submission_id: str, wanted: JobFilter) -> list[int]:
    with session_scope(engine) as session:
        return [job.position for job in find_jobs(session, submission_id, wanted, limit=100)]


def test_the_text_filter_is_a_case_blind_substring_with_wildcards_taken_literally(engine):
    submission = add_submission(engine, 8)
    assert positions(engine, submission, JobFilter(text="50% off")) == [0]
    assert positions(engine, submission, JobFilter(text="50%")) == [0]
    assert positions(engine, submission, JobFilter(text="50")) == [0, 1]
    assert positions(engine, submission, JobFilter(text="off_sale")) == [2]
    assert positions(engine, submission, JobFilter(text="back\\slash")) == [4]
    assert positions(engine, submission, JobFilter(text="POSTER")) == [0]
    assert positions(engine, submission, JobFilter(text="nothing like it")) == []
    assert escape_like("5%_\\") == "5\\%\\_\\\\"


def test_a_page_of_jobs_is_in_position_order_and_counts_match_the_filter(engine):
    submission = add_submission(engine, 250)
    other = add_submission(engine, 5, source="other.txt")
    finish(engine, submission, range(0, 40), fail={3, 17})
    failed = JobFilter(stages=("failed",))
    with session_scope(engine) as session:
        assert count_jobs(session, submission) == 250
        assert count_jobs(session, submission, failed) == 2
        # Counting a text filter would take a scan: no page needs it, none is made.
        assert count_jobs(session, submission, JobFilter(text="prompt number 1")) is None
        third = find_jobs(session, submission, limit=100, after=199)
        counts = stage_counts(session, submission_id=submission)
        others = stage_counts(session, submission_id=other)
    assert [job.position for job in third] == list(range(200, 250))
    assert positions(engine, submission, failed) == [3, 17]
    assert (counts["succeeded"], counts["queued"]) == (38, 210)
    assert others == {**dict.fromkeys(STAGES, 0), "queued": 5}


def test_an_open_submission_pages_its_grid_and_reloads_itself_until_nothing_is_open(
    engine, migrated_db_url: str, tmp_path: Path
):
    submission = add_submission(engine, 250)
    finish(engine, submission, range(0, 10), fail={4})
    settings = Settings(
        home=tmp_path / "home",
        database_url=migrated_db_url,
        storage_url=(tmp_path / "store").as_uri(),
    )
    client = TestClient(create_app(settings, engine=engine))
    page = client.get(f"/submissions/{submission}")
    assert page.status_code == 200
    assert '<meta http-equiv="refresh"' in page.text
    assert page.text.count('<li class="tile') == 100
    assert page.text.count('loading="lazy"') == 9  # only succeeded jobs have an image
    assert "broken 4" in page.text
    assert "page 1 of 3" in page.text
    last = client.get(f"/submissions/{submission}", params={"page": 3})
    assert last.text.count('<li class="tile') == 250 - 200
    # A filtered grid pages by key: the next page starts after the last position shown.
    first = client.get(f"/submissions/{submission}", params={"q": "prompt"})
    assert first.text.count('<li class="tile') == 100  # positions 5-104 say "prompt"
    following = client.get(f"/submissions/{submission}", params={"q": "prompt", "after": 104})
    assert following.text.count('<li class="tile') == 100
    assert 'rel="next"' in following.text and 'rel="prev"' in following.text
    assert client.get(f"/submissions/{submission}", params={"q": "x", "page": 2}).status_code == 400
    listed = client.get("/api/submissions").json()["submissions"]
    assert [(s["id"], s["open"], s["done"]) for s in listed] == [(submission, 240, 10)]
    assert listed[0]["images_per_s"] > 0 and listed[0]["eta_s"] > 0

    with session_scope(engine) as session:
        transitions.cancel_queued(session, submission_id=submission)
    finished = client.get(f"/submissions/{submission}")
    assert 'http-equiv="refresh"' not in finished.text
    assert 'http-equiv="refresh"' not in client.get("/").text


def test_images_are_served_with_the_content_type_their_bytes_say():
    picture = Image.new("RGB", (8, 8), (200, 30, 30))
    for pillow_format, content_type in (("PNG", "png"), ("WEBP", "webp"), ("JPEG", "jpeg")):
        buffer = io.BytesIO()
        picture.save(buffer, pillow_format)
        assert image_type(buffer.getvalue()) == f"image/{content_type}"
    assert image_type(b"<svg onload=alert(1)>") == "application/octet-stream"


def test_pages_take_a_unique_id_prefix_as_the_cli_does(engine, migrated_db_url, tmp_path):
    submission = add_submission(engine, 3)
    settings = Settings(
        home=tmp_path / "home",
        database_url=migrated_db_url,
        storage_url=(tmp_path / "store").as_uri(),
    )
    client = TestClient(create_app(settings, engine=engine))
    page = client.get(f"/submissions/{submission[:8]}")
    assert page.status_code == 200 and submission in page.text
    job = job_id_for(submission, 1)
    assert client.get(f"/api/jobs/{job[:8]}").json()["id"] == job
    assert client.get(f"/api/submissions/{submission[:6]}").json()["id"] == submission
    missing = client.get("/submissions/ffff0000")
    assert missing.status_code == 404 and "no submission has an id starting with" in missing.text
    assert client.get("/submissions/not-an-id").status_code == 404
