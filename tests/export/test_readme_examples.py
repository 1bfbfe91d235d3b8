"""The README's "Loading it in training code" block, run as it is written, on exports of each
format made by ``loopfree export``: what it promises a training script can do, it can."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.settings import Settings
from export.plan import ExportOptions
from export.run import run_export
from storage.db import Engine
from storage.local import LocalStore
from tests.export.conftest import make_submission
from tests.harness import REPO_ROOT


def readme_block(after: str) -> str:
    """The first ```python block after the line ``after`` in README.md."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(after)
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match, f"no python block after {after!r}"
    return match.group(1)


def test_the_readme_loading_examples_read_every_format(
    sqlite_engine: Engine, migrated_sqlite_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    store = LocalStore(tmp_path / "store")
    made = make_submission(sqlite_engine, store, 30, outcome=lambda p: "succeeded")
    settings = Settings(home=tmp_path / "home", database_url=migrated_sqlite_url,
                        storage_url=store.url)  # fmt: skip
    for format, folder in (("webdataset", "foxes-wds"), ("parquet", "foxes-pq"),
                           ("imagefolder", "foxes-if")):  # fmt: skip
        # 30 samples, 3 a shard: the ten shards {00000..00009} the example names.
        options = ExportOptions(format, (made.id,), shard_size=3)
        run_export(settings, options, str(tmp_path / folder))
    monkeypatch.chdir(tmp_path)
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    code = readme_block("Loading it in training code:")
    code = code.replace("    ...  ", "    seen.append((image, record))  ")
    namespace: dict = {"seen": []}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    seen = namespace["seen"]
    assert [record["job_id"] for _, record in seen] == [job.id for job in made.jobs]
    assert all(image.size == (64, 64) for image, _ in seen)
    assert len(namespace["rows"]) == len(namespace["folder"]) == 30
    assert namespace["rows"][0]["image"].size == (64, 64)
    assert sorted(namespace["folder"]["key"]) == [f"{i:09d}" for i in range(30)]
