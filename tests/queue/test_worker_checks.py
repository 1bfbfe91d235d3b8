"""A worker checks its store, database and broker before it takes a single job, and a wrong one is
one line and an exit, not a failure on every job it would have taken.

Observed: a worker started against a missing bucket started fine, then failed every job it took
("Bucket ... does not exist"): the message was good, and came hundreds of jobs too late.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.harness import REPO_ROOT, run_cli

pytestmark = pytest.mark.slow


def run_worker(env: dict[str, str], timeout: float = 300):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "loopfree.cli", "worker"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def queued_jobs(env: dict[str, str], tmp_path: Path) -> str:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\na hare\n")
    done = run_cli(["submit", str(prompts)], env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("broken", "says"),
    [
        ({"LOOPFREE_STORAGE_URL": "s3://no-such-bucket-here/outputs"}, "does not exist"),
        ({"LOOPFREE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}, "did not answer"),
        (
            {"LOOPFREE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:5432/nope"},
            "refused the connection",
        ),
    ],
    ids=["missing bucket", "broker down", "wrong database"],
)
def test_a_worker_with_a_wrong_dependency_exits_with_one_line_and_takes_no_job(
    fleet_env: dict[str, str], tmp_path: Path, broken: dict[str, str], says: str
) -> None:
    submission_id = queued_jobs(fleet_env, tmp_path)
    done = run_worker({**fleet_env, **broken})
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    status = run_cli(["status", submission_id, "--json"], fleet_env)
    counts = json.loads(status.stdout)["counts"]
    assert (counts["queued"], counts["failed"]) == (2, 0)  # untouched
