"""``loopfree scale`` through typer's CliRunner, on an app the fleet commands are registered on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import typer
from sqlalchemy import Engine
from typer.testing import CliRunner

from loopfree.settings import get_settings
from producer.fleet_cli import register
from storage.migrate import upgrade
from tests.fleet.conftest import MODEL_A, MODEL_B, Seeded, add_jobs

KEYS = {
    "model",
    "pending",
    "per_worker_images_per_s",
    "measured_from_workers",
    "target_seconds",
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
    # 5 pending jobs at 2.667 jobs/s per worker: one worker drains them in 1.9 s, two in 0.94 s.
    plan = scale(cli, "--model", MODEL_A, "--target-seconds", "1")
    assert set(plan) == KEYS
    assert plan["model"] == MODEL_A
    assert plan["pending"] == 5
    assert plan["per_worker_images_per_s"] == pytest.approx(seeded.median_rate_a)
    assert plan["measured_from_workers"] == 3
    assert plan["target_seconds"] == 1.0
    assert plan["recommended_workers"] == 2
    assert "5 pending job(s)" in plan["reason"]

    assert scale(cli, "--model", MODEL_A)["recommended_workers"] == 1  # 300 s: one is plenty


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
    assert result.stdout == "2\n"
    assert "median of 3 worker(s)" in result.stderr


def test_max_workers_below_min_workers_is_a_usage_error(cli: typer.Typer):
    result = CliRunner().invoke(cli, ["scale", "--min-workers", "3", "--max-workers", "2"])
    assert result.exit_code == 2
    assert "--max-workers 2 is below --min-workers 3" in result.output


def test_the_fleet_commands_never_import_torch(tmp_path):
    # The exporter and `scale` run in the slim CLI image, which has no torch.
    program = (
        "import sys, typer; from typer.testing import CliRunner; "
        "from producer.fleet_cli import register; app = typer.Typer(); register(app); "
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
