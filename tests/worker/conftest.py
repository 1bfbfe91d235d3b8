"""Tiny random-weight Loopfree models, built once per test session through the real loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.models import LoopfreeModel, load_model
from worker.sampler import TiUESampler
from worker.tiny import make_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("models") / "tiny", shape="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> LoopfreeModel:
    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture()
def sampler(tiny_model: LoopfreeModel) -> TiUESampler:
    return TiUESampler(tiny_model)
