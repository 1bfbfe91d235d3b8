"""Submitting a prompt file: validate every line, record the jobs in SQL, send small ones out.

The file is streamed twice and never held whole, so memory stays flat whatever its size:

1. **Validate.** Every line is parsed and checked (``producer.prompts``); only counts, the models
   it names and the bad lines are kept. A bad line refuses the whole file before anything is
   written (unless ``--skip-invalid``), and so does a model no worker could ever load
   (``producer.models``), or an option that contradicts the submission already made with the
   same key.
2. **Store.** The file is parsed again and its jobs are inserted in chunks of ``CHUNK_JOBS``, each
   chunk in a transaction of its own (COPY on PostgreSQL), with a progress bar on a terminal.

The database is the backlog: a submission of at most ``LOOPFREE_DIRECT_PUBLISH_MAX`` jobs has its
messages published right after its rows (it goes straight out); a larger one waits in the database,
and the workers' dispatcher sends it a window at a time, sharing the fleet fairly between owners
and submissions (``fleet.dispatch``). Rows are committed before any message is published, so a job
is never in the queue without its row. A crash part-way leaves rows the next submit of the same
file (same idempotency key) completes; a message lost on the way is published again by the
reconciler.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UserError
from core.jobspec import DEFAULT_IMAGE_FORMAT, ParsedJob
from core.modelinfo import canonical_model, native_size
from core.settings import Settings
from producer.prompts import JobDefaults, ParseResult, parse_prompt_file

if TYPE_CHECKING:
    from celery import Celery

    from storage.db import Engine

CHUNK_JOBS = 10_000
"""Jobs per insert transaction at most: a second or so of database time."""

CHUNK_BYTES = 8 * 1024 * 1024
"""Prompt and metadata bytes per insert transaction at most: a chunk of long prompts is fewer
jobs, so what a submit holds in memory is bounded whatever its lines look like."""


class OptionsDiffer(UserError):
    """A submission with this idempotency key exists, made with other options or another file."""


@dataclass(frozen=True)
class SubmitReport:
    submission_id: str
    created: bool  # False: the idempotency key matched an earlier submission
    jobs: int  # jobs in the file
    inserted: int  # jobs this call added
    published: int  # messages this call published (the rest wait for the dispatcher)
    skipped_lines: int  # invalid lines left out with --skip-invalid
    parse: ParseResult
    models: dict[str, int]  # jobs per model


@dataclass(frozen=True)
class FilePlan:
    """What pass 1 learned of a file: its validation result and its jobs per model."""

    parse: ParseResult
    models: dict[str, int]

    @property
    def jobs(self) -> int:
        return self.parse.job_count


def default_key(path: Path, defaults: JobDefaults) -> str:
    """Same file content and options -> same key, so a resubmit after a crash dedupes."""
    return _digests(path, _defaults_record(defaults))[0]


def _digests(path: Path, options: dict[str, Any]) -> tuple[str, str]:
    """(the default idempotency key, the sha256 of the file's content), in one read."""
    whole, content = hashlib.sha256(), hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            whole.update(block)
            content.update(block)
    whole.update(json.dumps(options, sort_keys=True, default=str).encode())
    return "sha256:" + whole.hexdigest(), content.hexdigest()


def plan_file(
    settings: Settings,
    path: Path,
    defaults: JobDefaults,
    *,
    skip_invalid: bool = False,
    format: str | None = None,
) -> FilePlan:
    """Validate ``path`` (pass 1), touching nothing: ``submit --dry-run``, and the first step of
    ``submit_file``. Keeps counts, not jobs."""
    defaults = _with_canonical_model(defaults)
    models: Counter[str] = Counter()
    resolve = _Resolver()

    def count(job: ParsedJob) -> None:
        models[resolve.model(job.spec.model)] += 1

    parsed = parse_prompt_file(
        path,
        defaults=defaults,
        skip_invalid=skip_invalid,
        model_roots=settings.model_roots,
        format=format,
        sink=count,
    )
    return FilePlan(parsed, dict(models))


def submit_file(
    settings: Settings,
    path: Path,
    defaults: JobDefaults,
    *,
    engine: Engine | None = None,
    app: Celery | None = None,
    skip_invalid: bool = False,
    key: str | None = None,
    new: bool = False,
    webhook_url: str | None = None,
    owner: str | None = None,
    format: str | None = None,
    check: Callable[[FilePlan], None] | None = None,
    progress: bool = False,
) -> SubmitReport:
    """Validate, record and (if small) publish ``path``; raises before touching anything when a
    line, a model or an option is wrong (see the module's docstring).

    ``engine`` and ``app``: the process's database engine and Celery app, built once where the
    process starts (the CLI's ``loopfree.resources``); without them, ones of this call's own are
    made and closed. ``new``: make a new submission even if this file was submitted before with
    the same options. ``check`` sees the plan before anything is written and may refuse it by
    raising (``--require-worker``, the hub check)."""
    if engine is None or app is None:
        with _own_resources(settings) as (own_engine, own_app):
            return submit_file(
                settings, path, defaults, engine=engine or own_engine, app=app or own_app,
                skip_invalid=skip_invalid, key=key, new=new, webhook_url=webhook_url,
                owner=owner, format=format, check=check, progress=progress,
            )  # fmt: skip
    from producer.options import check_submission_options
    from storage.bulk import refresh_statistics
    from storage.db import session_scope
    from storage.submissions import create_submission, find_by_key
    from taskqueue.app import check_broker

    owner = owner or settings.resolved_owner
    # Lengths the schema holds, and a public http(s) webhook address unless
    # LOOPFREE_WEBHOOK_ALLOW lists the host: one line each, before anything is read or written.
    check_submission_options(settings, webhook_url=webhook_url, key=key, source=path.name)
    plan = plan_file(settings, path, defaults, skip_invalid=skip_invalid, format=format)
    defaults = _with_canonical_model(defaults)
    record = _defaults_record(defaults)
    default, content = _digests(path, record)
    if key is None:
        key = f"{default}:{_nonce()}" if new else default
    # Fail fast, before any row is written, if the broker is down; only then is it worth saying
    # whether a worker will take the jobs.
    check_broker(app, outcome="nothing was submitted")
    if check is not None:
        check(plan)
    options = {**record, "content_sha256": content}
    with session_scope(engine) as session:
        existing = find_by_key(session, key)
        if existing is not None:
            _refuse_other_options(existing, options, webhook_url, owner, new_key_hint=new)
        ref = create_submission(
            session,
            source=path.name,
            defaults=options,
            job_count=plan.jobs,
            idempotency_key=key,
            webhook_url=webhook_url,
            owner=owner,
        )
    direct = plan.jobs if ref.created and plan.jobs <= settings.direct_publish_max else 0
    inserted, straight_out = _store_jobs(
        settings,
        engine,
        path,
        defaults,
        ref.id,
        skip_invalid=skip_invalid,
        format=format,
        resume=not ref.created,
        dispatch_below=direct,
        total=plan.jobs,
        progress=progress,
    )
    with session_scope(engine) as session:
        refresh_statistics(session, inserted)  # a listing's plan must see a million new rows
    published = _publish(app, engine, straight_out)
    return SubmitReport(
        submission_id=ref.id,
        created=ref.created,
        jobs=plan.jobs,
        inserted=inserted,
        published=published,
        skipped_lines=plan.parse.skipped_count,
        parse=plan.parse,
        models=plan.models,
    )


def _store_jobs(
    settings: Settings,
    engine: Engine,
    path: Path,
    defaults: JobDefaults,
    submission_id: str,
    *,
    skip_invalid: bool,
    format: str | None,
    resume: bool,
    dispatch_below: int,
    total: int,
    progress: bool,
) -> tuple[int, list[tuple[str, str, int]]]:
    """Pass 2: parse again and insert the jobs a chunk per transaction. Returns how many were
    inserted and the ``(id, model, priority)`` of those that go straight out."""
    from storage.db import session_scope
    from storage.submissions import insert_jobs, job_id_for

    resolve = _Resolver()
    chunk: list[ParsedJob] = []
    chunk_bytes = 0
    straight_out: list[tuple[str, str, int]] = []
    inserted = 0

    with _progress_bar(progress, total, path.name) as advance:

        def flush() -> None:
            nonlocal inserted, chunk_bytes
            with session_scope(engine) as session:
                inserted += insert_jobs(
                    session,
                    submission_id,
                    chunk,
                    skip_existing=resume,
                    dispatch_below=dispatch_below,
                )
            advance(len(chunk))
            chunk.clear()
            chunk_bytes = 0

        def take(job: ParsedJob) -> None:
            nonlocal chunk_bytes
            stored = resolve.stored(job)
            chunk.append(stored)
            chunk_bytes += len(stored.spec.prompt) + (
                len(json.dumps(stored.spec.metadata)) if stored.spec.metadata else 0
            )
            if stored.position < dispatch_below:
                job_id = job_id_for(submission_id, stored.position)
                straight_out.append((job_id, stored.spec.model, stored.spec.priority))
            if len(chunk) >= CHUNK_JOBS or chunk_bytes >= CHUNK_BYTES:
                flush()

        parse_prompt_file(
            path,
            defaults=defaults,
            skip_invalid=skip_invalid,
            model_roots=settings.model_roots,
            format=format,
            sink=take,
        )
        if chunk:
            flush()
    return inserted, straight_out


def _publish(app: Celery, engine: Engine, messages: list[tuple[str, str, int]]) -> int:
    """Publish the jobs that go straight out. If the broker fails now, they go back to the
    backlog (the dispatcher sends them); if that fails too, the reconciler publishes them once
    they look lost."""
    from storage.db import session_scope
    from storage.window import return_to_backlog
    from taskqueue.app import publish_jobs

    if not messages:
        return 0
    try:
        return publish_jobs(app, messages)
    except Exception:
        with session_scope(engine) as session:
            return_to_backlog(session, [job_id for job_id, _, _ in messages])
        raise


class _Resolver:
    """The jobs as the table keeps them: the model's canonical name (the one its queue and its
    workers use) and a concrete size (the model's native one where a line set none). Per
    distinct model, not per job: both touch the filesystem (9 s of 186 s for 100k jobs)."""

    def __init__(self) -> None:
        self._models: dict[str, tuple[str, int]] = {}

    def _lookup(self, model: str) -> tuple[str, int]:
        found = self._models.get(model)
        if found is None:
            canonical = canonical_model(model)
            found = self._models[model] = (canonical, native_size(canonical))
        return found

    def model(self, model: str) -> str:
        return self._lookup(model)[0]

    def stored(self, job: ParsedJob) -> ParsedJob:
        spec = job.spec
        model, size = self._lookup(spec.model)
        if model != spec.model:
            spec = replace(spec, model=model)
        spec = spec.resolve_size(size, size)
        return job if spec is job.spec else ParsedJob(spec, job.line_number, job.position)


def _refuse_other_options(
    existing: Any,
    options: dict[str, Any],
    webhook_url: str | None,
    owner: str,
    *,
    new_key_hint: bool,
) -> None:
    """Submitting again with a key returns the first submission, so it must be the same request:
    say which options differ and refuse (Stripe's rule for a reused idempotency key)."""
    from core.webhooks import redact_url

    recorded = dict(existing.defaults or {})
    differences = [
        f"{name} (recorded {recorded.get(name)!r}, now {value!r})"
        for name, value in options.items()
        if name in recorded and recorded[name] != value
    ]
    if (existing.webhook_url or None) != (webhook_url or None):
        differences.append(
            f"webhook (recorded {_shown(existing.webhook_url, redact_url)}, "
            f"now {_shown(webhook_url, redact_url)})"
        )
    if existing.owner != owner:
        differences.append(f"owner (recorded {existing.owner!r}, now {owner!r})")
    if not differences:
        return
    what = "; ".join(
        "the file's content differs" if item.startswith("content_sha256") else item
        for item in differences
    )
    raise OptionsDiffer(
        f"submission {existing.id} was made with this idempotency key and other options: {what}. "
        "Submit with the recorded options to resume it, or with --new (or another --key) for a "
        "new submission"
    )


def _shown(url: str | None, redact: Callable[[str], str]) -> str:
    return "none" if not url else redact(url)


def _nonce() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


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


@contextmanager
def _own_resources(settings: Settings) -> Iterator[tuple[Engine, Celery]]:
    """An engine and a Celery app for one call, closed after it."""
    from storage.db import make_engine
    from taskqueue.app import make_celery

    engine, app = make_engine(settings.resolved_database_url), make_celery(settings)
    try:
        yield engine, app
    finally:
        app.close()
        engine.dispose()


@contextmanager
def _progress_bar(show: bool, total: int, name: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar of jobs stored, on a terminal; a no-op otherwise."""
    if not show:
        yield lambda _count: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(f"storing {name}", total=total)
        yield lambda count: bar.advance(task, count)
