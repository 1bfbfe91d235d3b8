"""A folder as object store: the embedded default, and for single-machine runs.

Writes are crash-safe: bytes go to a temporary file in the target folder, are fsynced, and are
renamed over the final name (atomic on POSIX), then the folder is fsynced so the rename survives
a power cut. A reader therefore sees the old image or the new one, never half of one. That is the
guarantee; the file is not read back and hashed again (a write that returned without an error
and was fsynced holds the bytes, and reading it back would only hit the page cache anyway). The
recorded SHA-256 is the caller's digest of the bytes it passed.

The local store keeps no object metadata (job id and seed live in the database row and in the PNG's
text chunks); ``metadata`` is accepted for interface compatibility and ignored.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from core.errors import StoreUnavailable
from storage.objects import (
    InvalidStorageUrl,
    ObjectNotFound,
    ObjectStore,
    StoreAccessDenied,
    StoredObject,
    check_key,
)

_TEMP_SUFFIX = ".partial"
# Readable like a file written with open() under the usual umask; the folder decides who may list.
_FILE_MODE = 0o644


class LocalStore(ObjectStore):
    """Objects as files under ``root``; URIs are ``file://`` URIs of those files."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = self.root.as_uri()

    @classmethod
    def from_url(cls, url: str) -> LocalStore:
        return cls(Path(unquote(urlsplit(url).path)))

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_of(self, uri_or_key: str) -> str:
        if "://" not in uri_or_key:
            return check_key(uri_or_key)
        # Compare paths, not strings: file URIs percent-encode spaces and other characters.
        path = Path(unquote(urlsplit(uri_or_key).path))
        if not uri_or_key.startswith("file:") or not path.is_relative_to(self.root):
            raise InvalidStorageUrl(
                f"{uri_or_key} is not in the configured store {self.url}; set LOOPFREE_STORAGE_URL "
                "to the store that holds it."
            )
        return check_key(path.relative_to(self.root).as_posix())

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        sha256: str,
        metadata: Mapping[str, str],
    ) -> StoredObject:
        """``content_type`` and ``metadata`` are not kept: the key's extension says the type."""
        path = self._path(key)
        with _os_errors(f"writing {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX
            )
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.chmod(temp_name, _FILE_MODE)
                os.replace(temp_name, path)
            except BaseException:
                Path(temp_name).unlink(missing_ok=True)
                raise
            fsync_folder(path.parent)
        return StoredObject(uri=path.as_uri(), size=len(data), sha256=sha256)

    def get(self, uri_or_key: str) -> bytes:
        path = self._path(self.key_of(uri_or_key))
        with _os_errors(f"reading {path}"):
            try:
                return path.read_bytes()
            except FileNotFoundError:
                raise ObjectNotFound(f"No image at {path.as_uri()}.") from None

    def exists(self, uri_or_key: str) -> bool:
        return self._path(self.key_of(uri_or_key)).is_file()

    def delete(self, uri_or_key: str) -> None:
        path = self._path(self.key_of(uri_or_key))
        with _os_errors(f"deleting {path}"):
            path.unlink(missing_ok=True)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*")):
            if not path.is_file() or path.name.endswith(_TEMP_SUFFIX):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                yield key

    def presigned_url(self, uri_or_key: str, expires_s: int) -> str:
        """A folder has no signed URLs: the ``file://`` URI, which does not expire."""
        return self._path(self.key_of(uri_or_key)).as_uri()

    def ensure_bucket(self) -> None:
        with _os_errors(f"creating {self.root}"):
            self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` survive a power cut (fsync of the folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _os_errors(action: str) -> Iterator[None]:
    """Permission problems need a fix; a full or failing disk may clear up, so it is retryable."""
    try:
        yield
    except PermissionError as exc:
        raise StoreAccessDenied(
            f"Permission denied {action}: give the worker write access to the folder or point "
            "LOOPFREE_STORAGE_URL elsewhere."
        ) from exc
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        hint = "the disk is full; free space" if exc.errno == errno.ENOSPC else "check the disk"
        raise StoreUnavailable(f"Failed {action}: {exc.strerror}; {hint} and retry.") from exc
