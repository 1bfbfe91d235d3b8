"""Model names the hub or the jobs table would refuse are line errors at submit, one line each,
never a traceback from deep inside the database driver or huggingface_hub."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import InvalidJob
from core.jobspec import MAX_MODEL_CHARS, check_model_reference, is_hub_id
from producer.prompts import JobDefaults, PromptFileError, parse_prompts

DEFAULTS = JobDefaults(model="senmaonk/loopfree-sd1.5", seed_base=0)


@pytest.mark.parametrize(
    "model",
    ["a/.", "owner/-bad", "owner/bad-", "a--b/c", "a/b..c", "owner/name.git", "o/" + "x" * 95],
)
def test_ids_the_hub_would_refuse_are_line_errors_that_say_why(model):
    data = json.dumps({"prompt": "a fox", "model": model}) + "\n"
    with pytest.raises(PromptFileError) as raised:
        parse_prompts(data, format="jsonl", defaults=DEFAULTS)
    message = str(raised.value)
    assert "line 1" in message and "not a valid hub id" in message


@pytest.mark.parametrize(
    "model", ["senmaonk/loopfree-sd1.5", "senmaonk/loopfree-sd2.1-base", "o/_x", "a/b"]
)
def test_real_hub_ids_pass(model):
    assert is_hub_id(model) and check_model_reference(model, []) == model


def test_a_folder_whose_resolved_path_would_not_fit_the_jobs_table_is_refused(tmp_path: Path):
    deep = tmp_path / ("d" * 200) / ("e" * (MAX_MODEL_CHARS - 190))
    deep.mkdir(parents=True)
    with pytest.raises(InvalidJob, match=f"limit is {MAX_MODEL_CHARS}"):
        check_model_reference(str(deep), [])


def test_submit_with_a_bad_model_prints_one_line_and_queues_nothing(tmp_path: Path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    env = {"LOOPFREE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    for model in ("owner/-bad", "./no/such/" + "x" * 270):
        done = subprocess.run(
            [sys.executable, "-m", "loopfree.cli", "submit", str(prompts), "--model", model],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "error:" in done.stderr
    assert not (tmp_path / "home" / "broker").exists() or not any(
        (tmp_path / "home" / "broker").iterdir()
    )
