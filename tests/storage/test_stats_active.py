"""Honest stats: images/s over the active time, and the sampler's group sizes beside deliveries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from storage import jobs as job_store
from storage.db import session_scope
from storage.models import utcnow
from storage.stats import recent_stats

from .helpers import add_submission


def test_throughput_is_over_the_active_time_not_the_whole_window(engine: Engine) -> None:
    now = utcnow()
    created = now - timedelta(seconds=100)
    _, ids = add_submission(engine, 20, now=created)
    start = created + timedelta(seconds=1)
    with session_scope(engine) as session:
        # One delivery of 20 jobs, sampled as groups of 8, 8 and 4; all done 10 s after starting.
        job_store.claim_jobs(session, ids, worker="w", batch_id="b", batch_size=20, now=start)
        for i, job_id in enumerate(ids):
            group = 8 if i < 16 else 4
            result = job_store.JobResult(
                "s3://b/k.png", 1, "0" * 64, 1.0, 0.1, 0.25, group_size=group
            )
            finished = start + timedelta(seconds=10 * (i + 1) / len(ids))
            job_store.mark_succeeded(session, job_id, result, now=finished)

    with session_scope(engine) as session:
        stats = recent_stats(session, window_s=300, now=now)

    assert stats.images_per_s == pytest.approx(20 / 300)  # the whole window, as before
    assert stats.active_s == pytest.approx(10.0, abs=0.01)
    assert stats.active_images_per_s == pytest.approx(2.0, rel=0.01)  # 20 images in 10 s
    assert stats.mean_batch_size == pytest.approx(20)
    assert stats.mean_group_size == pytest.approx((16 * 8 + 4 * 4) / 20)


def test_a_job_started_before_the_window_counts_only_its_time_inside(engine: Engine) -> None:
    now = utcnow()
    _, ids = add_submission(engine, 1, now=now - timedelta(hours=1))
    with session_scope(engine) as session:
        job_store.claim_jobs(
            session, ids, worker="w", batch_id="b", batch_size=1, now=now - timedelta(hours=1)
        )
        result = job_store.JobResult("s3://b/k.png", 1, "0" * 64, 1.0, 0.1, 0.25)
        job_store.mark_succeeded(session, ids[0], result, now=now - timedelta(seconds=30))
    with session_scope(engine) as session:
        stats = recent_stats(session, window_s=60, now=now)
    assert stats.active_s == pytest.approx(30.0, abs=0.01)
    assert stats.mean_group_size is None  # recorded before group sizes existed
