"""An operator on the embedded default: no setup step, no silent waits, typeable ids, the fleet
visible, results that sync. Real `loopfree` processes on a fresh LOOPFREE_HOME (SQLite, the
filesystem broker, a local store) and a real `loopfree worker` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, WorkerProcess, run_cli


@pytest.fixture()
def home_env(tmp_path: Path, queue_model_dir: Path) -> dict[str, str]:
    """A fresh home and nothing else configured: the embedded default, never `db upgrade`d."""
    return {
        "LOOPFREE_HOME": str(tmp_path / "home"),
        "LOOPFREE_MODEL": str(queue_model_dir),
        "LOOPFREE_DEVICE": "cpu",
        "LOOPFREE_MAX_WAIT_MS": "50",
        "LOOPFREE_HEARTBEAT_S": "1",
    }


def cli(
    args: list[str], env: dict[str, str], *, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    if stdin is None:
        return run_cli(args, env)
    return subprocess.run(
        [sys.executable, "-m", "loopfree.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def submissions(env: dict[str, str]) -> list[dict]:
    done = cli(["submissions", "--json"], env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_operator_path_on_a_fresh_embedded_home(
    tmp_path: Path, home_env: dict[str, str], queue_model_dir: Path
) -> None:
    env = home_env
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\na green cone\n")

    version = cli(["--version"], env)
    assert version.returncode == 0 and version.stdout.startswith("loopfree ")

    # No worker yet: --require-worker refuses and queues nothing; the schema came by itself.
    refused = cli(["submit", str(prompts), "--require-worker"], env)
    assert refused.returncode == 2, refused.stderr
    assert "no live worker serves" in refused.stderr and "Traceback" not in refused.stderr
    assert submissions(env) == []

    dry = cli(["submit", str(prompts), "--dry-run"], env)
    assert dry.returncode == 0 and "dry run: 3 valid job(s)" in dry.stdout
    assert submissions(env) == []

    mistyped = cli(["submit", str(prompts), "--model", "./no-such-model-folder"], env)
    assert mistyped.returncode == 2
    assert "neither a local folder nor a hub id" in mistyped.stderr
    assert "Traceback" not in mistyped.stderr and len(mistyped.stderr.strip().splitlines()) == 1

    queued = cli(["submit", str(prompts), "--seed", "3"], env)
    assert queued.returncode == 0, queued.stderr
    assert "WARNING: no live worker serves" in queued.stderr
    submission_id = queued.stdout.strip().splitlines()[-1]
    prefix = submission_id[:6]
    waiting = cli(["status", prefix], env)
    assert waiting.returncode == 0 and "no live worker serves" in waiting.stderr
    waited = cli(["wait", prefix, "--timeout", "1"], env)
    assert waited.returncode == 2 and "still has open jobs" in waited.stderr
    assert "no live worker serves" in waited.stdout

    piped = cli(["submit", "-", "--input-format", "jsonl"], env, stdin='{"prompt": "a cat"}\n')
    assert piped.returncode == 0, piped.stderr
    listed = {s["id"]: s for s in submissions(env)}
    assert listed[piped.stdout.strip().splitlines()[-1]]["source"] == "stdin"

    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        worker.wait_ready()
        live = json.loads(cli(["workers", "--json"], env).stdout)
        assert [(w["pid"], w["model"], w["live"]) for w in live] == [
            (worker.pid, str(queue_model_dir.resolve()), True)
        ]
        waited = cli(["wait", prefix, "--timeout", "120"], env)
        assert waited.returncode == 0, waited.stdout + waited.stderr

        status = json.loads(cli(["status", prefix, "--json"], env).stdout)
        assert status["kind"] == "submission" and status["counts"]["succeeded"] == 3

        out = tmp_path / "images"
        first = cli(["results", prefix, "--download", str(out)], env)
        assert first.returncode == 0 and "3 downloaded, 0 already there" in first.stdout
        (out / "00001.png").write_bytes(b"not the image")
        second = cli(["results", prefix, "--download", str(out)], env)
        assert "1 downloaded, 2 already there" in second.stdout, second.stdout
        manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert [(m["file"], m["prompt"], m["seed"]) for m in manifest] == [
            ("00000.png", "a red cube", 3),
            ("00001.png", "a blue sphere", 4),
            ("00002.png", "a green cone", 5),
        ]

        rows = cli(["jobs", "--submission", prefix, "--format", "csv"], env).stdout
        header = rows.splitlines()[0].split(",")
        assert {"metadata", "line_number", "priority", "submission_id", "started_at"} <= set(header)
        assert {"finished_at", "group_size", "batch_size"} <= set(header)

        assert worker.stop() == 0
    # A clean shutdown leaves the registry at once.
    assert json.loads(cli(["workers", "--json"], env).stdout) == []


def test_help_shows_defaults_and_no_type_labels_on_flags(home_env: dict[str, str]) -> None:
    shown = cli(["submit", "--help"], home_env)
    assert shown.returncode == 0
    assert "<bool>" not in shown.stdout
    assert "--wait / --no-wait" in shown.stdout and "[default: 4]" in shown.stdout
    assert "--require-worker" in shown.stdout and "--input-format" in shown.stdout


def test_postgresql_is_migrated_by_db_upgrade_or_when_auto_migrate_is_set(
    tmp_path: Path, pg_url: str
) -> None:
    env = {"LOOPFREE_HOME": str(tmp_path / "home"), "LOOPFREE_DATABASE_URL": pg_url}
    refused = cli(["jobs"], env)
    assert refused.returncode == 2 and "loopfree db upgrade" in refused.stderr
    auto = cli(["jobs", "--format", "json"], {**env, "LOOPFREE_AUTO_MIGRATE": "true"})
    assert auto.returncode == 0, auto.stderr
    assert json.loads(auto.stdout) == []
    assert cli(["jobs"], env).returncode == 0  # migrated for good
