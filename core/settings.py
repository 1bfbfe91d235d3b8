"""The one typed settings object, read from ``LOOPFREE_*`` environment variables once per process.

With nothing set, everything runs on one machine with no servers: a SQLite file, a local folder as
object store and kombu's filesystem transport as broker, all under ``LOOPFREE_HOME``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "senmaonk/loopfree-sd1.5"


class Settings(BaseSettings):
    """Configuration for producers, workers and status commands alike."""

    model_config = SettingsConfigDict(env_prefix="LOOPFREE_", frozen=True, extra="ignore")

    home: Path = Field(
        default=Path("~/.loopfree"),
        description="Folder for the embedded defaults (SQLite file, outputs, filesystem broker).",
    )
    database_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db."
    )
    broker_url: SecretStr | None = Field(
        default=None, description="Celery broker URL, e.g. redis://host:6379/0."
    )
    storage_url: str | None = Field(
        default=None, description="Where images go: s3://bucket/prefix or file:///path."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto); unset means AWS."
    )
    s3_region: str | None = None
    presign_expiry_s: int = Field(default=3600, gt=0, le=7 * 24 * 3600)

    model: str = Field(default=DEFAULT_MODEL, description="Hub id or local diffusers directory.")
    model_roots: tuple[Path, ...] = Field(
        default=(),
        description="If set, local model directories must lie under one of these folders.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    compile: bool = Field(default=False, description="torch.compile the UNet halves (GPU).")

    # A batch of 16 at 512 px and 4 steps decodes 64 UNet-decoder samples at once: about what one
    # 24 GB card holds in fp16 with headroom, and enough to keep an H100 busy.
    max_batch: int = Field(default=16, ge=1, le=256)
    # Waiting longer fills batches under a trickle of jobs but adds that much latency to each.
    max_wait_ms: int = Field(default=200, ge=0, le=60_000)
    decoder_chunk: int | None = Field(
        default=None, ge=1, description="Timesteps per decoder call; None runs all in parallel."
    )
    upload_workers: int = Field(default=8, ge=1, le=128)
    # Must exceed the longest batch (wait + sampling + upload), or the broker redelivers jobs that
    # a worker is still working on; the worker refuses to start otherwise.
    visibility_timeout_s: int = Field(default=3600, ge=10)
    max_attempts: int = Field(default=3, ge=1, le=20)
    heartbeat_s: float = Field(default=15.0, gt=0)
    stuck_after_s: float = Field(default=300.0, gt=0)
    # How long a worker keeps retrying an unreachable database (claims, and results of images
    # already rendered and stored) before its delivery gives up and the jobs are sent again. Longer
    # rides out longer outages without redoing GPU work; but the worker's heartbeats fail too, so
    # past stuck_after_s its jobs may be taken over, and its late results are then refused.
    db_retry_s: float = Field(default=300.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.home_dir / 'loopfree.db'}"

    @property
    def resolved_broker_url(self) -> str:
        if self.broker_url is not None:
            return self.broker_url.get_secret_value()
        return "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Message folder of the embedded filesystem broker."""
        return self.home_dir / "broker"

    @property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.home_dir / "outputs").as_uri()

    def ensure_home(self) -> None:
        """Create the folders the embedded defaults need."""
        self.home_dir.mkdir(parents=True, exist_ok=True)
        if self.broker_url is None:
            self.broker_folder.mkdir(parents=True, exist_ok=True)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()


def mask_url(url: str) -> str:
    """Hide the password in a URL so it can be printed: ``redis://:***@host:6379/0``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
