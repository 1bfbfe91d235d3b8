"""A submission's page links its manifest (JSONL, CSV) and shows the commands that export or
re-roll what it shows: the manifests hold what ``loopfree results`` and ``jobs --format csv``
print, for the page's filter, and the commands run as shown. On SQLite and PostgreSQL, rows
and images written the way workers write them."""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from core.settings import Settings
from status.queries import results
from status.web.app import create_app
from storage.db import Engine, make_engine
from storage.local import LocalStore
from storage.stores import store_for
from tests.export.conftest import make_submission
from tests.export.readers import read_webdataset
from tests.harness import REPO_ROOT

PROMPT = "a poster: 50% off, it's <b>{position}</b>"


@pytest.fixture()
def site(engine: Engine, migrated_db_url: str, tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    made = make_submission(engine, store, 40, prompt=PROMPT)
    settings = Settings(home=tmp_path / "home", database_url=migrated_db_url, storage_url=store.url)
    with TestClient(create_app(settings, engine=engine, store=store)) as client:
        yield client, made, settings


@pytest.fixture()
def engine(migrated_db_url: str):
    from storage.db import make_engine

    engine = make_engine(migrated_db_url)
    yield engine
    engine.dispose()


def cli(settings: Settings, *args: str, text: bool = True) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOPFREE_")}
    env.update(
        LOOPFREE_HOME=str(settings.home),
        LOOPFREE_DATABASE_URL=settings.database_url.get_secret_value(),
        LOOPFREE_STORAGE_URL=settings.storage_url,
        LOOPFREE_MODEL="org/base-model",
        HF_HUB_OFFLINE="1",
    )
    done = subprocess.run(
        [sys.executable, "-m", "loopfree.cli", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=text, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def test_the_jsonl_manifest_holds_the_records_of_loopfree_results(site) -> None:
    client, made, settings = site
    answer = client.get(f"/submissions/{made.id[:8]}/manifest.jsonl")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/jsonl")
    assert f'filename="{made.id[:8]}-manifest.jsonl"' in answer.headers["content-disposition"]
    served = [json.loads(line) for line in answer.text.splitlines()]
    engine = make_engine(settings.resolved_database_url)
    try:
        printed = list(results(engine, store_for(settings), made.id, expiry_s=60))
    finally:
        engine.dispose()
    assert len(served) == len(printed) == len(made.jobs)
    for web, cli_record in zip(served, printed, strict=True):
        fields = {key: value for key, value in web.items() if key != "image_url"}
        assert fields == {key: value for key, value in cli_record.items() if key != "url"}
        assert (web["image_url"] is None) == (web["status"] != "succeeded")
    first = next(record for record in served if record["image_url"])
    image = client.get(first["image_url"])
    assert hashlib.sha256(image.content).hexdigest() == first["image_sha256"]


def test_the_csv_manifest_is_what_jobs_format_csv_prints(site) -> None:
    client, made, settings = site
    answer = client.get(f"/submissions/{made.id}/manifest.csv")
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    printed = cli(settings, "jobs", "--submission", made.id, "--format", "csv", text=False)
    assert answer.content == printed.stdout  # byte for byte, \r\n line ends included


def test_the_manifest_follows_the_page_filter_and_refuses_a_bad_one(site) -> None:
    client, made, _ = site
    answer = client.get(f"/submissions/{made.id}/manifest.csv?status=failed&q=<B>2")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    expected = [job for job in made.jobs if job.status == "failed" and "<b>2" in job.prompt]
    assert expected and [row["id"] for row in rows] == [job.id for job in expected]
    assert json.loads(rows[0]["metadata"]) == expected[0].metadata
    assert client.get(f"/submissions/{made.id}/manifest.jsonl?status=lost").status_code == 400
    assert client.get("/submissions/0123abcd/manifest.jsonl").status_code == 404
    assert client.post(f"/submissions/{made.id}/manifest.jsonl").status_code == 405


def test_a_manifest_longer_than_a_page_of_rows_comes_whole_and_in_order(
    engine: Engine, migrated_db_url: str, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    made = make_submission(engine, store, 2_345, outcome=lambda p: "queued")
    settings = Settings(home=tmp_path / "home", database_url=migrated_db_url, storage_url=store.url)
    with TestClient(create_app(settings, engine=engine, store=store)) as client:
        lines = client.get(f"/submissions/{made.id}/manifest.jsonl").text.splitlines()
    assert [json.loads(line)["position"] for line in lines] == list(range(2_345))


def shown_commands(page: str) -> dict[str, list[str]]:
    found = {}
    for name in ("export", "reroll"):
        match = re.search(f'<pre class="command mono" id="{name}-command">(.*?)</pre>', page)
        assert match, name
        found[name] = shlex.split(html.unescape(match.group(1)))
    return found


def test_the_page_links_its_manifest_and_its_commands_run_as_shown(site, tmp_path: Path) -> None:
    client, made, settings = site
    text = "it's <b>1"
    page = client.get(f"/submissions/{made.id}", params={"status": "succeeded", "q": text}).text
    assert "<b>1" not in page  # the prompt text stays text
    assert f"/submissions/{made.id}/manifest.jsonl?status=succeeded&amp;q=it" in page
    assert f"/submissions/{made.id}/manifest.csv?status=succeeded&amp;q=it" in page
    commands = shown_commands(page)
    assert commands["export"][:3] == ["loopfree", "export", made.id]
    assert commands["export"][-4:] == ["--status", "succeeded", "--prompt-contains", text]
    assert commands["reroll"] == ["loopfree", "submit", "--from", made.id, "--reseed",
                                  "--status", "succeeded", "--prompt-contains", text]  # fmt: skip

    expected = [job.id for job in made.succeeded() if text in job.prompt]
    out = tmp_path / "shown-export"
    export_args = [str(out) if arg.startswith("./") else arg for arg in commands["export"][1:]]
    cli(settings, *export_args)
    assert [sample.record["job_id"] for sample in read_webdataset(out)] == expected
    dry = cli(settings, *commands["reroll"][1:], "--dry-run").stdout
    assert f"dry run: {len(expected)} valid job(s)" in dry

    plain = shown_commands(client.get(f"/submissions/{made.id}").text)
    assert plain["reroll"] == ["loopfree", "submit", "--from", made.id, "--reseed"]
