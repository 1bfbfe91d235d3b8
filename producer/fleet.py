"""How many workers a model needs: the arithmetic behind ``loopfree scale`` and the exporter.

Plain functions over plain values, no database and no broker, so the simulation in
``bench/bench_scaling.py`` and the tests drive exactly the code the commands run.

**How throughput is measured.** A worker's rate is the jobs it finished divided by the time it was
busy: the union, per worker, of its batches' spans from claim (``started_at``) to the last result
recorded (``finished_at``). Two simpler measures were rejected:

* succeeded jobs / window counts demand, not capacity: a worker that idled half the window under a
  trickle of jobs reads half as fast as it is, and the fleet is sized twice too big for the next
  burst. It also reads zero after a quiet spell, which is exactly when a model scaled to zero
  needs a number for its first burst.
* 1 / mean(``gpu_share_s``) is the sampler alone: it leaves out text encoding, PNG encoding,
  uploads and recording results, so it overstates what a worker drains and the fleet comes out too
  small to meet the target.

Busy time includes every one of those costs and none of the idle time, so it is the same whether
the samples come from the last minute or from yesterday's run; a worker whose uploads overlap the
next batch's sampling is counted once for the overlap, because spans are merged before summing.
The fleet's rate is the median over workers, so one worker on a slow node or with a half-empty
last batch does not move it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

_ROUNDING_SLACK = 1e-9
"""Subtracted before ``ceil``: 1200 jobs at 4/s x 300 s is exactly one worker, even when the
floating-point product comes out as 1.0000000000000002."""


def recommend_workers(
    pending: int,
    per_worker_rate: float | None,
    target_s: float,
    min_workers: int = 0,
    max_workers: int | None = None,
) -> int:
    """Workers that drain ``pending`` jobs within ``target_s`` seconds at ``per_worker_rate``
    images/s each: ``ceil(pending / (rate x target))``, clamped to ``[min_workers, max_workers]``.

    No pending work asks for no workers (scale to zero). Work but no measurement yet
    (``per_worker_rate=None``) asks for one worker: it starts the work and, by finishing jobs,
    produces the measurement the next evaluation sizes the fleet from.

    The count assumes the workers are already running; a cold start (model load) adds its delay to
    every job's wait. ``bench/bench_scaling.py`` shows what that costs and how to leave room for it.
    """
    if pending < 0:
        raise ValueError(f"pending must be >= 0 (a count of jobs), got {pending}")
    if not (math.isfinite(target_s) and target_s > 0):
        raise ValueError(f"target_s must be a positive number of seconds, got {target_s}")
    if per_worker_rate is not None and not (math.isfinite(per_worker_rate) and per_worker_rate > 0):
        raise ValueError(
            f"per_worker_rate must be a positive images/s figure, got {per_worker_rate}; "
            "pass None when nothing has been measured yet"
        )
    if min_workers < 0:
        raise ValueError(f"min_workers must be >= 0, got {min_workers}")
    if max_workers is not None and max_workers < min_workers:
        raise ValueError(f"max_workers ({max_workers}) is below min_workers ({min_workers})")

    if pending == 0:
        needed = 0
    elif per_worker_rate is None:
        needed = 1
    else:
        needed = math.ceil(pending / (per_worker_rate * target_s) - _ROUNDING_SLACK)
    needed = max(needed, min_workers)
    if max_workers is not None:
        needed = min(needed, max_workers)
    return needed


@dataclass(frozen=True)
class BatchSpan:
    """One batch of one worker: claimed at ``start``, its last result recorded at ``end``."""

    worker: str
    start: datetime
    end: datetime
    jobs: int


@dataclass(frozen=True)
class Throughput:
    """What workers of one model were measured to drain, in images per second of busy time."""

    per_worker_images_per_s: float | None  # the median over workers; None: nothing measured
    workers: int  # how many workers the median is over
    jobs: int  # succeeded jobs the measurement counts
    by_worker: dict[str, float] = field(default_factory=dict)


def busy_seconds(spans: Iterable[tuple[datetime, datetime]]) -> float:
    """Seconds covered by the union of ``(start, end)`` spans: overlaps count once."""
    total = 0.0
    current_start: datetime | None = None
    current_end: datetime | None = None
    for start, end in sorted(spans):
        if current_end is None or start > current_end:
            if current_start is not None and current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        elif end > current_end:
            current_end = end
    if current_start is not None and current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total


def worker_rates(batches: Iterable[BatchSpan]) -> dict[str, float]:
    """Images per busy second for each worker. A worker whose spans add up to no time at all
    (clock resolution) is left out rather than given an infinite rate."""
    spans: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    jobs: dict[str, int] = defaultdict(int)
    for batch in batches:
        # A span that ends before it starts (clock skew between hosts) counts as an instant.
        spans[batch.worker].append((batch.start, max(batch.start, batch.end)))
        jobs[batch.worker] += batch.jobs
    rates = {}
    for worker, worker_spans in spans.items():
        busy = busy_seconds(worker_spans)
        if busy > 0:
            rates[worker] = jobs[worker] / busy
    return rates


def summarize_throughput(batches: Iterable[BatchSpan]) -> Throughput:
    """The median per-worker rate over the workers these batches came from."""
    batches = list(batches)
    rates = worker_rates(batches)
    return Throughput(
        per_worker_images_per_s=statistics.median(rates.values()) if rates else None,
        workers=len(rates),
        jobs=sum(batch.jobs for batch in batches if batch.worker in rates),
        by_worker=rates,
    )


@dataclass(frozen=True)
class ScalePlan:
    """``loopfree scale``'s answer and why."""

    model: str
    pending: int
    per_worker_images_per_s: float | None
    measured_from_workers: int
    target_seconds: float
    recommended_workers: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The fields as ``loopfree scale --json`` prints them."""
        return dataclasses.asdict(self)


def plan_scale(
    model: str,
    pending: int,
    throughput: Throughput,
    target_s: float,
    *,
    min_workers: int = 0,
    max_workers: int | None = None,
) -> ScalePlan:
    """``recommend_workers`` for one model, with a sentence saying how the number came about."""
    rate = throughput.per_worker_images_per_s
    unclamped = recommend_workers(pending, rate, target_s)
    workers = recommend_workers(pending, rate, target_s, min_workers, max_workers)
    if pending == 0:
        reason = f"no queued or running jobs for {model}"
    elif rate is None:
        reason = (
            f"{pending} pending job(s) but no finished job of {model} to measure a worker's rate "
            "from yet: one worker starts the work and provides the measurement"
        )
    else:
        reason = (
            f"{pending} pending job(s) / ({rate:.3g} images/s per worker, median of "
            f"{throughput.workers} worker(s), x {target_s:g} s = {rate * target_s:.0f} jobs "
            f"per worker) = {unclamped} worker(s)"
        )
    if workers > unclamped:
        reason += f"; raised to --min-workers {min_workers}"
    elif workers < unclamped:
        reason += f"; capped at --max-workers {max_workers}, so the backlog takes longer"
    return ScalePlan(
        model=model,
        pending=pending,
        per_worker_images_per_s=rate,
        measured_from_workers=throughput.workers,
        target_seconds=target_s,
        recommended_workers=workers,
        reason=reason,
    )
