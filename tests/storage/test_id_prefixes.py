"""Ids people can type: a unique prefix of a submission or job id names it, git-style."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from core.errors import UserError
from storage.db import session_scope
from storage.ids import AmbiguousId, resolve
from storage.models import Submission, utcnow

from .helpers import add_submission


def add_bare_submission(engine: Engine, submission_id: str) -> None:
    with session_scope(engine) as session:
        session.add(
            Submission(
                id=submission_id, created_at=utcnow(), source="x.txt", defaults={}, job_count=0
            )
        )


def test_a_unique_prefix_names_its_submission_or_job(engine: Engine) -> None:
    submission_id, job_ids = add_submission(engine, 3)
    with session_scope(engine) as session:
        assert resolve(session, submission_id).id == submission_id  # whole ids still work
        match = resolve(session, submission_id[:8])
        assert (match.kind, match.id) == ("submission", submission_id)
        job = resolve(session, job_ids[2][:13].upper())  # across the dash, any case
        assert (job.kind, job.id) == ("job", job_ids[2])
        assert resolve(session, "0123456789abcdef0123456789abcdef") is None


def test_an_ambiguous_prefix_lists_every_candidate(engine: Engine) -> None:
    first = "abcd1234-0000-4000-8000-000000000001"
    second = "abcd1234-0000-4000-8000-000000000002"
    add_bare_submission(engine, first)
    add_bare_submission(engine, second)
    with session_scope(engine) as session:
        with pytest.raises(AmbiguousId) as raised:
            resolve(session, "abcd")
        assert first in str(raised.value) and second in str(raised.value)


def test_a_prefix_past_the_fork_is_unique(engine: Engine) -> None:
    add_bare_submission(engine, "abcd1234-0000-4000-8000-000000000001")
    add_bare_submission(engine, "abcd5678-0000-4000-8000-000000000002")
    with session_scope(engine) as session:
        with pytest.raises(AmbiguousId):
            resolve(session, "abcd")
        assert resolve(session, "abcd5").id == "abcd5678-0000-4000-8000-000000000002"


@pytest.mark.parametrize("text", ["abc", "zzzz1234", "ab%d", ""])
def test_short_or_non_hex_text_is_refused_with_how_to_fix(engine: Engine, text: str) -> None:
    with session_scope(engine) as session, pytest.raises(UserError, match="4 or more hex"):
        resolve(session, text)
