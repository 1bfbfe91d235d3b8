"""`status` and `wait` never wait in silence: unserved models named, else a rate and an ETA."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from status.queries import submission_status
from storage import jobs as job_store
from storage import workers as registry
from storage.db import session_scope
from storage.models import utcnow

from .helpers import add_submission, mark_succeeded


def announce(engine: Engine, model: str) -> None:
    info = registry.WorkerInfo("w1", model, "q", "host", 1, "0.1.0", "cpu", ttl_s=45)
    with session_scope(engine) as session:
        registry.announce(session, info)


def test_a_model_no_live_worker_serves_is_named(engine: Engine) -> None:
    submission_id, _ = add_submission(engine, 3, model="org/unserved")
    status = submission_status(engine, submission_id)
    assert status is not None
    assert status.unserved_models == ("org/unserved",)
    assert "no live worker serves org/unserved" in (status.waiting_note() or "")
    announce(engine, "org/unserved")
    status = submission_status(engine, submission_id)
    assert status is not None and status.unserved_models == ()


def test_the_eta_divides_the_open_jobs_by_the_rate_of_the_last_minute(engine: Engine) -> None:
    now = utcnow()
    submission_id, ids = add_submission(engine, 10, model="org/m", now=now - timedelta(minutes=5))
    announce(engine, "org/m")
    with session_scope(engine) as session:
        job_store.claim_jobs(
            session, ids[:6], worker="w1", batch_id="b", batch_size=6,
            now=now - timedelta(minutes=2),
        )  # fmt: skip
        result = job_store.JobResult("s3://b/k.png", 1, "0" * 64, 1.0, 0.1, 0.25)
        for job_id in ids[:6]:  # 6 finished 30 s ago, after 90 s in hand: 30 s of the minute
            mark_succeeded(session, job_id, result, now=now - timedelta(seconds=30))
    status = submission_status(engine, submission_id)
    assert status is not None and not status.finished
    assert status.images_per_s == pytest.approx(6 / 30, rel=0.05)
    assert status.eta_s == pytest.approx(4 / (6 / 30), rel=0.05)
    assert "ETA" in (status.waiting_note() or "")


def test_cancelled_jobs_are_not_throughput(engine: Engine) -> None:
    """Observed: right after `cancel`, the rate jumped from 0.27 to 1.90 images/s and the ETA
    from 10m30s to 0m21s, with 40 jobs still rendering."""
    now = utcnow()
    submission_id, ids = add_submission(engine, 60, model="org/m", now=now - timedelta(minutes=5))
    announce(engine, "org/m")
    with session_scope(engine) as session:
        job_store.claim_jobs(
            session, ids[:10], worker="w1", batch_id="b", batch_size=10,
            now=now - timedelta(seconds=60),
        )  # fmt: skip
        result = job_store.JobResult("s3://b/k.png", 1, "0" * 64, 1.0, 0.1, 0.25)
        for job_id in ids[:5]:
            mark_succeeded(session, job_id, result, now=now - timedelta(seconds=10))
    before = submission_status(engine, submission_id)
    with session_scope(engine) as session:
        job_store.cancel_queued(session, job_ids=ids[10:])  # 50 queued jobs cancelled
    after = submission_status(engine, submission_id)
    assert before is not None and after is not None
    assert after.images_per_s == pytest.approx(before.images_per_s)  # 5 images in 60 s of work
    assert after.counts["cancelled"] == 50 and after.counts["claimed"] == 5
    assert after.eta_s == pytest.approx(5 / after.images_per_s)  # the 5 still in hand


def test_status_submissions_and_the_web_view_give_one_rate(engine: Engine) -> None:
    """Observed: `status --json` gave images_per_s null while `submissions` showed 19.26 for the
    same submission. Every reader builds on ``status.summary``: one rate, one ETA."""
    from status.summary import summarize
    from status.web.views import submission_summary, submissions_page
    from storage.gallery import list_submissions

    now = utcnow()
    submission_id, ids = add_submission(engine, 10, model="org/m", now=now - timedelta(minutes=2))
    with session_scope(engine) as session:
        job_store.claim_jobs(
            session, ids[:5], worker="w1", batch_id="b", batch_size=5,
            now=now - timedelta(seconds=40),
        )  # fmt: skip
        result = job_store.JobResult("s3://b/k.png", 1, "0" * 64, 1.0, 0.1, 0.25)
        for job_id in ids[:5]:
            mark_succeeded(session, job_id, result, now=now - timedelta(seconds=20))
    status = submission_status(engine, submission_id)
    with session_scope(engine) as session:
        (listed,) = summarize(session, list_submissions(session, limit=5))
    web = submission_summary(engine, submission_id)
    (front,) = submissions_page(engine)[0]
    assert status is not None and status.images_per_s is not None
    rates = {status.images_per_s, listed.images_per_s, web["images_per_s"], front["images_per_s"]}
    assert len(rates) == 1 and status.images_per_s == pytest.approx(5 / 20, rel=0.05)
    assert status.eta_s == listed.eta_s == web["eta_s"]
