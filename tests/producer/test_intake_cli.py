"""``loopfree submit`` at intake, as a user runs it (a process, the embedded default): what it says
about skipped lines, and the refusals of texts the schema bounds, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness import run_cli

MODEL = "senmaonk/loopfree-sd1.5"


def env_for(tmp_path: Path) -> dict[str, str]:
    return {"LOOPFREE_HOME": str(tmp_path / "home"), "LOOPFREE_MODEL": MODEL}


def submissions(env: dict[str, str]) -> list[dict]:
    listed = run_cli(["submissions", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_submit_with_skip_invalid_accounts_for_every_line_read(tmp_path: Path) -> None:
    rows = [f"a red fox number {i},{i}" for i in range(50)]
    rows[9] = '"a quote that never closes,9'
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,seed\n" + "\n".join(rows) + "\n\n")
    env = env_for(tmp_path)

    done = run_cli(["submit", str(prompts), "--skip-invalid"], env)

    assert done.returncode == 0, done.stderr
    assert "skipped line 11: a quoted field opens on this line and is not closed" in done.stderr
    assert f"{prompts}: 52 line(s) read, 49 accepted (49 job(s)), 1 skipped (line 11)" in (
        done.stderr
    )
    [submission] = submissions(env)
    assert submission["job_count"] == 49


def test_a_file_with_no_skipped_line_prints_no_summary(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\nramen\n")

    done = run_cli(["submit", str(prompts), "--skip-invalid"], env_for(tmp_path))

    assert done.returncode == 0 and "line(s) read" not in done.stderr


LONG_WEBHOOK = "https://hooks.example.com/" + "a" * 4_974  # 5,000 characters


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--webhook", LONG_WEBHOOK], "--webhook is 5,000 characters long; the limit is 2,048"),
        (["--key", "k" * 400], "--key is 400 characters long; the limit is 255"),
        (["--key", " "], "--key is empty"),
    ],
    ids=["webhook", "key", "empty key"],
)
def test_an_option_past_its_column_is_one_line_and_nothing_is_written(
    tmp_path: Path, migrated_db_url: str, options: list[str], named: str
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    env = {**env_for(tmp_path), "LOOPFREE_DATABASE_URL": migrated_db_url}

    for dry_run in ([], ["--dry-run"]):
        done = run_cli(["submit", str(prompts), *options, *dry_run], env)

        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], done.stderr
    assert submissions(env) == []


def test_a_file_name_past_its_column_is_refused(tmp_path: Path) -> None:
    from core.settings import Settings
    from producer.options import InvalidOption, check_submission_options

    settings = Settings(home=tmp_path / "home")
    with pytest.raises(InvalidOption, match="the file name 'nnnn.*1,100 characters long.*rename"):
        check_submission_options(settings, webhook_url=None, key=None, source="n" * 1_100)
    with pytest.raises(InvalidOption, match="not valid UTF-8"):
        check_submission_options(settings, webhook_url=None, key=None, source="\udcff.txt")
    check_submission_options(settings, webhook_url=None, key="k" * 255, source="n" * 1_024)
