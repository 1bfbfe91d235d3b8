"""``loopfree results ID --contact-sheet``: the JPEGs of a real run, on both backends, opened and
measured: the grid has the layout's size, each tile shows its own image, the failed job is a red
tile, and long selections page into numbered files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from status.sheets import EMPTY_FILL, FAILED_FILL, SheetLayout
from storage.models import JobStatus
from tests.harness import run_cli
from tests.ui.conftest import RenderedRun

pytestmark = pytest.mark.slow


def contact_sheet(run: RenderedRun, out: Path, *options: str) -> list[Path]:
    done = run_cli(["results", run.submission_id, "--contact-sheet", str(out), *options], run.env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [Path(line) for line in done.stdout.split()]


def tile_pixels(sheet: Image.Image, layout: SheetLayout, index: int) -> np.ndarray:
    return np.asarray(sheet.crop(layout.thumb_box(index)).convert("RGB")).astype(int)


def near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> bool:
    return bool(np.abs(pixel - np.array(colour)).max() <= tolerance)  # JPEG moves colours a bit


def test_a_sheet_is_a_grid_of_distinct_thumbnails_with_the_failed_job_in_red(
    rendered_run: RenderedRun, tmp_path: Path
):
    (path,) = contact_sheet(rendered_run, tmp_path / "sheet.jpg", "--columns", "5", "--thumb", "96")
    assert path == tmp_path / "sheet.jpg"
    layout = SheetLayout(columns=5, thumb=96)
    with Image.open(path) as sheet:
        assert sheet.format == "JPEG"
        assert sheet.size == layout.size(len(rendered_run.jobs))
        tiles = [tile_pixels(sheet, layout, index) for index in range(len(rendered_run.jobs))]
    succeeded = [
        tiles[job.position] for job in rendered_run.jobs if job.status is JobStatus.SUCCEEDED
    ]
    for tile in succeeded:  # an image, not an empty box: its pixels vary
        assert tile.std() > 10
    for a in range(len(succeeded)):  # and each its own image
        for b in range(a + 1, len(succeeded)):
            assert np.abs(succeeded[a] - succeeded[b]).mean() > 5, (a, b)
    (failed,) = [job for job in rendered_run.jobs if job.status is JobStatus.FAILED]
    assert near(tiles[failed.position][4, -4], FAILED_FILL)  # a corner of the labelled tile


def test_a_long_selection_pages_into_numbered_sheets_and_one_page_can_be_asked_for(
    rendered_run: RenderedRun, tmp_path: Path
):
    jobs = len(rendered_run.jobs)
    pages = contact_sheet(rendered_run, tmp_path / "sheet.jpg", "--limit", "4", "--thumb", "64")
    assert pages == [tmp_path / f"sheet-{n:03d}.jpg" for n in range(1, math.ceil(jobs / 4) + 1)]
    layout = SheetLayout(columns=8, thumb=64)
    sizes = [Image.open(page).size for page in pages]
    assert sizes[:-1] == [layout.size(4)] * (len(pages) - 1)
    assert sizes[-1] == layout.size(jobs - 4 * (len(pages) - 1))
    first = np.asarray(Image.open(pages[0]).convert("RGB")).astype(int)
    second = np.asarray(Image.open(pages[1]).convert("RGB")).astype(int)
    assert np.abs(first - second).mean() > 1  # different jobs on different pages

    again = contact_sheet(
        rendered_run, tmp_path / "again" / "sheet.jpg", "--limit", "4", "--thumb", "64",
        "--page", "2",
    )  # fmt: skip
    assert again == [tmp_path / "again" / "sheet-002.jpg"]
    redrawn = np.asarray(Image.open(again[0]).convert("RGB")).astype(int)
    assert np.abs(redrawn - second).max() <= 2  # the same sheet as in the full run


def test_a_status_filter_draws_only_those_jobs(rendered_run: RenderedRun, tmp_path: Path):
    (path,) = contact_sheet(
        rendered_run, tmp_path / "failed.jpg", "--status", "failed", "--thumb", "128"
    )
    layout = SheetLayout(columns=8, thumb=128)
    with Image.open(path) as sheet:
        assert sheet.size == layout.size(1)
        tile = tile_pixels(sheet, layout, 0)
    assert near(tile[4, -4], FAILED_FILL)
    assert not near(tile[4, -4], EMPTY_FILL)


def test_a_bad_request_fails_with_a_message_and_writes_nothing(
    rendered_run: RenderedRun, tmp_path: Path
):
    out = tmp_path / "sheet.jpg"
    cases = {
        ("--status", "done"): "unknown status 'done'",
        ("--status", "cancelled"): "no jobs in cancelled",
        ("--limit", "4", "--page", "99"): "--page 99 is past the last sheet",
        ("--columns", "0"): "--columns 0",
    }
    for options, message in cases.items():
        args = ["results", rendered_run.submission_id, "--contact-sheet", str(out), *options]
        done = run_cli(args, rendered_run.env)
        assert done.returncode == 2, (options, done.stdout, done.stderr)
        assert message in done.stderr, (options, done.stderr)
    assert not list(tmp_path.iterdir())
