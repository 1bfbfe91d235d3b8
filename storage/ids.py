"""Ids people can type: a unique prefix of a submission or job id stands for the whole id.

Git-style: at least ``MIN_PREFIX`` hex characters (what tables and progress bars show is 8); a
prefix that matches several ids is refused with the candidates listed, never guessed.

Ids are ``Uuid`` columns: native ``uuid`` on PostgreSQL, where ``LIKE`` needs a cast to text,
and 32 hex digits without dashes on SQLite (SQLAlchemy's storage format), where the prefix is
matched without its dashes.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, String, cast, select
from sqlalchemy.orm import Session

from core.errors import UserError
from storage.models import Job, Submission

MIN_PREFIX = 4
"""Shortest prefix accepted: shorter ones match too much to be worth a lookup."""
CANDIDATES_SHOWN = 10
"""Candidates listed for an ambiguous prefix; more only says how many."""

Kind = Literal["submission", "job"]
_PREFIX = re.compile(r"^[0-9a-f-]+$")


class AmbiguousId(UserError):
    """A prefix matched more than one id."""


@dataclass(frozen=True)
class Match:
    kind: Kind
    id: str


def resolve(
    session: Session,
    text: str,
    *,
    kinds: tuple[Kind, ...] = ("submission", "job"),
    owner: str | None = None,
) -> Match | None:
    """The one submission or job whose id is ``text`` or starts with it; None if none.

    With ``owner``, only that owner's submissions and their jobs are looked at: an id of anyone
    else's is not found, and the candidates of an ambiguous prefix are all the owner's.

    Raises ``UserError`` for text that cannot be an id prefix, and ``AmbiguousId`` naming the
    candidates when several ids start with it.
    """
    cleaned = text.strip().lower()
    try:
        full = str(uuid.UUID(cleaned))
    except ValueError:
        full = None
    if full is not None:
        for kind in kinds:
            column = _MODELS[kind].id
            if session.scalar(_owned(select(column).where(column == full), kind, owner)):
                return Match(kind, full)
        return None
    if len(cleaned.replace("-", "")) < MIN_PREFIX or not _PREFIX.match(cleaned):
        raise UserError(
            f"{text!r} is not an id: give a whole id or its first {MIN_PREFIX} or more hex "
            "characters (`loopfree submissions` and `loopfree jobs` list them)"
        )
    found: list[Match] = []
    for kind in kinds:
        column = _MODELS[kind].id
        # Compared as text (a cast), so the prefix is not bound as a UUID value.
        if session.get_bind().dialect.name == "postgresql":
            pattern = cleaned + "%"
        else:
            pattern = cleaned.replace("-", "") + "%"
        statement = _owned(select(column).where(cast(column, String).like(pattern)), kind, owner)
        found.extend(
            Match(kind, str(value))
            for value in session.scalars(statement.limit(CANDIDATES_SHOWN + 1))
        )
    if not found:
        return None
    if len(found) > 1:
        shown = "\n".join(f"  {match.kind} {match.id}" for match in found[:CANDIDATES_SHOWN])
        more = " (and more)" if len(found) > CANDIDATES_SHOWN else ""
        raise AmbiguousId(
            f"{text!r} matches several ids{more}; type more characters of one of:\n{shown}"
        )
    return found[0]


def _owned(statement: Select[Any], kind: Kind, owner: str | None) -> Select[Any]:
    """``statement`` over ``kind``'s ids, narrowed to ``owner``'s submissions when one is given."""
    if owner is None:
        return statement
    if kind == "job":
        statement = statement.join(Submission, Submission.id == Job.submission_id)
    return statement.where(Submission.owner == owner)


_MODELS = {"submission": Submission, "job": Job}
