"""The database is the backlog, Redis a bounded window, filled fairly (``fleet.dispatch``).

The plan is a pure function (tested on its own); the rest runs on a real database (SQLite and
PostgreSQL) and the real Redis: ``top_up`` fills the window, and a simulated worker pops the
messages in the broker's own order, claims and finishes them, and asks for a top-up after every
batch, as a worker's dispatch thread does. Shares are counted on what the simulated fleet
rendered, the only thing that matters to the people waiting.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from core.jobspec import PRIORITY_LEVELS
from core.settings import Settings
from fleet.dispatch import WindowSizing, plan_shares, top_up
from storage import jobs as job_store
from storage.db import session_scope
from storage.models import utcnow
from storage.submissions import create_submission, insert_jobs
from storage.window import FlowState, window_size
from taskqueue.app import make_celery, queue_name
from taskqueue.redis_lists import queue_lists
from tests.conftest import REDIS_URL, redis_client
from tests.harness import job_result, parsed_jobs
from tests.storage.helpers import mark_succeeded

MODEL = "dispatch-test/model"
NOW = utcnow()


def flow(owner: str, sid: str, backlog: int, *, window: int = 0, priority: int = 5, age: int = 0):
    return FlowState(
        key=(sid, MODEL, priority),
        owner=owner,
        created_at=NOW - timedelta(seconds=age),
        backlog=backlog,
        in_window=window,
    )


# -- the plan -------------------------------------------------------------------------------------


def test_a_lone_submission_gets_the_whole_room() -> None:
    assert plan_shares([flow("ada", "s1", 1_000)], 96) == {("s1", MODEL, 5): 96}


def test_two_owners_get_half_each_and_a_late_one_is_brought_level_first() -> None:
    even = plan_shares([flow("ada", "s1", 1_000, age=10), flow("bob", "s2", 1_000)], 100)
    assert even == {("s1", MODEL, 5): 50, ("s2", MODEL, 5): 50}
    # ada holds 90 of the window already: bob's new submission gets the room until level.
    late = plan_shares([flow("ada", "s1", 1_000, window=90), flow("bob", "s2", 20)], 16)
    assert late == {("s2", MODEL, 5): 16}


def test_owners_share_by_weight_and_submissions_share_an_owners_part() -> None:
    flows = [
        flow("ada", "a1", 1_000, age=3),
        flow("ada", "a2", 1_000, age=2),
        flow("bob", "b1", 1_000, age=1),
    ]
    plan = plan_shares(flows, 90, {"bob": 2.0})
    assert plan == {("a1", MODEL, 5): 15, ("a2", MODEL, 5): 15, ("b1", MODEL, 5): 60}


def test_priority_classes_are_strict_and_the_room_left_goes_down() -> None:
    high, normal = PRIORITY_LEVELS["high"], PRIORITY_LEVELS["normal"]
    flows = [flow("ada", "s1", 1_000, priority=normal), flow("bob", "s2", 30, priority=high)]
    assert plan_shares(flows, 100) == {("s2", MODEL, high): 30, ("s1", MODEL, normal): 70}


def test_a_flow_never_gets_more_than_its_backlog_and_the_rest_is_shared_on() -> None:
    plan = plan_shares([flow("ada", "s1", 5), flow("bob", "s2", 1_000)], 50)
    assert plan == {("s1", MODEL, 5): 5, ("s2", MODEL, 5): 45}


def test_the_window_is_sized_from_the_fleet_within_its_bounds() -> None:
    sizing = dict(max_batch=16, prefetch_batches=4, refill_every_s=1.0, floor=64, ceiling=10_000)
    assert WindowSizing(live_workers=1, images_per_s=0, **sizing).target == 96
    assert WindowSizing(live_workers=10, images_per_s=0, **sizing).target == 960
    # A fast fleet drains more than its prefetch between two refills: that much more.
    assert WindowSizing(live_workers=1, images_per_s=200, **sizing).target == 96 + 400
    assert WindowSizing(live_workers=0, images_per_s=0, **sizing).target == 64
    assert WindowSizing(live_workers=500, images_per_s=0, **sizing).target == 10_000


# -- the window on a real database and Redis -------------------------------------------------------


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[object]:
    client = redis_client(REDIS_URL)
    client.flushdb()
    made = make_celery(Settings(home=tmp_path / "home", broker_url=REDIS_URL))
    try:
        yield made
    finally:
        client.flushdb()
        made.close()


def submit(engine: Engine, owner: str, count: int, *, priority: int = 5) -> str:
    with session_scope(engine) as session:
        ref = create_submission(
            session, source=f"{owner}.txt", defaults={}, job_count=count, owner=owner
        )
        jobs = parsed_jobs(count, model=MODEL, prompt="p {position}", priority=priority)
        insert_jobs(session, ref.id, jobs, skip_existing=False)
    return ref.id


def fill(engine: Engine, app, *, workers: int = 1, ceiling: int = 10_000, weights=None):
    return top_up(
        engine,
        app,
        MODEL,
        live_workers=workers,
        max_batch=16,
        prefetch_batches=4,
        refill_every_s=1.0,
        floor=16,
        ceiling=ceiling,
        weights=weights,
    )


def pop(app, count: int) -> list[str]:
    """Up to ``count`` job ids off the model's queue, in the order a worker's BRPOP takes them
    (priority steps in order, oldest first within each)."""
    client = redis_client(REDIS_URL)
    taken: list[str] = []
    for key in queue_lists(app, queue_name(MODEL)):
        while len(taken) < count:
            raw = client.rpop(key)
            if raw is None:
                break
            taken.append(json.loads(raw)["headers"]["id"])
    return taken


def render(engine: Engine, job_ids: list[str]) -> None:
    """What a worker records for a batch: claimed, then succeeded."""
    with session_scope(engine) as session:
        claimed = job_store.claim_jobs(
            session, job_ids, worker="sim", batch_id=uuid.uuid4().hex, batch_size=len(job_ids)
        )
        for job_id in claimed:
            mark_succeeded(session, job_id, job_result(job_id))


def owners_of(engine: Engine, job_ids: list[str]) -> list[str]:
    from storage.queries import load_jobs
    from storage.submissions import get_submission

    with session_scope(engine) as session:
        return [
            get_submission(session, job.submission_id).owner for job in load_jobs(session, job_ids)
        ]


def drain(engine: Engine, app, batches: int, **fill_options) -> list[str]:
    """A worker's life, simplified: pop a batch, render it, top the window up. Returns the ids
    rendered, in order."""
    rendered: list[str] = []
    for _ in range(batches):
        batch = pop(app, 16)
        if not batch:
            break
        render(engine, batch)
        rendered += batch
        fill(engine, app, **fill_options)
    return rendered


def messages(app) -> int:
    client = redis_client(REDIS_URL)
    return sum(client.llen(key) for key in queue_lists(app, queue_name(MODEL)))


def test_a_large_submission_waits_in_the_database_and_redis_holds_only_the_window(
    engine: Engine, app
) -> None:
    submit(engine, "ada", 2_000)
    assert messages(app) == 0  # nothing goes out by itself: the dispatcher sends it
    report = fill(engine, app)
    assert (report.window, report.target, report.total) == (0, 96, 96)
    assert messages(app) == 96
    with session_scope(engine) as session:
        assert window_size(session, MODEL) == 96
    assert fill(engine, app).total == 0  # full: nothing more until workers drain it
    assert messages(app) == 96
    fill(engine, app, ceiling=50, workers=10)
    assert messages(app) == 96  # a ceiling below the window sends nothing, takes nothing back


def test_a_small_late_submission_is_done_within_twice_its_size_plus_a_window(
    engine: Engine, app
) -> None:
    """Observed: a teammate's 20-job submission waited behind all of a 1M-job one."""
    submit(engine, "ada", 3_000)
    fill(engine, app)
    bob = submit(engine, "bob", 20)
    rendered = drain(engine, app, batches=40)
    bob_done = [i for i, owner in enumerate(owners_of(engine, rendered)) if owner == "bob"]
    assert len(bob_done) == 20
    assert bob_done[-1] < 2 * (20 + 96), f"bob's last job was the {bob_done[-1]}th rendered"
    with session_scope(engine) as session:
        from storage.queries import count_by_status

        assert count_by_status(session, submission_id=bob)[job_store.JobStatus.SUCCEEDED] == 20


def test_two_owners_with_large_backlogs_share_the_fleet_evenly(engine: Engine, app) -> None:
    submit(engine, "ada", 3_000)
    fill(engine, app)  # ada alone: the first window is all hers
    submit(engine, "bob", 3_000)
    rendered = drain(engine, app, batches=70)[96:]  # after that first window
    shares = Counter(owners_of(engine, rendered))
    assert abs(shares["ada"] / len(rendered) - 0.5) <= 0.05, shares


def test_an_owner_weighed_twice_gets_two_thirds(engine: Engine, app) -> None:
    submit(engine, "ada", 3_000)
    submit(engine, "bob", 3_000)
    fill(engine, app, weights={"ada": 2.0})
    rendered = drain(engine, app, batches=60, weights={"ada": 2.0})
    shares = Counter(owners_of(engine, rendered))
    assert abs(shares["ada"] / len(rendered) - 2 / 3) <= 0.05, shares


def test_a_high_priority_submission_goes_before_the_normal_backlog(engine: Engine, app) -> None:
    submit(engine, "ada", 1_000)
    fill(engine, app)
    urgent = submit(engine, "bob", 16, priority=PRIORITY_LEVELS["high"])
    fill(engine, app)  # no room: the window is full of ada's normal jobs
    drain(engine, app, batches=1)  # one batch rendered; the top-up sends bob's high ones
    # The broker serves the high list first: bob's jobs are the very next batch.
    assert set(owners_of(engine, pop(app, 16))) == {"bob"}
    assert urgent


def test_a_window_lost_with_redis_is_published_again_and_only_the_window(
    engine: Engine, app
) -> None:
    """Redis loses its data (a restart without persistence, FLUSHALL): the reconciler finds the
    window jobs nobody vouches for and publishes them again; the backlog stays in the database."""
    from fleet.reconcile import reconcile

    submit(engine, "ada", 2_000)
    fill(engine, app)
    redis_client(REDIS_URL).flushdb()
    assert messages(app) == 0
    report = reconcile(engine, app, stuck_after_s=0, publish_when_blind=False)
    assert (report.republished, report.window_checked) == (96, 96)
    assert messages(app) == 96
    with session_scope(engine) as session:
        assert window_size(session, MODEL) == 96
    # Nothing stale, nothing read: a pass costs the window, not the 1,904 jobs behind it.
    assert reconcile(engine, app, stuck_after_s=3600).window_checked == 0


def test_a_cancel_takes_the_window_back_from_redis_and_the_backlog_stops(
    engine: Engine, app
) -> None:
    from status.queries import cancel, submission_status

    keep = submit(engine, "bob", 200)
    doomed = submit(engine, "ada", 5_000)
    fill(engine, app)
    before = messages(app)
    assert before == 96
    report = cancel(engine, app, doomed, budget_s=0)
    # Its window's messages left Redis at once; bob's stay.
    assert messages(app) == before - report.cancelled
    assert 0 < report.cancelled < 96 and report.remaining == 5_000 - report.cancelled
    assert fill(engine, app).sent.keys() <= {(keep, MODEL, 5)}  # nothing more of ada's is sent
    # The fleet's reconcile pass moves the rest, a chunk per transaction.
    from fleet.reconcile import reconcile

    assert reconcile(engine, app, stuck_after_s=3600, cancel_chunks=None).cancelled == (
        report.remaining
    )
    status = submission_status(engine, doomed)
    assert status is not None and status.finished
    assert status.counts["cancelled"] == 5_000 and status.counts["queued"] == 0
