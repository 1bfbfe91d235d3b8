"""Simulation of the autoscaler on bursty traffic: does the queue wait stay under the target, and
how many GPU-seconds does that cost over the least the work needs?

A discrete-time simulation (1 s steps, no sleeping; a six-hour day runs in about a second). Jobs
arrive in a fixed bursty pattern: quiet stretches, bursts of thousands at once or over a minute,
and a trickle. Every ``eval_s`` simulated seconds a controller asks ``fleet.scaling
.recommend_workers`` (the function ``loopfree scale`` and the exporter run) for a worker count;
new workers serve only after ``startup_s`` (node, image, model load). Workers drain the queue
first in, first out, as a fluid at ``rate`` jobs/s each.

Two ways of computing the count:

* ``plain``: ``recommend_workers(pending, rate, target - headroom)``, a fresh full target every
  evaluation. What ``loopfree scale`` did before it became deadline-aware, and what a KEDA
  threshold on ``loopfree_pending_jobs`` computes.
* ``deadline``: what ``loopfree scale`` and ``loopfree_recommended_workers`` compute now: drain
  the pending jobs before the oldest queued one has waited the target, workers not yet running
  losing ``startup_allowance_s`` to their start-up. ``knows_running``: the serving workers are
  passed as ``running_workers`` (``loopfree scale --running-workers``); otherwise every worker is
  assumed to start from cold (the exporter, and ``scale`` without the option).

Two ways of acting on it:

* ``keda``: docker/k8s/scaledobject.yaml and the HPA defaults: the count as the HPA's desired
  replicas (``ceil(pending / threshold)`` with a fixed threshold = rate x target for ``plain``, so
  never "unmeasured"; ``ceil(recommended / 1)`` for ``deadline``). Scale up at most to max(2x, +4)
  workers per 15 s, down to the highest recommendation of the last 300 s and by at most one
  worker a minute, and to zero after 600 s with nothing pending.
* ``direct``: ``loopfree scale`` run every ``eval_s`` seconds (cron, a timer) and the count it
  prints applied at once, up or down; one worker until a rate has been measured.

Reported per scenario: max / p95 / p50 queue wait (arrival to the start of service), the share of
jobs that waited longer than the target, worker-hours used (starting workers included: they hold a
GPU) against the least possible (jobs / rate), their ratio (over-provisioning), worker-hours spent
with nothing to do, cold starts from zero and the share of quiet time spent at zero workers.

    python bench/bench_scaling.py                  # every scenario, a Markdown table
    python bench/bench_scaling.py --json out.json  # and the raw numbers
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from fleet.scaling import recommend_workers  # noqa: E402

HOUR = 3600.0


@dataclass(frozen=True)
class Arrival:
    """``jobs`` jobs arriving at ``at`` seconds, all at once or spread evenly over ``over_s``."""

    at: float
    jobs: int
    over_s: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    policy: str = "keda"  # "keda" or "direct"
    controller: str = "plain"  # "plain" or "deadline"
    rate: float = 4.0  # jobs/s one running worker drains (batch 16 in about 4 s)
    measured_factor: float = 1.0  # the rate the controller sizes with / the true rate
    measured_at_start: bool = False  # direct: a measurement from earlier runs exists at t = 0
    target_s: float = 300.0
    headroom_s: float = 0.0  # plain: the controller sizes for target_s - headroom_s
    startup_allowance_s: float = 60.0  # deadline: the start-up the controller is told about
    knows_running: bool = False  # deadline: the serving workers are passed as running_workers
    startup_s: float = 60.0  # the start-up workers really take
    eval_s: float = 15.0
    max_workers: int | None = None
    cooldown_s: float = 600.0  # keda: nothing pending this long -> zero workers
    stabilization_s: float = 300.0  # keda: scale down to the max recommendation of this window
    scale_down_period_s: float = 60.0  # keda: remove at most one worker per period
    dt: float = 1.0


@dataclass(frozen=True)
class Result:
    scenario: str
    jobs: int
    unfinished: float
    max_wait_s: float
    p95_wait_s: float
    p50_wait_s: float
    over_target_share: float
    worker_hours: float
    min_worker_hours: float
    overprovisioning: float
    idle_worker_hours: float
    cold_starts: int
    peak_workers: int
    quiet_share_at_zero: float


def bursty_day() -> list[Arrival]:
    """Six hours: 30 quiet minutes, bursts of 5,000 (at once), 12,000 (over a minute) and 2,000
    on top of a 30-minute trickle of 0.5 jobs/s, two quiet hours, then 3,000 jobs."""
    return [
        Arrival(at=0.5 * HOUR, jobs=5_000),
        Arrival(at=1.0 * HOUR, jobs=900, over_s=0.5 * HOUR),
        Arrival(at=1.25 * HOUR, jobs=2_000),
        Arrival(at=2.0 * HOUR, jobs=12_000, over_s=60.0),
        Arrival(at=5.0 * HOUR, jobs=3_000),
    ]


def simulate(
    scenario: Scenario, arrivals: Sequence[Arrival], horizon_s: float = 6 * HOUR
) -> Result:
    """Run one scenario over ``arrivals`` for ``horizon_s`` simulated seconds."""
    s = scenario
    if s.policy not in ("keda", "direct"):
        raise ValueError(f"policy must be 'keda' or 'direct', got {s.policy!r}")
    if s.controller not in ("plain", "deadline"):
        raise ValueError(f"controller must be 'plain' or 'deadline', got {s.controller!r}")
    fleet = Fleet(s)
    eval_every = max(1, round(s.eval_s / s.dt))
    queue: deque[list[float]] = deque()  # [arrival time, jobs left], oldest first
    queued = 0.0
    waits: list[tuple[float, float]] = []  # (wait in s, jobs that waited that long)
    # KEDA divides by a configured threshold, so it never lacks a rate; ``loopfree scale`` measures
    # one from finished jobs and asks for one worker until it has.
    measured = s.measured_at_start or s.policy == "keda"
    worker_s = idle_worker_s = quiet_s = quiet_zero_s = 0.0

    for step in range(round(horizon_s / s.dt)):
        t = step * s.dt
        arrived = sum(_arriving(arrival, t, s.dt) for arrival in arrivals)
        if arrived > 0:
            queue.append([t, arrived])
            queued += arrived

        if step % eval_every == 0:
            pending = math.ceil(queued - 1e-9)
            rate = s.rate * s.measured_factor if measured else None
            if s.controller == "plain":
                want = recommend_workers(
                    pending, rate, s.target_s - s.headroom_s, max_workers=s.max_workers
                )
            else:
                want = recommend_workers(
                    pending,
                    rate,
                    s.target_s,
                    max_workers=s.max_workers,
                    oldest_queued_age_s=t - queue[0][0] if queue else 0.0,
                    startup_s=s.startup_allowance_s,
                    running_workers=fleet.serving(t) if s.knows_running else None,
                )
            fleet.act(t, want, pending)

        capacity = fleet.serving(t) * s.rate * s.dt
        while capacity > 1e-12 and queue:
            head = queue[0]
            taken = min(head[1], capacity)
            waits.append((t - head[0], taken))
            head[1] -= taken
            capacity -= taken
            queued -= taken
            measured = True  # finished jobs are what the measurement is made of
            if head[1] <= 1e-9:
                queued -= head[1]
                queue.popleft()

        workers = len(fleet.ready_at)
        worker_s += workers * s.dt
        if queued <= 1e-9:
            idle_worker_s += workers * s.dt
            if arrived == 0:  # quiet: nothing waiting and nothing arriving
                quiet_s += s.dt
                quiet_zero_s += s.dt if workers == 0 else 0.0

    total = sum(arrival.jobs for arrival in arrivals)
    min_worker_s = total / s.rate
    return Result(
        scenario=s.name,
        jobs=total,
        unfinished=round(max(queued, 0.0), 3),
        max_wait_s=max((wait for wait, _ in waits), default=0.0),
        p95_wait_s=_weighted_percentile(waits, 95),
        p50_wait_s=_weighted_percentile(waits, 50),
        over_target_share=sum(n for wait, n in waits if wait > s.target_s) / total if total else 0,
        worker_hours=worker_s / HOUR,
        min_worker_hours=min_worker_s / HOUR,
        overprovisioning=worker_s / min_worker_s if min_worker_s else math.inf,
        idle_worker_hours=idle_worker_s / HOUR,
        cold_starts=fleet.cold_starts,
        peak_workers=fleet.peak,
        quiet_share_at_zero=quiet_zero_s / quiet_s if quiet_s else 1.0,
    )


class Fleet:
    """The workers holding a GPU, and the policy that turns recommendations into workers."""

    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.ready_at: list[float] = []  # per worker: when it starts serving
        self.history: deque[tuple[float, int]] = deque()  # (time, recommendation)
        self.last_pending_t = -math.inf
        self.last_scale_down_t = -math.inf
        self.cold_starts = 0
        self.peak = 0

    def serving(self, t: float) -> int:
        return sum(1 for ready in self.ready_at if ready <= t)

    def act(self, t: float, want: int, pending: int) -> None:
        current = len(self.ready_at)
        goal = want if self.s.policy == "direct" else self._keda(t, want, pending, current)
        if goal > current:
            if current == 0:
                self.cold_starts += 1
            self.ready_at += [t + self.s.startup_s] * (goal - current)
        elif goal < current:
            # Workers still starting go first (Kubernetes deletes unready pods first).
            self.ready_at = sorted(self.ready_at)[:goal]
        self.peak = max(self.peak, len(self.ready_at))

    def _keda(self, t: float, want: int, pending: int, current: int) -> int:
        s = self.s
        if pending > 0:
            self.last_pending_t = t
        self.history.append((t, want))
        while self.history[0][0] < t - s.stabilization_s:
            self.history.popleft()
        if pending == 0 and (current == 0 or t - self.last_pending_t >= s.cooldown_s):
            return 0  # KEDA deactivates: zero workers
        if current == 0:
            return 1  # KEDA activates to one worker; the HPA takes it from there
        desired = max(1, want)
        if desired > current:
            # HPA default scale-up: at most double, or add 4, per 15 s period.
            return min(desired, max(2 * current, current + 4))
        stabilized = max(1, max(rec for _, rec in self.history))
        if stabilized < current and t - self.last_scale_down_t >= s.scale_down_period_s:
            self.last_scale_down_t = t
            return current - 1
        return current


def _arriving(arrival: Arrival, t: float, dt: float) -> float:
    """Jobs of ``arrival`` that arrive in ``[t, t + dt)``."""
    if arrival.over_s <= 0:
        return float(arrival.jobs) if t <= arrival.at < t + dt else 0.0
    start, end = max(t, arrival.at), min(t + dt, arrival.at + arrival.over_s)
    return arrival.jobs * max(0.0, end - start) / arrival.over_s


def _weighted_percentile(samples: Sequence[tuple[float, float]], q: float) -> float:
    """The ``q``-th percentile of values weighted by their job counts (the lower value at ties)."""
    total = sum(weight for _, weight in samples)
    if total <= 0:
        return 0.0
    seen = 0.0
    for value, weight in sorted(samples):
        seen += weight
        if seen >= total * q / 100 - 1e-9:
            return value
    return max(value for value, _ in samples)


SCALE = {"policy": "direct", "controller": "deadline"}  # `loopfree scale` as shipped, applied
OLD_SCALE = {"policy": "direct", "controller": "plain"}  # `loopfree scale` before deadlines
RECOMMENDED = {"controller": "deadline"}  # KEDA on loopfree_recommended_workers, threshold 1
FAST_SCALE_DOWN = {"stabilization_s": 60.0, "scale_down_period_s": 15.0}

SCENARIOS = (
    # KEDA on loopfree_pending_jobs: the trigger docker/k8s/scaledobject.yaml ships.
    Scenario("keda, threshold 4/s x 300 s"),
    Scenario("keda, threshold 4/s x 240 s (headroom = startup)", headroom_s=60.0),
    # The manifest's threshold, 800 jobs = 4/s x (300 - 60 s start-up - 40 s for the count to
    # reach the HPA), and its replica cap.
    Scenario("keda as shipped: threshold 800, max 16", headroom_s=100.0, max_workers=16),
    # What the manifest shipped before: 240 jobs = 4/s x 60 s, at most 8 workers.
    Scenario("keda as shipped before: threshold 240, max 8", headroom_s=240.0, max_workers=8),
    Scenario("keda, threshold 4/s x 300 s, max 8", max_workers=8),
    Scenario("keda, threshold 25 % too high", measured_factor=1.25),
    Scenario("keda, startup 180 s", startup_s=180.0),
    Scenario(
        "keda, threshold 4/s x 240 s, scale-down 60 s / 1 per 15 s",
        headroom_s=60.0,
        **FAST_SCALE_DOWN,
    ),
    # KEDA on loopfree_recommended_workers with threshold 1 (not what the manifest ships).
    Scenario("keda on recommended workers", **RECOMMENDED),
    Scenario("keda on recommended workers, max 8", max_workers=8, **RECOMMENDED),
    Scenario(
        "keda on recommended workers, scale-down 60 s / 1 per 15 s",
        **RECOMMENDED,
        **FAST_SCALE_DOWN,
    ),
    Scenario(
        "keda on recommended workers, startup 180 s, --startup-seconds 180",
        startup_s=180.0,
        startup_allowance_s=180.0,
        **RECOMMENDED,
    ),
    # `loopfree scale` before this change: a fresh full target every evaluation.
    Scenario("OLD scale every 15 s", **OLD_SCALE),
    Scenario("OLD scale every 15 s, measured before t=0", measured_at_start=True, **OLD_SCALE),
    Scenario("OLD scale every 60 s (cron)", eval_s=60.0, **OLD_SCALE),
    Scenario("OLD scale every 60 s, headroom 120 s", eval_s=60.0, headroom_s=120.0, **OLD_SCALE),
    # `loopfree scale` now: deadline-aware, --startup-seconds 60, running workers unknown.
    Scenario("scale every 15 s", **SCALE),
    Scenario("scale every 15 s, measured before t=0", measured_at_start=True, **SCALE),
    Scenario("scale every 60 s (cron)", eval_s=60.0, **SCALE),
    Scenario("scale every 15 s, --running-workers", knows_running=True, **SCALE),
    Scenario("scale every 60 s, --running-workers", eval_s=60.0, knows_running=True, **SCALE),
    Scenario("scale every 15 s, rate 25 % too high", measured_factor=1.25, **SCALE),
    Scenario("scale every 15 s, --startup-seconds 0", startup_allowance_s=0.0, **SCALE),
    Scenario("scale every 15 s, max 8", max_workers=8, **SCALE),
    Scenario("scale every 15 s, startup 180 s, --startup-seconds 60", startup_s=180.0, **SCALE),
    Scenario(
        "scale every 15 s, startup 180 s, --startup-seconds 180",
        startup_s=180.0,
        startup_allowance_s=180.0,
        **SCALE,
    ),
    Scenario(
        "scale every 15 s, startup 180 s, --startup-seconds 180, measured before t=0",
        startup_s=180.0,
        startup_allowance_s=180.0,
        measured_at_start=True,
        **SCALE,
    ),
    Scenario(
        "scale every 15 s, startup 180 s, --startup-seconds 180, max 30",
        startup_s=180.0,
        startup_allowance_s=180.0,
        max_workers=30,
        **SCALE,
    ),
)


def markdown_table(results: Sequence[Result]) -> str:
    header = (
        "| scenario | max wait s | p95 wait s | p50 wait s | jobs over target | worker-h | "
        "min worker-h | over-provisioning | idle worker-h | cold starts | peak workers | "
        "quiet time at 0 |"
    )
    lines = [header, "|" + " --- |" * 12]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.max_wait_s:.0f} | {r.p95_wait_s:.0f} | {r.p50_wait_s:.0f} | "
            f"{r.over_target_share:.1%} | {r.worker_hours:.2f} | {r.min_worker_hours:.2f} | "
            f"{r.overprovisioning:.2f}x | {r.idle_worker_hours:.2f} | {r.cold_starts} | "
            f"{r.peak_workers} | {r.quiet_share_at_zero:.0%} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--horizon-h", type=float, default=6.0, help="Simulated hours.")
    parser.add_argument("--rate", type=float, help="Jobs/s per running worker (default 4).")
    parser.add_argument("--target-s", type=float, help="Queue wait target (default 300 s).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)
    overrides = {"rate": args.rate, "target_s": args.target_s}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    scenarios = [replace(scenario, **overrides) for scenario in SCENARIOS]
    arrivals = bursty_day()
    results = [simulate(scenario, arrivals, args.horizon_h * HOUR) for scenario in scenarios]
    print(
        f"{sum(a.jobs for a in arrivals)} jobs over {args.horizon_h:g} h, "
        f"{scenarios[0].rate:g} jobs/s per worker, target {scenarios[0].target_s:g} s\n"
    )
    print(markdown_table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
