"""``results --download``: a sync of a submission's images into a folder, with a manifest.

Running it again fetches only what is missing or differs: a file whose sha256 equals the one the
worker recorded is left alone. Jobs without an image (queued, running, failed, cancelled) are
counted by reason, never skipped in silence. ``manifest.jsonl`` beside the images says, per job,
which file holds it and how it was made (prompt, seed, size, steps, model), so a folder of
``00000.png`` files still tells what each one is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.objects import ObjectStore

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_FIELDS = (
    "id",
    "submission_id",
    "position",
    "line_number",
    "status",
    "prompt",
    "seed",
    "width",
    "height",
    "steps",
    "model",
    "metadata",
    "image_sha256",
    "error",
)


@dataclass
class SyncReport:
    downloaded: int = 0
    unchanged: int = 0
    not_downloaded: Counter[str] = field(default_factory=Counter)  # reason -> jobs
    manifest: Path = Path(MANIFEST_NAME)


def file_name(record: dict[str, Any]) -> str:
    """``00042.png``: the job's position, with the stored image's own suffix (png/webp/jpg)."""
    suffix = PurePosixPath(record["image_uri"]).suffix or ".png"
    return f"{record['position']:05d}{suffix}"


def sha256_of(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sync_results(records: Iterable[dict[str, Any]], store: ObjectStore, folder: Path) -> SyncReport:
    """Sync the images of ``records`` (job records) from the object store into ``folder``."""
    return sync_records(records, lambda record: store.get(record["image_uri"]), folder)


def sync_records(
    records: Iterable[dict[str, Any]], fetch: Callable[[dict[str, Any]], bytes], folder: Path
) -> SyncReport:
    """Sync ``records`` into ``folder``, fetching a missing or changed image with ``fetch``
    (the store for the CLI, the HTTP API for ``loopfree_client``): one sync and one manifest for
    both, written line by line so memory stays flat however many records. Imports nothing of
    the project at run time, so the Python client can use it."""
    folder.mkdir(parents=True, exist_ok=True)
    report = SyncReport(manifest=folder / MANIFEST_NAME)
    partial = report.manifest.with_name(report.manifest.name + ".partial")
    with partial.open("w", encoding="utf-8") as manifest:
        for record in records:
            entry = {name: record.get(name) for name in MANIFEST_FIELDS}
            entry["file"] = _sync_one(record, fetch, folder, report)
            manifest.write(json.dumps(entry, default=str) + "\n")
    os.replace(partial, report.manifest)
    return report


def _sync_one(
    record: dict[str, Any],
    fetch: Callable[[dict[str, Any]], bytes],
    folder: Path,
    report: SyncReport,
) -> str | None:
    """The file name of the record's image once it is in ``folder``; None when it has none."""
    if not record.get("image_uri"):
        report.not_downloaded[_reason(record)] += 1
        return None
    name = file_name(record)
    path = folder / name
    if record.get("image_sha256") and sha256_of(path) == record["image_sha256"]:
        report.unchanged += 1
    else:
        _write_atomically(path, fetch(record))
        report.downloaded += 1
    return name


def _reason(record: dict[str, Any]) -> str:
    status = record.get("status")
    if status == "failed":
        return "failed (see `error` in the manifest)"
    if status == "cancelled":
        return "cancelled"
    return f"{status}, not rendered yet (run again later)"


def _write_atomically(path: Path, data: bytes) -> None:
    # A run killed halfway leaves no truncated image that a later run could take for a real one
    # (its sha256 would differ and it would be fetched again, but a reader might not check).
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
