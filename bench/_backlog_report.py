"""The report of ``bench_backlog.py``: one Markdown table per size (rows = measured figures,
columns = checkouts and their ratio to the first), and "10M on paper", the figures extrapolated
from the measured slopes.

It works on the raw JSON alone (``bench_backlog.py --report-only FILE`` rewrites the Markdown).
A figure is a number, or a lower bound when its command hit the time limit: its step lists the
key under ``cut`` and the table shows "> N".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAPER_JOBS = 10_000_000
# Past this exponent (N^k), a straight line from the last two sizes underestimates 10M: "≥".
SUPERLINEAR = 1.2


@dataclass(frozen=True)
class Row:
    step: str
    key: str
    label: str
    unit: str  # s, ms, MiB, B, jobs/s, n
    grows: bool = True  # extrapolated in "10M on paper"


ROWS = (
    Row("startup", "version_s", "start-up: `--version`", "s", grows=False),
    Row("startup", "status_small_s", "start-up: `status` of a 1-job submission", "s", grows=False),
    Row("submit", "wall_s", "`submit` N-line JSONL: wall", "s"),
    Row("submit", "peak_rss_mib", "`submit`: peak RSS", "MiB"),
    Row("submit", "jobs_per_s", "`submit`: throughput", "jobs/s", grows=False),
    Row("redis_after_submit", "above_before_mib", "Redis after submit, over before it", "MiB"),
    Row("redis_after_submit", "bytes_per_job", "Redis per job", "B", grows=False),
    Row("redis_after_submit", "messages_in_lists", "Redis: messages in lists", "n"),
    Row("reconcile", "wall_s", "reconcile pass (`requeue --stuck`): wall", "s"),
    Row("reconcile", "peak_rss_mib", "reconcile pass: peak RSS", "MiB"),
    Row("status", "wall_s", "`status ID`: wall (median)", "s"),
    Row("status", "over_startup_s", "`status ID`: over its start-up", "s"),
    Row("jobs_json", "wall_s", "`jobs --format json`: wall", "s"),
    Row("jobs_json", "peak_rss_mib", "`jobs --format json`: peak RSS", "MiB"),
    Row("jobs_json", "output_mib", "`jobs --format json`: written", "MiB"),
    Row("jobs_csv", "wall_s", "`jobs --format csv`: wall", "s"),
    Row("jobs_csv", "peak_rss_mib", "`jobs --format csv`: peak RSS", "MiB"),
    Row("jobs_csv", "output_mib", "`jobs --format csv`: written", "MiB"),
    Row("results_head", "first_line_s", "`results ID \\| head -1`: first line", "s"),
    Row("results_head", "wall_s", "`results ID \\| head -1`: wall", "s"),
    Row("web", "front_median_ms", "web: front page, median", "ms"),
    Row("web", "front_p95_ms", "web: front page, p95", "ms"),
    Row("web", "submission_median_ms", "web: submission page, median", "ms"),
    Row("web", "submission_p95_ms", "web: submission page, p95", "ms"),
    Row("web", "deep_median_ms", "web: deep page of its jobs, median", "ms"),
    Row("web", "deep_p95_ms", "web: deep page of its jobs, p95", "ms"),
    Row("web", "api_median_ms", "web: `/api/submissions/ID`, median", "ms"),
    Row("web", "api_p95_ms", "web: `/api/submissions/ID`, p95", "ms"),
    Row("web", "server_peak_rss_mib", "web: `loopfree ui` peak RSS", "MiB"),
    Row("cancel", "wall_s", "`cancel ID`: wall", "s"),
    Row("cancel", "peak_rss_mib", "`cancel ID`: peak RSS", "MiB"),
    Row("cancel", "redis_after_mib", "Redis over pre-submit, right after cancel", "MiB"),
    Row("cancel", "redis_10s_mib", "Redis over pre-submit, 10 s after cancel", "MiB"),
    Row("cancel", "cancelled", "jobs cancelled", "n", grows=False),
    Row("cancel", "rest_wall_s", "`cancel ID --wait` of the rest (no worker here): wall", "s"),
    Row("cancel", "rest_peak_rss_mib", "`cancel ID --wait` of the rest: peak RSS", "MiB"),
    Row("cancel", "rest_cancelled", "jobs cancelled by `--wait`", "n", grows=False),
)


def _value(step: dict[str, Any] | None, key: str) -> tuple[float | None, bool]:
    """The figure and whether it is a lower bound (its command was cut at the time limit)."""
    if not step or "error" in step or step.get(key) is None:
        return None, False
    return float(step[key]), key in step.get("cut", ())


def _number(value: float, unit: str) -> str:
    if unit in ("n", "B", "jobs/s") or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if unit != "s" or abs(value) >= 0.1 else f"{value:.3f}"


def _cell(step: dict[str, Any] | None, row: Row) -> str:
    if step and "error" in step:
        return "failed"
    value, cut = _value(step, row.key)
    if value is None:
        return "–"
    return ("> " if cut else "") + _number(value, row.unit)


def _ratio(base: dict[str, Any] | None, other: dict[str, Any] | None, key: str) -> str:
    (b, b_cut), (o, o_cut) = _value(base, key), _value(other, key)
    if b is None or o is None or b <= 0 or o < 0 or (b_cut and o_cut):
        return "–"  # a difference of two timings can be <= 0 where there is nothing to measure
    ratio = o / b
    text = f"{ratio:.3g}"
    if o_cut:  # the other is at least o: the ratio is at least this
        return "> " + text
    if b_cut:  # the baseline is at least b: the ratio is at most this
        return "< " + text
    return text


def size_table(size: int, by_checkout: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    """The Markdown table of one size: a row per figure, a column per checkout, then each later
    checkout's ratio to the first."""
    base = names[0]
    head = ["figure", *names, *(f"{name} / {base}" for name in names[1:])]
    lines = [
        f"### {size:,} jobs queued",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in ROWS:
        steps = [by_checkout.get(name, {}).get(row.step) for name in names]
        if all(step is None for step in steps):
            continue
        cells = [f"{row.label} ({row.unit})", *(_cell(step, row) for step in steps)]
        cells += [_ratio(steps[0], step, row.key) for step in steps[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    notes = _notes(by_checkout, names)
    return lines + ([""] + notes if notes else [])


def _notes(by_checkout: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    """Failures, time limits, the deep page each checkout was asked for, the load."""
    notes = []
    for name in names:
        for step_name, step in by_checkout.get(name, {}).items():
            if not isinstance(step, dict):
                continue
            if "error" in step:
                notes.append(f"- {name}, {step_name}: failed: {step['error']}")
            if step.get("cut"):
                notes.append(
                    f"- {name}, {step_name}: cut at the time limit ({step['wall_s']:.0f} s)"
                )
            if step_name == "web" and "deep_path" in step:
                notes.append(f"- {name}, deep page: `{step['deep_path']}`")
    loads = [
        step["load"]
        for steps in by_checkout.values()
        for step in steps.values()
        if isinstance(step, dict) and "load" in step
    ]
    if loads:
        notes.append(f"- load average (1 min) {min(loads)}–{max(loads)} at the steps' starts")
    return notes


# -- 10M on paper ---------------------------------------------------------------------------------


def slope(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Per-job cost and fixed part, from the two largest sizes: the marginal cost at scale
    (start-up and other fixed costs cancel out), which is what 10M adds."""
    if len(points) < 2:
        return None
    (n1, y1), (n2, y2) = sorted(points)[-2:]
    per_job = (y2 - y1) / (n2 - n1)
    return per_job, y2 - per_job * n2


def growth(points: list[tuple[int, float, bool]]) -> tuple[float, bool] | None:
    """How the figure grows between the two largest sizes: the exponent k of N^k (1: in
    proportion to the backlog, 0: flat), and whether it is a lower bound (the larger was cut).
    None where it says nothing (too few sizes, a zero, a cut bound below the smaller size)."""
    usable = sorted(p for p in points if p[1] > 0)
    if len(usable) < 2 or usable[-2][2]:
        return None
    (n1, y1, _), (n2, y2, cut) = usable[-2:]
    k = math.log(y2 / y1) / math.log(n2 / n1)
    return None if cut and k <= 0 else (k, cut)


def _growth_cell(found: tuple[float, bool] | None) -> str:
    if found is None:
        return "–"
    k, cut = found
    return ("> " if cut else "") + f"{k:.2f}"


def paper_table(sizes: dict[int, dict[str, dict[str, Any]]], names: list[str]) -> list[str]:
    """Each growing figure extrapolated to 10M jobs per checkout, in a straight line: a lower
    bound where it grows faster (k > ``SUPERLINEAR``, marked "≥"). Sizes whose command was cut or
    failed are left out of the fit; a cell fitted below the largest size says so."""
    head = ["figure", *(f"{name}: N^k" for name in names)]
    head += [f"{name}: per 1M jobs" for name in names]
    head += [f"{name}: at 10M" for name in names]
    lines = [
        f"### {PAPER_JOBS:,} jobs on paper (the slope between the two largest sizes measured)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    largest_size = max(sizes)
    for row in ROWS:
        if not row.grows:
            continue
        exponents, per_million, at_paper = [], [], []
        for name in names:
            measured = []
            for size, by_checkout in sizes.items():
                value, cut = _value(by_checkout.get(name, {}).get(row.step), row.key)
                if value is not None:
                    measured.append((size, value, cut))
            grows = growth(measured)
            exponents.append(_growth_cell(grows))
            points = [(size, value) for size, value, cut in measured if not cut]
            fit = slope(points)
            if fit is None:
                per_million.append("–")
                at_paper.append("–")
                continue
            per_job, fixed = fit
            reach = max(points)[0]
            note = f" (fit to {reach:,})" if reach < largest_size else ""
            if per_job <= 0:  # within the noise: the figure does not grow with the backlog
                per_million.append("flat")
                at_paper.append("≈ " + _number(max(points)[1], row.unit) + note)
                continue
            faster = grows is not None and (grows[0] > SUPERLINEAR or (grows[1] and grows[0] > 1))
            per_million.append(_number(per_job * 1_000_000, row.unit))
            at_paper.append(
                ("≥ " if faster else "") + _number(fixed + per_job * PAPER_JOBS, row.unit) + note
            )
        if all(cell == "–" for cell in at_paper):
            continue
        cells = [f"{row.label} ({row.unit})", *exponents, *per_million, *at_paper]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(results: dict[str, Any], out: Path, raw: Path | None) -> None:
    """The Markdown report to ``out`` and, where given, the raw figures as JSON to ``raw``."""
    names = list(results["checkouts"])
    sizes = {int(size): by_checkout for size, by_checkout in results["sizes"].items()}
    described = ", ".join(
        f"**{name}** = `{c['path']}` at {c['commit']}" for name, c in results["checkouts"].items()
    )
    lines = [
        "# Backlog benchmark (issue 17)",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Started {results['started']}; {described}.",
    ]
    machine = results.get("machine")
    if machine:
        lines.append(
            f"{machine['cpu']}, {machine['cores']} cores; Python {machine['python']}, "
            f"PostgreSQL {machine['postgresql']}, Redis {machine['redis']}."
        )
    lines += [
        "",
        "Each column runs its checkout's code (`PYTHONPATH`) on a private Redis and a throwaway "
        "PostgreSQL database of its own, no worker running; the steps alternate between the "
        'columns. Ratio: column / first column (below 1: less time or memory). "> N": cut at '
        "the time limit. Method and what is left out: the docstring of bench/bench_backlog.py.",
    ]
    if results.get("interrupted"):
        lines += ["", "**Interrupted**: the figures below are what was measured before."]
    for size, by_checkout in sizes.items():
        lines += ["", *size_table(size, by_checkout, names)]
    if len(sizes) >= 2:
        lines += ["", *paper_table(sizes, names)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if raw is not None:
        raw.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
