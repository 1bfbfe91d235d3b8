"""Contact sheets: a submission's images as a grid of captioned thumbnails in a JPEG.

``loopfree results ID --contact-sheet sheet.jpg`` writes them. Each tile is a thumbnail (aspect
kept, centred in a square box) with the start of the prompt, the seed and the size under it; a
failed job is a red tile with its error, a job without an image (queued, running, cancelled) a grey
tile with its status. The header names the submission and counts its jobs by status. A selection
larger than one sheet is written as ``sheet-001.jpg``, ``sheet-002.jpg``, ... so no file grows past
a few megapixels.

Pillow draws everything with its bundled font (``ImageFont.load_default``): no system font needed.
Images are fetched from the store in parallel threads (S3 answers each GET in tens of ms).
"""

from __future__ import annotations

import io
import math
import textwrap
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from core.errors import LoopfreeError, UserError
from storage.db import Engine, session_scope
from storage.gallery import JobFilter, count_jobs, find_jobs
from storage.models import Job, JobStatus
from storage.objects import ObjectStore
from storage.progress import stage_counts, stage_of
from storage.submissions import get_submission

DEFAULT_COLUMNS = 8
DEFAULT_THUMB_PX = 256
DEFAULT_PER_SHEET = 64
"""Tiles per sheet: 8 x 8 tiles of 256 px make a ~2,100 x 2,600 px JPEG of 1-2 MB."""

MAX_PER_SHEET = 1_000
FETCH_THREADS = 8
"""Parallel image downloads: enough to hide S3's per-request latency, few enough to be polite."""

JPEG_QUALITY = 85

BACKGROUND = (24, 24, 27)
TEXT = (235, 235, 235)
MUTED = (160, 160, 170)
FAILED_FILL = (110, 24, 28)
EMPTY_FILL = (55, 55, 62)


@dataclass(frozen=True)
class SheetLayout:
    """Where everything goes on a sheet; pure arithmetic, so tests can find the tiles."""

    columns: int
    thumb: int
    margin: int = 16
    gap: int = 12
    header_height: int = 64

    @property
    def font_px(self) -> int:
        return max(11, min(16, self.thumb // 12))

    @property
    def caption_height(self) -> int:
        return 2 * (self.font_px + 4) + 6

    @property
    def tile_width(self) -> int:
        return self.thumb

    @property
    def tile_height(self) -> int:
        return self.thumb + self.caption_height

    def size(self, tiles: int) -> tuple[int, int]:
        """Width and height of a sheet holding ``tiles`` tiles."""
        rows = max(1, math.ceil(tiles / self.columns))
        width = 2 * self.margin + self.columns * self.thumb + (self.columns - 1) * self.gap
        height = self.header_height + self.margin + rows * self.tile_height + (rows - 1) * self.gap
        return width, height + self.margin

    def thumb_box(self, index: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of tile ``index``'s image square."""
        row, column = divmod(index, self.columns)
        left = self.margin + column * (self.thumb + self.gap)
        top = self.header_height + self.margin + row * (self.tile_height + self.gap)
        return left, top, left + self.thumb, top + self.thumb


def fit_thumbnail(data: bytes, size: int, *, upscale: bool = False) -> Image.Image:
    """The image in ``data`` scaled to fit a ``size`` x ``size`` box (aspect kept), as RGB.

    Only down, unless ``upscale``: a contact sheet blows small images up to the tile so they
    can be seen; a browser scales the web view's thumbnails itself.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))  # JPEG sources decode at a fraction of their size
        picture = image.convert("RGB")
    if upscale and max(picture.size) < size:
        return ImageOps.contain(picture, (size, size), Image.Resampling.LANCZOS)
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    return picture


@cache
def sheet_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (a bitmap font when Pillow lacks FreeType)."""
    return ImageFont.load_default(size=size)


def render_contact_sheets(
    engine: Engine,
    store: ObjectStore,
    submission_id: str,
    out: Path,
    *,
    columns: int = DEFAULT_COLUMNS,
    thumb: int = DEFAULT_THUMB_PX,
    stages: Sequence[str] = (),
    per_sheet: int = DEFAULT_PER_SHEET,
    page: int | None = None,
) -> list[Path]:
    """Write one JPEG per ``per_sheet`` jobs (all sheets, or only sheet ``page``); return paths.
    ``stages``: only jobs in these (``storage.progress.STAGES``), all when empty.

    A selection that fits one sheet is written to ``out`` itself; a larger one to ``out`` with
    ``-001``, ``-002``, ... before the suffix, so ``--page 2`` writes the file a full run names
    ``sheet-002.jpg``.
    """
    _check_options(columns, thumb, per_sheet, page)
    try:
        submission_id = str(uuid.UUID(submission_id))
    except ValueError:
        raise UserError(f"{submission_id!r} is not a submission id (a UUID)") from None
    wanted = JobFilter(stages=tuple(stages))
    with session_scope(engine) as session:
        submission = get_submission(session, submission_id)
        if submission is None:
            raise UserError(f"no submission has id {submission_id}; `loopfree jobs` lists jobs")
        counts = stage_counts(session, submission_id=submission_id)
        selected = count_jobs(session, submission_id, wanted) or 0
    if selected == 0:
        shown = ", ".join(stages) or "any status"
        raise UserError(f"submission {submission_id} has no jobs in {shown}; nothing to draw")
    pages = math.ceil(selected / per_sheet)
    if page is not None and page > pages:
        raise UserError(f"--page {page} is past the last sheet ({pages} of {per_sheet} jobs each)")
    layout = SheetLayout(columns=columns, thumb=thumb)
    header = _header_lines(submission.source, submission_id, counts, stages)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    after = -1  # keyset: the position of the last job of the previous sheet
    numbers: Sequence[int] = range(1, (page or pages) + 1)
    if page is not None and not stages:
        after, numbers = (page - 1) * per_sheet - 1, [page]  # positions run 0..n-1
    with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="sheet-fetch") as pool:
        for number in numbers:
            with session_scope(engine) as session:
                jobs = find_jobs(session, submission_id, wanted, limit=per_sheet, after=after)
            if jobs:
                after = jobs[-1].position
            if page is not None and number != page:
                continue  # a filtered selection is walked sheet by sheet up to the one asked
            tiles = list(pool.map(lambda job: _tile_image(store, job, thumb), jobs))
            sheet = _draw_sheet(layout, jobs, tiles, [*header, f"sheet {number} of {pages}"])
            path = out if pages == 1 else out.with_name(f"{out.stem}-{number:03d}{out.suffix}")
            sheet.save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)
            written.append(path)
    return written


def _check_options(columns: int, thumb: int, per_sheet: int, page: int | None) -> None:
    if not 1 <= columns <= 64:
        raise UserError(f"--columns {columns}: use 1 to 64 tiles per row")
    if not 32 <= thumb <= 1024:
        raise UserError(f"--thumb {thumb}: use 32 to 1024 pixels")
    if not 1 <= per_sheet <= MAX_PER_SHEET:
        raise UserError(f"--limit {per_sheet}: use 1 to {MAX_PER_SHEET} jobs per sheet")
    if page is not None and page < 1:
        raise UserError(f"--page {page}: sheets are numbered from 1")


def _header_lines(
    source: str, submission_id: str, counts: dict[str, int], stages: Sequence[str]
) -> list[str]:
    total = sum(counts.values())
    parts = [f"{stage} {count}" for stage, count in counts.items() if count]
    lines = [f"{source}  ·  submission {submission_id}", f"{total} jobs: " + ", ".join(parts)]
    if stages:
        lines[1] += "  ·  showing " + ", ".join(stages)
    return lines


def _tile_image(store: ObjectStore, job: Job, thumb: int) -> Image.Image | str:
    """The job's thumbnail, or why there is none (drawn as the tile's label)."""
    if job.status is not JobStatus.SUCCEEDED or not job.image_uri:
        return job.error or stage_of(job)
    try:
        return fit_thumbnail(store.get(job.image_uri), thumb, upscale=True)
    except (LoopfreeError, OSError) as error:  # a missing or unreadable object: say so, go on
        return f"image unavailable: {error}"


def _draw_sheet(
    layout: SheetLayout,
    jobs: Sequence[Job],
    tiles: Sequence[Image.Image | str],
    header: Sequence[str],
) -> Image.Image:
    sheet = Image.new("RGB", layout.size(len(jobs)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    big, small = sheet_font(layout.font_px + 4), sheet_font(layout.font_px)
    draw.text((layout.margin, layout.margin), header[0], font=big, fill=TEXT)
    second = (layout.margin, layout.margin + layout.font_px + 10)
    draw.text(second, "  ·  ".join(header[1:]), font=small, fill=MUTED)
    for index, (job, tile) in enumerate(zip(jobs, tiles, strict=True)):
        left, top, right, bottom = layout.thumb_box(index)
        if isinstance(tile, Image.Image):
            sheet.paste(
                tile,
                (left + (layout.thumb - tile.width) // 2, top + (layout.thumb - tile.height) // 2),
            )
        else:
            _draw_label_tile(draw, layout, (left, top, right, bottom), job, tile)
        caption = f"#{job.position}  {job.prompt}"
        draw.text(
            (left, bottom + 4), _shorten(draw, caption, small, layout.thumb), font=small, fill=TEXT
        )
        facts = _shorten(draw, f"{job.width}x{job.height}  ·  seed {job.seed}", small, layout.thumb)
        draw.text((left, bottom + 8 + layout.font_px), facts, font=small, fill=MUTED)
    return sheet


def _draw_label_tile(
    draw: ImageDraw.ImageDraw,
    layout: SheetLayout,
    box: tuple[int, int, int, int],
    job: Job,
    reason: str,
) -> None:
    failed = job.status is JobStatus.FAILED
    left, top, right, bottom = box
    draw.rectangle((left, top, right - 1, bottom - 1), fill=FAILED_FILL if failed else EMPTY_FILL)
    font = sheet_font(layout.font_px)
    draw.text(
        (left + 8, top + 8),
        job.status.value.upper(),
        font=sheet_font(layout.font_px + 4),
        fill=TEXT,
    )
    if reason == job.status.value:
        return
    chars = max(8, int((right - left - 16) / max(1.0, draw.textlength("n", font=font))))
    lines = textwrap.wrap(reason, width=chars)
    room = (layout.thumb - 40) // (layout.font_px + 3)
    if len(lines) > room:
        lines = [*lines[: max(0, room - 1)], "…"]
    for number, line in enumerate(lines):
        y = top + 36 + number * (layout.font_px + 3)
        draw.text((left + 8, y), line, font=font, fill=TEXT)


def _shorten(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text`` on one line, cut with an ellipsis to fit ``width`` pixels."""
    text = " ".join(text.split())
    if draw.textlength(text, font=font) <= width:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits with the ellipsis
        middle = (low + high + 1) // 2
        if draw.textlength(text[:middle] + "…", font=font) <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + "…"
