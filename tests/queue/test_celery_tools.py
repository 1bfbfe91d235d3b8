"""Celery's own tools see a real loopfree worker: `celery inspect` (through our app and through a
plain `celery -b redis://...`), the batches it holds (reserved while buffered, active while they
render), and Flower's API, fed by the worker's task events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import RedisServer, free_port
from tests.harness import REPO_ROOT, WorkerProcess, run_cli, wait_until

CELERY = [sys.executable, "-m", "celery"]


def celery(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CELERY, *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def replies(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """``celery inspect --json`` output: one JSON object, worker name -> reply."""
    assert done.returncode == 0, done.stdout + done.stderr
    merged: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            merged.update(json.loads(line))
    return merged


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_celery_inspect_and_flower_see_a_real_worker_and_its_batches(
    tmp_path: Path, redis_server: RedisServer, queue_model_dir: Path
) -> None:
    env = {
        "LOOPFREE_HOME": str(tmp_path / "home"),
        "LOOPFREE_BROKER_URL": redis_server.url,
        "LOOPFREE_MODEL": str(queue_model_dir),
        "LOOPFREE_DEVICE": "cpu",
        # One full batch of 4 runs at once; the other 2 jobs wait 5 s in the buffer (reserved);
        # each batch renders for 5 s (active): time enough to look at both.
        "LOOPFREE_MAX_BATCH": "4",
        "LOOPFREE_MAX_WAIT_MS": "5000",
        "LOOPFREE_TEST_RENDER_DELAY_S": "5",
    }
    flower_port = free_port()
    worker = WorkerProcess(env, tmp_path / "worker.log", module="tests.fault.faulty_worker")
    flower = subprocess.Popen(
        [*CELERY, f"--broker={redis_server.url}", "flower", f"--port={flower_port}",
         "--address=127.0.0.1"],
        cwd=REPO_ROOT,
        env={**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"},
        stdout=(tmp_path / "flower.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        worker.wait_ready()
        # A plain celery client (no app, kombu's defaults) and our app both get replies.
        plain = replies(celery(["-b", redis_server.url, "inspect", "ping", "--json"], env))
        assert plain == {worker.name: {"ok": "pong"}}
        ping = replies(celery(["-A", "loopfree.queue", "inspect", "ping", "--json"], env))
        assert ping == {worker.name: {"ok": "pong"}}
        stats = replies(celery(["-A", "taskqueue.app", "inspect", "stats", "--json"], env))
        assert stats[worker.name]["pool"]["max-concurrency"] == 4

        flower_api = f"http://127.0.0.1:{flower_port}/api"
        wait_until(
            lambda: worker.name in get_json(f"{flower_api}/workers?refresh=1"),
            timeout=90,
            what="Flower to list the worker",
            details=lambda: (tmp_path / "flower.log").read_text(errors="replace")[-3000:],
        )

        prompts = tmp_path / "prompts.txt"
        prompts.write_text("".join(f"prompt {i}\n" for i in range(6)))
        submitted = run_cli(["submit", str(prompts)], env)
        assert submitted.returncode == 0, submitted.stderr
        submission_id = submitted.stdout.strip().splitlines()[-1]
        jobs = json.loads(run_cli(["jobs", "--submission", submission_id, "--format", "json"],
                                  env).stdout)  # fmt: skip
        job_ids = {job["id"] for job in jobs}

        seen: dict[str, set[str]] = {"active": set(), "reserved": set()}

        def both_seen() -> bool:
            worker.check_alive()
            for method in seen:
                answer = replies(celery(["-A", "taskqueue.app", "inspect", method, "--json"], env))
                seen[method] |= {task["id"] for task in answer.get(worker.name, [])}
            return bool(seen["active"]) and bool(seen["reserved"])

        wait_until(both_seen, timeout=60, what="inspect to show active and reserved jobs",
                   details=lambda: str(seen))  # fmt: skip
        assert seen["active"] <= job_ids and seen["reserved"] <= job_ids
        assert all(
            task["name"] == "loopfree.generate"
            for task in replies(
                celery(["-A", "taskqueue.app", "inspect", "active", "--json"], env)
            ).get(worker.name, [])
        )

        waited = run_cli(["wait", submission_id[:8], "--timeout", "120"], env)
        assert waited.returncode == 0, waited.stdout + waited.stderr

        def flower_saw_every_job_succeed() -> bool:
            tasks = get_json(f"{flower_api}/tasks")
            succeeded = {
                task_id for task_id, task in tasks.items()
                if task.get("state") == "SUCCESS" and task.get("name") == "loopfree.generate"
            }  # fmt: skip
            return job_ids <= succeeded

        wait_until(flower_saw_every_job_succeed, timeout=60, what="Flower to see 6 successes",
                   details=lambda: json.dumps(get_json(f"{flower_api}/tasks"))[:3000])  # fmt: skip
        # After the batches, nothing is left active or reserved.
        assert replies(celery(["-A", "taskqueue.app", "inspect", "active", "--json"], env)) == {
            worker.name: []
        }
    finally:
        flower.terminate()
        flower.wait(30)
        worker.kill()
