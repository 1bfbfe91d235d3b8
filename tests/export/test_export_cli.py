"""``loopfree export`` as a user runs it: one-line errors, the extra it asks for when pyarrow is
missing, no model library loaded, fetches bounded and in order, memory that does not grow with
the export."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from core.settings import Settings
from export.fetch import fetch_in_order
from export.plan import ExportOptions, ExportPlan
from export.run import run_export
from storage.db import Engine
from storage.local import LocalStore
from storage.models import utcnow
from tests.export.conftest import cli_env, make_submission
from tests.harness import REPO_ROOT


def cli(args: list[str], env: dict[str, str], *, prelude: str = "") -> subprocess.CompletedProcess:
    """``loopfree ARGS`` in a fresh interpreter, after ``prelude`` (code run first); it prints
    the model libraries it loaded, if any, on its last line."""
    program = f"""
import sys
{prelude}
from loopfree.cli import main
sys.argv = ["loopfree", *{args!r}]
try:
    main()
finally:
    loaded = sorted({{name.split(".")[0] for name in sys.modules}}
                    & {{"torch", "diffusers", "transformers", "accelerate", "safetensors"}})
    print("model libraries:", loaded)
"""
    return subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture()
def made_env(sqlite_engine: Engine, migrated_sqlite_url: str, tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    made = make_submission(sqlite_engine, store, 20)
    return made, cli_env(tmp_path / "home", migrated_sqlite_url, store, None)


def test_each_format_exports_without_loading_a_model_library(made_env, tmp_path: Path) -> None:
    made, env = made_env
    for format in ("webdataset", "parquet", "imagefolder"):
        result = cli(["export", made.id[:6], str(tmp_path / format), "--format", format], env)
        assert result.returncode == 0, result.stderr
        assert f"{len(made.succeeded())} images in 1 shard(s)" in result.stdout
        assert result.stdout.strip().endswith("model libraries: []")
        assert "jobs ·" not in result.stderr  # no progress bar when stderr is not a terminal


def test_without_pyarrow_a_parquet_export_names_the_extra_to_install(
    made_env, tmp_path: Path
) -> None:
    made, env = made_env
    result = cli(
        ["export", made.id, str(tmp_path / "out"), "--format", "parquet"],
        env,
        prelude="sys.modules['pyarrow'] = None  # as if not installed",
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: the parquet format needs pyarrow, which is not installed: "
        "pip install 'loopfree-queue[export]'"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metadata", "nokey"], "--metadata 'nokey' is not KEY=VALUE"),
        (["--since", "last tuesday"], "--since 'last tuesday' is neither a time"),
        (["--status", "done"], "unknown status 'done'"),
        (["--shard-bytes", "lots"], "'lots' is not a size"),
        (["--shard-size", "0"], "--shard-size 0 must be between 1 and 1000000"),
        (["--parallel", "0"], "--parallel 0 must be between 1 and 256"),
    ],
)
def test_bad_options_get_one_line_that_names_the_fix(
    made_env, tmp_path: Path, args: list[str], message: str
) -> None:
    made, env = made_env
    result = cli(["export", made.id, str(tmp_path / "out"), *args], env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_submission_is_one_line(made_env, tmp_path: Path) -> None:
    _, env = made_env
    result = cli(["export", "abcdef12", str(tmp_path / "out")], env)
    assert result.returncode == 2
    assert "no submission has an id starting with 'abcdef12'" in result.stderr
    assert "Traceback" not in result.stderr


class CountingStore(LocalStore):
    """A real folder store that records how many gets run at once."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lock = threading.Lock()
        self.running = self.most = 0

    def get(self, uri_or_key: str) -> bytes:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.02)
            return super().get(uri_or_key)
        finally:
            with self.lock:
                self.running -= 1


def test_fetches_run_at_most_parallel_at_once_and_come_back_in_job_order(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    store = CountingStore(tmp_path / "store")
    made = make_submission(sqlite_engine, store, 60)
    plan = ExportPlan(ExportOptions("webdataset", (made.id,)), utcnow())
    fetched = list(fetch_in_order(store, plan.jobs(sqlite_engine), as_of=plan.as_of, parallel=3))
    assert [item.job.id for item in fetched] == [job.id for job in made.jobs]
    assert [item.data for item in fetched] == [job.data for job in made.jobs]
    assert store.most <= 3


def peak_memory_of_export(settings: Settings, submission_id: str, out: Path) -> int:
    tracemalloc.start()
    try:
        run_export(settings, ExportOptions("webdataset", (submission_id,)), str(out), parallel=4)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_jobs_exported(
    sqlite_engine: Engine, migrated_sqlite_url: str, tmp_path: Path
) -> None:
    # Past one page of rows (1,000), a bigger export holds no more: 6,000 jobs peak within 1.5x
    # of 2,000 (they would at 3x if rows, samples or shards were kept).
    store = LocalStore(tmp_path / "store")
    settings = Settings(home=tmp_path / "home", database_url=migrated_sqlite_url,
                        storage_url=store.url)  # fmt: skip

    def made(count: int) -> str:
        return make_submission(
            sqlite_engine, store, count, outcome=lambda p: "succeeded",
            image_format=lambda p: "png", prompt="p{position} " + "x" * 200,
        ).id  # fmt: skip

    small, large = made(2_000), made(6_000)
    # A first pass over the large one, unmeasured: the folder store parses each image's path
    # with pathlib, which on Python 3.11 interns every path part for good (a table that grows
    # with the images read, whoever reads them). After it, what grows is the export's own.
    run_export(settings, ExportOptions("webdataset", (large,)), str(tmp_path / "warm-up"))
    peak_small = peak_memory_of_export(settings, small, tmp_path / "small")
    peak_large = peak_memory_of_export(settings, large, tmp_path / "large")
    assert peak_large < 1.5 * peak_small, (peak_small, peak_large)


def test_on_a_terminal_a_progress_bar_runs_on_stderr(made_env, tmp_path: Path) -> None:
    import pty

    made, env = made_env
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "loopfree.cli", "export", made.id, str(tmp_path / "out")],
        cwd=REPO_ROOT,
        env={**os.environ, **env, "TERM": "xterm", "COLUMNS": "120"},
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        shown += chunk
    stdout, _ = process.communicate(timeout=120)
    os.close(controller)
    assert process.returncode == 0, shown.decode(errors="replace")
    assert b"jobs \xc2\xb7" in shown and b"images" in shown  # the bar's own text
    assert b"\xc2\xb7" not in stdout  # the summary alone on stdout
