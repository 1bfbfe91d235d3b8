"""`results --download` is a sync: unchanged files are skipped by sha256, jobs without an image
are counted by reason, and a manifest says what each file is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from status.download import sync_results
from storage.local import LocalStore


def record(position: int, status: str, uri: str | None = None, sha: str | None = None) -> dict:
    return {
        "id": f"job-{position}",
        "submission_id": "s",
        "position": position,
        "line_number": position + 1,
        "status": status,
        "prompt": f"prompt {position}",
        "seed": 100 + position,
        "width": 64,
        "height": 64,
        "steps": 4,
        "model": "org/m",
        "metadata": {"row": position},
        "image_uri": uri,
        "image_sha256": sha,
        "error": "boom" if status == "failed" else None,
    }


def test_a_second_sync_fetches_nothing_and_every_missing_image_has_its_reason(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    images = {}
    for position, data in ((0, b"png zero"), (1, b"webp one")):
        suffix = ".png" if position == 0 else ".webp"
        digest = hashlib.sha256(data).hexdigest()
        stored = store.put(
            f"s/job-{position}{suffix}", data, content_type="image/png", sha256=digest, metadata={}
        )
        images[position] = (stored.uri, digest)
    records = [
        record(0, "succeeded", *images[0]),
        record(1, "succeeded", *images[1]),
        record(2, "cancelled"),
        record(3, "failed"),
        record(4, "queued"),
    ]
    out = tmp_path / "out"
    first = sync_results(records, store, out)
    assert (first.downloaded, first.unchanged) == (2, 0)
    assert (out / "00000.png").read_bytes() == b"png zero"
    assert (out / "00001.webp").read_bytes() == b"webp one"
    assert first.not_downloaded == {
        "cancelled": 1,
        "failed (see `error` in the manifest)": 1,
        "queued, not rendered yet (run again later)": 1,
    }
    second = sync_results(records, store, out)
    assert (second.downloaded, second.unchanged) == (0, 2)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(m["file"], m["prompt"], m["seed"], m["model"]) for m in manifest[:2]] == [
        ("00000.png", "prompt 0", 100, "org/m"),
        ("00001.webp", "prompt 1", 101, "org/m"),
    ]
    assert manifest[3]["file"] is None and manifest[3]["error"] == "boom"
    assert not list(out.glob("*.partial"))
