"""Aggregate helpers for ``loopfree status``: throughput, latency percentiles, batch sizes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from storage import jobs as job_store
from storage.db import session_scope
from storage.models import utcnow
from storage.stats import percentile, recent_stats

from .helpers import add_submission, mark_succeeded


def test_percentiles_interpolate_linearly_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None


def test_recent_stats_report_latency_and_batch_size(engine: Engine) -> None:
    now = utcnow()
    created = now - timedelta(seconds=40)
    _, ids = add_submission(engine, 10, now=created)
    with session_scope(engine) as session:
        # Batches of 4, 4 and 2; job i starts i seconds after creation and ends 10 s later.
        for i, job_id in enumerate(ids):
            batch = (4, 4, 2)[min(i // 4, 2)]
            start = created + timedelta(seconds=i)
            job_store.claim_jobs(
                session, [job_id], worker="w", batch_id=f"b{i // 4}", batch_size=batch, now=start
            )
            result = job_store.JobResult("s3://b/k.png", 1, "0" * 64, 1.0, 0.1, 0.25)
            finished = start + timedelta(seconds=10)
            if i == 9:
                finished = now - timedelta(minutes=10)  # outside the window: not counted
            mark_succeeded(session, job_id, result, now=finished)

    with session_scope(engine) as session:
        stats = recent_stats(session, window_s=60, now=now)

    assert stats.succeeded == 9 and stats.sample_size == 9
    assert stats.queue_wait_s.p50 == pytest.approx(4.0, abs=0.01)  # waits 0..8 s
    assert stats.queue_wait_s.p95 == pytest.approx(7.6, abs=0.01)
    assert stats.end_to_end_s.p50 == pytest.approx(14.0, abs=0.01)  # 10..18 s
    assert stats.mean_batch_size == pytest.approx((4 * 4 + 4 * 4 + 2) / 9)


def test_recent_stats_of_an_idle_queue_are_empty_not_errors(engine: Engine) -> None:
    add_submission(engine, 3)
    with session_scope(engine) as session:
        stats = recent_stats(session, window_s=30)
    assert (stats.succeeded, stats.mean_batch_size) == (0, None)
    assert stats.queue_wait_s.p50 is None and stats.end_to_end_s.p95 is None
