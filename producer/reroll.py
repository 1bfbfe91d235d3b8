"""Re-rolling: a new submission made of chosen jobs of an old one (``submit --from ID``).

The chosen jobs are streamed in position order, a keyset page at a time
(``storage.selections.iter_selected``), into a temporary JSONL prompt file, one line per job with
the fields a prompt line takes: prompt, seed, height, width, steps, model, priority, metadata,
image_format, image_quality. That file then goes through ``producer.submit.submit_file`` like
any other, so a re-roll is validated, recorded, published and idempotent exactly as a submit is:
the same re-roll asked for again (same jobs, same options) has the same content and options,
hence the same idempotency key, and returns the same submission.

The link to the source is kept twice: the new submission's ``source`` is ``reroll of <id>``
(the temporary file's name), and every job's metadata gains ``rerolled_from``, the id of the job
it re-rolls. Seeds are carried over unless asked otherwise: ``--reseed`` leaves them out so new
random ones are drawn (and recorded), ``--seed N`` gives job i the seed N + i.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.settings import Settings
from producer.prompts import JobDefaults
from producer.submit import FilePlan, SubmitReport, plan_file, submit_file
from storage.db import Engine
from storage.models import Job
from storage.selections import JobSelection, iter_selected

REROLLED_FROM = "rerolled_from"
"""The metadata key that names, on each re-rolled job, the job it was made from."""
SOURCE_PREFIX = "reroll of "


@dataclass(frozen=True)
class Reroll:
    """What to re-roll and how."""

    source_id: str  # the full id of the submission to re-roll
    selection: JobSelection = JobSelection()
    reseed: bool = False  # draw new random seeds
    seed_base: int | None = None  # job i gets seed_base + i (implies new seeds)
    model: str | None = None  # every job on this model instead of its own
    steps: int | None = None  # every job with this many steps instead of its own

    def defaults(self, settings: Settings) -> JobDefaults:
        """What the prompt file's lines leave to defaults: the seeds, when new ones are asked
        for. The model is the override or the configured one (each line names its own)."""
        return JobDefaults(model=self.model or settings.model, seed_base=self.seed_base)

    def line(self, job: Job) -> dict[str, Any]:
        """The prompt line that re-rolls ``job``."""
        line: dict[str, Any] = {
            "prompt": job.prompt,
            "seed": job.seed,
            "height": job.height,
            "width": job.width,
            "steps": self.steps if self.steps is not None else job.steps,
            "model": self.model or job.model,
            "priority": job.priority,
            "metadata": {**(job.caller_metadata or {}), REROLLED_FROM: job.id},
            "image_format": job.image_format,
            "image_quality": job.image_quality,
        }
        if self.reseed or self.seed_base is not None:
            del line["seed"]
        return line


@contextmanager
def reroll_file(engine: Engine, reroll: Reroll) -> Iterator[Path]:
    """The re-roll as a JSONL prompt file named ``reroll of <id>`` in a temporary folder,
    removed on exit. Raises ``UserError`` when no job matches, or when ``--jobs`` named a job
    that is not in the source submission."""
    with tempfile.TemporaryDirectory(prefix="loopfree-reroll-") as folder:
        path = Path(folder) / f"{SOURCE_PREFIX}{reroll.source_id}"
        count, found = _write_lines(engine, reroll, path)
        _check_chosen(reroll, count, found)
        yield path


def submit_reroll(
    settings: Settings,
    reroll: Reroll,
    *,
    engine: Engine | None = None,
    app: Any = None,
    key: str | None = None,
    webhook_url: str | None = None,
    owner: str | None = None,
    check: Callable[[FilePlan], None] | None = None,
) -> SubmitReport:
    """Record the re-roll as a new submission (or find the one it already is); ``engine`` and
    ``app`` as for ``submit_file`` (without them, ones of this call's own)."""
    with _engine_for(settings, engine) as engine, reroll_file(engine, reroll) as path:
        return submit_file(
            settings,
            path,
            reroll.defaults(settings),
            engine=engine,
            app=app,
            key=key,
            webhook_url=webhook_url,
            owner=owner,
            format="jsonl",
            check=check,
        )


def plan_reroll(settings: Settings, reroll: Reroll, *, engine: Engine | None = None) -> FilePlan:
    """The re-roll's jobs as they would be stored, touching nothing (``--dry-run``)."""
    with _engine_for(settings, engine) as engine, reroll_file(engine, reroll) as path:
        return plan_file(settings, path, reroll.defaults(settings), format="jsonl")


@contextmanager
def _engine_for(settings: Settings, engine: Engine | None) -> Iterator[Engine]:
    """``engine``, or one of this call's own, disposed after it."""
    if engine is not None:
        yield engine
        return
    from storage.db import make_engine

    own = make_engine(settings.resolved_database_url)
    try:
        yield own
    finally:
        own.dispose()


def _write_lines(engine: Engine, reroll: Reroll, path: Path) -> tuple[int, set[str]]:
    """Write one line per chosen job. Returns the lines written and, for a ``--jobs``
    selection, which of its ids were found (a set as small as the list typed)."""
    count, found = 0, set()
    with path.open("w", encoding="utf-8") as file:
        for job in iter_selected(engine, reroll.source_id, reroll.selection):
            file.write(json.dumps(reroll.line(job), ensure_ascii=False) + "\n")
            count += 1
            if reroll.selection.job_ids:
                found.add(job.id)
    return count, found


def _check_chosen(reroll: Reroll, count: int, found: set[str]) -> None:
    missing = [job_id for job_id in reroll.selection.job_ids if job_id not in found]
    if missing:
        more = f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(
            f"job {missing[0]} is not in submission {reroll.source_id}{more}; "
            "`loopfree jobs --submission ID` lists its jobs"
        )
    if not count:
        raise UserError(
            f"no job of submission {reroll.source_id} matches; nothing was submitted "
            "(`loopfree status ID` shows its counts by status)"
        )
