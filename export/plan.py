"""What an export holds: its options, the snapshot time, and the jobs it walks through, in order.

The order is fixed by the data, never by timing: submissions in the order named (or, with none
named, by creation time, then id), each submission's jobs by position. A shard is therefore the
same on every run, and an interrupted export resumes after the last job its last finished shard
covered (``Cursor``).

**A snapshot.** An export takes the jobs that had succeeded when it first started (``as_of``,
kept in its progress file): a job that succeeds later, while the export runs or before it is
resumed, is left out (``finished_after_start`` in the stats), so a resumed export writes what an
uninterrupted one would have. Succeeded is final, so nothing exported can change meanwhile.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from core.errors import UserError
from export.samples import ExportJob
from storage.db import Engine
from storage.models import JobStatus
from storage.selections import (
    JobSelection,
    MetadataMatch,
    SubmissionKey,
    count_selected,
    iter_selected,
    iter_submissions,
    submission_keys,
)

FORMATS = ("webdataset", "parquet", "imagefolder")
DEFAULT_SHARD_SIZE = 1_000
DEFAULT_SHARD_BYTES = 1_000_000_000
"""img2dataset's defaults, more or less: 1,000 samples a shard, and a shard is closed early
rather than grow past about 1 GB (tar shards of that size stream well from object stores)."""
MIN_SHARD_BYTES = 1_000_000

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class ExportOptions:
    """Everything that decides what an export writes. A resumed export must be asked for the
    same options (``as_record`` is kept in its progress file and compared)."""

    format: str
    submission_ids: tuple[str, ...] = ()  # full ids, in the order named; empty: any submission
    statuses: tuple[JobStatus, ...] = ()
    metadata: tuple[MetadataMatch, ...] = ()
    prompt_contains: str = ""
    since: str | None = None  # as typed: an ISO time or a duration before the snapshot (24h)
    shard_size: int = DEFAULT_SHARD_SIZE
    shard_bytes: int = DEFAULT_SHARD_BYTES

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"unknown format {self.format!r}; use one of {', '.join(FORMATS)}")
        if not 1 <= self.shard_size <= 1_000_000:
            raise UserError(f"--shard-size {self.shard_size} must be between 1 and 1000000")
        if self.shard_bytes < MIN_SHARD_BYTES:
            raise UserError(f"--shard-bytes {self.shard_bytes} must be at least {MIN_SHARD_BYTES}")
        if not self.submission_ids and not (
            self.statuses or self.metadata or self.prompt_contains or self.since
        ):
            raise UserError(
                "name the submission(s) to export, or choose jobs of every submission with a "
                "filter (--since 24h, --status, --metadata KEY=VALUE)"
            )
        if self.since is not None:
            since_time(self.since, datetime.now(timezone.utc))  # fail now, not mid-export

    def as_record(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "submissions": list(self.submission_ids),
            "statuses": [status.value for status in self.statuses],
            "metadata": [str(match) for match in self.metadata],
            "prompt_contains": self.prompt_contains,
            "since": self.since,
            "shard_size": self.shard_size,
            "shard_bytes": self.shard_bytes,
        }


def since_time(text: str, as_of: datetime) -> datetime:
    """``--since``: an ISO 8601 date or time (UTC unless it says otherwise), or a duration
    before ``as_of`` (``90m``, ``24h``, ``7d``, ``2w``)."""
    cleaned = text.strip()
    if match := _DURATION.match(cleaned.lower()):
        return as_of - timedelta(seconds=float(match.group(1)) * _DURATION_S[match.group(2)])
    try:
        value = datetime.fromisoformat(cleaned)
    except ValueError:
        raise UserError(
            f"--since {text!r} is neither a time (2026-12-01, 2026-12-01T08:00) nor a duration "
            "(90m, 24h, 7d)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Cursor:
    """The last job a finished shard covered: the export goes on after it."""

    submission_id: str
    position: int


@dataclass(frozen=True)
class ExportPlan:
    """The options with the snapshot time fixed: what the jobs iterator walks."""

    options: ExportOptions
    as_of: datetime
    selection: JobSelection = field(init=False)

    def __post_init__(self) -> None:
        since = since_time(self.options.since, self.as_of) if self.options.since else None
        selection = JobSelection(
            statuses=self.options.statuses,
            prompt_contains=self.options.prompt_contains,
            metadata=self.options.metadata,
            finished_since=since,
        )
        object.__setattr__(self, "selection", selection)

    def jobs(self, engine: Engine, after: Cursor | None = None) -> Iterator[ExportJob]:
        """Every job of the export past ``after``, in export order."""
        for submission_id, after_position in self._submissions(engine, after):
            for job in iter_selected(
                engine, submission_id, self.selection, after_position=after_position
            ):
                yield ExportJob.of(job)

    def total(self, engine: Engine) -> int | None:
        """Jobs the export will look at, when the submissions are named (else None: counting
        every submission's jobs first would cost as much as the export's own reads)."""
        if not self.options.submission_ids:
            return None
        return sum(count_selected(engine, s, self.selection) for s in self.options.submission_ids)

    def _submissions(self, engine: Engine, after: Cursor | None) -> Iterator[tuple[str, int]]:
        """``(submission id, position to start after)`` in export order."""
        named = self.options.submission_ids
        if named:
            start = named.index(after.submission_id) if after else 0
            for index in range(start, len(named)):
                yield named[index], after.position if after and index == start else -1
            return
        resume_key: SubmissionKey | None = None
        if after is not None:
            resume_key = submission_keys(engine, [after.submission_id]).get(after.submission_id)
            if resume_key is None:
                raise UserError(
                    f"submission {after.submission_id}, where this export stopped, no longer "
                    "exists; export into a new destination"
                )
            yield after.submission_id, after.position
        for key in iter_submissions(
            engine,
            created_until=self.as_of,
            active_since=self.selection.finished_since,
            after=resume_key,
        ):
            yield key.id, -1
