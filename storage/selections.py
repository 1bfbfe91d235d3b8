"""Reading a chosen part of one or many submissions, page by page: exports, re-rolls, manifests.

A ``JobSelection`` says which jobs (statuses, a prompt substring, caller metadata values, a
finish time, a list of ids); ``iter_selected`` streams a submission's matching jobs in position
order with keyset pages (``WHERE position > :last ORDER BY position LIMIT n``), each page in a
transaction of its own, so memory stays at one page and no transaction is held while the caller
fetches images or writes files (on SQLite every transaction takes the write lock).
``iter_submissions`` does the same over submissions, by ``(created_at, id)``.

Statuses, ids, the prompt text and the finish time are SQL conditions; metadata values are
compared in Python after ``with_line_metadata`` (metadata is JSON, compared the same way on every
database), so a page can come back with fewer jobs than it read: ``JobPage.last_position`` says
where the next one starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from core.errors import UserError
from storage.db import Engine, session_scope
from storage.gallery import LIKE_ESCAPE, escape_like
from storage.models import Job, JobStatus, Submission
from storage.queries import with_line_metadata

PAGE_SIZE = 1_000
"""Jobs per page: one short transaction and a few MB of rows."""


@dataclass(frozen=True)
class MetadataMatch:
    """``key=value``: the job's caller metadata has ``key`` and its value is ``value``, read as
    JSON where it parses (``row=5`` matches ``{"row": 5}``, ``ok=true`` matches ``true``) and as
    text otherwise (``tag=cat`` matches ``{"tag": "cat"}``; ``id=5`` also matches ``"5"``)."""

    key: str
    value: str

    @classmethod
    def parse(cls, text: str) -> MetadataMatch:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UserError(
                f"--metadata {text!r} is not KEY=VALUE; write e.g. --metadata style=watercolour"
            )
        return cls(key.strip(), value)

    def matches(self, metadata: Mapping[str, Any] | None) -> bool:
        if not metadata or self.key not in metadata:
            return False
        stored = metadata[self.key]
        if isinstance(stored, str) and stored == self.value:
            return True
        try:
            wanted = json.loads(self.value)
        except ValueError:
            return False
        # bool is an int in Python: ``flag=1`` must not match ``true``.
        return type(stored) is type(wanted) and stored == wanted

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


@dataclass(frozen=True)
class JobSelection:
    """Which of a submission's jobs to read; every condition given must hold (empty: no limit)."""

    statuses: tuple[JobStatus, ...] = ()
    prompt_contains: str = ""  # case-insensitive plain substring, as the web view's filter
    metadata: tuple[MetadataMatch, ...] = ()
    finished_since: datetime | None = None  # finished at or after (open jobs never match)
    job_ids: tuple[str, ...] = ()

    def conditions(self, submission_id: str) -> list[ColumnElement[bool]]:
        """The SQL part of the selection (all but ``metadata``)."""
        conditions: list[ColumnElement[bool]] = [Job.submission_id == submission_id]
        if self.statuses:
            conditions.append(Job.status.in_(list(self.statuses)))
        if self.prompt_contains:
            pattern = f"%{escape_like(self.prompt_contains.lower())}%"
            conditions.append(func.lower(Job.prompt).like(pattern, escape=LIKE_ESCAPE))
        if self.finished_since is not None:
            conditions.append(Job.finished_at >= self.finished_since)
        if self.job_ids:
            conditions.append(Job.id.in_(list(self.job_ids)))
        return conditions

    def keeps(self, job: Job) -> bool:
        """The Python part: caller metadata (with the line's metadata filled in)."""
        return all(match.matches(job.caller_metadata) for match in self.metadata)


@dataclass(frozen=True)
class JobPage:
    """Matching jobs of one page, and the position the next page starts after (None: the
    submission has no rows past this page)."""

    jobs: list[Job]
    last_position: int | None


def job_page(
    session: Session,
    submission_id: str,
    selection: JobSelection = JobSelection(),
    *,
    after_position: int = -1,
    limit: int = PAGE_SIZE,
) -> JobPage:
    """Up to ``limit`` rows past ``after_position`` that meet the SQL conditions, in position
    order, kept if their metadata matches too."""
    statement = (
        select(Job)
        .where(*selection.conditions(submission_id), Job.position > after_position)
        .order_by(Job.position)
        .limit(limit)
    )
    rows = with_line_metadata(session, list(session.scalars(statement)))
    last = rows[-1].position if len(rows) == limit else None
    return JobPage([job for job in rows if selection.keeps(job)], last)


def iter_selected(
    engine: Engine,
    submission_id: str,
    selection: JobSelection = JobSelection(),
    *,
    after_position: int = -1,
    page_size: int = PAGE_SIZE,
) -> Iterator[Job]:
    """Every matching job of a submission past ``after_position``, in position order; one short
    transaction per page, none open while the caller works on what it yielded."""
    after: int | None = after_position
    while after is not None:
        with session_scope(engine) as session:
            page = job_page(
                session, submission_id, selection, after_position=after, limit=page_size
            )
        yield from page.jobs
        after = page.last_position


def count_selected(engine: Engine, submission_id: str, selection: JobSelection) -> int:
    """How many jobs meet the SQL part of ``selection`` (an upper bound when it matches
    metadata): the total of a progress bar."""
    with session_scope(engine) as session:
        conditions = selection.conditions(submission_id)
        statement = select(func.count()).select_from(Job).where(*conditions)
        return session.scalar(statement) or 0


@dataclass(frozen=True)
class SubmissionKey:
    """A submission's place in ``iter_submissions``' order."""

    created_at: datetime
    id: str


def submission_keys(engine: Engine, submission_ids: list[str]) -> dict[str, SubmissionKey]:
    """The keys of these submissions (unknown ids are left out)."""
    if not submission_ids:
        return {}
    with session_scope(engine) as session:
        rows = session.execute(
            select(Submission.id, Submission.created_at).where(Submission.id.in_(submission_ids))
        )
        return {row.id: SubmissionKey(row.created_at, row.id) for row in rows}


def iter_submissions(
    engine: Engine,
    *,
    created_until: datetime,
    active_since: datetime | None = None,
    after: SubmissionKey | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[SubmissionKey]:
    """Submissions created at or before ``created_until``, oldest first (ties by id), past
    ``after``. With ``active_since``, only those that may have a job finished since then: not
    finished yet, or finished at or after it."""
    while True:
        conditions: list[ColumnElement[bool]] = [Submission.created_at <= created_until]
        if active_since is not None:
            conditions.append(
                or_(Submission.finished_at.is_(None), Submission.finished_at >= active_since)
            )
        if after is not None:
            conditions.append(
                or_(
                    Submission.created_at > after.created_at,
                    and_(Submission.created_at == after.created_at, Submission.id > after.id),
                )
            )
        statement = (
            select(Submission.id, Submission.created_at)
            .where(*conditions)
            .order_by(Submission.created_at, Submission.id)
            .limit(page_size)
        )
        with session_scope(engine) as session:
            page = [SubmissionKey(row.created_at, row.id) for row in session.execute(statement)]
        yield from page
        if len(page) < page_size:
            return
        after = page[-1]
