"""Where an export goes: a local folder, or an ``s3://bucket/prefix`` (through ``ObjectStore``).

A shard is written whole to a staging path on this machine, then committed under its final
name, so a reader (or a resumed export) never sees half a shard under a shard's name:

- a folder: staging lives in ``DEST/.partial/`` (hidden, so dataset readers skip it) and a
  commit is a rename, atomic on POSIX;
- S3: staging lives in a temporary folder, and a commit uploads it (``put_file``: a multipart
  upload for a large tar or Parquet file; an imagefolder shard's images a few at a time, its
  ``metadata.jsonl`` last).

Small files (the progress file, ``_stats.json``) are written whole and atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from core.errors import UserError
from core.settings import Settings
from export.samples import CONTENT_TYPES
from storage.local import fsync_folder
from storage.objects import ObjectNotFound, ObjectStore, sha256_hex
from storage.stores import open_store

STAGING = ".partial"
UPLOAD_THREADS = 8
_TYPES = {".tar": "application/x-tar", ".parquet": "application/vnd.apache.parquet"}
_TYPES |= {f".{extension}": content_type for extension, content_type in CONTENT_TYPES.items()}
_TYPES |= {".json": "application/json", ".jsonl": "application/jsonl"}


class Destination(ABC):
    """A place for an export's shards and small files, named relative to its root."""

    url: str

    @abstractmethod
    def staging(self, name: str) -> Path:
        """A fresh local path (nothing there yet) to write shard ``name`` at."""

    @abstractmethod
    def commit(self, name: str) -> None:
        """Make the staged shard ``name`` final, replacing any earlier copy of it."""

    @abstractmethod
    def clear_staging(self) -> None:
        """Drop what an interrupted run left staged."""

    @abstractmethod
    def read(self, name: str) -> bytes | None:
        """A small file's bytes, None if there is none."""

    @abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """A small file, replaced whole."""

    @abstractmethod
    def is_empty(self) -> bool: ...


class FolderDestination(Destination):
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = str(self.root)

    def staging(self, name: str) -> Path:
        path = self.root / STAGING / name
        _remove(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, name: str) -> None:
        final = self.root / name
        _remove(final)  # a shard committed by a run killed before it recorded it
        os.replace(self.root / STAGING / name, final)
        fsync_folder(self.root)

    def clear_staging(self) -> None:
        _remove(self.root / STAGING)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / STAGING / f"{name}.partial"
        partial.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, self.root / name)
        fsync_folder(self.root)

    def is_empty(self) -> bool:
        if not self.root.exists():
            return True
        if not self.root.is_dir():
            raise UserError(f"{self.root} is a file; export into a folder")
        return not any(path.name != STAGING for path in self.root.iterdir())


class StoreDestination(Destination):
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.url = store.url
        self._local = Path(tempfile.mkdtemp(prefix="loopfree-export-"))

    def staging(self, name: str) -> Path:
        path = self._local / name
        _remove(path)
        return path

    def commit(self, name: str) -> None:
        staged = self._local / name
        if staged.is_dir():
            files = sorted(path for path in staged.iterdir() if path.name != "metadata.jsonl")
            with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="export-put") as pool:
                for _ in pool.map(lambda path: self._put(f"{name}/{path.name}", path), files):
                    pass
            if (staged / "metadata.jsonl").exists():  # last: it names the images above
                self._put(f"{name}/metadata.jsonl", staged / "metadata.jsonl")
        else:
            self._put(name, staged)
        _remove(staged)

    def clear_staging(self) -> None:
        _remove(self._local)
        self._local.mkdir(parents=True)

    def read(self, name: str) -> bytes | None:
        try:
            return self.store.get(name)
        except ObjectNotFound:
            return None

    def write(self, name: str, data: bytes) -> None:
        self.store.put(
            name, data, content_type=_content_type(name), sha256=sha256_hex(data), metadata={}
        )

    def is_empty(self) -> bool:
        return next(iter(self.store.list_keys("")), None) is None

    def close(self) -> None:
        _remove(self._local)

    def _put(self, key: str, path: Path) -> None:
        self.store.put_file(key, path, content_type=_content_type(path.name))


def open_destination(settings: Settings, dest: str) -> Destination:
    """``s3://bucket/prefix`` (on the configured S3 endpoint), ``file:///path`` or a path."""
    scheme = urlsplit(dest).scheme
    if scheme == "s3":
        store = open_store(dest, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
        return StoreDestination(store)
    if scheme == "file":
        return FolderDestination(Path(unquote(urlsplit(dest).path)))
    if scheme and len(scheme) > 1:  # one letter: a Windows drive, a path
        raise UserError(f"cannot export to {dest!r}: give a folder or an s3://bucket/prefix")
    return FolderDestination(Path(dest))


def _content_type(name: str) -> str:
    return _TYPES.get(Path(name).suffix, "application/octet-stream")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
