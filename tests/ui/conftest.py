"""A real run to look at, the web view serving it, and a headless Chromium to look with.

``rendered_run`` renders one small submission per backend (once per module): the embedded default
(SQLite, local folder store, filesystem broker) and the fleet (PostgreSQL, Redis, an S3 endpoint),
each with a real ``loopfree worker`` process and a tiny random-weight model. One job's row is
corrupted after it was queued (as in tests/fault/test_poison_jobs.py), so the worker genuinely
fails it. The web view is served by uvicorn in a thread on a free port; Chromium is Debian's
``chromium`` driven through ``chromedriver`` by Selenium. Without them the browser tests skip
locally and fail under CI (``tests.conftest.service_missing``).

Screenshots go to ``LOOPFREE_TEST_ARTIFACTS`` (default ``tests/artifacts/``, git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import update

from core.settings import Settings
from producer.prompts import JobDefaults
from producer.submit import submit_file
from status.queries import wait_for
from status.web.app import create_app
from storage.db import make_engine, session_scope
from storage.gallery import find_jobs
from storage.models import Job, JobStatus
from storage.progress import STAGES
from tests.conftest import REDIS_URL, redis_client, service_missing
from tests.harness import (
    PG_ADMIN_URL,
    REPO_ROOT,
    ServedAsgi,
    WorkerProcess,
    loopfree_env,
    new_bucket,
    settings_from,
    throwaway_database,
)
from worker.tiny import make_model

ARTIFACTS = Path(os.environ.get("LOOPFREE_TEST_ARTIFACTS") or REPO_ROOT / "tests" / "artifacts")

SCRIPT_PROMPT = "<script>window.pwned = 1; document.title = 'pwned'</script> a lighthouse"
PERCENT_PROMPT = "a poster: 50% off_sale today"
CORRUPT_PROMPT = "a job whose row is corrupted after it was queued"
PROMPTS: list[dict[str, Any]] = [
    {"prompt": "a red fox asleep in fresh snow"},
    {"prompt": "a blue whale under the ice", "height": 80, "width": 80},
    {"prompt": SCRIPT_PROMPT},
    {"prompt": PERCENT_PROMPT},
    {"prompt": "route 50 at night, off-sale neon"},  # what an unescaped "50%" or "_" would match
    {"prompt": CORRUPT_PROMPT},
    {"prompt": "a Blue WHALE breaching at dawn"},
    {"prompt": "a bowl of ramen, overhead shot"},
    {"prompt": "a cozy reading nook with a cat"},
    {"prompt": "a medieval map of an island", "height": 80, "width": 80},
    {"prompt": "a macro photo of a dewdrop"},
    {"prompt": "a lighthouse in a storm, oil painting"},
    {"prompt": "a cyberpunk street market at night"},
    {"prompt": "an astronaut riding a horse"},
]


@dataclass(frozen=True)
class RenderedRun:
    """A finished submission on one backend and what the tests need to know about it."""

    backend: str
    env: dict[str, str]
    settings: Settings
    submission_id: str
    jobs: list[Job]
    worker_name: str

    def job_with(self, prompt: str) -> Job:
        return next(job for job in self.jobs if job.prompt == prompt)

    def counts(self) -> dict[str, int]:
        """Jobs per stage, straight from the database's rows (not its counters)."""
        from sqlalchemy import func, select

        engine = make_engine(self.settings.resolved_database_url)
        try:
            with session_scope(engine) as session:
                statuses = dict(
                    session.execute(
                        select(Job.status, func.count())
                        .where(Job.submission_id == self.submission_id)
                        .group_by(Job.status)
                    ).all()
                )
        finally:
            engine.dispose()
        counts = {stage: 0 for stage in STAGES}
        for status, count in statuses.items():
            counts["claimed" if status is JobStatus.RUNNING else status.value] += count
        return counts


@pytest.fixture(scope="session")
def ui_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("ui-model") / "tiny", shape="tiny", seed=3)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def _embedded_env(home: Path, model: Path) -> Iterator[dict[str, str]]:
    yield {
        "LOOPFREE_HOME": str(home),
        "LOOPFREE_MODEL": str(model),
        "LOOPFREE_DEVICE": "cpu",
        "LOOPFREE_MAX_WAIT_MS": "50",
    }


def _fleet_env(home: Path, model: Path, s3_endpoint: str) -> Iterator[dict[str, str]]:
    import psycopg

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as error:
        service_missing(f"PostgreSQL at {PG_ADMIN_URL}", error)
    redis = redis_client(REDIS_URL)
    redis.flushdb()
    try:
        with throwaway_database(PG_ADMIN_URL, prefix="loopfree_ui") as database:
            yield loopfree_env(
                home=home,
                database_url=database,
                broker_url=REDIS_URL,
                storage_url=new_bucket(s3_endpoint, prefix="ui"),
                s3_endpoint=s3_endpoint,
                model=model,
                max_wait_ms=50,
            )
    finally:
        redis.flushdb()
        redis.close()


@pytest.fixture(scope="session", params=["embedded", "fleet"])
def rendered_run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    ui_model_dir: Path,
) -> Iterator[RenderedRun]:
    """A submission of ``PROMPTS`` rendered by a real worker: all succeed but the corrupted one.

    Once per session and backend (tests only read it), so nothing else may write to its
    database: tests that need other rows make their own."""
    folder = tmp_path_factory.mktemp(f"ui-{request.param}")
    if request.param == "embedded":
        envs = _embedded_env(folder / "home", ui_model_dir)
    else:
        envs = _fleet_env(folder / "home", ui_model_dir, request.getfixturevalue("s3_server"))
    env = next(envs)
    try:
        yield _render(request.param, env, folder)
    finally:
        envs.close()


def _render(backend: str, env: dict[str, str], folder: Path) -> RenderedRun:
    from migrations.runner import upgrade

    settings = settings_from(env, only=True)
    settings.ensure_home()
    upgrade(settings.resolved_database_url)
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS), encoding="utf-8")
    report = submit_file(settings, prompts, JobDefaults(model=settings.model, seed_base=500))
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine) as session:  # corrupted after it was validated and queued
            session.execute(
                update(Job)
                .where(Job.submission_id == report.submission_id, Job.prompt == CORRUPT_PROMPT)
                .values(height=12)
            )
        worker = WorkerProcess(env, folder / "worker.log")
        try:
            assert wait_for(engine, report.submission_id, poll_s=0.25, timeout_s=240) is False
        finally:
            worker.stop()
        with session_scope(engine) as session:
            jobs = find_jobs(session, report.submission_id, limit=len(PROMPTS))
    finally:
        engine.dispose()
    statuses = [job.status for job in jobs]
    assert statuses.count(JobStatus.FAILED) == 1, worker.log_text()
    assert statuses.count(JobStatus.SUCCEEDED) == len(PROMPTS) - 1, worker.log_text()
    return RenderedRun(backend, env, settings, report.submission_id, jobs, worker.name)


# -- the web view --------------------------------------------------------------------------------


class ServedApp(ServedAsgi):
    """The web view on a free loopback port, served by uvicorn in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(create_app(settings), name="ui-server", what="the web view")


@pytest.fixture(scope="session")
def served(rendered_run: RenderedRun) -> Iterator[ServedApp]:
    """The web view of ``rendered_run``, without a token (it listens on loopback)."""
    with ServedApp(rendered_run.settings) as app:
        yield app


@pytest.fixture(scope="session")
def served_with_token(rendered_run: RenderedRun) -> Iterator[tuple[ServedApp, str]]:
    """The same view with a token, a fresh one each time (cookies do not tell ports apart)."""
    token = f"ui-token-{uuid.uuid4().hex}"
    settings = rendered_run.settings.model_copy(update={"ui_token": SecretStr(token)})
    with ServedApp(settings) as app:
        yield app, token


LIVE_WORKER = "loopfree-worker@gpu-a:101"
DEAD_WORKER = "loopfree-worker@gpu-b:202"


@pytest.fixture(scope="module")
def registry_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    """The web view of a fresh embedded home whose worker registry holds one live worker (3 jobs
    in hand, 120 images done) and one that stopped beating two hours ago, as
    ``storage.workers`` records them for a real worker."""
    from datetime import timedelta

    from migrations.runner import upgrade
    from storage.models import utcnow
    from storage.workers import WorkerInfo, announce, beat

    settings = Settings(home=tmp_path_factory.mktemp("ui-registry") / "home")
    settings.ensure_home()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    long_ago = utcnow() - timedelta(hours=2)
    with session_scope(engine) as session:
        for name, device, when in ((LIVE_WORKER, "cuda:0", None), (DEAD_WORKER, "cpu", long_ago)):
            info = WorkerInfo(
                name=name, model="senmaonk/loopfree-sd1.5", queue="q", host=name.split("@")[1][:5],
                pid=int(name.rsplit(":", 1)[1]), version="9.8.7", device=device, ttl_s=30,
            )  # fmt: skip
            announce(session, info, now=when)
        beat(session, LIVE_WORKER, images_done=120, jobs_in_hand=3)
    engine.dispose()
    with ServedApp(settings) as app:
        yield app


# -- the browser ---------------------------------------------------------------------------------


def find_chromium() -> tuple[str, str] | None:
    browser = next(
        (p for name in ("chromium", "chromium-browser") if (p := shutil.which(name))), None
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through chromedriver: a fresh profile per module."""
    found = find_chromium()
    if found is None:
        service_missing(
            "Chromium (Debian packages chromium and chromium-driver)",
            "chromium or chromedriver is not on PATH; apt-get install chromium chromium-driver",
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser_path, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
