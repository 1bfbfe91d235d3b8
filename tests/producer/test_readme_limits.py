"""The limits table in the README says what the code enforces."""

from __future__ import annotations

from pathlib import Path

from core import jobspec
from producer import prompts

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def row(what: str) -> str:
    (line,) = [line for line in README.splitlines() if line.startswith(f"| {what} |")]
    return line


def test_the_readme_limits_table_matches_the_constants():
    assert f"{prompts.MAX_FILE_BYTES // 2**20} MiB" in row("prompt file")
    assert f"{prompts.MAX_JOBS:,} jobs" in row("prompt file")
    assert f"{prompts.MAX_LINE_BYTES // 2**20} MiB" in row("one line of a file")
    assert f"{jobspec.MAX_PROMPT_CHARS:,} characters" in row("prompt")
    assert f"{jobspec.MAX_METADATA_BYTES // 1024} KiB" in row("`metadata`")
    assert f"1 to {jobspec.MAX_NUM_IMAGES}" in row("`num_images`")
    assert f"{jobspec.MIN_SIZE} to {jobspec.MAX_SIZE} px" in row("`height`, `width`")
    assert f"1 to {jobspec.MAX_STEPS}" in row("`steps`")
    assert f"{jobspec.MAX_HUB_ID_CHARS} characters" in row("`model`")
    assert f"{jobspec.MAX_MODEL_CHARS} characters" in row("`model`")
