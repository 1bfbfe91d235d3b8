"""The ``ui`` service of compose.yaml: the web view on the CLI image, behind its token, and a
healthcheck that really passes against ``loopfree ui`` (run here as a process, no Docker)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from status.web.security import MIN_TOKEN_LENGTH
from tests.harness import REPO_ROOT, free_port, port_open, wait_until

from .helpers import interpolate


def test_the_ui_runs_on_the_cli_image_behind_a_token_and_publishes_on_localhost(compose):
    services = compose["services"]
    ui = services["ui"]
    assert (
        ui["image"] == services["exporter"]["image"] and ui["build"] == services["migrate"]["build"]
    )
    command = ui["command"]
    assert command[:2] == ["loopfree", "ui"]
    host, port = command[command.index("--host") + 1], command[command.index("--port") + 1]
    assert host == "0.0.0.0"  # reachable through the published port...
    # ...so a token is set, long enough for `loopfree ui` to accept it
    assert len(interpolate(str(ui["environment"]["LOOPFREE_UI_TOKEN"]))) >= MIN_TOKEN_LENGTH
    assert ui["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert ui["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert ui["restart"] == "unless-stopped"


def run_healthcheck(compose: dict[str, Any], port: int, token: str) -> int:
    test = compose["services"]["ui"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    command = [interpolate(part).replace("8400", str(port)) for part in test[1:]]
    command[0] = sys.executable if command[0] == "python" else command[0]
    env = {**os.environ, "LOOPFREE_UI_TOKEN": token}
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def test_the_ui_healthcheck_passes_with_the_token_and_fails_without_it(compose, tmp_path: Path):
    port, token = free_port(), "deploy-test-token-0123456789abcdef"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LOOPFREE_")},
        "LOOPFREE_HOME": str(tmp_path / "home"),
        "LOOPFREE_UI_TOKEN": token,
    }
    with (tmp_path / "ui.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loopfree.cli",
                "ui",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: process.poll() is not None or port_open(port),
            timeout=60,
            what="loopfree ui to listen",
        )
        assert process.poll() is None, (tmp_path / "ui.log").read_text()
        assert run_healthcheck(compose, port, token) == 0
        assert run_healthcheck(compose, port, "not-the-token") != 0
    finally:
        process.terminate()
        process.wait(30)
