"""Throughput with a trickling webhook receiver vs none (issue 10: must differ by < 10%).

Per round, on real services (PostgreSQL and a private Redis on loopback, a moto S3 server, a real
``loopfree worker`` process on the CPU, a fresh database and bucket): the worker renders a burst
of ``--jobs`` one-image jobs, and images/s is taken from the jobs' own rows (first start to last
finish). In a ``trickle`` round, ``--hooked`` one-job submissions whose webhook points at a
receiver that answers one byte every 5 s finish just before the burst, so the worker's webhook
sender spends the whole burst in attempts that end only at their 10 s deadline, and in retries.
Rounds alternate (none, trickle, none, ...) so a drift in the machine's load hits both alike.

    .venv/bin/python bench/bench_webhooks.py                     # 3 rounds each, ~5 min on 2 cores
    .venv/bin/python bench/bench_webhooks.py --rounds 1 --jobs 100   # quick look
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for path in (str(BENCH.parent), str(BENCH)):  # run as a script from anywhere
    if path not in sys.path:
        sys.path.insert(0, path)

import psycopg  # noqa: E402
from _machine import load_average  # noqa: E402
from _queue_services import make_bench_model, moto_s3  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from storage.db import session_scope  # noqa: E402
from storage.models import Job  # noqa: E402
from tests.conftest import private_redis  # noqa: E402
from tests.fault.conftest import open_fleet  # noqa: E402
from tests.fault.fleet import Fleet, rows  # noqa: E402
from tests.harness import PG_ADMIN_URL  # noqa: E402
from tests.webhook_receiver import Receiver, webhook_receiver  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, list[float]] = {"none": [], "trickle": []}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-hooks-")))
        model = make_bench_model(workdir / "model", args.shape)
        s3 = stack.enter_context(moto_s3())
        redis = stack.enter_context(private_redis(workdir / "redis"))
        admin = stack.enter_context(psycopg.connect(PG_ADMIN_URL, autocommit=True))
        receiver = stack.enter_context(webhook_receiver(trickle_s=5.0))
        for round_number in range(args.rounds):
            for mode in ("none", "trickle"):
                folder = workdir / f"{mode}-{round_number}"
                with open_fleet(
                    folder, pg_admin=admin, s3_endpoint=s3, model=model, broker_url=redis.url,
                    webhook_allow="127.0.0.1", max_batch=args.max_batch,
                ) as fleet:  # fmt: skip
                    rate, attempts = run_round(fleet, mode, args, receiver)
                results[mode].append(rate)
                print(
                    f"round {round_number + 1} {mode:8s} {rate:7.1f} images/s"
                    + (
                        f"  ({attempts} webhook attempts began during the burst)"
                        if mode != "none"
                        else ""
                    )
                    + f"  load {load_average()}",
                    flush=True,
                )
    none, trickle = statistics.median(results["none"]), statistics.median(results["trickle"])
    change = (trickle - none) / none
    print(
        f"\nmedian images/s: none {none:.1f}, trickling receiver {trickle:.1f}: {change:+.1%} "
        f"({args.jobs} jobs, {args.hooked} hooked submissions, {args.shape} model, "
        f"max batch {args.max_batch}, {args.rounds} rounds each)"
    )
    print("verdict:", "PASS" if abs(change) < 0.10 else "FAIL", "(|change| < 10%)")
    return 0


def run_round(
    fleet: Fleet, mode: str, args: argparse.Namespace, receiver: Receiver
) -> tuple[float, int]:
    """One burst on a fresh worker; returns its images/s and the POSTs that reached the
    receiver while it ran (each of them trickled until its attempt's deadline)."""
    worker = fleet.start_worker()
    worker.wait_ready()
    hooked: list[str] = []
    if mode == "trickle":
        hooked = [
            fleet.submit(rows(1, seed=i), webhook_url=receiver.url).submission_id
            for i in range(args.hooked)
        ]
        fleet.wait_settled(*hooked, timeout=120)
    before = receiver.count()
    burst = fleet.submit(rows(args.jobs, seed=10_000)).submission_id
    fleet.wait_settled(burst, timeout=900)
    with session_scope(fleet.engine) as session:
        first, last, done = session.execute(
            select(func.min(Job.started_at), func.max(Job.finished_at), func.count())
            .where(Job.submission_id == burst, Job.status == "succeeded")
        ).one()  # fmt: skip
    if done != args.jobs:
        raise SystemExit(f"{mode}: {done} of {args.jobs} jobs succeeded")
    return done / (last - first).total_seconds(), receiver.count() - before


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each mode")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in each burst")
    parser.add_argument("--hooked", type=int, default=8, help="submissions with a webhook")
    parser.add_argument("--shape", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--max-batch", type=int, default=16)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
