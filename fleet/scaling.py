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

from storage.fleet_reads import BatchSpan  # what the database reads; defined beside the query

_ROUNDING_SLACK = 1e-9
"""Subtracted before ``ceil``: 1200 jobs at 4/s x 300 s is exactly one worker, even when the
floating-point product comes out as 1.0000000000000002."""

DEFAULT_TARGET_S = 300.0
"""Seconds a job may wait in the queue by default: five minutes keeps a burst of a few thousand
jobs to a handful of GPUs while a cold start (about a minute) stays a fraction of the wait."""

DEFAULT_STARTUP_S = 60.0
"""Seconds allowed from asking for a worker to its first batch (pod start, model load) by default:
about a minute with the weights baked into the image and a GPU node already up. It is an
allowance, not a measurement: set yours from how long your workers take to become ready; a
start-up longer than allowed for goes straight into the queue wait (BENCHMARKS.md, fleet)."""

MIN_WINDOW_FRACTION = 0.1
"""The shortest window a worker started now is sized for, as a share of the target. Once the
oldest queued job is within a start-up of its deadline, or past it, ``target - age - start-up`` is
zero or negative: no new worker can serve that job in time, and the count would be infinite or
meaningless. Sizing new workers to drain the backlog within 10 % of the target after they start
asks for at most 10x the workers a fresh backlog of the same size gets: enough to catch up within
a few evaluations, and finite, so that one job that is late anyway (a requeued failure, a lost
message found again) cannot ask for a thousand GPUs. ``--max-workers`` (``maxReplicaCount``) caps
it further. Tried in bench/bench_scaling.py, larger floors cost a little less GPU time but let the
tail of a burst miss the target: 1.6 % of jobs late at 20 %, 15 % at 50 % (none at 10 %)."""


def time_left_s(target_s: float, oldest_queued_age_s: float = 0.0) -> float:
    """Seconds before the oldest queued job has waited ``target_s``; 0 once it has."""
    return max(target_s - oldest_queued_age_s, 0.0)


def startup_window_s(target_s: float, oldest_queued_age_s: float, startup_s: float) -> float:
    """Seconds a worker started now drains for: ``time_left_s`` less its start-up, at least
    ``MIN_WINDOW_FRACTION`` of the target (see there)."""
    return max(
        time_left_s(target_s, oldest_queued_age_s) - startup_s, MIN_WINDOW_FRACTION * target_s
    )


def recommend_workers(
    pending: int,
    per_worker_rate: float | None,
    target_s: float,
    min_workers: int = 0,
    max_workers: int | None = None,
    *,
    oldest_queued_age_s: float = 0.0,
    startup_s: float = 0.0,
    running_workers: int | None = None,
) -> int:
    """Workers that drain ``pending`` jobs, at ``per_worker_rate`` images/s each, before the oldest
    queued job has waited ``target_s`` seconds; clamped to ``[min_workers, max_workers]``.

    The backlog has ``target - oldest_queued_age_s`` seconds left (``time_left_s``), not a fresh
    ``target_s`` every evaluation: sizing every evaluation for the full target lets the last jobs
    of a burst wait several targets (BENCHMARKS.md, fleet). A worker that is not running yet loses
    ``startup_s`` of that to its start-up, and is sized for at least ``MIN_WINDOW_FRACTION`` of
    the target (``startup_window_s``), so a backlog that is late already gets a large but finite
    fleet.

    ``running_workers`` already serve and have the whole time left: if they drain the backlog in
    time, fewer of them may do (``ceil(pending / (rate x time left))``); if not, the jobs they
    cannot drain are shared among new workers (``running + ceil(rest / (rate x startup
    window))``). ``None`` means the count is unknown and every worker is sized as if starting from
    cold: more workers than needed while the fleet is up, the safe side (in the last
    ``MIN_WINDOW_FRACTION`` of the target before the deadline the floor is then slightly
    optimistic; in the simulation the start-up allowance has made the fleet big enough by then).

    No pending work asks for no workers (scale to zero). Work but no measurement yet
    (``per_worker_rate=None``) asks for one worker: it starts the work and, by finishing jobs,
    produces the measurement the next evaluation sizes the fleet from.

    With the defaults (a backlog queued just now, workers that start at once) this is
    ``ceil(pending / (rate x target))``.
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
    if not (math.isfinite(oldest_queued_age_s) and oldest_queued_age_s >= 0):
        raise ValueError(
            f"oldest_queued_age_s must be >= 0 seconds, got {oldest_queued_age_s}; "
            "pass 0 when nothing is queued"
        )
    if not (math.isfinite(startup_s) and startup_s >= 0):
        raise ValueError(f"startup_s must be >= 0 seconds, got {startup_s}")
    if running_workers is not None and running_workers < 0:
        raise ValueError(
            f"running_workers must be >= 0, got {running_workers}; pass None when unknown"
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
        # Jobs one worker drains before the oldest job's deadline: a running one, a new one.
        per_running = per_worker_rate * time_left_s(target_s, oldest_queued_age_s)
        per_new = per_worker_rate * startup_window_s(target_s, oldest_queued_age_s, startup_s)
        running = running_workers or 0
        if pending <= running * per_running:
            needed = _ceil(pending / per_running)  # the workers up now suffice, or fewer of them
        else:
            needed = running + _ceil((pending - running * per_running) / per_new)
    needed = max(needed, min_workers)
    if max_workers is not None:
        needed = min(needed, max_workers)
    return needed


def _ceil(workers: float) -> int:
    return math.ceil(workers - _ROUNDING_SLACK)


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
    oldest_queued_age_s: float  # 0 when nothing is queued
    startup_seconds: float
    running_workers: int | None  # None: unknown, every worker assumed to start from cold
    window_s: float  # seconds left before the oldest queued job misses the target (floored)
    effective_window_s: float  # of those, what a worker started now serves after its start-up
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
    oldest_queued_age_s: float = 0.0,
    startup_s: float = 0.0,
    running_workers: int | None = None,
    min_workers: int = 0,
    max_workers: int | None = None,
) -> ScalePlan:
    """``recommend_workers`` for one model, with a sentence saying how the number came about."""
    rate = throughput.per_worker_images_per_s
    sizing = {
        "oldest_queued_age_s": oldest_queued_age_s,
        "startup_s": startup_s,
        "running_workers": running_workers,
    }
    unclamped = recommend_workers(pending, rate, target_s, **sizing)
    workers = recommend_workers(pending, rate, target_s, min_workers, max_workers, **sizing)
    window = time_left_s(target_s, oldest_queued_age_s)
    effective = startup_window_s(target_s, oldest_queued_age_s, startup_s)
    if pending == 0:
        reason = f"no queued or running jobs for {model}"
    elif rate is None:
        reason = (
            f"{pending} pending job(s) but no finished job of {model} to measure a worker's rate "
            "from yet: one worker starts the work and provides the measurement"
        )
    else:
        if running_workers is None:
            running = "how many run is unknown, so every worker is counted as starting"
        else:
            running = f"the {running_workers} worker(s) already running keep all {window:.0f} s"
        reason = (
            f"{pending} pending job(s); the oldest queued one has waited "
            f"{oldest_queued_age_s:.0f} s of the {target_s:g} s target, leaving {window:.0f} s, "
            f"{effective:.0f} s for a worker that first takes {startup_s:g} s to start "
            f"({running}); at {rate:.3g} images/s per worker (median of "
            f"{throughput.workers} worker(s)) that takes {unclamped} worker(s)"
        )
        if target_s - oldest_queued_age_s - startup_s < MIN_WINDOW_FRACTION * target_s:
            reason += (
                f"; too little time is left for a worker started now, so it is given the floor "
                f"of {MIN_WINDOW_FRACTION * 100:g} % of the target: the oldest jobs may be late"
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
        oldest_queued_age_s=oldest_queued_age_s,
        startup_seconds=startup_s,
        running_workers=running_workers,
        window_s=window,
        effective_window_s=effective,
        recommended_workers=workers,
        reason=reason,
    )
