"""Listings that survive a pipe: whole values in plain rows when stdout is not a terminal (or with
``--wide``), rich tables on a terminal, ``--json`` on every listing command, priorities by name.

Real ``loopfree`` processes on an embedded home (SQLite, the filesystem broker); the terminal is
a real pseudo-terminal, so the command itself decides how to print.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings
from loopfree.commands.tables import ALIGN_ROWS, Column, plain_lines
from migrations.runner import upgrade
from storage.db import make_engine, session_scope
from storage.workers import WorkerInfo, announce
from tests.harness import REPO_ROOT, run_cli

LONG_MODEL = "/models/a-rather-long-folder-name/of-fine-tuned-weights/loopfree-sd15-photoreal-v3"
WORKER = "loopfree-worker@gpu-node-0042.cluster.example.internal:31337"
PROMPT = "a lighthouse on a cliff at dusk, oil painting, long brush strokes, warm light, sea foam"


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    settings = Settings(home=home)
    settings.ensure_home()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with session_scope(engine) as session:
        announce(
            session,
            WorkerInfo(
                name=WORKER, model=LONG_MODEL, queue="q", host="gpu-node-0042", pid=4242,
                version="1.2.3", device="cuda:0 NVIDIA H100 80GB HBM3", ttl_s=30,
            ),
        )  # fmt: skip
    engine.dispose()
    variables = {"LOOPFREE_HOME": str(home), "LOOPFREE_MODEL": "senmaonk/loopfree-sd1.5"}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    submitted = run_cli(["submit", str(prompts), "--priority", "high"], variables)
    assert submitted.returncode == 0, submitted.stderr
    return variables


def on_a_terminal(args: list[str], env: dict[str, str], columns: int = 100) -> str:
    """What ``loopfree ARGS`` prints to a real (pseudo-)terminal ``columns`` wide."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "loopfree.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env, "COLUMNS": str(columns), "TERM": "dumb"},
        stdout=follower,
        stderr=subprocess.DEVNULL,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower side closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=120) == 0
    return b"".join(chunks).decode()


def test_piped_workers_show_whole_names_models_and_devices(env) -> None:
    for args in (["workers"], ["workers", "--wide"]):
        done = run_cli(args, env)
        assert done.returncode == 0, done.stderr
        header, row = done.stdout.splitlines()
        assert header.split() == ["name", "model", "device", "version", "started", "last",
                                  "beat", "images", "in", "hand"]  # fmt: skip
        assert WORKER in row and LONG_MODEL in row and "cuda:0 NVIDIA H100 80GB HBM3" in row
        assert "…" not in done.stdout
        assert row.index(LONG_MODEL) == header.index("model")  # columns line up


def test_piped_jobs_and_submissions_show_whole_values_and_priority_names(env) -> None:
    [submission] = json.loads(run_cli(["submissions", "--json"], env).stdout)
    jobs = run_cli(["jobs"], env)
    assert jobs.returncode == 0, jobs.stderr
    header, row = jobs.stdout.splitlines()
    assert "priority" in header.split()
    assert submission["id"] in row and PROMPT in row
    cells = row.split()
    assert "high" in cells and "queued" in cells and "9" not in cells
    listed = run_cli(["submissions"], env).stdout.splitlines()
    assert submission["id"] in listed[1] and "prompts.txt" in listed[1]


def test_json_keeps_the_priority_number_and_adds_its_name(env) -> None:
    [job] = json.loads(run_cli(["jobs", "--json"], env).stdout)
    assert (job["priority"], job["priority_name"]) == (9, "high")
    assert json.loads(run_cli(["jobs", "--format", "json"], env).stdout) == [job]
    shown = json.loads(run_cli(["status", job["id"], "--json"], env).stdout)
    assert shown["kind"] == "job" and shown["priority_name"] == "high"


@pytest.mark.parametrize(
    "args",
    [["workers", "--all"], ["submissions"], ["jobs"], ["stats"], ["dead-letters"], ["status"]],
    ids=lambda args: args[0],
)
def test_every_listing_command_prints_json_on_request(env, args) -> None:
    if args == ["status"]:
        [submission] = json.loads(run_cli(["submissions", "--json"], env).stdout)
        args = ["status", submission["id"]]
    done = run_cli([*args, "--json"], env)
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)
    assert isinstance(parsed, list | dict)
    if args[0] == "dead-letters":
        assert parsed == []  # the filesystem broker keeps none


def test_on_a_terminal_a_table_is_boxed_and_ids_are_short_unless_wide(env) -> None:
    [submission] = json.loads(run_cli(["submissions", "--json"], env).stdout)
    boxed = on_a_terminal(["submissions"], env)
    assert "┃" in boxed or "│" in boxed
    assert submission["id"][:8] in boxed and submission["id"] not in boxed
    wide = on_a_terminal(["submissions", "--wide"], env)
    assert submission["id"] in wide and "│" not in wide


def test_plain_rows_stream_with_widths_from_the_first_rows() -> None:
    columns = [Column("id"), Column("prompt")]
    rows = [["a", "x"]] * ALIGN_ROWS + [["a-much-longer-id", "two\nlines"], ["b", "y"]]

    lines = list(plain_lines(columns, iter(rows)))

    assert lines[0] == "id  prompt" and lines[1] == "a   x"
    assert lines[-2] == "a-much-longer-id  two\\nlines"  # wider, on its own line only
    assert lines[-1] == "b   y" and len(lines) == ALIGN_ROWS + 3
