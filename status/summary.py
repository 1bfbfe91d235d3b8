"""A submission as every reader shows it: ``status``, ``submissions``, the web view and the API
build their answers from one ``SubmissionSummary``, so they can never disagree.

It costs a few rows per submission whatever its size: counts come from its flows' counters, the
jobs being rendered from the work in hand, its rate from its recent successes
(``storage.progress``), and which of its models no live worker serves from the worker registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from storage.db import Session
from storage.models import Flow, Submission, utcnow
from storage.progress import (
    OPEN_STAGES,
    STAGES,
    flows_of,
    recent_shares,
    recent_throughput,
    rendering_by_submission,
    run_throughput,
)
from storage.workers import models_served


@dataclass(frozen=True)
class SubmissionSummary:
    """Where one submission stands (see ``storage.progress`` for the words and the rate)."""

    id: str
    source: str
    owner: str
    created_at: datetime
    finished_at: datetime | None
    cancelled_at: datetime | None
    job_count: int
    models: tuple[str, ...]
    counts: dict[str, int]  # by stage, every stage present
    images_per_s: float | None  # open: over the last minute; finished: over its run
    eta_s: float | None
    # Its share of each model's images over the last minute: how the fleet is shared now.
    shares: dict[str, float] = field(default_factory=dict)
    # Models its open jobs wait for that no live worker serves (they never run).
    unserved_models: tuple[str, ...] = ()

    @property
    def open(self) -> int:
        return sum(self.counts[stage] for stage in OPEN_STAGES)

    @property
    def done(self) -> int:
        return sum(self.counts[stage] for stage in STAGES if stage not in OPEN_STAGES)

    @property
    def finished(self) -> bool:
        return self.open == 0

    @property
    def cancelling(self) -> int:
        """Queued jobs of a cancelled submission not yet moved to ``cancelled``."""
        return self.counts["queued"] if self.cancelled_at is not None else 0

    @property
    def progress(self) -> float:
        total = self.open + self.done
        return self.done / total if total else 1.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times in ISO 8601, plus ``open``, ``done`` and ``finished``."""
        record = asdict(self)
        for name in ("created_at", "finished_at", "cancelled_at"):
            value = record[name]
            record[name] = value.isoformat() if value is not None else None
        record["models"] = list(self.models)
        record["unserved_models"] = list(self.unserved_models)
        return record | {"open": self.open, "done": self.done, "finished": self.finished}

    def waiting_note(self) -> str | None:
        """What to tell someone waiting: which models nobody serves, else the rate and ETA."""
        if self.finished:
            return None
        if self.unserved_models:
            names = ", ".join(self.unserved_models)
            return f"no live worker serves {names}; start `loopfree worker --model {names}`"
        if self.eta_s is not None and self.images_per_s:
            return f"{self.images_per_s:.2f} images/s, ETA {format_seconds(self.eta_s)}"
        return None


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def summarize(
    session: Session, submissions: Sequence[Submission], *, now: datetime | None = None
) -> list[SubmissionSummary]:
    """Summaries of ``submissions``, in their order: a handful of queries for all of them."""
    now = now or utcnow()
    ids = [submission.id for submission in submissions]
    if not ids:
        return []
    flows = flows_of(session, ids)
    rendering = rendering_by_submission(session, ids)
    open_ids = [sid for sid in ids if any(f.queued + f.running for f in flows[sid])]
    shares = recent_shares(session, open_ids, now=now)
    waiting_models = {
        flow.model for sid in open_ids for flow in flows[sid] if flow.queued + flow.running
    }
    served = models_served(session, waiting_models, now=now)
    summaries = []
    for submission in submissions:
        own = flows[submission.id]
        counts = _stage_counts(own, rendering.get(submission.id, 0))
        is_open = submission.id in open_ids
        throughput = (
            recent_throughput(session, submission_ids=[submission.id], now=now)
            if is_open
            else run_throughput(own)
        )
        rate = throughput.images_per_s
        open_jobs = sum(counts[stage] for stage in OPEN_STAGES)
        waiting = sorted({flow.model for flow in own if flow.queued + flow.running})
        summaries.append(
            SubmissionSummary(
                id=submission.id,
                source=submission.source,
                owner=submission.owner,
                created_at=submission.created_at,
                finished_at=submission.finished_at,
                cancelled_at=submission.cancelled_at,
                job_count=submission.job_count,
                models=tuple(sorted({flow.model for flow in own})),
                counts=counts,
                images_per_s=rate,
                eta_s=open_jobs / rate if rate and open_jobs else None,
                shares={
                    model: share for (sid, model), share in shares.items() if sid == submission.id
                },
                unserved_models=tuple(model for model in waiting if model not in served),
            )
        )
    return summaries


def _stage_counts(flows: Sequence[Flow], rendering: int) -> dict[str, int]:
    counts = dict.fromkeys(STAGES, 0)
    running = 0
    for flow in flows:
        counts["queued"] += flow.queued
        running += flow.running
        counts["succeeded"] += flow.succeeded
        counts["failed"] += flow.failed
        counts["cancelled"] += flow.cancelled
    counts["rendering"] = min(rendering, running)
    counts["claimed"] = running - counts["rendering"]
    return counts
