"""Small builders shared by the storage tests (importable by spawned child processes too)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from storage.db import session_scope
from storage.submissions import NewJob, create_submission, insert_jobs, job_id_for


def new_jobs(count: int, *, start: int = 0, model: str = "tiny") -> list[NewJob]:
    return [
        NewJob(
            position=position,
            line_number=position + 1,
            prompt=f"a watercolour fox, variation {position}",
            seed=position,
            height=64,
            width=64,
            steps=4,
            model=model,
            metadata={"row": position},
        )
        for position in range(start, start + count)
    ]


def add_submission(
    engine: Engine,
    count: int,
    *,
    model: str = "tiny",
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
