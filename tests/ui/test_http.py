"""The web view over real HTTP: ``loopfree ui`` as a process with a token, read-only methods, the
JSON API and the images, on the rendered run of both backends."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from core.errors import UserError
from status.web.app import create_app
from storage.models import JobStatus
from storage.stores import open_store
from tests.harness import REPO_ROOT, free_port, port_open, run_cli, wait_until
from tests.ui.conftest import (
    DEAD_WORKER,
    LIVE_WORKER,
    PERCENT_PROMPT,
    RenderedRun,
    ServedApp,
)

pytestmark = pytest.mark.slow

TOKEN = "a-long-random-test-token-4b1f-9c2e-77d0"


@pytest.fixture()
def ui_process(rendered_run: RenderedRun, tmp_path: Path) -> Iterator[str]:
    """``loopfree ui`` as its own process with LOOPFREE_UI_TOKEN set; yields its base URL."""
    port = free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, **rendered_run.env, "LOOPFREE_UI_TOKEN": TOKEN}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "loopfree.cli", "ui", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> bool:
            assert process.poll() is None, log.read_text()
            return port_open(port)

        wait_until(listening, timeout=60, what="loopfree ui to listen", details=log.read_text)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_with_a_token_every_request_must_carry_it(ui_process: str, rendered_run: RenderedRun):
    job = rendered_run.jobs[0]
    page = f"/submissions/{rendered_run.submission_id}"
    guarded = ["/", page, f"/jobs/{job.id}", f"/jobs/{job.id}/thumb.webp", "/api/submissions"]
    with httpx.Client(base_url=ui_process, timeout=30) as client:
        for path in guarded:
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert rendered_run.jobs[1].prompt not in refused.text
        assert "error" in client.get("/api/submissions").json()
        wrong = {"Authorization": "Bearer not-the-token"}
        assert client.get("/api/submissions", headers=wrong).status_code == 401
        assert client.get(f"{page}?token=not-the-token").status_code == 401

        right = {"Authorization": f"Bearer {TOKEN}"}
        listed = client.get("/api/submissions", headers=right)
        assert listed.status_code == 200
        assert [s["id"] for s in listed.json()["submissions"]] == [rendered_run.submission_id]
        assert client.get(f"/jobs/{job.id}/thumb.webp", headers=right).status_code == 200

        # A browser's way in: ?token= once; the answer drops it from the address, sets a cookie.
        entry = client.get(f"{page}?status=succeeded&token={TOKEN}&q=fox")
        assert entry.status_code == 303
        assert entry.headers["location"] == f"{page}?status=succeeded&q=fox"
        set_cookie = entry.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        assert TOKEN not in set_cookie
    with httpx.Client(base_url=ui_process, timeout=30, cookies=entry.cookies) as browser:
        shown = browser.get(entry.headers["location"])
        assert shown.status_code == 200 and "a red fox asleep in fresh snow" in shown.text


def test_off_loopback_the_view_refuses_to_start_without_a_token(tmp_path: Path):
    env = {"LOOPFREE_HOME": str(tmp_path / "home")}
    done = run_cli(["ui", "--host", "0.0.0.0", "--port", str(free_port())], env, timeout=60)
    assert done.returncode == 2
    assert "set LOOPFREE_UI_TOKEN" in done.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_short_token_is_refused_in_one_line_saying_how_to_make_one(tmp_path: Path, host: str):
    env = {"LOOPFREE_HOME": str(tmp_path / "home"), "LOOPFREE_UI_TOKEN": "0123456789"}
    done = run_cli(["ui", "--host", host, "--port", str(free_port())], env, timeout=60)
    assert done.returncode == 2, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "has 10 characters" in lines[0] and "at least 32" in lines[0]
    assert "openssl rand -hex 32" in lines[0]


def test_the_app_itself_refuses_a_short_token(rendered_run: RenderedRun):
    short = rendered_run.settings.model_copy(update={"ui_token": SecretStr("x" * 31)})
    with pytest.raises(UserError, match="at least 32"):
        create_app(short)


def test_the_view_is_read_only(served: ServedApp, rendered_run: RenderedRun):
    before = rendered_run.counts()
    job = rendered_run.jobs[0]
    paths = ["/", f"/submissions/{rendered_run.submission_id}", f"/api/jobs/{job.id}", "/nowhere"]
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for path in paths:
                refused = client.request(method, path, content=b"status=cancelled")
                assert refused.status_code == 405, (method, path)
                assert refused.headers["allow"] == "GET, HEAD"
        assert client.head(f"/api/jobs/{job.id}").status_code == 200
    assert rendered_run.counts() == before


def test_the_json_api_pages_and_filters_what_the_database_holds(
    served: ServedApp, rendered_run: RenderedRun
):
    base = f"/api/submissions/{rendered_run.submission_id}"
    with httpx.Client(base_url=served.url, timeout=30) as client:
        summary = client.get(base).json()
        assert summary["counts"] == rendered_run.counts()
        assert summary["done"] == len(rendered_run.jobs) and summary["eta_s"] is None

        pages, page = [], 1
        while True:
            answer = client.get(f"{base}/jobs", params={"per_page": 5, "page": page}).json()
            pages.append(answer["jobs"])
            if page == answer["pages"]:
                break
            page += 1
        assert len(pages) == 3 and answer["total"] == len(rendered_run.jobs)
        listed = [job["id"] for jobs in pages for job in jobs]
        assert listed == [job.id for job in rendered_run.jobs]  # position order, no gaps

        failed = client.get(f"{base}/jobs", params={"status": "failed"}).json()["jobs"]
        (expected,) = [job for job in rendered_run.jobs if job.status is JobStatus.FAILED]
        assert [(j["id"], j["error"]) for j in failed] == [(expected.id, expected.error)]
        assert failed[0]["thumb_url"] is None and failed[0]["image_url"] is None
        matched = client.get(f"{base}/jobs", params={"q": "50%"}).json()["jobs"]
        assert [job["prompt"] for job in matched] == [PERCENT_PROMPT]

        job = next(job for job in rendered_run.jobs if job.status is JobStatus.SUCCEEDED)
        record = client.get(f"/api/jobs/{job.id}").json()
        assert (record["seed"], record["image_sha256"], record["image_uri"]) == (
            job.seed,
            job.image_sha256,
            job.image_uri,
        )
        workers = client.get("/api/workers").json()
        assert workers["workers"] == []  # its worker stopped cleanly: it left the registry
        assert workers["stats"]["counts"] == rendered_run.counts()

        assert client.get(f"{base}/jobs", params={"status": "done"}).status_code == 400
        assert client.get(f"{base}/jobs", params={"page": "0"}).status_code == 400
        missing = client.get("/api/jobs/00000000-0000-4000-8000-000000000000")
        assert missing.status_code == 404 and "no job" in missing.json()["error"]
        assert client.get("/api/jobs/not-a-uuid").status_code == 404


def test_images_come_through_the_app_and_thumbnails_are_cached_webp(
    served: ServedApp, rendered_run: RenderedRun
):
    settings = rendered_run.settings
    store = open_store(
        settings.resolved_storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )
    job = next(job for job in rendered_run.jobs if job.width == 80)
    with httpx.Client(base_url=served.url, timeout=30) as client:
        record = client.get(f"/api/jobs/{job.id}").json()
        image = client.get(record["image_url"])
        assert image.headers["content-type"] == "image/png"
        assert image.content == store.get(job.image_uri)
        assert "default-src 'none'" in image.headers["content-security-policy"]  # no scripts
        thumb = client.get(record["thumb_url"])
        again = client.get(record["thumb_url"])
    assert thumb.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(thumb.content)) as picture:
        assert picture.format == "WEBP"
        assert picture.size == (job.width, job.height)  # small images are not blown up
    cached = list((settings.home_dir / "cache" / "thumbs").rglob(f"{job.id}-*.webp"))
    assert len(cached) == 1 and cached[0].read_bytes() == thumb.content == again.content
    assert job.image_sha256[:16] in cached[0].name  # a re-rendered image gets a new thumbnail


@pytest.mark.parametrize(
    ("address", "named"),
    [
        ("/submissions/{sub}?q=%00", "query parameter 'q' contains a NUL byte"),
        ("/api/submissions/{sub}/jobs?q=fox%00", "query parameter 'q' contains a NUL byte"),
        ("/api/submissions/{sub}/jobs?status=%00", "query parameter 'status' contains a NUL"),
        ("/?page=%00", "query parameter 'page' contains a NUL byte"),
        ("/api/submissions?x%00y=1", "a query parameter name contains a NUL byte"),
        ("/submissions/{sub}?q=%ff%fe", "the query string is not valid UTF-8"),
        ("/api/submissions/{sub}/jobs?q=caf%e9", "the query string is not valid UTF-8"),
        ("/jobs/%00abc", "the address contains a NUL byte"),
        ("/api/jobs/ab%ffcd", "the address is not valid UTF-8"),
    ],
)
def test_nul_bytes_and_broken_utf8_in_a_request_are_a_400_saying_so(
    served: ServedApp, rendered_run: RenderedRun, address: str, named: str
):
    with httpx.Client(base_url=served.url, timeout=30) as client:
        answer = client.get(address.replace("{sub}", rendered_run.submission_id))
    assert answer.status_code == 400, answer.text
    shown = answer.json()["error"] if address.startswith("/api/") else answer.text
    assert named in shown and "\n" not in shown.strip()


def test_text_that_is_clean_utf8_still_filters(served: ServedApp, rendered_run: RenderedRun):
    with httpx.Client(base_url=served.url, timeout=30) as client:
        answer = client.get(
            f"/api/submissions/{rendered_run.submission_id}/jobs", params={"q": "fox ❄"}
        )
    assert answer.status_code == 200 and answer.json()["jobs"] == []


def test_priorities_show_by_name_and_json_keeps_the_number(
    served: ServedApp, rendered_run: RenderedRun
):
    job = rendered_run.jobs[0]
    with httpx.Client(base_url=served.url, timeout=30) as client:
        page = client.get(f"/jobs/{job.id}")
        record = client.get(f"/api/jobs/{job.id}").json()
    assert page.status_code == 200 and "priority normal" in page.text
    assert (record["priority"], record["priority_name"]) == (5, "normal")


def test_the_workers_page_and_api_read_the_registry_live_and_dead(registry_app: ServedApp):
    with httpx.Client(base_url=registry_app.url, timeout=30) as client:
        listed = client.get("/api/workers").json()["workers"]
        page = client.get("/workers")
    assert [(w["name"], w["live"]) for w in listed] == [(LIVE_WORKER, True), (DEAD_WORKER, False)]
    live, dead = listed
    assert (live["device"], live["version"], live["jobs_in_hand"], live["images_done"]) == (
        "cuda:0", "9.8.7", 3, 120,
    )  # fmt: skip
    assert live["last_beat_age_s"] < 600 and dead["last_beat_age_s"] >= 7200
    assert page.status_code == 200 and "no worker registry" not in page.text
    assert f'data-worker="{LIVE_WORKER}" data-live="true"' in page.text
    assert f'data-worker="{DEAD_WORKER}" data-live="false"' in page.text
    assert ">dead</span>" in page.text and "1 live." in page.text
