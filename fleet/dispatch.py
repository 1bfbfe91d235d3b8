"""The dispatcher: the database is the backlog, the broker carries a bounded window of ready work.

A submission of a million prompts is a million rows in SQL and, at first, no messages at all. For
each model the broker holds messages for a *window* of jobs, sized from the fleet that drains it
(``window_target``: live workers x their prefetch plus a few batches, plus what the fleet renders
between two refills; with a floor and a ceiling), and the dispatcher tops the window up from the
backlog as workers drain it. So Redis holds at most a few thousand messages per model however long
the backlog, and what goes into the window next is a choice made here, fairly:

1. **Priority classes are strict.** The highest priority with a backlog fills the room first.
2. **Owners share by weight.** Within a class, each owner's jobs in the window are brought level,
   in proportion to its weight (``LOOPFREE_OWNER_WEIGHTS``; 1 by default): the fleet drains the
   window in order, so a level window is an even split of the fleet. A lone owner gets all of it
   (work-conserving); two get half each.
3. **Submissions share an owner's part** the same way, equally.

Every live worker runs ``top_up`` for its model (``worker.dispatching``): after each claim, and
every ``LOOPFREE_DISPATCH_INTERVAL_S``. One dispatcher per model works at a time (a broker lock);
correctness never depends on it: the window rows are taken with ``SKIP LOCKED`` and a duplicate
message cannot claim a job twice.
"""

from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import zip_longest
from typing import TYPE_CHECKING

from storage.counters import FlowKey
from storage.db import session_scope
from storage.models import utcnow
from storage.window import (
    FlowState,
    flows_to_send,
    return_to_backlog,
    succeeded_recently,
    take_from_backlog,
    window_size,
)

if TYPE_CHECKING:
    from celery import Celery

    from storage.db import Engine

log = logging.getLogger(__name__)

BATCHES_AHEAD = 2
"""Batches per live worker the window holds beyond the worker's own prefetch: one worker's next
batches are ready in the broker the moment its pipeline frees a slot."""

RATE_WINDOW_S = 60.0
"""The fleet's drain rate is measured over the last minute of successes."""

REFILLS_AHEAD = 2
"""The window also holds this many refill intervals of the fleet's drain rate: a refill that is
late by one interval still leaves the fleet busy."""


@dataclass(frozen=True)
class WindowSizing:
    """What sizes a model's window: its fleet, and the bounds (``LOOPFREE_WINDOW_MIN/_MAX``)."""

    live_workers: int
    max_batch: int
    prefetch_batches: int
    images_per_s: float
    refill_every_s: float
    floor: int
    ceiling: int

    @property
    def target(self) -> int:
        per_worker = self.max_batch * (self.prefetch_batches + BATCHES_AHEAD)
        drain = self.images_per_s * self.refill_every_s * REFILLS_AHEAD
        wanted = self.live_workers * per_worker + int(drain + 0.999)
        return max(self.floor, min(self.ceiling, wanted))


@dataclass
class DispatchReport:
    """One top-up: the window before, the target, and the jobs sent per flow."""

    model: str
    window: int = 0
    target: int = 0
    sent: dict[FlowKey, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def plan_shares(
    flows: Sequence[FlowState], room: int, weights: Mapping[str, float] | None = None
) -> dict[FlowKey, int]:
    """How many of ``room`` new messages each flow gets (the module's three rules).

    Water-filling, one message at a time: within the highest priority class that has a backlog,
    the next message goes to the owner whose window share per weight is lowest, and within that
    owner to its submission with the fewest jobs in the window (the oldest on a tie). A flow never
    gets more than its backlog; what a class cannot use goes to the next one.
    """
    weights = weights or {}
    plan: dict[FlowKey, int] = {}
    by_priority: dict[int, list[FlowState]] = defaultdict(list)
    for flow in flows:
        if flow.backlog > 0:
            by_priority[flow.priority].append(flow)
    for priority in sorted(by_priority, reverse=True):
        if room <= 0:
            break
        room -= _fill_class(by_priority[priority], room, weights, plan)
    return plan


def _fill_class(
    flows: list[FlowState], room: int, weights: Mapping[str, float], plan: dict[FlowKey, int]
) -> int:
    """Water-fill ``room`` across the owners of one priority class; returns what was used."""
    owners: dict[str, list[FlowState]] = defaultdict(list)
    for flow in sorted(flows, key=lambda f: (f.created_at, f.key)):
        owners[flow.owner].append(flow)
    level = {owner: sum(f.in_window for f in fl) for owner, fl in owners.items()}
    left = {flow.key: flow.backlog for flow in flows}
    in_window = {flow.key: flow.in_window for flow in flows}
    order = {owner: index for index, owner in enumerate(owners)}  # oldest submission first
    heap = [(level[o] / _weight(weights, o), order[o], o) for o in owners]
    heapq.heapify(heap)
    used = 0
    while heap and used < room:
        _, rank, owner = heapq.heappop(heap)
        candidates = [flow for flow in owners[owner] if left[flow.key] > 0]
        if not candidates:
            continue  # this owner's backlog is used up: it drops out of the class
        chosen = min(candidates, key=lambda flow: in_window[flow.key])  # stable: oldest first
        plan[chosen.key] = plan.get(chosen.key, 0) + 1
        left[chosen.key] -= 1
        in_window[chosen.key] += 1
        level[owner] += 1
        used += 1
        heapq.heappush(heap, (level[owner] / _weight(weights, owner), rank, owner))
    return used


def _weight(weights: Mapping[str, float], owner: str) -> float:
    return max(weights.get(owner, 1.0), 1e-9)


def top_up(
    engine: Engine,
    app: Celery,
    model: str,
    *,
    live_workers: int,
    max_batch: int,
    prefetch_batches: int,
    refill_every_s: float,
    floor: int,
    ceiling: int,
    weights: Mapping[str, float] | None = None,
) -> DispatchReport:
    """Fill ``model``'s window up to its target from the backlog, fairly; publish the messages.

    The rows are marked sent and committed before their messages go out (a job is never in the
    broker without its row saying so); if publishing fails they go back to the backlog, and if
    that fails too the reconciler publishes them once they look lost."""
    from taskqueue.app import publish_jobs

    report = DispatchReport(model)
    with session_scope(engine) as session:
        now = utcnow()
        report.window = window_size(session, model)
        rate = succeeded_recently(session, model, now - timedelta(seconds=RATE_WINDOW_S))
        report.target = WindowSizing(
            live_workers=live_workers,
            max_batch=max_batch,
            prefetch_batches=prefetch_batches,
            images_per_s=rate / RATE_WINDOW_S,
            refill_every_s=refill_every_s,
            floor=floor,
            ceiling=ceiling,
        ).target
        room = report.target - report.window
        if room <= 0:
            return report
        flows = flows_to_send(session, model)
        plan = plan_shares(flows, room, weights)
        taken = {
            key: take_from_backlog(session, key, count, now=now)
            for key, count in sorted(plan.items())
        }
    report.sent = {key: len(ids) for key, ids in taken.items() if ids}
    messages = _interleave(taken)
    if not messages:
        return report
    try:
        publish_jobs(app, messages)
    except Exception:
        with session_scope(engine) as session:
            return_to_backlog(session, [job_id for job_id, _, _ in messages])
        raise
    return report


def _interleave(taken: Mapping[FlowKey, list[str]]) -> list[tuple[str, str, int]]:
    """``(id, model, priority)`` messages round-robin across flows: even one refill alternates
    between them, so a worker's next batch is shared too."""
    columns = [[(job_id, key[1], key[2]) for job_id in ids] for key, ids in taken.items()]
    return [message for row in zip_longest(*columns) for message in row if message is not None]
