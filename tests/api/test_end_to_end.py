"""The whole path through the API with a real worker: the Python client submits 200 prompts,
waits, downloads, and every file is the image the worker recorded; the API's numbers are the
CLI's; a second owner's token can read, list, cancel and fetch nothing of the first's (every
endpoint, and the web view)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loopfree_client import Client, NotFound
from tests.api.conftest import Fleet
from tests.harness import WorkerProcess, run_cli


@dataclass(frozen=True)
class Rendered:
    fleet: Fleet
    alice: str
    bob: str
    admin: str
    submission_id: str
    job_id: str
    folder: Path


@pytest.fixture(scope="module")
def rendered(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendered]:
    alice, bob, admin = fleet.token("alice"), fleet.token("bob"), fleet.token("ops", admin=True)
    folder = tmp_path_factory.mktemp("api-e2e")
    worker = WorkerProcess(fleet.env, folder / "worker.log")
    try:
        with Client(fleet.url, alice) as client:
            prompts = [f"a watercolour fox, variation {n}" for n in range(200)]
            run = client.submit(prompts, seed=100)
            final = run.wait(poll_s=0.5, timeout_s=600)
            assert final["counts"]["succeeded"] == 200, worker.log_text()
            run.download(folder / "images")
            job_id = next(run.jobs())["id"]
        yield Rendered(fleet, alice, bob, admin, run.id, job_id, folder)
    finally:
        worker.stop()


def test_the_client_downloads_every_image_as_the_worker_recorded_it(rendered: Rendered) -> None:
    images = rendered.folder / "images"
    manifest = [json.loads(line) for line in (images / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 200
    recorded = dict(
        (row["file"], row["image_sha256"]) for row in manifest if row["file"] is not None
    )
    assert len(recorded) == 200
    for name, sha256 in recorded.items():
        assert hashlib.sha256((images / name).read_bytes()).hexdigest() == sha256
    with Client(rendered.fleet.url, rendered.alice) as client:
        again = client.submission(rendered.submission_id[:8]).download(images)
    assert (again.downloaded, again.unchanged) == (0, 200)  # a sync: nothing fetched twice


def test_the_api_says_what_the_cli_says(rendered: Rendered) -> None:
    fleet = rendered.fleet
    cli = run_cli(["status", rendered.submission_id, "--json"], fleet.env)
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    assert expected.pop("kind") == "submission"
    answer = httpx.get(
        f"{fleet.url}/v1/submissions/{rendered.submission_id}",
        headers={"Authorization": f"Bearer {rendered.alice}"},
    ).json()
    assert answer == expected
    # ... and its download is the CLI's sync, file for file and line for line.
    cli_folder = rendered.folder / "cli"
    done = run_cli(["results", rendered.submission_id, "--download", str(cli_folder)], fleet.env)
    assert done.returncode == 0, done.stderr
    ours = rendered.folder / "images"
    assert sorted(p.name for p in cli_folder.iterdir()) == sorted(p.name for p in ours.iterdir())
    for path in cli_folder.iterdir():
        assert path.read_bytes() == (ours / path.name).read_bytes(), path.name


def test_the_image_endpoint_redirects_to_a_short_lived_url_without_the_token(
    rendered: Rendered,
) -> None:
    response = httpx.get(
        f"{rendered.fleet.url}/v1/jobs/{rendered.job_id}/image",
        headers={"Authorization": f"Bearer {rendered.alice}"},
    )
    assert response.status_code == 307
    assert (
        "Expires=300" in response.headers["location"]
        or "X-Amz-Expires=300" in (response.headers["location"])
    )
    streamed = httpx.get(
        f"{rendered.fleet.url}/v1/jobs/{rendered.job_id}/image?redirect=false",
        headers={"Authorization": f"Bearer {rendered.alice}"},
    )
    assert streamed.status_code == 200 and streamed.headers["content-type"] == "image/png"
    assert httpx.get(response.headers["location"]).content == streamed.content


ENDPOINTS = {
    "status": ("GET", "/v1/submissions/{submission}"),
    "status by prefix": ("GET", "/v1/submissions/{prefix}"),
    "jobs": ("GET", "/v1/submissions/{submission}/jobs"),
    "cancel": ("DELETE", "/v1/submissions/{submission}"),
    "job": ("GET", "/v1/jobs/{job}"),
    "job by prefix": ("GET", "/v1/jobs/{job_prefix}"),
    "image": ("GET", "/v1/jobs/{job}/image"),
    "image bytes": ("GET", "/v1/jobs/{job}/image?redirect=false"),
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_another_owners_token_gets_404_from_every_endpoint(
    rendered: Rendered, endpoint: str
) -> None:
    method, template = ENDPOINTS[endpoint]
    path = template.format(
        submission=rendered.submission_id,
        prefix=rendered.submission_id[:8],
        job=rendered.job_id,
        job_prefix=rendered.job_id[:8],
    )
    url = f"{rendered.fleet.url}{path}"
    refused = httpx.request(method, url, headers={"Authorization": f"Bearer {rendered.bob}"})
    assert refused.status_code == 404, refused.text
    assert refused.json()["title"] == "Not found"
    # Indistinguishable from an id nobody has: the same document, but for the id echoed.
    unknown = "0f0f0f0f-0f0f-4f0f-8f0f-0f0f0f0f0f0f"
    ids = (rendered.submission_id, rendered.job_id, rendered.submission_id[:8], rendered.job_id[:8])
    nobody = path
    for value in ids:
        nobody = nobody.replace(value, unknown[: len(value)])
    other = httpx.request(
        method, f"{rendered.fleet.url}{nobody}", headers={"Authorization": f"Bearer {rendered.bob}"}
    )
    shown = refused.text
    for value in ids:
        shown = shown.replace(value, unknown[: len(value)])
    assert (other.status_code, other.text) == (404, shown)
    assert "alice" not in refused.text
    if method == "GET":  # the owner and an admin see it
        for token in (rendered.alice, rendered.admin):
            seen = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
            assert seen.status_code in (200, 307), seen.text


def test_another_owners_listing_and_client_see_nothing_of_it(rendered: Rendered) -> None:
    fleet = rendered.fleet
    with Client(fleet.url, rendered.bob) as bob:
        assert rendered.submission_id not in {s.id for s in bob.submissions()}
        with pytest.raises(NotFound):
            bob.submission(rendered.submission_id)
    with Client(fleet.url, rendered.admin) as admin:
        assert rendered.submission_id in {s.id for s in admin.submissions(owner="alice")}
    assert (
        fleet.count(
            f"SELECT count(*) FROM jobs WHERE submission_id = '{rendered.submission_id}' "
            "AND status = 'cancelled'"
        )
        == 0
    )


def test_the_web_view_takes_the_same_tokens_and_shows_an_owner_only_its_own(
    rendered: Rendered,
) -> None:
    from pydantic import SecretStr

    from tests.ui.conftest import ServedApp

    settings = rendered.fleet.settings.model_copy(update={"ui_token": SecretStr("u" * 40)})
    with ServedApp(settings) as view:

        def get(path: str, token: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.get(f"{view.url}{path}", headers=headers)

        page = f"/api/submissions/{rendered.submission_id}"
        assert get(page, None).status_code == 401
        assert get(page, rendered.alice).status_code == 200
        assert get(page, rendered.admin).status_code == 200
        assert get(page, rendered.bob).status_code == 404
        assert get(f"/jobs/{rendered.job_id}/image", rendered.bob).status_code == 404
        listed = get("/api/submissions", rendered.bob).json()["submissions"]
        assert rendered.submission_id not in {s["id"] for s in listed}
        assert get(page, "lf_0123456789ab_" + "x" * 43).status_code == 401
        # ?token= once, then the cookie (an HMAC of the stored hash, not the token).
        with httpx.Client(base_url=view.url, follow_redirects=True) as browser:
            first = browser.get(f"{page}?token={rendered.alice}")
            assert first.status_code == 200 and rendered.alice not in str(browser.cookies)
            assert browser.get(page).status_code == 200
