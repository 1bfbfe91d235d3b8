"""The Dockerfiles and compose.yaml: lint, schema, and the references between files.

Nothing here builds an image or starts a container (CI has no Docker engine); what can be checked
without one is checked with the real tools: hadolint and the compose specification's JSON schema.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    COMPOSE_FILE,
    DOCKER,
    FLEET_DOC,
    REPO,
    interpolate,
    load_yaml,
)

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
HADOLINT_CONFIG = DOCKER / "hadolint.yaml"
LOOPFREE_VAR = re.compile(r"\bLOOPFREE_[A-Z0-9_]+\b")

# Services that do their job and exit; everything else runs until stopped and needs a healthcheck.
ONE_SHOT = {"create-bucket", "migrate", "cli"}


# --- a small Dockerfile reader --------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: str
    line: int


def read_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, tagged with their stage."""
    instructions: list[Instruction] = []
    stage, pending, start = "", "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
        instructions.append(Instruction(keyword, args.strip(), stage, start))
    assert not pending, f"{path}: the last instruction ends with a continuation backslash"
    return instructions


def copy_sources(instruction: Instruction) -> list[str]:
    """The context paths a COPY/ADD reads (none for COPY --from=stage)."""
    words = instruction.args.split()
    if any(word.startswith("--from=") for word in words):
        return []
    paths = [word for word in words if not word.startswith("--")]
    return paths[:-1]


def dockerignore_patterns(dockerfile: Path) -> list[str]:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), (
        f"{ignore.name} is missing: without it BuildKit sends the whole repository (.venv, .git) "
        "as build context"
    )
    lines = ignore.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent folder counts."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


# --- hadolint -----------------------------------------------------------------------------------


def run_hadolint(hadolint: str, *files: Path) -> tuple[int, list[dict[str, Any]], str]:
    result = subprocess.run(
        [hadolint, "--config", str(HADOLINT_CONFIG), "--format", "json", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        findings = json.loads(result.stdout or "null")
    except json.JSONDecodeError:
        findings = None
    assert isinstance(findings, list), (
        f"hadolint printed no JSON report: {result.stdout!r} {result.stderr!r}"
    )
    return result.returncode, findings, result.stderr


def test_there_is_a_worker_and_a_cli_dockerfile():
    assert {path.name for path in DOCKERFILES} >= {"worker.Dockerfile", "cli.Dockerfile"}


def test_hadolint_passes_every_dockerfile(hadolint):
    returncode, findings, stderr = run_hadolint(hadolint, *DOCKERFILES)
    report = "\n".join(f"{f['file']}:{f['line']} {f['code']} {f['message']}" for f in findings)
    assert returncode == 0 and not findings, f"hadolint (exit {returncode}):\n{report}{stderr}"


def test_hadolint_with_our_config_reports_a_bad_dockerfile(hadolint, tmp_path):
    # Proves the check above can fail: same binary, same config, a Dockerfile with known problems.
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ghcr.io/someone/ubuntu\nRUN apt-get install curl\n")
    returncode, findings, _ = run_hadolint(hadolint, bad)
    codes = {finding["code"] for finding in findings}
    assert returncode != 0
    assert {"DL3006", "DL3026", "DL3008"} <= codes, codes


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_hadolint_ignore_says_why(dockerfile):
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            before = lines[number - 1].strip() if number else ""
            assert before.startswith("#") and "hadolint" not in before, (
                f"{dockerfile.name}:{number + 1}: put a comment saying why above the ignore"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_to_a_version(dockerfile):
    instructions = read_dockerfile(dockerfile)
    stages = {i.stage for i in instructions if i.keyword == "FROM"}
    for instruction in instructions:
        if instruction.keyword != "FROM":
            continue
        image = next(word for word in instruction.args.split() if not word.startswith("--"))
        if image in stages:
            continue  # FROM an earlier stage
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert re.search(r"\d+\.\d+", tag), (
            f"{dockerfile.name}: {image} is not pinned to a version tag"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_non_root_numeric_user(dockerfile):
    instructions = read_dockerfile(dockerfile)
    final_stage = [i for i in instructions if i.keyword == "FROM"][-1]
    users = [i.args for i in instructions if i.keyword == "USER" and i.stage == final_stage.stage]
    assert users, f"{dockerfile.name}: the final stage sets no USER, so it runs as root"
    uid = users[-1].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, f"{dockerfile.name}: USER {users[-1]}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_files_exist_and_are_in_the_build_context(dockerfile):
    # compose.yaml builds both images with the repository root as context.
    patterns = dockerignore_patterns(dockerfile)
    sources = [
        s
        for i in read_dockerfile(dockerfile)
        if i.keyword in {"COPY", "ADD"}
        for s in copy_sources(i)
    ]
    assert sources, f"{dockerfile.name} copies nothing from the context"
    for source in sources:
        path = REPO / source
        assert path.exists(), (
            f"{dockerfile.name} copies {source}, which is not in the repository: `docker build` "
            "would fail (README.md is needed because pyproject.toml names it as the readme)"
        )
        assert not is_ignored(source, patterns), (
            f"{dockerfile.name}: {source} is excluded by its .dockerignore"
        )
        for child in sorted(path.rglob("*.py"))[:20] if path.is_dir() else []:
            relative = child.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert not is_ignored(relative, patterns), (
                    f"{relative} would be missing from the image"
                )


def test_dockerignore_keeps_the_virtualenv_and_git_out():
    for dockerfile in DOCKERFILES:
        patterns = dockerignore_patterns(dockerfile)
        for path in (
            ".venv/lib/python3.11/site-packages/torch/__init__.py",
            ".git/HEAD",
            "tests/x.py",
        ):
            assert is_ignored(path, patterns), f"{dockerfile.name}.dockerignore lets {path} in"
        assert is_ignored("loopfree/__pycache__/settings.cpython-311.pyc", patterns)


def test_worker_image_installs_the_torch_version_ci_tests():
    constraint = (REPO / "constraints" / "cpu.txt").read_text(encoding="utf-8")
    match = re.search(r"^torch==([0-9][0-9.]*)", constraint, re.MULTILINE)
    assert match, "constraints/cpu.txt pins no torch version"
    dockerfile = (DOCKER / "worker.Dockerfile").read_text(encoding="utf-8")
    arg = re.search(r"^ARG TORCH_VERSION=(\S+)", dockerfile, re.MULTILINE)
    assert arg, "worker.Dockerfile has no ARG TORCH_VERSION"
    assert arg.group(1) == match.group(1), (
        f"the worker image installs torch {arg.group(1)} but CI tests {match.group(1)}"
    )


def test_worker_image_prefetches_exactly_the_files_the_worker_loads():
    # Read PIPELINE_FILES from the source: importing worker.models would import torch.
    tree = ast.parse((REPO / "worker" / "models.py").read_text(encoding="utf-8"))
    pipeline_files = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "PIPELINE_FILES" for t in node.targets)
    )
    dockerfile = (DOCKER / "worker.Dockerfile").read_text(encoding="utf-8")
    included = re.findall(r'--include "([^"]+)"', dockerfile)
    assert sorted(included) == sorted(pipeline_files), (
        "the prefetch stage downloads other files than worker/models.py PIPELINE_FILES loads: "
        f"{sorted(set(included) ^ set(pipeline_files))}"
    )


def test_worker_image_exposes_its_metrics_port_and_checks_it():
    instructions = read_dockerfile(DOCKER / "worker.Dockerfile")
    env = " ".join(i.args for i in instructions if i.keyword == "ENV" and i.stage == "runtime")
    port = re.search(r"LOOPFREE_METRICS_PORT=(\d+)", env)
    assert port, "the worker image does not set LOOPFREE_METRICS_PORT, so it serves no metrics"
    assert any(i.keyword == "EXPOSE" and port.group(1) in i.args.split() for i in instructions)
    healthchecks = [i.args for i in instructions if i.keyword == "HEALTHCHECK"]
    assert healthchecks and "loopfree-healthcheck" in healthchecks[-1]
    cmd = [i.args for i in instructions if i.keyword == "CMD"][-1]
    assert json.loads(cmd)[:2] == ["loopfree", "worker"], "exec form, so SIGTERM reaches the worker"


# --- compose ------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(check_jsonschema):
    result = subprocess.run(
        [check_jsonschema, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout, result.stdout


def test_compose_schema_check_rejects_a_misspelt_key(check_jsonschema, tmp_path):
    broken = tmp_path / "compose.yaml"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "stop_grace_period:" in text
    broken.write_text(text.replace("stop_grace_period:", "stop_grace_periods:"))
    result = subprocess.run(
        [check_jsonschema, "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "stop_grace_periods" in result.stdout


def test_compose_builds_reference_existing_contexts_and_dockerfiles(compose):
    builds = {name: svc["build"] for name, svc in compose["services"].items() if "build" in svc}
    assert {"worker", "migrate", "exporter"} <= set(builds)
    for name, build in builds.items():
        build = {"context": build} if isinstance(build, str) else build
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        assert context.is_dir(), f"service {name}: build context {context} does not exist"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"service {name}: {dockerfile} does not exist"
        assert (context / "pyproject.toml").is_file(), (
            f"service {name}: context is not the project root"
        )


def test_compose_bind_mounts_and_config_files_exist(compose):
    referenced: list[tuple[str, str]] = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = (
                volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            )
            if source.startswith((".", "/")):
                referenced.append((name, source))
        for env_file in (
            service.get("env_file", []) if isinstance(service.get("env_file"), list) else []
        ):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            required = True if isinstance(env_file, str) else env_file.get("required", True)
            if required:
                referenced.append((name, path))
    for section in ("configs", "secrets"):
        for name, item in (compose.get(section) or {}).items():
            if "file" in item:
                referenced.append((f"{section}.{name}", item["file"]))
    assert ("prometheus", "./prometheus.yml") in referenced
    for owner, source in referenced:
        path = (COMPOSE_FILE.parent / interpolate(source)).resolve()
        assert path.exists(), f"{owner} mounts {source}, which does not exist ({path})"


def test_compose_named_volumes_and_dependencies_are_declared(compose):
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = (
                volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            )
            if source and not source.startswith((".", "/")):
                assert source in declared, f"service {name} uses volume {source}, not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"service {name} depends on unknown service {dependency}"


def test_workers_start_after_migrations_and_reserve_one_gpu_each(compose):
    worker = compose["services"]["worker"]
    depends = worker["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["create-bucket"]["condition"] == "service_completed_successfully"
    deploy = worker["deploy"]
    assert "replicas" in deploy
    assert deploy["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert compose["services"]["migrate"]["command"] == ["loopfree", "db", "upgrade"]


def test_workers_get_time_to_finish_their_batch_on_stop(compose):
    grace = compose["services"]["worker"].get("stop_grace_period", "10s")
    match = re.fullmatch(r"(\d+)(s|m)", grace)
    assert match, f"unexpected stop_grace_period {grace!r}"
    seconds = int(match.group(1)) * (60 if match.group(2) == "m" else 1)
    assert seconds >= 120, f"stop_grace_period {grace} would SIGKILL workers mid-batch"


def test_every_long_running_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no" or "profiles" in service, f"{name} is one-shot"
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test, f"service {name} has no healthcheck"


def test_flower_and_prometheus_are_optional_profiles(compose):
    services = compose["services"]
    for name in ("flower", "prometheus"):
        assert services[name].get("profiles"), f"{name} should only start with --profile"
    for name in ("redis", "postgres", "minio", "migrate", "worker", "exporter", "reconciler", "ui"):
        assert not services[name].get("profiles"), f"{name} must start with a plain `up`"


def test_published_ports_bind_to_localhost_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (
                f"service {name} publishes {port} to the network"
            )


def test_prometheus_scrapes_the_exporter_and_the_workers_on_their_ports(compose):
    config = load_yaml(DOCKER / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    exporter_targets = [
        t for sc in jobs["loopfree-exporter"]["static_configs"] for t in sc["targets"]
    ]
    exporter_port = compose["services"]["exporter"]["command"][-1]
    assert exporter_targets == [f"exporter:{exporter_port}"]
    (dns,) = jobs["loopfree-worker"]["dns_sd_configs"]
    worker_env = compose["services"]["worker"]["environment"]
    assert dns["names"] == ["worker"]
    assert str(dns["port"]) == interpolate(str(worker_env["LOOPFREE_METRICS_PORT"]))


# --- the reconciler -----------------------------------------------------------------------------

# Where the reconciler's loop marks a successful run and its healthcheck looks.
RECONCILED_MARK = "/tmp/loopfree-requeued"


def test_the_reconciler_runs_requeue_stuck_on_the_cli_image_after_migrations(compose):
    services = compose["services"]
    reconciler = services["reconciler"]
    assert reconciler["image"] == services["migrate"]["image"] == services["exporter"]["image"]
    assert reconciler["build"] == services["migrate"]["build"]
    assert reconciler["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert reconciler["restart"] == "unless-stopped"
    assert reconciler.get("init") is True, "a shell as PID 1 ignores SIGTERM"
    shell, flag, script = reconciler["command"]
    assert (shell, flag) == ("sh", "-c")
    assert "loopfree requeue --stuck" in script and RECONCILED_MARK in script
    assert RECONCILED_MARK in " ".join(reconciler["healthcheck"]["test"])


def reconciler_script(compose, mark: Path, every_s: str) -> str:
    script = compose["services"]["reconciler"]["command"][2]
    return interpolate(script, {"REQUEUE_EVERY_S": every_s}).replace(RECONCILED_MARK, str(mark))


def test_the_reconciler_loop_keeps_going_after_a_failed_run_and_stops_on_sigterm(compose, tmp_path):
    # The loop itself, in a real shell, with a stand-in `loopfree` whose second run fails.
    import os
    import signal
    import time

    bin_dir, calls, mark = tmp_path / "bin", tmp_path / "calls", tmp_path / "requeued"
    bin_dir.mkdir()
    fake = bin_dir / "loopfree"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        f'[ "$(wc -l < {calls})" -ne 2 ]\n'  # the second run fails (database down, say)
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    loop = subprocess.Popen(["sh", "-c", reconciler_script(compose, mark, "0.05")], env=env)
    try:
        deadline = time.monotonic() + 30
        while not (calls.exists() and len(calls.read_text().splitlines()) >= 4):
            assert loop.poll() is None, f"the loop exited ({loop.returncode}) after a run"
            assert time.monotonic() < deadline, "the loop did not run four times in 30 s"
            time.sleep(0.05)
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(timeout=10) == 0
    finally:
        if loop.poll() is None:
            loop.kill()
    assert set(calls.read_text().splitlines()) == {"requeue --stuck"}
    assert mark.exists(), "a successful run did not mark itself for the healthcheck"


def test_the_reconciler_healthcheck_fails_once_no_run_has_succeeded_for_three_periods(
    compose, tmp_path
):
    import os
    import sys
    import time

    mark = tmp_path / "requeued"
    test = compose["services"]["reconciler"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    command = [
        sys.executable,
        *(interpolate(arg).replace(RECONCILED_MARK, str(mark)) for arg in test[2:]),
    ]

    def healthy() -> bool:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0

    assert not healthy(), "healthy before any run succeeded"
    mark.touch()
    assert healthy()
    stale = time.time() - (3 * 300 + 61)
    os.utime(mark, (stale, stale))
    assert not healthy(), "healthy although three runs in a row have not succeeded"


# --- environment variables vs. core.settings ------------------------------------------------


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: interpolate(str(value)) for name, value in env.items()}


def test_every_loopfree_variable_named_in_docker_files_is_a_setting(settings_env_names):
    files = [COMPOSE_FILE, *DOCKERFILES, *sorted((DOCKER / "k8s").glob("*.yaml"))]
    if FLEET_DOC.exists():
        files.append(FLEET_DOC)
    seen: set[str] = set()
    for path in files:
        for name in LOOPFREE_VAR.findall(path.read_text(encoding="utf-8")):
            seen.add(name)
            assert name in settings_env_names, (
                f"{path.relative_to(REPO)} names {name}, which core.settings does not read "
                f"(known: {', '.join(sorted(settings_env_names))})"
            )
    assert {"LOOPFREE_BROKER_URL", "LOOPFREE_DATABASE_URL", "LOOPFREE_METRICS_PORT"} <= seen


@pytest.mark.parametrize("service", ["worker", "exporter", "migrate", "cli", "reconciler", "ui"])
def test_compose_service_environment_is_accepted_by_settings(compose, settings_from_env, service):
    env = compose_environment(compose["services"][service])
    settings = settings_from_env(env)
    assert settings.resolved_broker_url == "redis://redis:6379/0"
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert settings.resolved_storage_url.startswith("s3://")
    assert settings.s3_endpoint_url == "http://minio:9000"
    if service == "worker":
        assert settings.metrics_port == 9400
        assert settings.max_batch == 16 and settings.max_wait_ms == 200
        assert settings.model == "senmaonk/loopfree-sd1.5"
