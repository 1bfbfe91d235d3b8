"""``loopfree submit`` at intake, as a user runs it (a process, the embedded default): what it says
about skipped lines, and the refusals of texts the schema bounds, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

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
