"""``producer.fleet``: the worker-count arithmetic and the throughput measure, without services."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from producer.fleet import (
    BatchSpan,
    Throughput,
    busy_seconds,
    plan_scale,
    recommend_workers,
    summarize_throughput,
    worker_rates,
)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_no_pending_work_asks_for_zero_workers_even_with_a_measured_rate():
    assert recommend_workers(0, 4.0, 300) == 0
    assert recommend_workers(0, None, 300) == 0


def test_min_workers_keeps_workers_when_nothing_is_pending():
    assert recommend_workers(0, 4.0, 300, min_workers=2) == 2


def test_work_without_a_measurement_asks_for_one_worker():
    assert recommend_workers(5_000, None, 300) == 1


def test_exactly_one_workers_worth_of_jobs_needs_one_worker_and_one_more_job_needs_two():
    # One worker drains 4 jobs/s x 300 s = 1,200 jobs within the target.
    assert recommend_workers(1_200, 4.0, 300) == 1
    assert recommend_workers(1_201, 4.0, 300) == 2


def test_floating_point_rounding_does_not_add_a_worker():
    # 0.6 jobs/s x 3 s is 1.7999999999999998 in binary floating point, so 9 / 1.8 comes out as
    # 5.000000000000001: a plain ceil() would ask for a sixth worker.
    assert 9 / (0.6 * 3) > 5
    assert recommend_workers(9, 0.6, 3) == 5
    assert recommend_workers(10, 0.6, 3) == 6


def test_a_single_pending_job_needs_one_worker():
    assert recommend_workers(1, 100.0, 300) == 1


def test_a_large_backlog_scales_with_the_inverse_of_rate_and_target():
    assert recommend_workers(24_000, 4.0, 300) == 20
    assert recommend_workers(24_000, 8.0, 300) == 10
    assert recommend_workers(24_000, 4.0, 600) == 10


def test_max_workers_caps_the_count():
    assert recommend_workers(24_000, 4.0, 300, max_workers=8) == 8
    assert recommend_workers(5, None, 300, max_workers=0) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 4.0, 300), "pending must be >= 0"),
        ((10, 4.0, 0), "target_s must be a positive"),
        ((10, 4.0, float("inf")), "target_s must be a positive"),
        ((10, 0.0, 300), "pass None when nothing has been measured"),
        ((10, float("nan"), 300), "per_worker_rate must be a positive"),
    ],
)
def test_invalid_inputs_are_refused_with_a_message_that_says_what_is_wrong(args, message):
    with pytest.raises(ValueError, match=message):
        recommend_workers(*args)


def test_max_workers_below_min_workers_is_refused():
    with pytest.raises(ValueError, match=r"max_workers \(1\) is below min_workers \(2\)"):
        recommend_workers(10, 4.0, 300, min_workers=2, max_workers=1)
    with pytest.raises(ValueError, match="min_workers must be >= 0"):
        recommend_workers(10, 4.0, 300, min_workers=-1)


def test_busy_seconds_count_overlapping_spans_once_and_skip_gaps():
    spans = [(at(0), at(2)), (at(1), at(3)), (at(10), at(11)), (at(10.5), at(10.7))]
    assert busy_seconds(spans) == pytest.approx(4.0)
    assert busy_seconds([]) == 0.0


def test_a_workers_rate_is_jobs_per_busy_second_not_per_wall_clock_second():
    batches = [
        BatchSpan("w1", at(0), at(2), 8),
        BatchSpan("w1", at(100), at(102), 8),  # 98 idle seconds in between
        BatchSpan("w2", at(0), at(4), 4),
    ]
    assert worker_rates(batches) == pytest.approx({"w1": 4.0, "w2": 1.0})


def test_a_worker_with_no_measurable_busy_time_is_left_out():
    batches = [BatchSpan("instant", at(5), at(5), 3), BatchSpan("skewed", at(5), at(4), 3)]
    assert worker_rates(batches) == {}
    assert summarize_throughput(batches) == Throughput(None, 0, 0, {})


def test_the_fleet_rate_is_the_median_worker_so_one_outlier_does_not_move_it():
    batches = [
        BatchSpan("slow", at(0), at(10), 10),  # 1/s
        BatchSpan("a", at(0), at(1), 4),  # 4/s
        BatchSpan("b", at(0), at(1), 5),  # 5/s
    ]
    throughput = summarize_throughput(batches)
    assert throughput.per_worker_images_per_s == pytest.approx(4.0)
    assert throughput.workers == 3
    assert throughput.jobs == 19


def test_a_plan_says_why_it_recommends_what_it_does():
    measured = Throughput(4.0, 3, 100, {})
    plan = plan_scale("m", 2_400, measured, 300)
    assert plan.recommended_workers == 2
    assert "2400 pending" in plan.reason and "median of 3 worker(s)" in plan.reason

    capped = plan_scale("m", 24_000, measured, 300, max_workers=5)
    assert capped.recommended_workers == 5
    assert "= 20 worker(s); capped at --max-workers 5" in capped.reason

    raised = plan_scale("m", 0, measured, 300, min_workers=1)
    assert raised.recommended_workers == 1
    assert "raised to --min-workers 1" in raised.reason

    unmeasured = plan_scale("m", 7, Throughput(None, 0, 0, {}), 300)
    assert unmeasured.recommended_workers == 1
    assert "no finished job of m" in unmeasured.reason
