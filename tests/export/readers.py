"""An exported dataset read back by the readers training code uses, as plain samples to compare:
``webdataset.WebDataset`` for tar shards, ``pyarrow`` and ``datasets`` for Parquet, and
``datasets.load_dataset("imagefolder")`` for an imagefolder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = ("png", "webp", "jpg")


@dataclass(frozen=True)
class ReadSample:
    key: str
    extension: str
    image_sha256: str  # of the bytes the reader handed back
    record: dict[str, Any]  # metadata as an object
    caption: str | None  # KEY.txt (webdataset)


def read_webdataset(folder: Path) -> list[ReadSample]:
    import webdataset as wds

    shards = [str(path) for path in sorted(folder.glob("*.tar"))]
    samples = []
    for sample in wds.WebDataset(shards, shardshuffle=False):
        (extension,) = [ext for ext in IMAGE_EXTENSIONS if ext in sample]
        samples.append(
            ReadSample(
                key=sample["__key__"],
                extension=extension,
                image_sha256=hashlib.sha256(sample[extension]).hexdigest(),
                record=json.loads(sample["json"]),
                caption=sample["txt"].decode(),
            )
        )
    return samples


def read_parquet(folder: Path, *, max_row_group: int) -> list[ReadSample]:
    import pyarrow.parquet as pq

    samples = []
    for path in sorted(folder.glob("*.parquet")):
        file = pq.ParquetFile(path)
        for group in range(file.num_row_groups):
            rows = file.read_row_group(group).to_pylist()
            assert 0 < len(rows) <= max_row_group, (path.name, group, len(rows))
            for row in rows:
                image = row.pop("image")
                samples.append(
                    ReadSample(
                        key=row["key"],
                        extension=image["path"].rsplit(".", 1)[1],
                        image_sha256=hashlib.sha256(image["bytes"]).hexdigest(),
                        record={**row, "metadata": json.loads(row["metadata"])},
                        caption=None,
                    )
                )
    return samples


def read_imagefolder(folder: Path, cache: Path) -> list[ReadSample]:
    """Through ``datasets``: its imagefolder builder finds the images and joins each shard's
    ``metadata.jsonl``; the image column is read undecoded to hash the files it points at.
    The builder lists the shard folders in an order of its own (each one's rows in order), so
    the samples come back sorted by key, the export's order."""
    import datasets

    dataset = datasets.load_dataset(
        "imagefolder", data_dir=str(folder), split="train", cache_dir=str(cache)
    )
    decoded = dataset[0]["image"]  # the real thing: a PIL image
    assert decoded.size[0] > 0
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    samples = []
    for row in raw:
        image = row.pop("image")
        data = image["bytes"] or Path(image["path"]).read_bytes()
        samples.append(
            ReadSample(
                key=row["key"],
                extension=Path(image["path"]).suffix.lstrip("."),
                image_sha256=hashlib.sha256(data).hexdigest(),
                record={**row, "metadata": json.loads(row["metadata"])},
                caption=None,
            )
        )
    return sorted(samples, key=lambda sample: sample.key)


def parquet_through_datasets(folder: Path, cache: Path) -> tuple[int, Any]:
    """``datasets.load_dataset("parquet")``: rows, and the first image as it decodes it."""
    import datasets

    dataset = datasets.load_dataset(
        "parquet", data_files=str(folder / "*.parquet"), split="train", cache_dir=str(cache)
    )
    assert isinstance(dataset.features["image"], datasets.Image), dataset.features
    return len(dataset), dataset[0]["image"]


def read_back(format: str, folder: Path, cache: Path) -> list[ReadSample]:
    if format == "webdataset":
        return read_webdataset(folder)
    if format == "parquet":
        return read_parquet(folder, max_row_group=100)
    return read_imagefolder(folder, cache)
