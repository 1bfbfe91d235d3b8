"""The scaling simulation (bench/bench_scaling.py) on small, hand-checkable traffic."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "bench_scaling.py"
_spec = importlib.util.spec_from_file_location("bench_scaling", _PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_scaling"] = bench  # dataclasses look their module up by name
_spec.loader.exec_module(bench)

HOUR = bench.HOUR
# One worker drains 4 jobs/s: 1,200 jobs per 300 s target.
DIRECT = bench.Scenario("direct", policy="direct", measured_at_start=True)
KEDA = bench.Scenario("keda", policy="keda", measured_at_start=True)


def test_no_traffic_uses_no_worker_and_waits_for_nothing():
    result = bench.simulate(KEDA, [], horizon_s=HOUR)
    assert result.worker_hours == 0
    assert result.cold_starts == 0
    assert result.max_wait_s == 0
    assert result.quiet_share_at_zero == 1.0


def test_one_workers_worth_of_jobs_starts_one_worker_and_waits_out_its_start_up():
    # 1,200 jobs at t=10 s; evaluated at 15 s; the worker serves from 75 s at 4 jobs/s, so the
    # last job starts at 75 + 299 = 374 s, having waited 364 s: the 60 s start-up on top of 300.
    result = bench.simulate(DIRECT, [bench.Arrival(at=10, jobs=1_200)], horizon_s=HOUR)
    assert result.unfinished == 0
    assert result.peak_workers == 1
    assert result.p50_wait_s == pytest.approx(65 + 150, abs=2)
    assert result.max_wait_s == pytest.approx(364, abs=1)
    # 300 s of work; the worker held its GPU from 15 s until the empty queue was seen at 375 s.
    assert result.min_worker_hours * HOUR == pytest.approx(300)
    assert result.worker_hours * HOUR == pytest.approx(360, abs=1)


def test_the_fleet_scales_to_zero_after_the_cooldown_once_the_burst_is_drained():
    arrivals = [bench.Arrival(at=0, jobs=6_000)]
    direct = bench.simulate(DIRECT, arrivals, horizon_s=2 * HOUR)
    keda = bench.simulate(KEDA, arrivals, horizon_s=2 * HOUR)
    for result in (direct, keda):
        assert result.unfinished == 0
        assert result.peak_workers == 5  # ceil(6000 / 1200)
        assert result.cold_starts == 1
    # KEDA keeps workers through the scale-down window and the 600 s cooldown; direct does not.
    assert keda.idle_worker_hours * HOUR >= 600
    assert direct.idle_worker_hours * HOUR < 30
    assert keda.overprovisioning > direct.overprovisioning >= 1.0


def test_a_worker_cap_below_the_need_makes_the_wait_exceed_the_target():
    arrivals = [bench.Arrival(at=0, jobs=12_000)]
    capped = bench.simulate(replace(DIRECT, max_workers=2), arrivals, horizon_s=2 * HOUR)
    assert capped.peak_workers == 2
    assert capped.max_wait_s > 2 * DIRECT.target_s
    assert capped.over_target_share > 0.5


def test_sizing_for_the_oldest_jobs_time_left_starts_enough_workers_for_one_burst():
    # 1,200 jobs at t=10 s, evaluated at 15 s: 295 s left, 235 s after the 60 s start-up, so
    # ceil(1200 / (4 x 235)) = 2 workers (the old sizing asked for 1). They serve from 75 s at
    # 8 jobs/s; at 210 s the 120 jobs left have 40 s after a start-up: one worker, 30 s more.
    # The last job starts at 239 s, having waited 229 s instead of 364 s.
    deadline = replace(DIRECT, controller="deadline")
    result = bench.simulate(deadline, [bench.Arrival(at=10, jobs=1_200)], horizon_s=HOUR)
    assert result.unfinished == 0
    assert result.peak_workers == 2
    assert result.max_wait_s == pytest.approx(229, abs=1)
    # Told that two workers run, at 150 s it keeps one: 600 jobs / 4 per s = 150 s < 160 s left.
    known = replace(deadline, knows_running=True)
    result = bench.simulate(known, [bench.Arrival(at=10, jobs=1_200)], horizon_s=HOUR)
    assert result.max_wait_s == pytest.approx(289, abs=1)


def test_the_deadline_aware_scale_keeps_a_bursty_day_under_the_target_and_the_old_one_does_not():
    arrivals = bench.bursty_day()
    old = bench.simulate(bench.Scenario("old", **bench.OLD_SCALE), arrivals)
    new = bench.simulate(bench.Scenario("new", **bench.SCALE), arrivals)
    known = bench.simulate(bench.Scenario("known", knows_running=True, **bench.SCALE), arrivals)
    assert old.max_wait_s > 2 * DIRECT.target_s
    assert new.max_wait_s <= DIRECT.target_s
    assert known.max_wait_s <= DIRECT.target_s
    assert new.worker_hours > known.worker_hours > old.worker_hours  # paid for in GPU time


def test_an_unknown_controller_is_refused():
    with pytest.raises(ValueError, match="controller must be 'plain' or 'deadline'"):
        bench.simulate(replace(KEDA, controller="magic"), [])


def test_the_simulation_is_deterministic():
    arrivals = bench.bursty_day()
    assert bench.simulate(KEDA, arrivals, horizon_s=3 * HOUR) == bench.simulate(
        KEDA, arrivals, horizon_s=3 * HOUR
    )


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy must be 'keda' or 'direct'"):
        bench.simulate(replace(KEDA, policy="magic"), [])
