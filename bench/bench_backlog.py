"""Backlog benchmark (issue 17): what standing still costs with 10k / 100k / 1M jobs queued for
one model, for several checkouts of this repository, measured in the same run.

    .venv/bin/python bench/bench_backlog.py --checkout baseline=/work/wt/baseline --checkout new=.
    .venv/bin/python bench/bench_backlog.py --checkout a=. --checkout b=. --sizes 10k   # the noise
    .venv/bin/python bench/bench_backlog.py --report-only bench/results/backlog.json  # redo the .md

Each checkout runs its own code: every step is a ``loopfree`` command started with
``PYTHONPATH=<checkout>`` from the checkout (``_backlog_run``; the import path is checked first),
on its own private ``redis-server`` and throwaway PostgreSQL database, which it migrates itself.
No worker runs. Per size, every checkout gets the same N-line JSONL (one model, a hub id: no
weights are needed to submit), then the steps below run in turn, each step for every checkout
before the next step (alternating which goes first), so a change in the machine's load hits
all columns alike:

 1. start-up: a 1-job submission, then ``--version`` and ``status`` of that submission
    (median of ``--repeats``): the CLI's own cost, and a warm-up of the submit path;
 2. ``submit`` of the file: wall, peak RSS (GNU time's ``%M``), jobs/s;
 3. Redis ``used_memory`` after it, over what it was just before, and per job;
 4. one reconcile pass, ``requeue --stuck`` (nothing to do: no worker ever ran);
 5. ``status ID``: median wall, and that minus the start-up of (1);
 6. ``jobs --submission ID --format json`` and ``--format csv`` to /dev/null, cut at
    ``--listing-timeout`` (reported as "> limit");
 7. ``results ID | head -1``: when the first line comes, when the pipeline ends;
 8. the web view (``loopfree ui`` of the checkout): front page, the submission's page, a deep
    page of its jobs (the page's own ``rel="last"`` link, or ``--deep-page NAME=PATH``) and
    ``/api/submissions/ID``, median and p95 of ``--requests`` requests after one warm-up;
 9. ``cancel ID``: wall, peak RSS, Redis right after and 10 s later (over its pre-submit size).

Every command has a time limit (``--timeout``); a step that fails or is cut is reported as such
and the run goes on.

Left out: workers, images and the object store (a local folder store; no job has an image).
The private Redis is append-only with fsync every second, as docker/compose.yaml runs it.
Writes ``--out`` (Markdown: the command, a table per size, "10M on paper") and ``--json`` (raw)
after every size, so an interrupted run keeps what it measured. Every server, database, process
and file it makes is removed again, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for path in (str(BENCH.parent), str(BENCH)):  # run as a script from anywhere
    if path not in sys.path:
        sys.path.insert(0, path)

import httpx  # noqa: E402
from _backlog_report import write_report  # noqa: E402
from _backlog_run import (  # noqa: E402
    MODEL,
    Backend,
    Checkout,
    Measured,
    StepFailed,
    backend,
    check_tools,
    run_first_line,
    run_measured,
    serving,
)
from _machine import load_average  # noqa: E402
from _queue_services import machine_info  # noqa: E402
from bench_ui import measure  # noqa: E402

from tests.harness import PG_ADMIN_URL, free_port  # noqa: E402

MIB = 1024 * 1024
RESULTS = BENCH / "results"
CANCEL_SETTLE_S = 10  # the target: Redis back to its pre-submit size within 10 s


@dataclass
class Run:
    """One checkout at one size: its services, options and what earlier steps found."""

    checkout: Checkout
    backend: Backend
    jobs: int
    prompts: Path
    options: argparse.Namespace
    submission: str | None = None
    small_submission: str | None = None
    startup_status_s: float | None = None

    def cli(self, *args: str, limit_s: float | None = None, **kwargs: Any) -> Measured:
        return run_measured(
            self.checkout,
            list(args),
            self.backend.settings(),
            limit_s=limit_s or self.options.timeout,
            **kwargs,
        )

    def submitted(self) -> str:
        if self.submission is None:
            raise StepFailed("no submission to measure (submit failed)")
        return self.submission


def _median_wall(run: Run, args: list[str]) -> float:
    return statistics.median(
        run.cli(*args).check(args[0]).wall_s for _ in range(run.options.repeats)
    )


def _listing(measured: Measured) -> dict[str, Any]:
    figures = {"wall_s": measured.wall_s, "peak_rss_mib": measured.peak_rss_mib}
    if measured.timed_out:
        figures["cut"] = ["wall_s", "peak_rss_mib"]
    return figures


# -- the steps, in order --------------------------------------------------------------------------


def migrate(run: Run) -> dict[str, Any]:
    """Not a figure: the checkout creates its own schema in the empty database."""
    return {"wall_s": run.cli("db", "upgrade").check("db upgrade").wall_s}


def startup(run: Run) -> dict[str, Any]:
    """The CLI's own start-up, to subtract from ``status``: a 1-job submission's ``status``
    (same imports, connections and schema check, nothing to count). Submitting that job first
    also runs the submit path once, so the big submit does not pay for compiling it."""
    one = run.prompts.with_name(f"one-{run.checkout.name}.jsonl")
    one.write_text(json.dumps({"prompt": "start-up probe", "seed": 1}) + "\n")
    measured = run.cli("submit", str(one), "--model", MODEL).check("submit of one job")
    run.small_submission = measured.stdout.strip().splitlines()[-1]
    run.startup_status_s = _median_wall(run, ["status", run.small_submission])
    return {"version_s": _median_wall(run, ["--version"]), "status_small_s": run.startup_status_s}


def submit(run: Run) -> dict[str, Any]:
    run.backend.redis_before_bytes = run.backend.redis_memory()["used_bytes"]
    measured = run.cli("submit", str(run.prompts), "--model", MODEL).check("submit")
    if measured.timed_out:
        raise StepFailed(f"submit did not finish within {measured.limit_s:.0f} s")
    run.submission = measured.stdout.strip().splitlines()[-1]
    return {
        "wall_s": measured.wall_s,
        "peak_rss_mib": measured.peak_rss_mib,
        "jobs_per_s": run.jobs / measured.wall_s,
        "submission": run.submission,
    }


def redis_after_submit(run: Run) -> dict[str, Any]:
    run.submitted()
    memory = run.backend.redis_memory()
    return {
        **memory,
        "above_before_mib": memory["above_before_bytes"] / MIB,
        "bytes_per_job": memory["above_before_bytes"] / run.jobs,
    }


def reconcile(run: Run) -> dict[str, Any]:
    run.submitted()
    measured = run.cli("requeue", "--stuck").check("requeue --stuck")
    figures = _listing(measured)
    if not measured.timed_out:
        figures["report"] = json.loads(measured.stdout.strip().splitlines()[-1])
    return figures


def status(run: Run) -> dict[str, Any]:
    wall = _median_wall(run, ["status", run.submitted()])
    over = None if run.startup_status_s is None else wall - run.startup_status_s
    return {"wall_s": wall, "over_startup_s": over}


def jobs_json(run: Run) -> dict[str, Any]:
    return _jobs_listing(run, "json")


def jobs_csv(run: Run) -> dict[str, Any]:
    return _jobs_listing(run, "csv")


def _jobs_listing(run: Run, format: str) -> dict[str, Any]:
    args = ("jobs", "--submission", run.submitted(), "--format", format)
    measured = run.cli(*args, limit_s=run.options.listing_timeout, count_output=True)
    figures = _listing(measured.check(f"jobs --format {format}"))
    figures["output_mib"] = measured.extra["stdout_bytes"] / MIB
    if measured.timed_out:  # the whole listing is longer than what it wrote by the cut
        figures["cut"].append("output_mib")
    return figures


def results_head(run: Run) -> dict[str, Any]:
    args = ["results", run.submitted()]
    runs = [
        run_first_line(run.checkout, args, run.backend.settings(), limit_s=run.options.timeout)
        for _ in range(run.options.repeats)
    ]
    for measured in runs:
        if not measured.ok or not measured.stdout.strip():
            raise StepFailed(f"`results | head -1` printed no line (exit {measured.returncode})")
    return {
        "first_line_s": statistics.median(m.extra["first_line_s"] for m in runs),
        "wall_s": statistics.median(m.wall_s for m in runs),
    }


def web(run: Run) -> dict[str, Any]:
    submission = run.submitted()
    port = free_port()
    log = run.backend.home / "ui.log"
    figures: dict[str, Any] = {}
    with (
        serving(run.checkout, run.backend.settings(), port, log) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=run.options.timeout) as client,
    ):
        deep = _deep_page(run, client, submission)
        pages = {
            "front": "/",
            "submission": f"/submissions/{submission}",
            "deep": deep,
            "api": f"/api/submissions/{submission}",
        }
        for name, path in pages.items():
            timed = measure(client, path, run.options.requests, warmups=1)
            figures[f"{name}_median_ms"] = timed["median_ms"]
            figures[f"{name}_p95_ms"] = timed["p95_ms"]
        figures["deep_path"] = deep
    figures["server_peak_rss_mib"] = server.get("peak_rss_mib")
    return figures


def _deep_page(run: Run, client: httpx.Client, submission: str) -> str:
    """``--deep-page`` of this checkout (``{id}`` is the submission), else the submission page's
    own ``rel="last"`` link: the deepest page however the checkout pages (offset or key)."""
    wanted = run.options.deep_page.get(run.checkout.name, "last")
    if wanted != "last":
        return wanted.format(id=submission)
    page = client.get(f"/submissions/{submission}")
    page.raise_for_status()
    found = re.search(r'<a[^>]*\brel="last"[^>]*\bhref="([^"]+)"', page.text) or re.search(
        r'<a[^>]*\bhref="([^"]+)"[^>]*\brel="last"', page.text
    )
    if found is None:
        raise StepFailed('the submission page has no rel="last" link: give --deep-page NAME=PATH')
    return html.unescape(found.group(1))


def cancel(run: Run) -> dict[str, Any]:
    measured = run.cli("cancel", run.submitted()).check("cancel")
    if measured.timed_out:
        raise StepFailed(f"cancel did not finish within {measured.limit_s:.0f} s")
    right_after = run.backend.redis_memory()
    time.sleep(CANCEL_SETTLE_S)
    later = run.backend.redis_memory()
    count = re.search(r"cancelled (\d+)", measured.stdout)
    figures = {
        "wall_s": measured.wall_s,
        "peak_rss_mib": measured.peak_rss_mib,
        "redis_after_mib": right_after["above_before_bytes"] / MIB,
        "redis_10s_mib": later["above_before_bytes"] / MIB,
        "messages_10s": later["messages_in_lists"],
        "cancelled": int(count.group(1)) if count else None,
    }
    if "in the background" in measured.stdout:
        # A cancel that answers within its budget leaves the rest of the rows to the workers'
        # reconcile passes; none runs here, so time moving them all, as `cancel --wait` does.
        rest = run.cli("cancel", run.submitted(), "--wait").check("cancel --wait")
        moved = re.search(r"cancelled (\d+)", rest.stdout)
        figures |= {
            "rest_wall_s": rest.wall_s,
            "rest_peak_rss_mib": rest.peak_rss_mib,
            "rest_cancelled": int(moved.group(1)) if moved else None,
        }
    return figures


# Fairness needs a worker and a scenario of its own, not a step of a standing backlog:
# bench/bench_fairness.py (a late 20-job submission behind a 1M backlog; two owners' shares).
STEPS: list[Callable[[Run], dict[str, Any]]] = [
    migrate,
    startup,
    submit,
    redis_after_submit,
    reconcile,
    status,
    jobs_json,
    jobs_csv,
    results_head,
    web,
    cancel,
]


# -- the runner -----------------------------------------------------------------------------------


def run_step(step: Callable[[Run], dict[str, Any]], run: Run) -> dict[str, Any]:
    """One step of one checkout; a failure is recorded and the run goes on."""
    started, load = time.perf_counter(), load_average()
    try:
        figures = step(run)
    except (StepFailed, httpx.HTTPError, AssertionError, OSError, ValueError) as error:
        figures = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
    figures["step_s"], figures["load"] = time.perf_counter() - started, load
    print(f"  {run.checkout.name:>12} {step.__name__:<20} {_brief(figures)}", file=sys.stderr)
    return figures


def _brief(figures: dict[str, Any]) -> str:
    if "error" in figures:
        return figures["error"]
    skip = ("step_s", "load")
    shown = [f"{k}={v:.3g}" for k, v in figures.items() if isinstance(v, float) and k not in skip]
    return " ".join(shown[:4]) + (" (cut)" if figures.get("cut") else "")


def bench_size(
    jobs: int, checkouts: list[Checkout], options: argparse.Namespace, results: dict[str, Any]
) -> None:
    """Every step for every checkout at one size, the figures filled into ``results`` as they
    come (an interrupted run keeps them)."""
    print(f"{jobs:,} jobs", file=sys.stderr)
    figures: dict[str, Any] = results["sizes"].setdefault(str(jobs), {})
    with (
        tempfile.TemporaryDirectory(prefix="loopfree-bench-backlog-") as folder,
        ExitStack() as stack,
    ):
        prompts = write_prompts(Path(folder) / f"prompts-{jobs}.jsonl", jobs)
        runs = []
        for checkout in checkouts:
            services = backend(Path(folder) / checkout.name, options.pg_admin_url)
            runs.append(Run(checkout, stack.enter_context(services), jobs, prompts, options))
            figures[checkout.name] = {}
        results.setdefault("machine", machine_info(runs[0].backend.redis.url, options.pg_admin_url))
        for index, step in enumerate(STEPS):
            for run in runs if index % 2 == 0 else reversed(runs):
                figures[run.checkout.name][step.__name__] = run_step(step, run)


def write_prompts(path: Path, count: int) -> Path:
    """``count`` distinct JSONL prompts of one model (the model comes from ``--model``)."""
    with path.open("w", encoding="utf-8") as file:
        for i in range(count):
            line = {
                "prompt": f"a watercolour painting of a red fox in the snow, variation {i}",
                "seed": i,
            }
            file.write(json.dumps(line) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.report_only:
        write_report(json.loads(options.report_only.read_text()), options.out, None)
        print(options.out.read_text())
        return 0
    check_tools()
    # SIGTERM cleans up as Ctrl-C does: servers stopped, databases dropped, children killed.
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="loopfree-bench-pycache-") as pycache:
        checkouts = [replace(c, pycache=Path(pycache)) for c in options.checkouts]
        return measure_all(checkouts, options, argv)


def measure_all(
    checkouts: list[Checkout], options: argparse.Namespace, argv: list[str] | None
) -> int:
    """Every size in turn, the report rewritten after each; an interrupted run keeps its
    figures (and removes what it started, on the way out of ``bench_size``)."""
    command = sys.argv if argv is None else ["bench/bench_backlog.py", *argv]
    results: dict[str, Any] = {
        "command": ".venv/bin/python " + shlex.join(command),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "options": {k: v for k, v in vars(options).items() if k != "checkouts"},
        "checkouts": {c.name: c.verify() for c in checkouts},
        "sizes": {},
    }
    try:
        for jobs in options.sizes:
            bench_size(jobs, checkouts, options, results)
            write_report(results, options.out, options.json)
    except KeyboardInterrupt:
        results["interrupted"] = True
        write_report(results, options.out, options.json)
        print("interrupted; everything it started is stopped and removed", file=sys.stderr)
        return 130
    print(options.out.read_text())
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkout",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a checkout to measure (repeat; the first is the baseline)",
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="the interpreter of checkout NAME (default: this one)",
    )
    parser.add_argument("--sizes", default="10k,100k,1M", help="jobs queued, e.g. 10k,100k,1M")
    parser.add_argument("--timeout", type=float, default=900, help="seconds any command may run")
    parser.add_argument(
        "--listing-timeout",
        type=float,
        default=180,
        help='seconds `jobs --format json|csv` may run (then "> limit")',
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs of the quick commands")
    parser.add_argument("--requests", type=int, default=5, help="timed requests per web page")
    parser.add_argument(
        "--deep-page",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="deep page of checkout NAME ({id}: the submission id); "
        'default: the page\'s rel="last" link',
    )
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--out", type=Path, default=RESULTS / "backlog.md")
    parser.add_argument("--json", type=Path, default=RESULTS / "backlog.json")
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="JSON",
        help="rewrite --out from a raw JSON of an earlier run; measure nothing",
    )
    options = parser.parse_args(argv)
    if options.report_only:
        return options
    pythons = _pairs(parser, options.python, "--python")
    named = _pairs(parser, options.checkout or [f"this={BENCH.parent}"], "--checkout")
    options.checkouts = [
        Checkout(name, Path(path).resolve(), pythons.get(name, sys.executable))
        for name, path in named.items()
    ]
    for checkout in options.checkouts:
        if not (checkout.path / "loopfree" / "cli.py").is_file():
            parser.error(f"--checkout {checkout.name}: {checkout.path} is not a loopfree checkout")
    options.deep_page = _pairs(parser, options.deep_page, "--deep-page")
    try:
        options.sizes = [_count(size) for size in options.sizes.split(",") if size.strip()]
    except ValueError:
        parser.error(f"--sizes {options.sizes!r}: give counts such as 10k,100k,1M")
    return options


def _pairs(parser: argparse.ArgumentParser, values: list[str], flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest or name in pairs:
            parser.error(f"{flag} {value!r}: give NAME=VALUE, each NAME once")
        pairs[name] = rest
    return pairs


def _count(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


if __name__ == "__main__":
    sys.exit(main())
