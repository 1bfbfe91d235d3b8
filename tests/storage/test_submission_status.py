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

from .helpers import add_submission


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
        for job_id in ids[:6]:  # 6 finished within the last minute: 0.1 images/s
            job_store.mark_succeeded(session, job_id, result, now=now - timedelta(seconds=30))
    status = submission_status(engine, submission_id)
    assert status is not None and not status.finished
    assert status.images_per_s == pytest.approx(6 / 60, rel=0.05)
    assert status.eta_s == pytest.approx(4 / (6 / 60), rel=0.05)
    assert "ETA" in (status.waiting_note() or "")
