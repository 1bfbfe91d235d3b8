"""CLI start-up of the operator commands: wall time of a fresh `loopfree` process, per command.

The target (issue 11): `status` and `jobs` answer in under a second, because they import no model
library (tests/test_cli_imports.py checks the imports; this measures the time). Each command runs
on an embedded home (SQLite, already migrated, one 100-job submission), `--runs` times; the median
and the slowest are reported with the load average.

    .venv/bin/python bench/bench_cli_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._machine import cpu_model, load_average  # noqa: E402

COMMANDS = [
    ["--version"],
    ["status", "--help"],
    ["status", "SUBMISSION"],
    ["jobs", "--limit", "20"],
    ["submissions"],
    ["workers"],
]


def run(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "loopfree.cli", *args], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPFREE_")}
        env.update(LOOPFREE_HOME=home, HF_HUB_OFFLINE="1")
        prompts = Path(home) / "prompts.txt"
        prompts.write_text("".join(f"prompt {i}\n" for i in range(100)))
        submitted = subprocess.run(
            [sys.executable, "-m", "loopfree.cli", "submit", str(prompts)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        submission = submitted.stdout.strip().splitlines()[-1]
        print(f"# {cpu_model()}, load {load_average()} at start, {options.runs} runs each")
        print("| command | median s | slowest s |")
        print("| --- | --- | --- |")
        for command in COMMANDS:
            args = [submission[:8] if a == "SUBMISSION" else a for a in command]
            run(args, env)  # warm the page cache
            times = [run(args, env) for _ in range(options.runs)]
            label = " ".join(command)
            print(f"| `loopfree {label}` | {statistics.median(times):.3f} | {max(times):.3f} |")
        print(f"# load {load_average()} at end")


if __name__ == "__main__":
    main()
