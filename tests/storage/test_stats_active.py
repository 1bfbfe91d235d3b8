"""Honest rates: images per second of the time work was done, one definition for every reader."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from storage import jobs as job_store
from storage.db import session_scope
from storage.models import utcnow
from storage.progress import covered_seconds, recent_throughput
from storage.stats import recent_stats

from .helpers import add_submission, mark_succeeded


def finish(engine: Engine, ids: list[str], *, started, seconds: float, group: int = 0) -> None:
    """Claim ``ids`` at ``started`` and finish them evenly over the next ``seconds``."""
    with session_scope(engine) as session:
        job_store.claim_jobs(
            session, ids, worker="w", batch_id=str(started), batch_size=len(ids), now=started
        )
        for i, job_id in enumerate(ids):
            result = job_store.JobResult(
                "s3://b/k.png", 1, "0" * 64, 1.0, 0.1, 0.25, group_size=group or None
            )
            finished = started + timedelta(seconds=seconds * (i + 1) / len(ids))
            mark_succeeded(session, job_id, result, now=finished)


def test_throughput_is_over_the_time_work_was_done_not_the_whole_window(engine: Engine) -> None:
    now = utcnow()
    created = now - timedelta(seconds=100)
    _, ids = add_submission(engine, 20, now=created)
    finish(engine, ids, started=created + timedelta(seconds=1), seconds=10)
    with session_scope(engine) as session:
        throughput = recent_throughput(session, window_s=300, now=now)
    assert throughput.images == 20
    assert throughput.active_s == pytest.approx(10.0, abs=0.01)
    assert throughput.images_per_s == pytest.approx(2.0, rel=0.01)  # 20 images in 10 s


def test_an_idle_gap_between_two_submissions_is_not_counted_as_work(engine: Engine) -> None:
    """Observed: `stats` counted the gap between two submissions as active (0.07 images/s)."""
    now = utcnow()
    _, first = add_submission(engine, 10, now=now - timedelta(seconds=280))
    _, second = add_submission(engine, 10, now=now - timedelta(seconds=40))
    finish(engine, first, started=now - timedelta(seconds=270), seconds=5)
    finish(engine, second, started=now - timedelta(seconds=30), seconds=5)
    with session_scope(engine) as session:
        throughput = recent_throughput(session, window_s=300, now=now)
    # 20 images in 10 s of work, whatever the 230 s between them.
    assert throughput.active_s == pytest.approx(10.0, abs=0.01)
    assert throughput.images_per_s == pytest.approx(2.0, rel=0.01)


def test_jobs_in_hand_count_as_work_up_to_now(engine: Engine) -> None:
    now = utcnow()
    _, ids = add_submission(engine, 3, now=now - timedelta(seconds=50))
    finish(engine, ids[:1], started=now - timedelta(seconds=40), seconds=10)
    with session_scope(engine) as session:
        job_store.claim_jobs(
            session, ids[1:], worker="w", batch_id="now", batch_size=2,
            now=now - timedelta(seconds=20),
        )  # fmt: skip
        throughput = recent_throughput(session, window_s=60, now=now)
    # [-40 s, -30 s] rendering the first, [-20 s, now] the other two: 30 s of work.
    assert throughput.active_s == pytest.approx(30.0, abs=0.05)
    assert throughput.images == 1


def test_a_job_started_before_the_window_counts_only_its_time_inside(engine: Engine) -> None:
    now = utcnow()
    _, ids = add_submission(engine, 1, now=now - timedelta(hours=1))
    finish(engine, ids, started=now - timedelta(hours=1), seconds=3570)
    with session_scope(engine) as session:
        throughput = recent_throughput(session, window_s=60, now=now)
        stats = recent_stats(session, window_s=60, now=now)
    assert throughput.active_s == pytest.approx(30.0, abs=0.01)
    assert stats.mean_group_size is None  # recorded before group sizes existed


def test_sampler_groups_are_averaged_over_jobs_beside_deliveries(engine: Engine) -> None:
    now = utcnow()
    _, ids = add_submission(engine, 20, now=now - timedelta(seconds=60))
    finish(engine, ids[:16], started=now - timedelta(seconds=50), seconds=5, group=8)
    finish(engine, ids[16:], started=now - timedelta(seconds=40), seconds=5, group=4)
    with session_scope(engine) as session:
        stats = recent_stats(session, window_s=300, now=now)
    assert stats.mean_group_size == pytest.approx((16 * 8 + 4 * 4) / 20)


def test_covered_seconds_is_the_union_of_spans_clipped_to_the_window() -> None:
    t0 = utcnow()

    def at(seconds: float):
        return t0 + timedelta(seconds=seconds)

    spans = [(at(0), at(10)), (at(5), at(15)), (at(30), at(40)), (at(-20), at(-10))]
    assert covered_seconds(spans, at(0), at(35)) == pytest.approx(15 + 5)
    assert covered_seconds([], at(0), at(10)) == 0
