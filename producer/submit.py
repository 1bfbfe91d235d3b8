"""Submitting a prompt file: validate every line, record the jobs in SQL, then publish them.

Order matters: rows are committed before any message is published, so a job is never in the queue
without its row. A crash between the two leaves queued rows without messages; submitting the same
file again (same idempotency key) finds the submission, inserts only missing jobs and re-publishes
every job still queued. A duplicate message is harmless: only one delivery can claim a job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.modelinfo import canonical_model, native_size
from core.settings import Settings
from producer.prompts import JobDefaults, ParseResult, parse_prompt_file


@dataclass(frozen=True)
class SubmitReport:
    submission_id: str
    created: bool  # False: the idempotency key matched an earlier submission
    jobs: int  # jobs in the submission
    inserted: int  # jobs this call added
    published: int  # messages this call published
    skipped_lines: int  # invalid lines left out with --skip-invalid
    parse: ParseResult


def default_key(path: Path, defaults: JobDefaults) -> str:
    """Same file content and options -> same key, so a resubmit after a crash dedupes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    options = _defaults_record(defaults)
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    return "sha256:" + digest.hexdigest()


def submit_file(
    settings: Settings,
    path: Path,
    defaults: JobDefaults,
    *,
    skip_invalid: bool = False,
    key: str | None = None,
    webhook_url: str | None = None,
) -> SubmitReport:
    """Parse, record and publish ``path``; raises ``PromptFileError`` before touching anything."""
    defaults = _with_canonical_model(defaults)
    parsed = parse_prompt_file(
        path, defaults=defaults, skip_invalid=skip_invalid, model_roots=settings.model_roots
    )
    if key is None:
        key = default_key(path, defaults)
    # Imported here so `loopfree --help` and argument errors stay instant.
    from storage.db import make_engine, session_scope
    from storage.submissions import NewJob, create_submission, insert_jobs, job_id_for
    from taskqueue.app import make_celery, publish_jobs

    # Per distinct model, not per job: both touch the filesystem (9 s of 186 s for 100k jobs).
    models: dict[str, tuple[str, int]] = {}
    new_jobs = []
    for parsed_job in parsed.jobs:
        spec = parsed_job.spec
        if spec.model not in models:
            canonical = canonical_model(spec.model)
            models[spec.model] = (canonical, native_size(canonical))
        model, size = models[spec.model]
        spec = spec.resolve_size(size, size)
        new_jobs.append(
            NewJob(
                position=parsed_job.position,
                line_number=parsed_job.line_number,
                prompt=spec.prompt,
                seed=spec.seed,
                height=spec.height,
                width=spec.width,
                steps=spec.steps,
                model=model,
                priority=spec.priority,
                metadata=spec.metadata,
            )
        )

    engine = make_engine(settings.resolved_database_url)
    app = make_celery(settings)
    # Fail fast, before any row is written, if the broker is down.
    _check_broker(app)
    with session_scope(engine) as session:
        ref = create_submission(
            session,
            source=path.name,
            defaults=_defaults_record(defaults),
            job_count=len(new_jobs),
            idempotency_key=key,
            webhook_url=webhook_url,
        )
        before = 0 if ref.created else _count_jobs(session, ref.id)
        # A new submission takes the COPY fast path; a resumed one skips positions it has.
        insert_jobs(session, ref.id, new_jobs, skip_existing=not ref.created)
    if ref.created:
        # Every job of a new submission is queued and its id follows from its position.
        to_publish = [
            (job_id_for(ref.id, job.position), job.model, job.priority) for job in new_jobs
        ]
    else:
        with session_scope(engine) as session:
            to_publish = _queued_jobs(session, ref.id)
    published = publish_jobs(app, to_publish)
    return SubmitReport(
        submission_id=ref.id,
        created=ref.created,
        jobs=len(new_jobs),
        inserted=len(new_jobs) - before,
        published=published,
        skipped_lines=parsed.skipped_count,
        parse=parsed,
    )


def _with_canonical_model(defaults: JobDefaults) -> JobDefaults:
    from dataclasses import replace

    return replace(defaults, model=canonical_model(defaults.model))


def _defaults_record(defaults: JobDefaults) -> dict[str, Any]:
    return {
        "model": defaults.model,
        "seed": defaults.seed_base,
        "height": defaults.height,
        "width": defaults.width,
        "steps": defaults.steps,
        "priority": defaults.priority,
        "num_images": defaults.num_images,
    }


def _count_jobs(session, submission_id: str) -> int:
    from sqlalchemy import func, select

    from storage.models import Job

    return session.scalar(select(func.count()).where(Job.submission_id == submission_id)) or 0


def _queued_jobs(session, submission_id: str) -> list[tuple[str, str, int]]:
    from sqlalchemy import select

    from storage.models import Job, JobStatus

    rows = session.execute(
        select(Job.id, Job.model, Job.priority)
        .where(Job.submission_id == submission_id, Job.status == JobStatus.QUEUED)
        .order_by(Job.position)
    )
    return [(row.id, row.model, row.priority) for row in rows]


def _check_broker(app) -> None:
    from core.errors import BrokerUnavailable
    from core.settings import mask_url

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.3)
    except Exception as error:  # noqa: BLE001 - kombu raises transport-specific errors
        raise BrokerUnavailable(
            f"the broker at {mask_url(app.conf.broker_url)} did not answer ({error}); nothing "
            "was submitted. Start it (or fix LOOPFREE_BROKER_URL) and submit again"
        ) from error
