"""Fixtures for the fleet tools: a migrated database (SQLite and PostgreSQL), jobs in known states
with known timings, and a uniquely named model queue on the real Redis.

The database fixtures come from ``tests/conftest.py`` (``db_url`` runs a test on both backends);
like those, the Redis fixture fails under ``CI=true`` instead of skipping.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from migrations.runner import upgrade
from storage import jobs as job_store
from storage.db import make_engine, session_scope
from storage.models import utcnow
from storage.submissions import create_submission, insert_jobs, job_id_for
from tests.conftest import REDIS_URL, redis_client
from tests.harness import delete_queue_keys, job_result, parsed_jobs
from tests.storage.helpers import mark_succeeded

MODEL_A = "fleet-test/busy"
MODEL_B = "fleet-test/idle"


@pytest.fixture()
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a freshly migrated database (SQLite file, then PostgreSQL)."""
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def add_jobs(engine: Engine, model: str, count: int, *, now: datetime | None = None) -> list[str]:
    """Insert ``count`` queued jobs of ``model`` in a new submission; returns their ids."""
    with session_scope(engine) as session:
        ref = create_submission(session, source="fleet-test", defaults={}, job_count=count, now=now)
        jobs = parsed_jobs(count, model=model, prompt="prompt {position}")
        insert_jobs(session, ref.id, jobs, skip_existing=False, now=now)
    return [job_id_for(ref.id, i) for i in range(count)]


def run_batch(
    engine: Engine, job_ids: Sequence[str], *, worker: str, start: datetime, end: datetime
) -> None:
    """What a worker records for one batch: claimed at ``start``, every result at ``end``."""
    with session_scope(engine) as session:
        claimed = job_store.claim_jobs(
            session,
            job_ids,
            worker=worker,
            batch_id=uuid.uuid4().hex,
            batch_size=len(job_ids),
            now=start,
        )
        assert sorted(claimed) == sorted(job_ids)
        for job_id in job_ids:
            result = job_result(job_id, sample_s=0.5, gpu_share_s=0.5 / len(job_ids))
            assert mark_succeeded(session, job_id, result, now=end)


@dataclass(frozen=True)
class Seeded:
    """What ``seeded`` put in the database, for assertions."""

    base: datetime
    median_rate_a: float  # images per busy second, the median over MODEL_A's measured workers
    rate_b: float


@pytest.fixture()
def seeded(engine: Engine) -> Seeded:
    """MODEL_A: 17 succeeded (one of them two days ago), 2 running, 3 queued, 1 failed and
    1 cancelled, so 5 pending. MODEL_B: 2 succeeded, nothing pending.

    MODEL_A's workers within the last 24 hours:

    * w1: 4 jobs claimed at 0 s, done at 2 s, and 4 claimed at 1 s, done at 3 s (overlapping):
      8 jobs in 3 busy seconds = 2.667/s
    * w2: 4 jobs claimed at 10 s, done at 11 s = 4/s
    * w3: 2 jobs from 20 s to 21 s, 2 more from 100 s to 101 s: 4 jobs in 2 busy seconds = 2/s
      (the 79 idle seconds between its batches do not count)

    The median is 2.667/s. w-old's batch (1 job in 1 ms, two days ago) lies outside the lookback;
    if it counted, the median would move to 3.33/s.
    """
    base = utcnow() - timedelta(hours=1)

    def at(seconds: float) -> datetime:
        return base + timedelta(seconds=seconds)

    a = add_jobs(engine, MODEL_A, 24, now=base - timedelta(days=3))
    run_batch(engine, a[0:4], worker="w1", start=at(0), end=at(2))
    run_batch(engine, a[4:8], worker="w1", start=at(1), end=at(3))
    run_batch(engine, a[8:12], worker="w2", start=at(10), end=at(11))
    run_batch(engine, a[12:14], worker="w3", start=at(20), end=at(21))
    run_batch(engine, a[14:16], worker="w3", start=at(100), end=at(101))
    two_days_ago = base - timedelta(days=2)
    run_batch(
        engine,
        a[16:17],
        worker="w-old",
        start=two_days_ago,
        end=two_days_ago + timedelta(milliseconds=1),
    )
    with session_scope(engine) as session:
        claimed = job_store.claim_jobs(
            session, a[17:20], worker="w5", batch_id="b5", batch_size=3, now=at(200)
        )
        assert len(claimed) == 3
        assert job_store.mark_failed(session, a[19], "boom", now=at(201))
        assert [row[0] for row in job_store.cancel_queued(session, job_ids=a[20:21])] == a[20:21]
    # a[21:24] stay queued.

    b = add_jobs(engine, MODEL_B, 2, now=base - timedelta(minutes=1))
    run_batch(engine, b, worker="wb", start=at(0), end=at(4))
    return Seeded(base=base, median_rate_a=8 / 3, rate_b=0.5)


@pytest.fixture()
def redis_broker_url() -> str:
    """The test Redis, which must answer; nothing in it is flushed (see ``unique_model``)."""
    redis_client(REDIS_URL).close()
    return REDIS_URL


@pytest.fixture()
def unique_model(redis_broker_url: str) -> Iterator[str]:
    """A model name no other test uses; its queue's keys are deleted afterwards."""
    from taskqueue.app import queue_name

    model = f"fleet-test/{uuid.uuid4().hex[:12]}"
    try:
        yield model
    finally:
        delete_queue_keys(redis_broker_url, queue_name(model))
