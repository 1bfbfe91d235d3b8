"""A submission through the API: the caller's owner, its quotas, then ``submit_file``.

The jobs go through ``producer.submit.submit_file``, the CLI's intake (two streamed passes:
validate, then insert in chunks), with the token's owner, so the fair-share dispatcher shares the
fleet between this token's work and everyone else's. What the API adds, in ``submit_file``'s
``check`` (after every line is validated, before anything is written):

- **Models.** A local model folder is refused unless ``LOOPFREE_MODEL_ROOTS`` is set (then the
  parser has checked the folder lies under it): a remote caller must not point workers at paths
  of their choosing. Hub ids are checked as ``submit`` checks them (``producer.models``).
- **Jobs open at once** (``--quota-queued``): the owner's open jobs plus this submission's must
  fit, checked under the owner's lock, held until the jobs are written (``storage.usage``).
- **Cost per UTC day** (``--quota-daily-images``, in units of a 512 x 512 image at 4 steps):
  charged by one guarded upsert before the jobs are written, refunded if the submit fails or
  turns out to be an earlier one. A submission's cost is measured by a pass of the same parser
  over the file before ``submit_file`` runs (only for tokens with a daily quota).

**Idempotency.** ``Idempotency-Key: K`` has ``submit --key K``'s meaning within the owner (it is
stored as ``api:{owner}:{K}``, so two owners' keys never meet): the same key and request again
return the first submission (adding what a failed first attempt left out); the same key with
other jobs or options is a 409. Without the header every request makes a new submission (the
Python client sends a fresh key per ``submit`` call, so its retries are safe).
"""

from __future__ import annotations

import math
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.intake import Upload
from api.problems import Problem
from core.jobspec import ParsedJob
from core.modelinfo import canonical_model, native_size
from core.settings import Settings
from producer.prompts import JobDefaults, parse_prompt_file
from producer.submit import FilePlan, submit_file
from storage.db import Engine, session_scope
from storage.submissions import find_by_key
from storage.tokens import Caller
from storage.usage import (
    PIXEL_STEPS_PER_UNIT,
    charge_day,
    open_jobs,
    owner_lock,
    refund_day,
    spent_on,
    units,
)

if TYPE_CHECKING:
    from celery import Celery

MAX_KEY_CHARS = 200
"""Longest ``Idempotency-Key``: the stored key adds ``api:{owner}:`` and must fit 255."""

OWNER_LOCK_WAIT_S = 60.0
"""How long a submit waits for another of the same owner (with a queued quota) to be written."""

QUEUED_RETRY_AFTER_S = 30
"""What a refusal of the jobs-open quota asks to wait: the fleet finishes jobs meanwhile."""

SUBMITS_AT_ONCE = 4
"""Submits one API process runs at a time; more wait their turn (holding no connection). A
submit is CPU work (two or three parses of the file) and takes up to two database connections
at once (its owner's lock and a transaction): four keep two cores busy and stay far inside the
engine's pool, so waiters can never take every connection the running submits need."""

_SUBMITS = threading.BoundedSemaphore(SUBMITS_AT_ONCE)


@dataclass
class Intake:
    """What a submit through the API did, beside the submission it made or found."""

    submission_id: str
    created: bool
    jobs: int
    inserted: int
    published: int
    skipped_lines: int
    skipped: list[dict[str, Any]]
    models: dict[str, int]
    cost_units: float | None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "jobs": self.jobs,
            "inserted": self.inserted,
            "published": self.published,
            "skipped_lines": self.skipped_lines,
            "skipped": self.skipped,
            "models": self.models,
            "cost_units": self.cost_units,
            "warnings": self.warnings,
        }


def stored_key(caller: Caller, key: str | None) -> str | None:
    """The idempotency key as stored: scoped to the owner, so owners' keys never collide."""
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_KEY_CHARS or not key.isprintable() or not key.isascii():
        raise Problem(
            400,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters (a UUID "
            "is a good one)",
        )
    return f"api:{caller.owner}:{key}"


def submit(
    settings: Settings,
    engine: Engine,
    app: Celery,
    caller: Caller,
    upload: Upload,
    key: str | None,
    *,
    now: datetime,
) -> Intake:
    """Validate, check the quotas and store ``upload`` for ``caller`` (in a worker thread)."""
    key = stored_key(caller, key)
    known = False
    if key is not None:
        with session_scope(engine) as session:
            known = find_by_key(session, key) is not None
    with _SUBMITS:
        return _submit(settings, engine, app, caller, upload, key, known, now)


def _submit(
    settings: Settings,
    engine: Engine,
    app: Celery,
    caller: Caller,
    upload: Upload,
    key: str | None,
    known: bool,
    now: datetime,
) -> Intake:
    from producer.models import check_models
    from storage.workers import list_workers

    options = upload.options
    defaults = options.defaults(settings)
    day = now.astimezone(timezone.utc).date()
    cost = None
    if caller.quota_daily_units is not None and not known:
        cost = measure_cost(settings, upload, defaults)
    warnings: list[str] = []
    charged: list[tuple[date, int, int]] = []

    def check(plan: FilePlan) -> None:
        _check_local_models(settings, plan)
        with session_scope(engine) as session:
            live = {row.model for row in list_workers(session)}
        warnings.extend(check_models(sorted(plan.models), live))
        unserved = sorted(model for model in plan.models if model not in live)
        if unserved:
            warnings.append(
                f"no live worker serves {', '.join(unserved)}; its jobs wait until one starts"
            )
        if known:
            return  # an earlier submission: it was counted against the quotas when made
        if caller.quota_queued is not None:
            held.enter_context(owner_lock(engine, caller.owner, timeout_s=OWNER_LOCK_WAIT_S))
            _check_open(engine, caller, plan.jobs)
        if cost is not None and caller.quota_daily_units is not None:
            _charge(engine, caller, day, cost, plan.jobs, now)
            charged.append((day, cost, plan.jobs))

    with ExitStack() as held:
        try:
            report = submit_file(
                settings,
                upload.path,
                defaults,
                engine=engine,
                app=app,
                skip_invalid=options.skip_invalid,
                key=key,
                new=key is None,
                webhook_url=options.webhook_url,
                owner=caller.owner,
                format=upload.format,
                check=check,
            )
        except BaseException:
            _refund(engine, caller, charged)
            raise
        if not report.created:
            _refund(engine, caller, charged)
    return Intake(
        submission_id=report.submission_id,
        created=report.created,
        jobs=report.jobs,
        inserted=report.inserted,
        published=report.published,
        skipped_lines=report.skipped_lines,
        skipped=[
            {"line": error.line_number, "detail": error.reason}
            for error in report.parse.skipped[:1000]
        ],
        models=report.models,
        cost_units=None if cost is None else units(cost),
        warnings=warnings,
    )


def measure_cost(settings: Settings, upload: Upload, defaults: JobDefaults) -> int:
    """The pixel-steps of ``upload``'s jobs: a pass of the same parser, sizes resolved to the
    model's native one where a line sets none (as ``submit_file`` stores them)."""
    native: dict[str, int] = {}
    total = 0

    def add(job: ParsedJob) -> None:
        nonlocal total
        spec = job.spec
        if spec.height is None or spec.width is None:
            size = native.get(spec.model)
            if size is None:
                size = native[spec.model] = native_size(canonical_model(spec.model))
            spec = spec.resolve_size(size, size)
        total += int(spec.width) * int(spec.height) * spec.steps

    parse_prompt_file(
        upload.path,
        defaults=defaults,
        skip_invalid=upload.options.skip_invalid,
        model_roots=settings.model_roots,
        format=upload.format,
        sink=add,
    )
    return total


def _check_local_models(settings: Settings, plan: FilePlan) -> None:
    if settings.model_roots:
        return  # the parser has checked that every local folder lies under a root
    local = sorted(model for model in plan.models if Path(model).is_absolute())
    if local:
        raise Problem(
            422,
            "local-model",
            "Local model folders are not taken",
            f"model {local[0]!r} is a folder on the server; the API takes hub ids, or folders "
            "under LOOPFREE_MODEL_ROOTS once an operator sets it",
        )


def _check_open(engine: Engine, caller: Caller, jobs: int) -> None:
    assert caller.quota_queued is not None
    with session_scope(engine) as session:
        current = open_jobs(session, caller.owner)
    if current + jobs > caller.quota_queued:
        raise Problem(
            429,
            "quota-exceeded",
            "Quota of jobs open at once exceeded",
            f"quota-queued: owner {caller.owner!r} may have {caller.quota_queued:,} jobs open "
            f"(queued or rendering) at once; {current:,} are open and this submission has "
            f"{jobs:,}. Wait for some to finish, cancel some, or submit fewer",
            headers={"Retry-After": str(QUEUED_RETRY_AFTER_S)},
            quota="queued",
            limit=caller.quota_queued,
            used=current,
            requested=jobs,
        )


def _charge(engine: Engine, caller: Caller, day: date, cost: int, jobs: int, now: datetime) -> None:
    assert caller.quota_daily_units is not None
    limit = caller.quota_daily_units * PIXEL_STEPS_PER_UNIT
    with session_scope(engine) as session:
        total = charge_day(session, caller.owner, day, pixel_steps=cost, jobs=jobs, limit=limit)
        spent = spent_on(session, caller.owner, day) if total is None else total
    if total is not None:
        return
    midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), timezone.utc)
    wait = max(1, math.ceil((midnight - now).total_seconds()))
    raise Problem(
        429,
        "quota-exceeded",
        "Daily image quota exceeded",
        f"quota-daily-images: owner {caller.owner!r} may spend {caller.quota_daily_units:,} "
        f"units a day (one unit: a 512x512 image at 4 steps); {units(spent):,.2f} are spent "
        f"today and this submission costs {units(cost):,.2f}. The day resets at 00:00 UTC "
        f"(in {wait:,} s); submit fewer, smaller or fewer-step images before then",
        headers={"Retry-After": str(wait)},
        quota="daily_images",
        limit=caller.quota_daily_units,
        used=round(units(spent), 4),
        requested=round(units(cost), 4),
    )


def _refund(engine: Engine, caller: Caller, charged: list[tuple[date, int, int]]) -> None:
    for day, cost, jobs in charged:
        with session_scope(engine) as session:
            refund_day(session, caller.owner, day, pixel_steps=cost, jobs=jobs)
    charged.clear()
