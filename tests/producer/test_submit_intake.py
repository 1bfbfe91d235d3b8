"""`loopfree submit` at the size users bring and with the mistakes they make: it streams a file of
any size in bounded memory, refuses early (a hub id that does not exist, a resubmission with other
options, an option longer than the database keeps), and says what happened in words that agree.

Each test runs the real CLI as a separate process on the embedded default (a SQLite file, the
filesystem broker), as a user on a fresh machine would.
"""

from __future__ import annotations

import http.server
import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, run_cli

HUB_MODEL = "senmaonk/loopfree-sd1.5"  # a published model: submit needs no hub to accept it


@pytest.fixture()
def home_env(tmp_path: Path) -> dict[str, str]:
    """The embedded default in this test's folder, with nothing else of the host's."""
    return {
        "LOOPFREE_HOME": str(tmp_path / "home"),
        "LOOPFREE_MODEL": HUB_MODEL,
        "LOOPFREE_OWNER": "tester",
        "HF_HUB_OFFLINE": "1",
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def submission_counts(env: dict[str, str], submission_id: str) -> dict[str, int]:
    done = run_cli(["status", submission_id, "--json"], env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["counts"]


def test_a_file_larger_than_the_memory_limit_is_submitted_whole(
    tmp_path: Path, home_env: dict[str, str]
) -> None:
    """160 MB of prompts under a 120 MB limit on the process's data: the file is validated and
    stored in bounded chunks, never held whole (before, it was, and this ran out of memory)."""
    prompt = ("a lighthouse at dusk, waves on the rocks, " * 200)[:8_000]
    big = tmp_path / "big.jsonl"
    with big.open("w", encoding="utf-8") as file:
        for i in range(20_000):
            file.write(json.dumps({"prompt": f"{prompt} {i}", "seed": i}) + "\n")
    assert big.stat().st_size > 150 * 1024 * 1024
    limit = 120 * 1024 * 1024

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "loopfree.cli", "submit", str(big)],
        cwd=REPO_ROOT,
        env={**os.environ, **home_env},
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=cap_memory,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    counts = submission_counts(home_env, done.stdout.strip())
    assert counts["queued"] == 20_000


def test_a_resubmission_with_other_options_is_refused_naming_them(
    tmp_path: Path, home_env: dict[str, str]
) -> None:
    """Observed: the same file with another --webhook said "already submitted" and kept the
    first options without a word."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a fox"}, {"prompt": "a hare"}])
    env = {**home_env, "LOOPFREE_WEBHOOK_ALLOW": "127.0.0.1"}
    first = run_cli(["submit", str(prompts), "--webhook", "http://127.0.0.1:9/a"], env)
    assert first.returncode == 0, first.stderr
    submission_id = first.stdout.strip()

    again = run_cli(["submit", str(prompts), "--webhook", "http://127.0.0.1:9/a"], env)
    assert (again.returncode, again.stdout.strip()) == (0, submission_id)
    assert "already submitted" in again.stderr

    other = run_cli(["submit", str(prompts), "--webhook", "http://127.0.0.1:9/b"], env)
    assert other.returncode == 2
    assert "webhook" in other.stderr and submission_id in other.stderr
    assert "--new" in other.stderr and "Traceback" not in other.stderr

    new = run_cli(["submit", str(prompts), "--webhook", "http://127.0.0.1:9/b", "--new"], env)
    assert new.returncode == 0 and new.stdout.strip() != submission_id

    # An explicit key reused for another file is refused too.
    keyed = run_cli(["submit", str(prompts), "--key", "nightly-1"], home_env)
    assert keyed.returncode == 0, keyed.stderr
    changed = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "a wolf"}])
    reused = run_cli(["submit", str(changed), "--key", "nightly-1"], home_env)
    assert reused.returncode == 2 and "content differs" in reused.stderr


@pytest.mark.parametrize(
    ("option", "value", "column"),
    [("--webhook", "http://hooks.example/" + "x" * 5_000, "2,048"), ("--key", "k" * 400, "255")],
)
def test_an_option_longer_than_its_column_is_one_line_before_anything_is_written(
    tmp_path: Path, home_env: dict[str, str], option: str, value: str, column: str
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a fox"}])
    env = {**home_env, "LOOPFREE_WEBHOOK_ALLOW": "hooks.example"}
    done = run_cli(["submit", str(prompts), option, value], env)
    assert done.returncode == 2
    assert f"the limit is {column}" in done.stderr and "Traceback" not in done.stderr
    listed = run_cli(["submissions", "--json"], env)
    assert json.loads(listed.stdout) == []


class _Hub(http.server.BaseHTTPRequestHandler):
    """The hub's model API as huggingface_hub asks it: one model exists, every other is 404."""

    known = "real-org/real-model"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith(f"/api/models/{self.known}"):
            body = json.dumps({"id": self.known, "sha": "0" * 40, "siblings": []}).encode()
            self.send_response(200)
        else:
            body = json.dumps({"error": "Repository not found"}).encode()
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture()
def hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_hub_id_the_hub_does_not_know_is_refused_before_anything_is_queued(
    tmp_path: Path, home_env: dict[str, str], hub: str
) -> None:
    """Observed: `submit --model senmaonk/loopfree-sd15` (a typo) queued the jobs anyway."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a fox"}])
    env = {**home_env, "HF_ENDPOINT": hub, "HF_HUB_OFFLINE": "0"}
    typo = run_cli(["submit", str(prompts), "--model", "senmaonk/loopfree-sd15"], env)
    assert typo.returncode == 2, typo.stderr
    assert "does not exist on the Hugging Face hub" in typo.stderr
    assert "senmaonk/loopfree-sd1.5" in typo.stderr  # the closest model, named
    assert json.loads(run_cli(["submissions", "--json"], env).stdout) == []
    known = run_cli(["submit", str(prompts), "--model", _Hub.known], env)
    assert known.returncode == 0, known.stderr


def test_a_hub_id_that_cannot_be_checked_offline_is_a_warning_naming_the_closest(
    tmp_path: Path, home_env: dict[str, str]
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a fox"}])
    done = run_cli(["submit", str(prompts), "--model", "senmaonk/loopfree-sd15"], home_env)
    assert done.returncode == 0
    assert "could not ask the hub" in done.stderr and "senmaonk/loopfree-sd1.5" in done.stderr


def test_require_worker_refuses_in_one_consistent_sentence(
    tmp_path: Path, home_env: dict[str, str]
) -> None:
    """Observed: the refusal said the jobs "wait until one starts ... nothing was queued"."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a fox"}])
    done = run_cli(["submit", str(prompts), "--require-worker"], home_env)
    assert done.returncode == 2
    assert "nothing was queued" in done.stderr and "wait until one starts" not in done.stderr


def test_cancel_says_why_it_cancelled_nothing(tmp_path: Path, home_env: dict[str, str]) -> None:
    """Observed: `cancel` of a finished submission said `cancelled 0 job(s)`, no reason."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a fox"}, {"prompt": "a hare"}])
    submission_id = run_cli(["submit", str(prompts)], home_env).stdout.strip()
    first = run_cli(["cancel", submission_id], home_env)
    assert first.returncode == 0 and "cancelled 2 job(s)" in first.stdout
    second = run_cli(["cancel", submission_id], home_env)
    assert second.returncode == 0
    assert "nothing to cancel" in second.stdout and "finished" in second.stdout
    assert "2 cancelled" in second.stdout
