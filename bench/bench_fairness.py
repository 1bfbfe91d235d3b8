"""Fair shares with a real worker: a late small submission behind a large backlog, and two owners
with large backlogs (issue 17's fairness targets).

    .venv/bin/python bench/bench_fairness.py                       # 1M backlog, 10 minutes
    .venv/bin/python bench/bench_fairness.py --backlog 100000 --duration 120   # a quick look

On a throwaway PostgreSQL database, a private Redis and a local folder store, one `loopfree worker`
process renders a tiny random-weight model on the CPU (the dispatcher and the fairness do not
depend on what the GPU renders, only on how fast the fleet drains the window):

1. alice submits ``--backlog`` jobs; once the worker is busy, bob submits 20. Target: bob's 20 are
   all done within the time the fleet needs for 2 x (20 + one window) jobs, counted as the jobs
   the fleet finished between bob's submit and his last job's finish.
2. carol submits another large backlog (``--second`` jobs, 100,000 by default: large enough not to
   run out). Over ``--duration`` seconds, after the window alice held alone has drained, alice
   and carol get 50% +- 5% of the images each.

What it leaves out: S3 uploads (a local folder), more than one worker (the window is shared the
same way by many: `tests/fleet/test_dispatch.py`), GPU rendering. Writes
``bench/results/fairness.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from producer.prompts import JobDefaults  # noqa: E402
from producer.submit import submit_file  # noqa: E402
from storage.db import make_engine, session_scope  # noqa: E402
from storage.models import Job, JobStatus, Submission, utcnow  # noqa: E402
from storage.window import window_size  # noqa: E402
from tests.harness import (  # noqa: E402
    PG_ADMIN_URL,
    RedisServer,
    WorkerProcess,
    settings_from,
    throwaway_database,
    wait_until,
)
from worker.tiny import make_model  # noqa: E402

RESULTS = REPO / "bench" / "results"


def write_prompts(path: Path, count: int, label: str) -> Path:
    with path.open("w", encoding="utf-8") as file:
        for i in range(count):
            file.write(json.dumps({"prompt": f"{label} lighthouse {i}", "seed": i}) + "\n")
    return path


def succeeded_by_owner(engine, since, until) -> dict[str, int]:
    statement = (
        select(Submission.owner, func.count())
        .join(Job, Job.submission_id == Submission.id)
        .where(
            Job.status == JobStatus.SUCCEEDED,
            Job.finished_at > since,
            Job.finished_at <= until,
        )
        .group_by(Submission.owner)
    )
    with session_scope(engine) as session:
        return {owner: int(count) for owner, count in session.execute(statement)}


def open_jobs(engine, submission_id: str) -> int:
    from storage.queries import count_by_status

    with session_scope(engine) as session:
        counts = count_by_status(session, submission_id=submission_id)
    return counts[JobStatus.QUEUED] + counts[JobStatus.RUNNING]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--second", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "fairness.md")
    args = parser.parse_args()
    result: dict[str, object] = {"backlog": args.backlog, "second": args.second}
    with tempfile.TemporaryDirectory(prefix="loopfree-fairness-") as scratch_name:
        scratch = Path(scratch_name)
        model = make_model(scratch / "tiny", shape="tiny", seed=1)
        redis = RedisServer(scratch / "redis")
        redis.start()
        try:
            with throwaway_database(PG_ADMIN_URL, prefix="loopfree_fairness") as database:
                env = {
                    "LOOPFREE_HOME": str(scratch / "home"),
                    "LOOPFREE_DATABASE_URL": database,
                    "LOOPFREE_BROKER_URL": redis.url,
                    "LOOPFREE_STORAGE_URL": (scratch / "store").as_uri(),
                    "LOOPFREE_MODEL": str(model),
                    "LOOPFREE_DEVICE": "cpu",
                    "LOOPFREE_METRICS_PORT": "0",
                    "OMP_NUM_THREADS": "1",
                }
                run(scratch, env, args, result)
        finally:
            redis.kill()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    args.out.write_text(report(result, args))
    print(args.out.read_text())


def run(scratch: Path, env: dict[str, str], args: argparse.Namespace, result: dict) -> None:
    settings = settings_from(env, only=True)
    engine = make_engine(settings.resolved_database_url)

    def submit(owner: str, count: int) -> str:
        path = write_prompts(scratch / f"{owner}.jsonl", count, owner)
        started = time.perf_counter()
        report = submit_file(settings, path, JobDefaults(model=settings.model), owner=owner)
        result[f"submit_{owner}_s"] = round(time.perf_counter() - started, 1)
        return report.submission_id

    alice = submit("alice", args.backlog)
    worker = WorkerProcess(env, scratch / "worker.log")
    try:
        worker.wait_ready()
        wait_until(
            lambda: (
                succeeded_by_owner(engine, utcnow().replace(year=2000), utcnow()).get("alice", 0)
                >= 200
            ),
            timeout=600,
            what="the worker to be busy with alice's backlog",
            details=lambda: worker.log_text(3000),
        )
        # 1. bob's 20 jobs behind alice's backlog.
        with session_scope(engine) as session:
            window = window_size(session, settings.model)
        t0 = utcnow()
        bob = submit("bob", 20)
        wait_until(lambda: open_jobs(engine, bob) == 0, timeout=900, what="bob's 20 jobs")
        t1 = utcnow()
        fleet_jobs = sum(succeeded_by_owner(engine, t0, t1).values())
        result["late_small"] = {
            "window_at_submit": window,
            "jobs_rendered_until_bob_done": fleet_jobs,
            "bound": 2 * (20 + window),
            "seconds": round((t1 - t0).total_seconds(), 1),
        }
        # 2. carol's large backlog beside alice's: shares after the window alice held alone.
        carol = submit("carol", args.second)
        drained = utcnow()
        with session_scope(engine) as session:
            window = window_size(session, settings.model)
        wait_until(
            lambda: sum(succeeded_by_owner(engine, drained, utcnow()).values()) >= window,
            timeout=600,
            what="the window alice held alone to drain",
        )
        start = utcnow()
        time.sleep(args.duration)
        end = utcnow()
        shares = succeeded_by_owner(engine, start, end)
        total = sum(shares.values())
        result["two_owners"] = {
            "seconds": round((end - start).total_seconds(), 1),
            "images": shares,
            "alice_share": shares.get("alice", 0) / total if total else None,
            "carol_share": shares.get("carol", 0) / total if total else None,
            "window_when_carol_came": window,
        }
        result["carol"] = carol
        result["alice"] = alice
    finally:
        worker.stop()
        engine.dispose()


def report(result: dict, args: argparse.Namespace) -> str:
    late = result.get("late_small", {})
    two = result.get("two_owners", {})
    lines = [
        "# Fair shares with a real worker",
        "",
        f"`.venv/bin/python bench/bench_fairness.py --backlog {args.backlog} --second "
        f"{args.second} --duration {args.duration:.0f}` (one CPU worker, tiny model, PostgreSQL,"
        " private Redis, local store)",
        "",
        f"- alice's {args.backlog:,}-job submission took {result.get('submit_alice_s')} s to "
        "submit.",
        f"- bob's 20 jobs, submitted behind it, were all done after the fleet rendered "
        f"{late.get('jobs_rendered_until_bob_done')} jobs ({late.get('seconds')} s); the target is "
        f"at most 2 x (20 + window {late.get('window_at_submit')}) = {late.get('bound')}.",
        f"- alice and carol, both with large backlogs, over {two.get('seconds')} s: "
        f"{two.get('images')} images, alice {100 * (two.get('alice_share') or 0):.1f}%, carol "
        f"{100 * (two.get('carol_share') or 0):.1f}% (target 50% +- 5%).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
