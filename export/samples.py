"""What one exported sample is: a key, the image's bytes as stored, and the record beside them.

Every format carries the same record (``RECORD_FIELDS``): the webdataset ``KEY.json``, the
Parquet columns, the imagefolder ``metadata.jsonl`` lines. Keys are the sample's ordinal in the
export, zero-padded (``000000042``), as img2dataset numbers its samples: unique, sortable, and
without dots (webdataset splits a member's name at the first dot of its base name).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.models import Job, JobStatus

KEY_DIGITS = 9
RECORD_FIELDS: tuple[str, ...] = (
    "key",
    "prompt",
    "seed",
    "width",
    "height",
    "steps",
    "model",
    "image_format",
    "job_id",
    "submission_id",
    "position",
    "line_number",
    "metadata",
    "sha256",
)
"""The fields of every sample's record, in order."""

CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}


@dataclass(frozen=True)
class ExportJob:
    """The part of a job row an export needs, read inside a page's transaction."""

    id: str
    submission_id: str
    position: int
    line_number: int
    status: JobStatus
    prompt: str
    seed: int
    width: int
    height: int
    steps: int
    model: str
    image_format: str
    metadata: dict[str, Any]
    image_uri: str | None
    image_sha256: str | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> ExportJob:
        return cls(
            id=job.id,
            submission_id=job.submission_id,
            position=job.position,
            line_number=job.line_number,
            status=job.status,
            prompt=job.prompt,
            seed=job.seed,
            width=job.width,
            height=job.height,
            steps=job.steps,
            model=job.model,
            image_format=job.image_format,
            metadata=dict(job.caller_metadata or {}),
            image_uri=job.image_uri,
            image_sha256=job.image_sha256,
            finished_at=job.finished_at,
        )

    @property
    def extension(self) -> str:
        """The stored image's own suffix (``png``, ``webp``, ``jpg``): it is copied, not
        re-encoded, so the file keeps the format it was rendered in."""
        # Plain string work, not PurePosixPath: on Python 3.11 pathlib interns every part of
        # every path it parses, a table that would grow by one entry per image exported.
        name = (self.image_uri or "").rsplit("/", 1)[-1]
        return name.rsplit(".", 1)[1] if "." in name else "png"


@dataclass(frozen=True)
class Sample:
    """One job's image in the export, under its key."""

    key: str
    job: ExportJob
    data: bytes

    @property
    def file_name(self) -> str:
        return f"{self.key}.{self.job.extension}"

    @property
    def mtime(self) -> int:
        """When the image was made: the tar members' time, the same on every run."""
        return int(self.job.finished_at.timestamp()) if self.job.finished_at else 0

    def record(self) -> dict[str, Any]:
        """The sample's fields (``RECORD_FIELDS``), metadata as a JSON object."""
        job = self.job
        return {
            "key": self.key,
            "prompt": job.prompt,
            "seed": job.seed,
            "width": job.width,
            "height": job.height,
            "steps": job.steps,
            "model": job.model,
            "image_format": job.image_format,
            "job_id": job.id,
            "submission_id": job.submission_id,
            "position": job.position,
            "line_number": job.line_number,
            "metadata": job.metadata,
            "sha256": job.image_sha256,
        }


def sample_key(ordinal: int) -> str:
    return f"{ordinal:0{KEY_DIGITS}d}"
