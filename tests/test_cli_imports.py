"""The operator commands start without the model stack (measured: BENCHMARKS.md, CLI start-up).

``python -X importtime`` lists every module a command imported; none may be torch, diffusers,
transformers, accelerate or safetensors, which cost seconds and are absent from the CLI image.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_STACK = {"torch", "diffusers", "transformers", "accelerate", "safetensors"}


def imported_modules(args: list[str], home: Path) -> set[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOPFREE_")}
    env.update(LOOPFREE_HOME=str(home), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "loopfree.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert lines, "python -X importtime reported nothing"
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines[1:]}


@pytest.mark.parametrize(
    "args",
    [["status", "--help"], ["jobs"], ["workers"], ["submissions", "--json"], ["stats"]],
    ids=lambda args: " ".join(args),
)
def test_operator_commands_import_no_model_library(tmp_path: Path, args: list[str]) -> None:
    modules = imported_modules(args, tmp_path / "home")
    assert "typer" in modules  # the listing works: it saw the CLI's own imports
    assert not modules & MODEL_STACK, sorted(modules & MODEL_STACK)
