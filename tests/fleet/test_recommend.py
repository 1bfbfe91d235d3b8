"""``fleet.scaling``: the worker-count arithmetic and the throughput measure, without services."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from fleet.scaling import (
    MIN_WINDOW_FRACTION,
    BatchSpan,
    Throughput,
    busy_seconds,
    plan_scale,
    recommend_workers,
    startup_window_s,
    summarize_throughput,
    time_left_s,
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


# -- the deadline: the oldest queued job's time left, less a start-up for new workers -----------
# One worker drains 4 jobs/s; the target is 300 s throughout.


def test_a_backlog_that_has_waited_gets_only_the_time_it_has_left():
    # 2,400 jobs: two workers drain them in a fresh 300 s; with 100 s gone, 2400 / (4 x 200) = 3.
    assert recommend_workers(2_400, 4.0, 300, oldest_queued_age_s=0) == 2
    assert recommend_workers(2_400, 4.0, 300, oldest_queued_age_s=100) == 3


def test_workers_that_are_not_running_yet_lose_their_start_up_from_the_window():
    # 300 - 60 s start-up = 240 s: 2400 / (4 x 240) = 2.5 -> 3. With 100 s gone: 140 s -> 4.3 -> 5.
    assert recommend_workers(2_400, 4.0, 300, startup_s=60) == 3
    assert recommend_workers(2_400, 4.0, 300, oldest_queued_age_s=100, startup_s=60) == 5


def test_running_workers_keep_the_whole_window_and_only_added_workers_pay_the_start_up():
    # 200 s left: two running workers drain 2 x 4 x 200 = 1,600 of the 2,400 jobs; the other 800
    # need new workers with 140 s each: 800 / 560 = 1.4 -> 2, so 4 in all (5 if none ran).
    sizing = {"oldest_queued_age_s": 100, "startup_s": 60}
    assert recommend_workers(2_400, 4.0, 300, running_workers=2, **sizing) == 4
    assert recommend_workers(2_400, 4.0, 300, running_workers=None, **sizing) == 5
    assert recommend_workers(2_400, 4.0, 300, running_workers=0, **sizing) == 5


def test_running_workers_that_drain_the_backlog_in_time_may_be_fewer_and_pay_no_start_up():
    # Five running workers, 1,000 jobs, 300 s left: one running worker drains 1,200 in time.
    assert recommend_workers(1_000, 4.0, 300, startup_s=60, running_workers=5) == 1
    # Exactly what two running workers drain in 300 s is two; one job more needs a third.
    assert recommend_workers(2_400, 4.0, 300, startup_s=60, running_workers=2) == 2
    assert recommend_workers(2_401, 4.0, 300, startup_s=60, running_workers=2) == 3


def test_a_backlog_too_late_for_new_workers_is_sized_for_the_floor_and_stays_finite():
    floor = MIN_WINDOW_FRACTION * 300  # 30 s
    assert startup_window_s(300, 280, 60) == floor
    assert startup_window_s(300, 86_400, 60) == floor  # a day late: the same, finite window
    # 1,200 jobs need one worker with a fresh target and 1200 / (4 x 30) = 10 once they are late.
    assert recommend_workers(1_200, 4.0, 300) == 1
    assert recommend_workers(1_200, 4.0, 300, oldest_queued_age_s=280, startup_s=60) == 10
    assert recommend_workers(1_200, 4.0, 300, oldest_queued_age_s=86_400, startup_s=60) == 10
    assert recommend_workers(1_200, 4.0, 300, oldest_queued_age_s=86_400, max_workers=4) == 4


def test_running_workers_past_the_deadline_count_for_nothing_and_new_ones_get_the_floor():
    assert time_left_s(300, 400) == 0
    # Three running workers, 1,200 jobs already late: 3 + 1200 / (4 x 30) = 13.
    assert recommend_workers(1_200, 4.0, 300, oldest_queued_age_s=400, running_workers=3) == 13


def test_running_workers_are_not_given_the_floor_in_the_last_seconds_before_the_deadline():
    # 15 s left and 180 jobs: running workers have 15 s, not the 30 s floor: 180 / (4 x 15) = 3.
    # (Sizing them for the floor would ask for 2 and let the last jobs wait 14 s too long.)
    assert recommend_workers(180, 4.0, 300, oldest_queued_age_s=285, running_workers=3) == 3


def test_work_without_a_measurement_asks_for_one_worker_however_late_it_is():
    assert recommend_workers(5_000, None, 300, oldest_queued_age_s=1_000, startup_s=60) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 4.0, 300), "pending must be >= 0"),
        ((10, 4.0, 0), "target_s must be a positive"),
        ((10, 4.0, float("inf")), "target_s must be a positive"),
        ((10, 0.0, 300), "pass None when nothing has been measured"),
        ((10, float("nan"), 300), "per_worker_rate must be a positive"),
        ((10, 4.0, 300, {"oldest_queued_age_s": -1.0}), "pass 0 when nothing is queued"),
        ((10, 4.0, 300, {"oldest_queued_age_s": float("inf")}), "oldest_queued_age_s must be"),
        ((10, 4.0, 300, {"startup_s": float("nan")}), "startup_s must be >= 0"),
        ((10, 4.0, 300, {"running_workers": -1}), "pass None when unknown"),
    ],
)
def test_invalid_inputs_are_refused_with_a_message_that_says_what_is_wrong(args, message):
    *positional, keywords = args if isinstance(args[-1], dict) else (*args, {})
    with pytest.raises(ValueError, match=message):
        recommend_workers(*positional, **keywords)


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
    assert "takes 20 worker(s); capped at --max-workers 5" in capped.reason

    raised = plan_scale("m", 0, measured, 300, min_workers=1)
    assert raised.recommended_workers == 1
    assert "raised to --min-workers 1" in raised.reason

    unmeasured = plan_scale("m", 7, Throughput(None, 0, 0, {}), 300)
    assert unmeasured.recommended_workers == 1
    assert "no finished job of m" in unmeasured.reason


def test_a_plan_reports_the_oldest_jobs_age_and_the_windows_it_sized_for():
    measured = Throughput(4.0, 3, 100, {})
    plan = plan_scale("m", 2_400, measured, 300, oldest_queued_age_s=100, startup_s=60)
    assert plan.oldest_queued_age_s == 100
    assert plan.window_s == 200  # the oldest job's time left
    assert plan.effective_window_s == 140  # what a worker started now drains for
    assert plan.running_workers is None
    assert plan.recommended_workers == 5
    assert "waited 100 s of the 300 s target" in plan.reason
    assert "every worker is counted as starting" in plan.reason
    assert "10 % of the target" not in plan.reason
    assert plan.to_json()["effective_window_s"] == 140

    known = plan_scale(
        "m", 2_400, measured, 300, oldest_queued_age_s=100, startup_s=60, running_workers=2
    )
    assert known.recommended_workers == 4
    assert known.running_workers == 2
    assert "the 2 worker(s) already running keep all 200 s" in known.reason


def test_a_plan_for_a_backlog_too_late_for_new_workers_says_it_used_the_floor():
    measured = Throughput(4.0, 3, 100, {})
    late = plan_scale("m", 1_200, measured, 300, oldest_queued_age_s=500, startup_s=60)
    assert late.window_s == 0
    assert late.effective_window_s == 30
    assert late.recommended_workers == 10
    assert "10 % of the target" in late.reason
