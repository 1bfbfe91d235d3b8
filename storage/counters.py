"""Jobs counted by status per flow, kept up to date by every status change, in its transaction.

``loopfree status`` of a million-job submission, the scaling signal and the dispatcher all need
counts; counting rows costs a scan that grows with the backlog. So every transition in
``storage.jobs`` (and every insert) tells this module how many jobs of which flow moved from which
status to which (``note_moves``), and the moves are added to the ``flows`` rows just before the
transaction commits: the counts are exactly the rows' statuses, committed or rolled back with them.

Why at commit and in key order: a flow's row is shared by every worker rendering that submission.
Applied at the end, its lock is the last one a transaction takes and is held only for the commit;
applied in key order, two transactions that touch the same flows take their locks in the same
order, so they can never deadlock on them (and every job row a transaction locks is locked
before any flow row).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, event, literal, update
from sqlalchemy.orm import Session

from storage.models import Flow, JobStatus, UTCDateTime

FlowKey = tuple[str, str, int]
"""(submission_id, model, priority): one flow."""

COUNTED = tuple(status.value for status in JobStatus)
"""The flows columns that count jobs by status, named like the statuses."""

_PENDING = "loopfree.flow_deltas"
_TIMES = "loopfree.flow_times"
_EXHAUSTED = "loopfree.flows_exhausted"


def note_moves(
    session: Session,
    keys: Iterable[FlowKey],
    *,
    source: JobStatus | None,
    target: JobStatus | None,
    backlog: int = 0,
) -> int:
    """Count one job of each flow key in ``keys`` (one entry per job) as moved from ``source``
    to ``target`` (None: inserted or deleted) and its flow's backlog as changed by ``backlog``
    per job. Applied when the transaction commits; returns how many jobs were noted."""
    pending: defaultdict[FlowKey, Counter[str]] = session.info.setdefault(
        _PENDING, defaultdict(Counter)
    )
    moved = 0
    for key in keys:
        deltas = pending[key]
        if source is not None:
            deltas[source.value] -= 1
        if target is not None:
            deltas[target.value] += 1
        if backlog:
            deltas["backlog"] += backlog
        moved += 1
    return moved


def note_added(session: Session, key: FlowKey, count: int, *, backlog: int) -> None:
    """``count`` new queued jobs of one flow, ``backlog`` of them without a message yet."""
    pending = session.info.setdefault(_PENDING, defaultdict(Counter))
    pending[key][JobStatus.QUEUED.value] += count
    pending[key]["backlog"] += backlog


def note_exhausted(session: Session, key: FlowKey) -> None:
    """The dispatcher found no job left in the flow's backlog: its hint goes to zero (after this
    transaction's other changes to it)."""
    session.info.setdefault(_EXHAUSTED, set()).add(key)


def note_times(
    session: Session,
    keys: Iterable[FlowKey],
    *,
    started: datetime | None = None,
    finished: datetime | None = None,
) -> None:
    """A job of each flow started (claimed) or finished at that time: the flow keeps the first
    start and the last finish, its active span."""
    times: dict[FlowKey, list[datetime | None]] = session.info.setdefault(_TIMES, {})
    for key in keys:
        first, last = times.setdefault(key, [None, None])
        if started is not None and (first is None or started < first):
            times[key][0] = started
        if finished is not None and (last is None or finished > last):
            times[key][1] = finished


def flow_keys(rows: Iterable[Sequence[Any]]) -> list[FlowKey]:
    """Flow keys from rows whose last three values are (submission_id, model, priority)."""
    return [(row[-3], row[-2], row[-1]) for row in rows]


def discard(session: Session) -> None:
    for name in (_PENDING, _TIMES, _EXHAUSTED):
        session.info.pop(name, None)


@event.listens_for(Session, "before_commit")
def _apply_before_commit(session: Session) -> None:
    apply_pending(session)


@event.listens_for(Session, "after_rollback")
def _discard_after_rollback(session: Session) -> None:
    discard(session)


def apply_pending(session: Session) -> None:
    """Add the noted moves to their flows, in key order (see the module's docstring)."""
    pending: dict[FlowKey, Counter[str]] = session.info.pop(_PENDING, {})
    times: dict[FlowKey, list[datetime | None]] = session.info.pop(_TIMES, {})
    exhausted: set[FlowKey] = session.info.pop(_EXHAUSTED, set())
    for key in sorted(set(pending) | set(times) | exhausted):
        values: dict[str, Any] = {"backlog": 0} if key in exhausted else {}
        for name, change in pending.get(key, Counter()).items():
            if not change or name in values:
                continue
            column = Flow.__table__.c[name]
            if name == "backlog":
                # A hint: never below zero, whatever an earlier miscount did.
                values[name] = case((column + change < 0, 0), else_=column + change)
            else:
                values[name] = column + change
        first, last = times.get(key, (None, None))
        if first is not None:
            at = literal(first, UTCDateTime())
            values["first_started_at"] = case(
                (Flow.first_started_at.is_(None) | (Flow.first_started_at > at), at),
                else_=Flow.first_started_at,
            )
        if last is not None:
            at = literal(last, UTCDateTime())
            values["last_finished_at"] = case(
                (Flow.last_finished_at.is_(None) | (Flow.last_finished_at < at), at),
                else_=Flow.last_finished_at,
            )
        if not values:
            continue
        submission_id, model, priority = key
        session.execute(
            update(Flow)
            .where(
                Flow.submission_id == submission_id,
                Flow.model == model,
                Flow.priority == priority,
            )
            .values(values)
            .execution_options(synchronize_session=False)
        )
