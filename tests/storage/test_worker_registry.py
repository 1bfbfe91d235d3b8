"""The worker registry: live workers are listed, silent ones drop out after their TTL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from storage import workers as registry
from storage.db import session_scope
from storage.models import utcnow


def info(name: str, model: str = "org/model", ttl_s: float = 45.0) -> registry.WorkerInfo:
    return registry.WorkerInfo(
        name=name,
        model=model,
        queue=f"loopfree.{model}",
        host="host-a",
        pid=42,
        version="0.1.0",
        device="cuda:0",
        ttl_s=ttl_s,
    )


def test_a_worker_is_live_until_its_heartbeat_is_older_than_its_ttl(engine: Engine) -> None:
    start = utcnow()
    with session_scope(engine) as session:
        registry.announce(session, info("w1"), now=start)
    with session_scope(engine) as session:
        assert registry.beat(session, "w1", images_done=7, jobs_in_hand=3, now=start)
        live = registry.list_workers(session, now=start + timedelta(seconds=44))
        assert [(w.name, w.images_done, w.jobs_in_hand, w.device) for w in live] == [
            ("w1", 7, 3, "cuda:0")
        ]
        assert registry.list_workers(session, now=start + timedelta(seconds=46)) == []
        dead = registry.list_workers(session, include_dead=True, now=start + timedelta(seconds=46))
        assert [w.name for w in dead] == ["w1"]


def test_models_served_names_only_models_with_a_live_worker(engine: Engine) -> None:
    now = utcnow()
    with session_scope(engine) as session:
        registry.announce(session, info("a", "org/served"), now=now)
        registry.announce(session, info("b", "org/stale"), now=now - timedelta(minutes=5))
    with session_scope(engine) as session:
        served = registry.models_served(session, ["org/served", "org/stale", "org/none"])
    assert served == {"org/served"}


def test_retire_removes_the_worker_and_a_beat_then_reports_it_gone(engine: Engine) -> None:
    with session_scope(engine) as session:
        registry.announce(session, info("w"))
    with session_scope(engine) as session:
        registry.retire(session, "w")
    with session_scope(engine) as session:
        assert registry.list_workers(session, include_dead=True) == []
        assert not registry.beat(session, "w", images_done=1, jobs_in_hand=0)


def test_prune_deletes_only_rows_dead_for_longer_than_a_day(engine: Engine) -> None:
    now = utcnow()
    with session_scope(engine) as session:
        registry.announce(session, info("old"), now=now - timedelta(days=2))
        registry.announce(session, info("recent"), now=now - timedelta(hours=1))
    with session_scope(engine) as session:
        assert registry.prune(session, now=now) == 1
        names = [w.name for w in registry.list_workers(session, include_dead=True, now=now)]
    assert names == ["recent"]
