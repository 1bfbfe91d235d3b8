"""Small builders shared by the storage tests (importable by spawned child processes too)."""

from __future__ import annotations

import multiprocessing
import time
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from core.jobspec import ParsedJob
from storage.db import session_scope
from storage.jobs import JobResult, Owner, mark_batch_succeeded
from storage.submissions import create_submission, insert_jobs, job_id_for
from tests.harness import parsed_jobs


def mark_succeeded(
    session: Any,
    job_id: str,
    result: JobResult,
    *,
    owner: Owner | None = None,
    now: datetime | None = None,
) -> bool:
    """running -> succeeded for one job: ``mark_batch_succeeded`` of one (the worker records a
    delivery at a time; tests often finish one job)."""
    return bool(mark_batch_succeeded(session, [(job_id, result)], owner=owner, now=now))


def queued_ids(session: Any, *, limit: int) -> list[str]:
    """The oldest queued jobs' ids, as a worker's broker would hand them over."""
    from sqlalchemy import select

    from storage.models import Job, JobStatus

    statement = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED)
        .order_by(Job.created_at, Job.position)
        .limit(limit)
    )
    return list(session.scalars(statement))


def new_jobs(count: int, *, start: int = 0, model: str = "test/tiny") -> list[ParsedJob]:
    """64 px jobs whose seed is their position and whose metadata names their row."""
    return parsed_jobs(count, start=start, model=model, metadata=lambda position: {"row": position})


def add_submission(
    engine: Engine,
    count: int,
    *,
    model: str = "test/tiny",
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> tuple[str, list[str]]:
    """Insert a submission with ``count`` queued jobs; return its id and the job ids in order."""
    with session_scope(engine) as session:
        ref = create_submission(
            session,
            source="prompts.txt",
            defaults={"steps": 4},
            job_count=count,
            idempotency_key=idempotency_key,
            now=now,
        )
        insert_jobs(session, ref.id, new_jobs(count, model=model), now=now)
    return ref.id, [job_id_for(ref.id, position) for position in range(count)]


def race_to_claim(
    url: str, job_ids: list[str], worker: str, chunk: int, start: object
) -> list[str]:
    """Child-process body: wait at the barrier, then claim all ``job_ids`` in random chunks (each
    process shuffles differently, so both keep colliding), one transaction per chunk; return
    what this process won."""
    import random

    from storage.db import make_engine
    from storage.jobs import claim_jobs

    job_ids = random.Random(worker).sample(job_ids, len(job_ids))
    engine = make_engine(url)
    won: list[str] = []
    try:
        with engine.connect() as connection:  # connected before the start, not during the race
            connection.exec_driver_sql("SELECT 1")
        start.wait()  # type: ignore[attr-defined]
        for begin in range(0, len(job_ids), chunk):
            with session_scope(engine) as session:
                won += claim_jobs(
                    session,
                    job_ids[begin : begin + chunk],
                    worker=worker,
                    batch_id=f"{worker}-{begin}",
                    batch_size=chunk,
                )
            # A worker samples between two claims. Back to back, one process can take SQLite's
            # write lock again before the other's busy handler (sleeping in growing steps)
            # wakes, and win every chunk: seen once in CI.
            time.sleep(0.005)
    finally:
        engine.dispose()
    return won


def in_processes(*calls: tuple[Any, ...]) -> list[Any]:
    """Run ``function(*args, barrier)`` for each ``(function, *args)`` in its own spawned process,
    all released together by one barrier; return their results in order, or raise the first
    child's error."""
    # forkserver: children fork from a clean server process (no threads, no open connections,
    # like separately started processes) that imported SQLAlchemy and this module once, instead
    # of every child paying ~2 s of imports as with "spawn".
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    barrier = context.Barrier(len(calls))
    results = context.Queue()
    children = [
        context.Process(target=_child, args=(index, call, barrier, results), daemon=True)
        for index, call in enumerate(calls)
    ]
    for child in children:
        child.start()
    outcomes = dict(results.get(timeout=120) for _ in children)
    for child in children:
        child.join(timeout=10)
    for index in range(len(calls)):
        if isinstance(outcomes[index], BaseException):
            raise outcomes[index]
    return [outcomes[index] for index in range(len(calls))]


def _child(index: int, call: tuple[Any, ...], barrier: Any, results: Any) -> None:
    function, *args = call
    try:
        results.put((index, function(*args, barrier)))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which re-raises it
        results.put((index, RuntimeError(f"child {index} failed: {exc!r}")))


def produce(url: str, submissions: int, jobs_each: int, start: object) -> int:
    """Child-process body: insert submissions one transaction at a time, like a producer."""
    from storage.db import make_engine

    engine = make_engine(url)
    try:
        start.wait()  # type: ignore[attr-defined]
        for _ in range(submissions):
            add_submission(engine, jobs_each)
    finally:
        engine.dispose()
    return submissions * jobs_each


def work(url: str, expected: int, start: object, deadline_s: float = 60.0) -> int:
    """Child-process body: claim and finish queued jobs until ``expected`` are done (a worker)."""
    import time

    from storage.db import make_engine
    from storage.jobs import claim_jobs

    engine = make_engine(url)
    done = 0
    give_up = time.monotonic() + deadline_s
    try:
        start.wait()  # type: ignore[attr-defined]
        while done < expected and time.monotonic() < give_up:
            with session_scope(engine) as session:
                queued = queued_ids(session, limit=16)
                claimed = claim_jobs(session, queued, worker="w", batch_id="b", batch_size=16)
            with session_scope(engine) as session:
                for job_id in claimed:
                    result = JobResult(f"file:///{job_id}.png", 1, "0" * 64, 0.0, 0.0, 0.0)
                    done += mark_succeeded(session, job_id, result)
    finally:
        engine.dispose()
    return done
