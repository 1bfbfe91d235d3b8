"""Flower as a supported tool: the ``monitor`` extra pins the version CI tests, the compose
``flower`` service is the CLI image built with that extra, and its command and healthcheck really
work (run here as processes against a real Redis, no Docker)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness import free_port, wait_until

from .helpers import DOCKER, REPO, interpolate

FLOWER_PORT = "5555"


def monitor_extra() -> list[str]:
    """The ``monitor`` extra's requirements (a regex: no tomllib, Python 3.10 is supported)."""
    text = (REPO / "pyproject.toml").read_text()
    assert '"loopfree-queue[monitor]",' in text  # the test extra: CI installs and tests it
    match = re.search(r"^monitor = \[([^\]]*)\]", text, re.MULTILINE)
    assert match, "pyproject.toml has no monitor extra"
    return re.findall(r'"([^"]+)"', match.group(1))


def test_the_monitor_extra_pins_flower_at_the_locked_version() -> None:
    [requirement] = monitor_extra()
    name, version = requirement.split("==")
    locked = (REPO / "constraints" / "lock.txt").read_text().splitlines()
    assert name == "flower" and f"flower=={version}" in locked


def test_the_flower_service_is_the_cli_image_with_the_monitor_extra(compose) -> None:
    flower = compose["services"]["flower"]
    assert flower["build"]["dockerfile"] == "docker/cli.Dockerfile"
    assert flower["build"]["args"] == {"EXTRAS": "export,monitor"}
    assert flower["profiles"] == ["monitoring"]
    assert flower["ports"] == [f"127.0.0.1:{FLOWER_PORT}:{FLOWER_PORT}"]
    assert flower["command"][:4] == ["celery", "-A", "loopfree.queue", "flower"]
    assert flower["environment"]["LOOPFREE_BROKER_URL"] == (
        compose["services"]["worker"]["environment"]["LOOPFREE_BROKER_URL"]
    )


def test_the_cli_dockerfile_installs_the_extras_it_is_given() -> None:
    """The RUN line's own shell expansion: ``/src`` alone, or ``/src[export,monitor]``, and the
    image's default: the export extra (pyarrow, for Parquet exports)."""
    dockerfile = (DOCKER / "cli.Dockerfile").read_text()
    match = re.search(r'pip install [^\n]*?"(/src\$\{EXTRAS[^"]*)"', dockerfile)
    assert match, "cli.Dockerfile no longer installs /src with its EXTRAS"
    assert 'ARG EXTRAS="export"' in dockerfile
    for extras, expected in (("", "/src"), ("export,monitor", "/src[export,monitor]")):
        shown = subprocess.run(
            ["sh", "-c", f'printf %s "{match.group(1)}"'],
            env={"EXTRAS": extras},
            capture_output=True,
            text=True,
            check=True,
        )
        assert shown.stdout == expected


def healthcheck(flower: dict[str, Any], port: int) -> int:
    test = flower["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    command = [sys.executable, *(part.replace(FLOWER_PORT, str(port)) for part in test[2:])]
    return subprocess.run(command, capture_output=True, timeout=30).returncode


def test_the_flower_service_serves_the_broker_and_passes_its_healthcheck(
    compose, redis_url: str, tmp_path: Path
) -> None:
    flower = compose["services"]["flower"]
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LOOPFREE_")},
        **{name: interpolate(str(value)) for name, value in flower["environment"].items()},
        "LOOPFREE_BROKER_URL": redis_url,  # the compose file's redis://redis:6379/0, here
        "LOOPFREE_HOME": str(tmp_path / "home"),
    }
    command = [
        part.replace(FLOWER_PORT, str(port)).replace("0.0.0.0", "127.0.0.1")
        for part in flower["command"]
    ]
    assert command[0] == "celery"
    log = tmp_path / "flower.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", *command], cwd=REPO, env=env, stdout=output, stderr=output
        )
    try:
        wait_until(
            lambda: healthcheck(flower, port) == 0 or process.poll() is not None,
            timeout=90,
            what="Flower to answer its healthcheck",
            details=lambda: log.read_text(errors="replace")[-3000:],
        )
        assert process.poll() is None, log.read_text(errors="replace")
        assert f"{redis_url.rsplit('@', 1)[-1].split('//')[-1]}" in log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert healthcheck(flower, port) != 0  # the check fails once nothing answers
