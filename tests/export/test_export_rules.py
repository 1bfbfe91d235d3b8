"""What an export takes and how it behaves, on SQLite and PostgreSQL with a folder store: the
filters, the order, the snapshot, shard sizes, images that are missing or not what the worker
recorded, refusals, a rerun of a finished export, and an interrupted export into a folder."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from core.errors import UserError
from core.settings import Settings
from export.plan import ExportOptions
from export.run import run_export
from export.state import STATE_FILE
from storage import jobs as transitions
from storage.db import Engine, session_scope
from storage.local import LocalStore
from storage.models import JobStatus, utcnow
from storage.selections import MetadataMatch
from tests.export.conftest import (
    EXTENSIONS,
    cli_env,
    image_bytes,
    kill_export_midway,
    make_submission,
)
from tests.export.conftest import run_export as run_export_process
from tests.export.readers import read_webdataset


def settings_for(database_url: str, store: LocalStore, home: Path) -> Settings:
    return Settings(home=home, database_url=database_url, storage_url=store.url)


def exported_ids(folder: Path) -> list[str]:
    return [sample.record["job_id"] for sample in read_webdataset(folder)]


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture()
def settings(migrated_db_url: str, store: LocalStore, tmp_path: Path) -> Settings:
    return settings_for(migrated_db_url, store, tmp_path / "home")


def test_filters_choose_jobs_and_named_submissions_come_in_the_order_named(
    engine: Engine, store: LocalStore, settings: Settings, tmp_path: Path
) -> None:
    first = make_submission(engine, store, 40, prompt="a red fox, take {position}")
    second = make_submission(engine, store, 30, prompt="a blue whale, take {position}")
    both = (second.id, first.id)

    run_export(settings, ExportOptions("webdataset", both), str(tmp_path / "all"))
    expected = [job.id for job in second.succeeded() + first.succeeded()]
    assert exported_ids(tmp_path / "all") == expected

    chosen = ExportOptions(
        "webdataset",
        both,
        metadata=(MetadataMatch.parse("odd=true"),),
        prompt_contains="TAKE 1",  # case-insensitive: take 1, take 10..19
    )
    report = run_export(settings, chosen, str(tmp_path / "some"))
    expected = [
        job.id
        for job in second.succeeded() + first.succeeded()
        if job.metadata["odd"] and "take 1" in job.prompt
    ]
    assert expected and exported_ids(tmp_path / "some") == expected
    assert report.samples == len(expected)

    failed_only = ExportOptions("webdataset", (first.id,), statuses=(JobStatus.FAILED,))
    report = run_export(settings, failed_only, str(tmp_path / "failed"))
    failed = sum(job.status == "failed" for job in first.jobs)
    assert (report.samples, report.skipped, report.shards_written) == (0, {"failed": failed}, 0)
    stats = json.loads((tmp_path / "failed" / "_stats.json").read_text())
    assert stats["count"] == failed and stats["successes"] == 0


def test_without_ids_since_takes_the_jobs_of_any_submission_finished_since(
    engine: Engine, store: LocalStore, settings: Settings, tmp_path: Path
) -> None:
    long_ago = utcnow() - timedelta(days=3)
    old = make_submission(engine, store, 12, now=long_ago)
    recent = make_submission(engine, store, 15)
    newer = make_submission(engine, store, 9)
    report = run_export(
        settings, ExportOptions("webdataset", since="24h"), str(tmp_path / "recent")
    )
    expected = [job.id for job in recent.succeeded() + newer.succeeded()]
    assert exported_ids(tmp_path / "recent") == expected
    assert report.samples == len(expected)
    assert not set(exported_ids(tmp_path / "recent")) & {job.id for job in old.jobs}

    with pytest.raises(UserError, match="name the submission"):
        ExportOptions("webdataset")
    with pytest.raises(UserError, match="neither a time"):
        ExportOptions("webdataset", since="yesterday-ish")


def test_an_export_is_a_snapshot_of_when_it_started_even_when_resumed(
    sqlite_engine: Engine, migrated_sqlite_url: str, store: LocalStore, tmp_path: Path
) -> None:
    made = make_submission(sqlite_engine, store, 60)
    settings = settings_for(migrated_sqlite_url, store, tmp_path / "home")
    options = ExportOptions("webdataset", (made.id,), shard_size=10)

    class Interrupted(Exception):
        pass

    def stop_after_25(looked: int, samples: int, size: int) -> None:
        if samples == 25:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_export(settings, options, str(tmp_path / "out"), progress=stop_after_25)
    # Meanwhile a queued job (after the point where the export stopped) gets its image.
    late = next(job for job in made.jobs if job.status == "queued" and job.position > 30)
    data = image_bytes(7)
    stored = store.put_png(store.key_for(made.id, late.id), data, metadata={})
    with session_scope(sqlite_engine) as session:
        transitions.claim_jobs(session, [late.id], worker="w", batch_id="late", batch_size=1)
        transitions.mark_batch_succeeded(
            session,
            [(late.id, transitions.JobResult(stored.uri, stored.size, stored.sha256, 0, 0, 0))],
        )
    report = run_export(settings, options, str(tmp_path / "out"))
    assert report.shards_kept == 2
    assert late.id not in exported_ids(tmp_path / "out")
    assert exported_ids(tmp_path / "out") == [job.id for job in made.succeeded()]
    assert report.skipped["finished_after_start"] == 1


def test_shards_close_at_their_byte_limit_and_every_sample_is_kept(
    engine: Engine, store: LocalStore, settings: Settings, tmp_path: Path
) -> None:
    made = make_submission(engine, store, 300, outcome=lambda p: "succeeded")
    limit = 1_000_000
    report = run_export(
        settings, ExportOptions("parquet", (made.id,), shard_bytes=limit), str(tmp_path / "out")
    )
    shards = report.stats["shards"]
    assert len(shards) >= 2 and all(0 < shard["bytes"] <= limit for shard in shards)
    assert sum(shard["samples"] for shard in shards) == 300
    assert sum(shard["bytes"] for shard in shards) == sum(len(job.data) for job in made.jobs)


def test_an_image_missing_or_not_the_recorded_bytes_is_left_out_and_counted(
    engine: Engine, store: LocalStore, settings: Settings, tmp_path: Path
) -> None:
    made = make_submission(engine, store, 20, outcome=lambda p: "succeeded")
    changed, missing = made.jobs[3], made.jobs[8]
    changed_key = store.key_for(made.id, changed.id, EXTENSIONS[changed.image_format])
    (store.root / changed_key).write_bytes(image_bytes(99, changed.image_format))
    store.delete(store.key_for(made.id, missing.id, EXTENSIONS[missing.image_format]))

    report = run_export(settings, ExportOptions("webdataset", (made.id,)), str(tmp_path / "out"))
    assert report.skipped == {"missing_object": 1, "sha256_mismatch": 1}
    assert exported_ids(tmp_path / "out") == [
        job.id for job in made.jobs if job not in (changed, missing)
    ]
    stats = json.loads((tmp_path / "out" / "_stats.json").read_text())
    assert (stats["count"], stats["successes"], stats["failed_to_download"]) == (20, 18, 2)


def test_a_finished_export_run_again_writes_nothing_and_other_options_are_refused(
    engine: Engine, store: LocalStore, settings: Settings, tmp_path: Path
) -> None:
    made = make_submission(engine, store, 30)
    out = tmp_path / "out"
    options = ExportOptions("imagefolder", (made.id,), shard_size=8)
    run_export(settings, options, str(out))
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    again = run_export(settings, options, str(out))
    assert again.already_complete and again.shards_written == 0
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before

    with pytest.raises(UserError, match="other options.*shard_size=8"):
        run_export(settings, ExportOptions("imagefolder", (made.id,)), str(out))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no loopfree export"):
        run_export(settings, options, str(tmp_path / "busy"))


def test_an_export_into_a_folder_killed_midway_keeps_its_shards_and_ends_as_if_never_killed(
    sqlite_engine: Engine, migrated_sqlite_url: str, store: LocalStore, tmp_path: Path
) -> None:
    made = make_submission(sqlite_engine, store, 150)
    env = cli_env(tmp_path / "home", migrated_sqlite_url, store, None)
    options = ["--format", "webdataset", "--shard-size", "32"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_export_process([made.id, str(straight), *options], env)

    kill_export_midway([made.id, str(resumed), *options], env, after_samples=80, folder=tmp_path)
    assert sorted(path.name for path in resumed.iterdir()) == [
        ".loopfree-export.json", ".partial", "00000.tar", "00001.tar",
    ]  # fmt: skip
    assert (resumed / ".partial" / "00002.tar").exists()  # half a shard, never under its name
    kept = {name: os.stat(resumed / name) for name in ("00000.tar", "00001.tar")}

    run_export_process([made.id, str(resumed), *options], env)
    for name, before in kept.items():
        after = os.stat(resumed / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not (resumed / ".partial").exists()
    names = sorted(path.name for path in straight.iterdir())
    assert names == sorted(path.name for path in resumed.iterdir())
    for name in names:
        if name.endswith(".tar"):
            assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name
    state = json.loads((resumed / STATE_FILE).read_text())
    assert state["complete"] and len(state["shards"]) == len([n for n in names if "tar" in n])
    assert exported_ids(resumed) == [job.id for job in made.succeeded()]
