"""One shard in each format, written to a local path: the only place the formats differ.

- ``webdataset``: a tar of ``KEY.png|webp|jpg``, ``KEY.json`` (the record) and ``KEY.txt`` (the
  prompt) per sample, the layout img2dataset writes and ``webdataset.WebDataset`` reads.
- ``parquet``: one file, a row per sample: ``image`` as ``{bytes, path}`` (the Hugging Face
  ``Image`` feature, declared in the schema's metadata so ``datasets`` decodes it) beside the
  record's columns, caller metadata as JSON text (its keys differ from job to job). Row groups
  of at most ``ROW_GROUP_ROWS`` rows or ``ROW_GROUP_BYTES``: a reader streams one at a time.
- ``imagefolder``: a folder of images with a ``metadata.jsonl`` whose ``file_name`` names each,
  the layout ``datasets.load_dataset("imagefolder", data_dir=...)`` reads (one metadata file per
  folder, each for the images beside it).

Writers are deterministic: the same samples make the same bytes (tar members carry the image's
finish time, owner 0, mode 0444), so a resumed export equals an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any

from core.errors import UserError
from export.samples import RECORD_FIELDS, Sample

ROW_GROUP_ROWS = 100
"""Rows per Parquet row group: what ``datasets`` writes for image data, a few tens of MB of
images, so a streaming reader holds one group and not the file."""
ROW_GROUP_BYTES = 64 * 1024 * 1024
METADATA_FILE = "metadata.jsonl"
EXPORT_EXTRA = "pip install 'loopfree-queue[export]'"


class ShardWriter(ABC):
    """Writes the samples of one shard, in the order given, at ``path``."""

    #: What the shard's name ends with: ``.tar``, ``.parquet``, or nothing for a folder.
    suffix: str = ""

    def __init__(self, path: Path) -> None:
        self.path = path

    @abstractmethod
    def add(self, sample: Sample) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Finish the shard; nothing may be added after."""


class WebDatasetShard(ShardWriter):
    suffix = ".tar"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._file: IO[bytes] = path.open("wb")  # noqa: SIM115 - open until close()
        # USTAR: no PAX headers (which would carry the writer's own times), names < 100 chars.
        self._tar = tarfile.open(  # noqa: SIM115
            fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT
        )

    def add(self, sample: Sample) -> None:
        record = json.dumps(sample.record(), ensure_ascii=False, sort_keys=False).encode()
        for name, data in (
            (sample.file_name, sample.data),
            (f"{sample.key}.json", record),
            (f"{sample.key}.txt", sample.job.prompt.encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = sample.mtime
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        self._file.close()


class ParquetShard(ShardWriter):
    suffix = ".parquet"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        pa, pq = _pyarrow()
        self._pa = pa
        self._schema = parquet_schema(pa)
        # Images are compressed already: storing them as they are costs nothing and keeps reads
        # cheap; the small columns get zstd.
        compression = {name: "zstd" for name in self._schema.names}
        compression["image"] = "none"
        self._writer = pq.ParquetWriter(
            str(path), self._schema, compression=compression, use_dictionary=["model"]
        )
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, sample: Sample) -> None:
        row = sample.record()
        row["metadata"] = json.dumps(row["metadata"], ensure_ascii=False)
        row["image"] = {"bytes": sample.data, "path": sample.file_name}
        self._rows.append(row)
        self._bytes += len(sample.data)
        if len(self._rows) >= ROW_GROUP_ROWS or self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def _flush(self) -> None:
        if self._rows:
            table = self._pa.Table.from_pylist(self._rows, schema=self._schema)
            self._writer.write_table(table, row_group_size=len(self._rows))
            self._rows, self._bytes = [], 0


class ImageFolderShard(ShardWriter):
    suffix = ""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        path.mkdir(parents=True)
        self.folder = str(path)
        self._metadata = (path / METADATA_FILE).open("w", encoding="utf-8")

    def add(self, sample: Sample) -> None:
        # os.path, not a Path per image: Python 3.11's pathlib interns every path part it parses.
        with open(os.path.join(self.folder, sample.file_name), "wb") as file:
            file.write(sample.data)
        row = {"file_name": sample.file_name, **sample.record()}
        row["metadata"] = json.dumps(row["metadata"], ensure_ascii=False)
        self._metadata.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._metadata.close()


WRITERS: dict[str, type[ShardWriter]] = {
    "webdataset": WebDatasetShard,
    "parquet": ParquetShard,
    "imagefolder": ImageFolderShard,
}


def check_format_available(format: str) -> None:
    """Refuse at once, before any work, a format whose library is not installed."""
    if format == "parquet":
        _pyarrow()


def parquet_schema(pa: Any) -> Any:
    """The Parquet schema: ``image`` first, then the record's columns, and the Hugging Face
    features in the metadata (``image`` is an ``Image``), which ``datasets`` reads."""
    types = {
        "key": pa.string(),
        "prompt": pa.string(),
        "seed": pa.int64(),
        "width": pa.int32(),
        "height": pa.int32(),
        "steps": pa.int32(),
        "model": pa.string(),
        "image_format": pa.string(),
        "job_id": pa.string(),
        "submission_id": pa.string(),
        "position": pa.int64(),
        "line_number": pa.int64(),
        "metadata": pa.string(),
        "sha256": pa.string(),
    }
    assert tuple(types) == RECORD_FIELDS, "parquet columns out of step with RECORD_FIELDS"
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    for name, type_ in types.items():
        features[name] = {"dtype": str(type_), "_type": "Value"}
    huggingface = json.dumps({"info": {"features": features}})
    return pa.schema(
        [("image", image), *types.items()], metadata={"huggingface": huggingface}
    )


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            f"the parquet format needs pyarrow, which is not installed: {EXPORT_EXTRA}"
        ) from None
    return pa, pq
