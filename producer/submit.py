"""Submitting a prompt file: validate every line, record the jobs in SQL, then publish them.

Order matters: rows are committed before any message is published, so a job is never in the queue
without its row. A crash between the two leaves queued rows without messages; submitting the same
file again (same idempotency key) finds the submission, inserts only missing jobs and re-publishes
every job still queued. A duplicate message is harmless: only one delivery can claim a job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.jobspec import DEFAULT_IMAGE_FORMAT, ParsedJob
from core.modelinfo import canonical_model, native_size
from core.settings import Settings
from producer.options import check_submission_options
from producer.prompts import JobDefaults, ParseResult, parse_prompt_file

if TYPE_CHECKING:
    from celery import Celery


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
    format: str | None = None,
    check: Callable[[list[ParsedJob]], None] | None = None,
) -> SubmitReport:
    """Parse, record and publish ``path``; raises ``PromptFileError`` before touching anything.

    ``format`` (txt, jsonl, csv) overrides the file's extension; ``check`` sees the validated jobs
    before anything is written and may refuse them by raising (``--require-worker``).
    ``webhook_url``, ``key`` and the file's name must pass ``check_submission_options`` (lengths
    the schema holds; a public http(s) webhook address unless ``LOOPFREE_WEBHOOK_ALLOW`` lists
    the host)."""
    check_submission_options(settings, webhook_url=webhook_url, key=key, source=path.name)
    parsed, new_jobs = plan_file(
        settings, path, defaults, skip_invalid=skip_invalid, format=format
    )
    defaults = _with_canonical_model(defaults)
    if key is None:
        key = default_key(path, defaults)
    # Imported here so `loopfree --help` and argument errors stay instant.
    from storage.db import make_engine, session_scope
    from storage.queries import queued_job_keys
    from storage.submissions import create_submission, insert_jobs, job_id_for
    from taskqueue.app import make_celery, publish_jobs

    engine = make_engine(settings.resolved_database_url)
    app = make_celery(settings)
    # Fail fast, before any row is written, if the broker is down; only then is it worth saying
    # whether a worker will take the jobs.
    _check_broker(app)
    if check is not None:
        check(new_jobs)
    with session_scope(engine) as session:
        ref = create_submission(
            session,
            source=path.name,
            defaults=_defaults_record(defaults),
            job_count=len(new_jobs),
            idempotency_key=key,
            webhook_url=webhook_url,
        )
        # A new submission takes the COPY fast path; a resumed one skips positions it has.
        inserted = insert_jobs(session, ref.id, new_jobs, skip_existing=not ref.created)
    if ref.created:
        # Every job of a new submission is queued and its id follows from its position.
        to_publish = [
            (job_id_for(ref.id, job.position), job.spec.model, job.spec.priority)
            for job in new_jobs
        ]
    else:
        with session_scope(engine) as session:
            to_publish = queued_job_keys(session, submission_id=ref.id)
    published = publish_jobs(app, to_publish)
    return SubmitReport(
        submission_id=ref.id,
        created=ref.created,
        jobs=len(new_jobs),
        inserted=inserted,
        published=published,
        skipped_lines=parsed.skipped_count,
        parse=parsed,
    )


def plan_file(
    settings: Settings,
    path: Path,
    defaults: JobDefaults,
    *,
    skip_invalid: bool = False,
    format: str | None = None,
) -> tuple[ParseResult, list[ParsedJob]]:
    """Validate ``path`` and return its jobs as they would be stored, touching nothing:
    ``submit --dry-run``, and the first step of ``submit_file``."""
    defaults = _with_canonical_model(defaults)
    parsed = parse_prompt_file(
        path,
        defaults=defaults,
        skip_invalid=skip_invalid,
        model_roots=settings.model_roots,
        format=format,
    )
    return parsed, _as_stored(parsed.jobs)


def _as_stored(jobs: tuple[ParsedJob, ...]) -> list[ParsedJob]:
    """The jobs as the table keeps them: the model's canonical name (the one its queue and its
    workers use) and a concrete size (the model's native one where a line set none)."""
    # Per distinct model, not per job: both touch the filesystem (9 s of 186 s for 100k jobs).
    models: dict[str, tuple[str, int]] = {}
    stored = []
    for job in jobs:
        spec = job.spec
        if spec.model not in models:
            canonical = canonical_model(spec.model)
            models[spec.model] = (canonical, native_size(canonical))
        model, size = models[spec.model]
        if model != spec.model:
            spec = replace(spec, model=model)
        spec = spec.resolve_size(size, size)
        stored.append(job if spec is job.spec else ParsedJob(spec, job.line_number, job.position))
    return stored


def _with_canonical_model(defaults: JobDefaults) -> JobDefaults:
    return replace(defaults, model=canonical_model(defaults.model))


def _defaults_record(defaults: JobDefaults) -> dict[str, Any]:
    record = {
        "model": defaults.model,
        "seed": defaults.seed_base,
        "height": defaults.height,
        "width": defaults.width,
        "steps": defaults.steps,
        "priority": defaults.priority,
        "num_images": defaults.num_images,
    }
    # Only when not the default: the record feeds ``default_key``, and a PNG submission made
    # before formats existed must keep its key, so submitting it again still dedupes.
    if defaults.image_format != DEFAULT_IMAGE_FORMAT or defaults.image_quality is not None:
        record["image_format"] = defaults.image_format
        record["image_quality"] = defaults.image_quality
    return record


def _check_broker(app: Celery) -> None:
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
