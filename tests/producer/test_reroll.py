"""``submit --from ID``: a new submission from chosen jobs of an old one, on the embedded default
(SQLite, the filesystem broker): jobs chosen by status, ids, metadata or prompt text; prompts,
sizes, formats and metadata carried over; seeds kept, drawn anew or counted from N; linked to
its source; idempotent like any submit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import UserError
from core.settings import Settings
from producer.prompts import JobDefaults
from producer.reroll import REROLLED_FROM, Reroll, plan_reroll, reroll_file, submit_reroll
from producer.submit import submit_file
from storage import jobs as transitions
from storage.db import make_engine, session_scope
from storage.gallery import find_jobs
from storage.models import Job, JobStatus
from storage.selections import JobSelection, MetadataMatch
from storage.submissions import get_submission
from tests.harness import REPO_ROOT, job_result
from tests.storage.helpers import mark_succeeded

LINES = [
    {"prompt": "a red fox", "metadata": {"batch": "a", "n": 1}},
    {"prompt": "a blue whale", "height": 128, "width": 64, "priority": "high",
     "metadata": {"batch": "b"}, "num_images": 3},
    {"prompt": "a lighthouse at dusk", "image_format": "webp", "image_quality": 70,
     "steps": 2, "metadata": {"batch": "a", "n": 2}},
    {"prompt": "a bowl of ramen", "metadata": {"batch": "c"}},
    {"prompt": "a Red Fox in snow", "seed": 7},
]  # fmt: skip
FAILED_POSITIONS = (1, 3, 4)  # the whale's 1st image, the whale's 3rd, the lighthouse


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in [name for name in os.environ if name.startswith("LOOPFREE_")]:
        monkeypatch.delenv(name)
    from migrations.runner import upgrade

    settings = Settings(home=tmp_path / "home", model="org/base-model")
    settings.ensure_home()
    upgrade(settings.resolved_database_url)
    return settings


def jobs_of(settings: Settings, submission_id: str) -> list[Job]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine) as session:
            return find_jobs(session, submission_id, limit=100_000)
    finally:
        engine.dispose()


@pytest.fixture()
def source(settings: Settings, tmp_path: Path) -> str:
    """A submitted file of 7 jobs: 3 failed, the rest succeeded."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    report = submit_file(settings, path, JobDefaults(model=settings.model, seed_base=100))
    jobs = jobs_of(settings, report.submission_id)
    engine = make_engine(settings.resolved_database_url)
    with session_scope(engine) as session:
        ids = [job.id for job in jobs]
        transitions.claim_jobs(session, ids, worker="w", batch_id="b", batch_size=len(ids))
        for job in jobs:
            if job.position in FAILED_POSITIONS:
                transitions.mark_failed(session, job.id, "out of memory")
            else:
                mark_succeeded(session, job.id, job_result(job.id))
    engine.dispose()
    return report.submission_id


def carried(job: Job) -> tuple:
    return (job.prompt, job.height, job.width, job.steps, job.model, job.priority,
            job.image_format, job.image_quality)  # fmt: skip


def test_failed_jobs_come_back_as_a_new_submission_linked_to_its_source(
    settings: Settings, source: str
) -> None:
    old = {job.id: job for job in jobs_of(settings, source)}
    failed = [job for job in old.values() if job.status is JobStatus.FAILED]
    reroll = Reroll(source, JobSelection(statuses=(JobStatus.FAILED,)))
    report = submit_reroll(settings, reroll)
    assert report.created and report.jobs == 3 and report.published == 3
    new = jobs_of(settings, report.submission_id)
    assert [job.caller_metadata[REROLLED_FROM] for job in new] == [job.id for job in failed]
    for job, before in zip(new, failed, strict=True):
        assert carried(job) == carried(before)
        assert job.seed == before.seed  # same seeds unless asked
        assert job.caller_metadata == {**before.caller_metadata, REROLLED_FROM: before.id}
        assert job.status is JobStatus.QUEUED
    # The whale's 3rd image has its line's metadata although the line stored it once.
    assert new[1].caller_metadata["batch"] == "b"
    engine = make_engine(settings.resolved_database_url)
    with session_scope(engine) as session:
        assert get_submission(session, report.submission_id).source == f"reroll of {source}"
    engine.dispose()

    again = submit_reroll(settings, reroll)
    assert (again.submission_id, again.created, again.inserted) == (report.submission_id, False, 0)


def test_new_seeds_are_drawn_once_and_a_repeat_returns_the_same_submission(
    settings: Settings, source: str
) -> None:
    old = {job.position: job.seed for job in jobs_of(settings, source)}
    first = submit_reroll(settings, Reroll(source, reseed=True))
    seeds = [job.seed for job in jobs_of(settings, first.submission_id)]
    assert len(seeds) == 7 and all(seed != old[i] for i, seed in enumerate(seeds))
    again = submit_reroll(settings, Reroll(source, reseed=True))
    assert again.submission_id == first.submission_id and not again.created
    assert [job.seed for job in jobs_of(settings, again.submission_id)] == seeds

    counted = submit_reroll(settings, Reroll(source, seed_base=500))
    assert [job.seed for job in jobs_of(settings, counted.submission_id)] == list(
        range(500, 507)
    )
    assert counted.submission_id != first.submission_id


def test_model_and_steps_can_change_and_jobs_are_chosen_by_id_metadata_and_text(
    settings: Settings, source: str
) -> None:
    old = jobs_of(settings, source)
    chosen = (old[5].id, old[0].id)  # order given does not matter: position order
    report = submit_reroll(
        settings,
        Reroll(source, JobSelection(job_ids=chosen), model="org/other-model", steps=8),
    )
    new = jobs_of(settings, report.submission_id)
    assert [job.caller_metadata[REROLLED_FROM] for job in new] == [old[0].id, old[5].id]
    assert {(job.model, job.steps) for job in new} == {("org/other-model", 8)}

    by_metadata = Reroll(source, JobSelection(metadata=(MetadataMatch.parse("batch=a"),)))
    assert [line["prompt"] for line in lines_of(settings, by_metadata)] == [
        "a red fox",
        "a lighthouse at dusk",
    ]
    assert plan_reroll(settings, by_metadata).jobs == 2  # the dry run counts the same
    by_text = Reroll(source, JobSelection(prompt_contains="RED FOX"))
    planned = lines_of(settings, by_text)
    assert [line["prompt"] for line in planned] == ["a red fox", "a Red Fox in snow"]
    assert planned[1]["seed"] == 7


def lines_of(settings: Settings, reroll: Reroll) -> list[dict]:
    """The prompt lines a re-roll writes for ``submit_file``."""
    import json

    engine = make_engine(settings.resolved_database_url)
    try:
        with reroll_file(engine, reroll) as path:
            return [json.loads(line) for line in path.read_text().splitlines()]
    finally:
        engine.dispose()


def test_nothing_chosen_or_a_job_of_another_submission_submits_nothing(
    settings: Settings, source: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="no job of submission .* matches; nothing was submitted"):
        submit_reroll(settings, Reroll(source, JobSelection(prompt_contains="no such prompt")))
    other_file = tmp_path / "other.txt"
    other_file.write_text("a cat\n")
    other = submit_file(settings, other_file, JobDefaults(model=settings.model))
    stranger = jobs_of(settings, other.submission_id)[0].id
    with pytest.raises(UserError, match=f"job {stranger} is not in submission {source}"):
        submit_reroll(settings, Reroll(source, JobSelection(job_ids=(stranger,))))
    engine = make_engine(settings.resolved_database_url)
    with session_scope(engine) as session:
        assert session.query(Job).count() == 7 + 1
    engine.dispose()


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOPFREE_")}
    env.update(LOOPFREE_HOME=str(settings.home), LOOPFREE_MODEL=settings.model,
               HF_HUB_OFFLINE="1")  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "loopfree.cli", "submit", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_cli_rerolls_and_refuses_options_that_do_not_fit(
    settings: Settings, source: str, tmp_path: Path
) -> None:
    done = run_cli(settings, "--from", source[:8], "--status", "failed", "--reseed")
    assert done.returncode == 0, done.stderr
    new_id = done.stdout.strip().splitlines()[-1]
    assert len(jobs_of(settings, new_id)) == 3
    again = run_cli(settings, "--from", source[:8], "--status", "failed", "--reseed")
    assert again.stdout.strip().splitlines()[-1] == new_id
    assert "already submitted" in again.stderr

    lighthouse = jobs_of(settings, source)[4].id[:10]  # a unique prefix will do
    dry = run_cli(settings, "--from", source, "--jobs", lighthouse, "--dry-run")
    assert dry.returncode == 0 and "dry run: 1 valid job(s)" in dry.stdout, dry.stderr

    changed = run_cli(settings, "--from", source, "--jobs", lighthouse, "--steps", "6",
                      "--model", "org/other-model")  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    (job,) = jobs_of(settings, changed.stdout.strip().splitlines()[-1])
    assert (job.prompt, job.steps, job.model) == ("a lighthouse at dusk", 6, "org/other-model")

    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    for args, message in (
        (("--from", source, "--height", "256"), "--height does not apply with --from"),
        ((str(prompts), "--status", "failed"), "--status chooses jobs to re-roll"),
        ((str(prompts), "--from", source), "give a prompt FILE or --from ID, not both"),
        (("--from", source, "--seed", "3", "--reseed"), "drop --reseed or --seed"),
        (("--from", source, "--status", "lost"), "unknown status 'lost'"),
        ((), "give a prompt FILE"),
    ):
        refused = run_cli(settings, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
