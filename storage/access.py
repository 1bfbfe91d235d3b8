"""Whose work is this? Ids resolved within what one owner may see, for the API and the web view.

A token that is not an admin's sees only its owner's submissions and their jobs, and an id of
anyone else's is answered as if it did not exist (404): nothing tells it apart from an id nobody
has. So a prefix is matched among the owner's ids only (``storage.ids`` matches among all and
would name other owners' ids as candidates of an ambiguous prefix).
"""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy import String, cast, select
from sqlalchemy.orm import Session

from storage.ids import CANDIDATES_SHOWN, AmbiguousId
from storage.ids import resolve as resolve_any
from storage.models import Job, Submission

Kind = Literal["submission", "job"]


def submission_owner(session: Session, submission_id: str) -> str | None:
    """The owner of a submission, or None if there is no such submission."""
    return session.scalar(select(Submission.owner).where(Submission.id == submission_id))


def job_owner(session: Session, job_id: str) -> str | None:
    """The owner of the submission a job belongs to, or None if there is no such job."""
    statement = (
        select(Submission.owner)
        .join(Job, Job.submission_id == Submission.id)
        .where(Job.id == job_id)
    )
    return session.scalar(statement)


def resolve_owned(session: Session, text: str, kind: Kind, owner: str | None) -> str | None:
    """The full id of the ``kind`` that ``text`` (a whole id or a unique prefix of 4+ hex
    characters) names among ``owner``'s (everyone's when None); None if there is none.
    ``AmbiguousId`` names the candidates, all of them the owner's; ``UserError`` for text that
    cannot be an id."""
    if owner is None:
        match = resolve_any(session, text, kinds=(kind,))
        return match.id if match else None
    cleaned = text.strip().lower()
    try:
        full = str(uuid.UUID(cleaned))
    except ValueError:
        full = None
    if full is not None:
        of = submission_owner if kind == "submission" else job_owner
        found = of(session, full)
        return full if found == owner else None
    # Raises for text that cannot be an id prefix (too short, not hex), matching nothing.
    resolve_any(session, text, kinds=())
    column = Submission.id if kind == "submission" else Job.id
    dialect = session.get_bind().dialect.name
    pattern = (cleaned if dialect == "postgresql" else cleaned.replace("-", "")) + "%"
    statement = select(column).where(cast(column, String).like(pattern), Submission.owner == owner)
    if kind == "job":
        statement = statement.join(Submission, Submission.id == Job.submission_id)
    ids = [str(value) for value in session.scalars(statement.limit(CANDIDATES_SHOWN + 1))]
    if len(ids) > 1:
        shown = "\n".join(f"  {kind} {match}" for match in ids[:CANDIDATES_SHOWN])
        more = " (and more)" if len(ids) > CANDIDATES_SHOWN else ""
        raise AmbiguousId(
            f"{text!r} matches several ids{more}; type more characters of one of:\n{shown}"
        )
    return ids[0] if ids else None
