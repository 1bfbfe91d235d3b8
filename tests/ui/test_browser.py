"""The web view of a real run, opened in headless Chromium, on both backends.

Each test loads pages the way a user would (typing into the filter form, following links), waits
for what the browser reports (bounded polls, no sleeps) and keeps a screenshot per page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from storage.models import JobStatus
from tests.ui.conftest import (
    DEAD_WORKER,
    LIVE_WORKER,
    PERCENT_PROMPT,
    SCRIPT_PROMPT,
    RenderedRun,
    ServedApp,
)

pytestmark = pytest.mark.slow

LOAD_TIMEOUT_S = 60

# The <img> elements of the grid that intersect the viewport, and whether each has loaded.
IMAGES_IN_VIEW = """
const height = window.innerHeight;
return [...document.querySelectorAll('#jobs img')]
  .filter(img => { const r = img.getBoundingClientRect(); return r.bottom > 0 && r.top < height; })
  .map(img => ({src: img.getAttribute('src'), complete: img.complete, width: img.naturalWidth}));
"""


def shot(driver: Any, artifacts: Path, run: RenderedRun, name: str) -> None:
    driver.save_screenshot(str(artifacts / f"ui-{run.backend}-{name}.png"))


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait_loaded(driver)


def wait_loaded(driver: Any, url_has: str = "") -> None:
    """Until the address contains ``url_has`` and that document has loaded."""
    WebDriverWait(driver, LOAD_TIMEOUT_S).until(
        lambda d: (
            url_has in d.current_url
            and d.execute_script("return document.readyState") == "complete"
        )
    )


def page_counts(driver: Any, scope: str) -> dict[str, int]:
    badges = driver.find_elements(By.CSS_SELECTOR, f"{scope} [data-status][data-count]")
    return {b.get_attribute("data-status"): int(b.get_attribute("data-count")) for b in badges}


def tiles(driver: Any) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, "#jobs li.tile")


def wait_images_in_view(driver: Any) -> list[dict[str, Any]]:
    """The images in view once every one of them has finished loading (or failed to)."""

    def settled(d: Any) -> list[dict[str, Any]] | None:
        images = d.execute_script(IMAGES_IN_VIEW)
        return images if images and all(image["complete"] for image in images) else None

    return WebDriverWait(driver, LOAD_TIMEOUT_S).until(settled)


def test_the_submissions_page_lists_the_run_with_the_database_counts(
    browser, served: ServedApp, rendered_run: RenderedRun, artifacts: Path
):
    open_page(browser, served.url + "/")
    shot(browser, artifacts, rendered_run, "submissions")
    row = browser.find_element(
        By.CSS_SELECTOR, f"tr[data-submission-id='{rendered_run.submission_id}']"
    )
    assert page_counts(browser, f"tr[data-submission-id='{rendered_run.submission_id}']") == (
        rendered_run.counts()
    )
    assert "prompts.jsonl" in row.text
    assert "done" in row.text  # no ETA: nothing is open
    # A finished run does not reload itself; only pages with open work do.
    assert not browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv='refresh']")
    row.find_element(By.LINK_TEXT, rendered_run.submission_id[:8]).click()
    wait_loaded(browser, "/submissions/")
    assert browser.find_element(By.CSS_SELECTOR, "h1").text.startswith("prompts.jsonl")


def test_every_thumbnail_in_view_loads_and_the_counts_equal_the_database(
    browser, served: ServedApp, rendered_run: RenderedRun, artifacts: Path
):
    open_page(browser, f"{served.url}/submissions/{rendered_run.submission_id}")
    in_view = wait_images_in_view(browser)
    shot(browser, artifacts, rendered_run, "submission")
    assert in_view, "no thumbnail in view"
    assert all(image["width"] > 0 for image in in_view), in_view
    # Lazy images further down load once scrolled to.
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    assert all(image["width"] > 0 for image in wait_images_in_view(browser))
    loaded = browser.execute_script(
        "return [...document.querySelectorAll('#jobs img')].filter(i => i.naturalWidth > 0).length"
    )
    counts = rendered_run.counts()
    assert loaded == counts["succeeded"]
    assert page_counts(browser, "#counts") == counts
    assert len(tiles(browser)) == len(rendered_run.jobs)
    for image in browser.find_elements(By.CSS_SELECTOR, "#jobs img"):
        assert image.get_attribute("loading") == "lazy"


def test_the_status_filter_shows_the_failed_job_with_its_error(
    browser, served: ServedApp, rendered_run: RenderedRun, artifacts: Path
):
    open_page(browser, f"{served.url}/submissions/{rendered_run.submission_id}")
    Select(browser.find_element(By.NAME, "status")).select_by_value("failed")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait_loaded(browser, "status=failed")
    shot(browser, artifacts, rendered_run, "filter-failed")
    failed = [job for job in rendered_run.jobs if job.status is JobStatus.FAILED]
    shown = tiles(browser)
    assert [tile.get_attribute("data-job-id") for tile in shown] == [job.id for job in failed]
    assert failed[0].error and failed[0].error in shown[0].text
    assert "height 12" in failed[0].error  # the worker's own reason, not a made-up one

    shown[0].find_element(By.CSS_SELECTOR, "a").click()  # its job page says why, too
    wait_loaded(browser, "/jobs/")
    shot(browser, artifacts, rendered_run, "job-failed")
    assert browser.find_element(By.ID, "error").text == failed[0].error


def test_the_text_filter_matches_a_substring_case_blind_and_wildcards_literally(
    browser, served: ServedApp, rendered_run: RenderedRun, artifacts: Path
):
    def search(text: str) -> list[str]:
        open_page(browser, f"{served.url}/submissions/{rendered_run.submission_id}")
        box = browser.find_element(By.NAME, "q")
        box.clear()
        box.send_keys(text, Keys.ENTER)
        wait_loaded(browser, "q=")
        ids = [tile.get_attribute("data-job-id") for tile in tiles(browser)]
        # A text filter's matches are not counted (that would take a scan): the page says how
        # many it shows, from where.
        shown = browser.find_element(By.ID, "shown")
        assert shown.get_attribute("data-total") == ""
        assert (f"{len(ids)} jobs from" in shown.text) if ids else ("no jobs match" in shown.text)
        return ids

    whales = [job.id for job in rendered_run.jobs if "whale" in job.prompt.lower()]
    assert len(whales) == 2 and search("WHALE") == whales
    shot(browser, artifacts, rendered_run, "filter-text")
    assert search("50%") == [rendered_run.job_with(PERCENT_PROMPT).id]
    assert search("off_sale") == [rendered_run.job_with(PERCENT_PROMPT).id]
    assert search("no prompt says this") == []


def test_a_script_in_a_prompt_is_shown_as_text_and_never_runs(
    browser, served: ServedApp, rendered_run: RenderedRun, artifacts: Path
):
    job = rendered_run.job_with(SCRIPT_PROMPT)
    for url in (
        f"{served.url}/submissions/{rendered_run.submission_id}",
        f"{served.url}/submissions/{rendered_run.submission_id}?q=lighthouse",
        f"{served.url}/jobs/{job.id}",
    ):
        open_page(browser, url)
        assert browser.execute_script("return window.pwned === undefined")
        assert browser.title != "pwned"
        assert "<script>" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_element(By.ID, "prompt").text == SCRIPT_PROMPT
    shot(browser, artifacts, rendered_run, "job-script-prompt")


def test_the_job_page_shows_the_full_image_and_its_record(
    browser, served: ServedApp, rendered_run: RenderedRun, artifacts: Path
):
    job = next(job for job in rendered_run.jobs if job.width == 80)
    open_page(browser, f"{served.url}/submissions/{rendered_run.submission_id}")
    browser.find_element(By.CSS_SELECTOR, f"li[data-job-id='{job.id}'] a").click()
    wait_loaded(browser, f"/jobs/{job.id}")
    WebDriverWait(browser, LOAD_TIMEOUT_S).until(
        lambda d: d.execute_script(
            "const i = document.getElementById('image'); return i && i.complete"
        )
    )
    shot(browser, artifacts, rendered_run, "job")
    natural = browser.execute_script(
        "const i = document.getElementById('image'); return [i.naturalWidth, i.naturalHeight]"
    )
    assert natural == [job.width, job.height]  # the full PNG, not the thumbnail
    details = browser.find_element(By.ID, "details").text
    assert str(job.seed) in details and job.model in details
    assert browser.find_element(By.ID, "sha256").text == job.image_sha256
    assert browser.find_element(By.ID, "object").text == job.image_uri
    assert browser.find_element(By.ID, "prompt").text == job.prompt


def test_the_workers_page_shows_the_queue_and_that_the_stopped_worker_left(
    browser, served: ServedApp, rendered_run: RenderedRun
):
    open_page(browser, f"{served.url}/workers")
    assert "No worker is registered" in browser.find_element(By.ID, "no-workers").text
    assert page_counts(browser, "#stats") == rendered_run.counts()


def test_the_workers_page_marks_each_registered_worker_live_or_dead(
    browser, registry_app: ServedApp, artifacts: Path
):
    open_page(browser, f"{registry_app.url}/workers")
    browser.save_screenshot(str(artifacts / "ui-workers-registry.png"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr")
    cells = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    states = [(row[0], row[1].lower()) for row in cells]
    assert states == [(LIVE_WORKER, "live"), (DEAD_WORKER, "dead")]
    live = cells[0]
    assert live[3] == "cuda:0" and live[4] == "9.8.7" and live[6] == "3" and live[8] == "120"


def test_with_a_token_the_browser_is_refused_until_it_opens_a_page_with_it(
    browser, served_with_token: tuple[ServedApp, str], rendered_run: RenderedRun, artifacts: Path
):
    app, token = served_with_token
    page = f"{app.url}/submissions/{rendered_run.submission_id}"
    open_page(browser, page)
    assert "needs a token" in browser.find_element(By.TAG_NAME, "body").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#jobs")

    open_page(browser, f"{page}?token={token}")
    # Redirected to the page itself, the token gone from the address, a cookie holding the proof.
    assert browser.current_url == page
    assert all(image["width"] > 0 for image in wait_images_in_view(browser))
    shot(browser, artifacts, rendered_run, "token-accepted")
    open_page(browser, f"{app.url}/workers")  # the cookie carries on to other pages
    assert page_counts(browser, "#stats") == rendered_run.counts()
    cookie = browser.get_cookie("loopfree_ui")
    assert cookie["httpOnly"] and cookie["value"] != token
