"""``loopfree scale`` through typer's CliRunner, on an app the fleet commands are registered on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
import typer
from sqlalchemy import Engine
from typer.testing import CliRunner

from core.settings import get_settings
from loopfree.commands.fleet import register
from migrations.runner import upgrade
from storage.models import utcnow
from tests.fleet.conftest import MODEL_A, MODEL_B, Seeded, add_jobs

KEYS = {
    "model",
    "pending",
    "per_worker_images_per_s",
    "measured_from_workers",
    "target_seconds",
    "oldest_queued_age_s",
    "startup_seconds",
    "running_workers",
    "window_s",
    "effective_window_s",
    "recommended_workers",
    "reason",
}


@pytest.fixture()
def cli(db_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[typer.Typer]:
    """A typer app with the fleet commands, whose settings point at the test database."""
    monkeypatch.setenv("LOOPFREE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOOPFREE_DATABASE_URL", db_url)
    get_settings.cache_clear()  # settings are read once per process; this test's env applies
    app = typer.Typer()
    register(app)
    yield app
    get_settings.cache_clear()


def scale(app: typer.Typer, *args: str) -> dict:
    result = CliRunner().invoke(app, ["scale", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_scale_json_sizes_the_fleet_from_pending_jobs_and_the_measured_median_rate(
    cli: typer.Typer, seeded: Seeded
):
    # 5 pending jobs at 2.667 jobs/s per worker, queued three days ago: long past a 1 s target,
    # so new workers get the floor of 10 % of it, 0.1 s: 5 / (2.667 x 0.1) = 18.75 -> 19.
    plan = scale(cli, "--model", MODEL_A, "--target-seconds", "1")
    assert set(plan) == KEYS
    assert plan["model"] == MODEL_A
    assert plan["pending"] == 5
    assert plan["per_worker_images_per_s"] == pytest.approx(seeded.median_rate_a)
    assert plan["measured_from_workers"] == 3
    assert plan["target_seconds"] == 1.0
    assert plan["oldest_queued_age_s"] == pytest.approx(3 * 86_400 + 3_600, abs=60)  # see seeded
    assert plan["startup_seconds"] == 60.0
    assert plan["running_workers"] is None
    assert plan["window_s"] == 0
    assert plan["effective_window_s"] == pytest.approx(0.1)
    assert plan["recommended_workers"] == 19
    assert "5 pending job(s)" in plan["reason"] and "may be late" in plan["reason"]

    # 300 s: the floor is 30 s, in which one worker drains 80 jobs.
    assert scale(cli, "--model", MODEL_A)["recommended_workers"] == 1


def test_scale_sizes_for_the_time_the_oldest_queued_job_has_left(
    cli: typer.Typer, engine: Engine, seeded: Seeded
):
    # MODEL_B's workers drain 0.5 jobs/s. 250 jobs queued 100 s ago have about 200 s left of the
    # 300 s target, 140 s for a worker that takes 60 s to start: 250 / (0.5 x 140) = 3.6 -> 4.
    add_jobs(engine, MODEL_B, 250, now=utcnow() - timedelta(seconds=100))
    plan = scale(cli, "--model", MODEL_B)
    assert plan["pending"] == 250
    assert plan["oldest_queued_age_s"] == pytest.approx(100, abs=20)
    assert plan["window_s"] == pytest.approx(300 - plan["oldest_queued_age_s"])
    assert plan["effective_window_s"] == pytest.approx(plan["window_s"] - 60)
    assert plan["recommended_workers"] == 4

    # Two workers already running drain 2 x 0.5 x 200 = 200 in time; the other 50 need one more.
    running = scale(cli, "--model", MODEL_B, "--running-workers", "2")
    assert running["running_workers"] == 2
    assert running["recommended_workers"] == 3
    # No start-up to allow for: 250 / (0.5 x 200) = 2.5 -> 3.
    assert scale(cli, "--model", MODEL_B, "--startup-seconds", "0")["recommended_workers"] == 3
    # With a 150 s target, 50 s are left: too few for a worker that starts in 60 s, so new
    # workers get the floor, 10 % of the target: 250 / (0.5 x 15) = 33.3 -> 34.
    late = scale(cli, "--model", MODEL_B, "--target-seconds", "150")
    assert late["effective_window_s"] == pytest.approx(15)
    assert late["recommended_workers"] == 34


def test_scale_respects_max_workers_and_says_so(cli: typer.Typer, seeded: Seeded):
    plan = scale(cli, "--model", MODEL_A, "--target-seconds", "1", "--max-workers", "1")
    assert plan["recommended_workers"] == 1
    assert "capped at --max-workers 1" in plan["reason"]


def test_a_model_with_nothing_pending_scales_to_zero(cli: typer.Typer, seeded: Seeded):
    plan = scale(cli, "--model", MODEL_B)
    assert plan["pending"] == 0
    assert plan["recommended_workers"] == 0
    assert plan["per_worker_images_per_s"] == pytest.approx(seeded.rate_b)


def test_a_model_never_measured_gets_one_worker_for_its_work_and_says_why(
    cli: typer.Typer, engine: Engine
):
    add_jobs(engine, "fleet-test/new", 5_000)
    plan = scale(cli, "--model", "fleet-test/new")
    assert plan["pending"] == 5_000
    assert plan["per_worker_images_per_s"] is None
    assert plan["measured_from_workers"] == 0
    assert plan["recommended_workers"] == 1
    assert "no finished job of fleet-test/new" in plan["reason"]


def test_plain_output_is_the_number_alone_on_stdout(cli: typer.Typer, seeded: Seeded):
    result = CliRunner().invoke(cli, ["scale", "--model", MODEL_A, "--target-seconds", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "19\n"
    assert "median of 3 worker(s)" in result.stderr


def test_max_workers_below_min_workers_is_a_usage_error(cli: typer.Typer):
    result = CliRunner().invoke(cli, ["scale", "--min-workers", "3", "--max-workers", "2"])
    assert result.exit_code == 2
    assert "--max-workers 2 is below --min-workers 3" in result.output


@pytest.mark.parametrize(
    "option", [("--startup-seconds", "-1"), ("--running-workers", "-1")], ids=lambda o: o[0]
)
def test_negative_start_up_or_running_workers_is_a_usage_error(cli: typer.Typer, option):
    result = CliRunner().invoke(cli, ["scale", *option])
    assert result.exit_code == 2
    assert option[0] in result.output


def test_the_fleet_commands_never_import_torch(tmp_path):
    # The exporter and `scale` run in the slim CLI image, which has no torch.
    program = (
        "import sys, typer; from typer.testing import CliRunner; "
        "from loopfree.commands.fleet import register; app = typer.Typer(); register(app); "
        "result = CliRunner().invoke(app, ['scale', '--json']); "
        "assert result.exit_code == 0, result.output; "
        "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    env = {**os.environ, "LOOPFREE_HOME": str(tmp_path / "home")}
    env.pop("LOOPFREE_DATABASE_URL", None)
    home_db = f"sqlite:///{tmp_path / 'home' / 'loopfree.db'}"
    upgrade(home_db)
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
