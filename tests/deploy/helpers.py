"""Paths and helpers for the deployment-file checks (docker/, docker/k8s/, docs/fleet.md).

No Docker engine and no cluster: the files are linted and validated against schemas, and their
cross-references (paths, ports, names, settings) are checked here. The linters are real tools; in
CI (``CI=true``) a missing one fails the test instead of skipping it, so a broken install cannot
turn the whole suite green.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
SCHEMAS = DOCKER / "schemas"
COMPOSE_FILE = DOCKER / "compose.yaml"
FLEET_DOC = REPO / "docs" / "fleet.md"

# Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}; $$ is
# a literal dollar. Enough of the spec for the defaults used in compose.yaml.
_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(condition: bool, reason: str) -> None:
    """Skip when a tool is missing on a developer machine; fail in CI, where it must be there."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing tool is an error, not a skip)")
    pytest.skip(reason)


def find_tool(name: str) -> str | None:
    """A console script from this interpreter's environment first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Expand compose ``${...}`` references as ``docker compose`` would with ``env`` set."""
    env = env or {}

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = env.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is not None:
            return value
        if op and op.endswith("?"):
            raise KeyError(f"${{{name}}} is required: {arg}")
        return arg or ""

    return _INTERPOLATION.sub(replace, value)
