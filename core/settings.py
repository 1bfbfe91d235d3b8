"""The one typed settings object, read from ``LOOPFREE_*`` environment variables once per process.

With nothing set, everything runs on one machine with no servers: a SQLite file, a local folder as
object store and kombu's filesystem transport as broker, all under ``LOOPFREE_HOME``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import InvalidSettings
from core.webhooks import WebhookPolicy

DEFAULT_MODEL = "senmaonk/loopfree-sd1.5"
LIVE_BEATS = 3
"""Heartbeats a live worker may miss (``Settings.live_for_s``)."""


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
    compile: bool = Field(
        default=False,
        description="torch.compile the UNet halves' blocks and the VAE decoder (GPU).",
    )
    # Channels-last convolutions are what tensor cores want; on a CPU they are no faster, and the
    # default (None) turns them on for CUDA only.
    channels_last: bool | None = Field(
        default=None, description="Channels-last memory format; unset: on for CUDA only."
    )
    # The tiny VAE (TAESD) decodes many times faster but is an approximation: its images are not the
    # model's reference images, and every image and log line it makes says so.
    vae: Literal["full", "tiny"] = Field(
        default="full", description="VAE decoder: the model's own (full) or TAESD (tiny)."
    )
    tiny_vae: str = Field(
        default="madebyollin/taesd",
        description="Hub id or local folder of the AutoencoderTiny that LOOPFREE_VAE=tiny loads.",
    )

    # A batch of 16 at 512 px and 4 steps decodes 64 UNet-decoder samples at once: about what one
    # 24 GB card holds in fp16 with headroom, and enough to keep an H100 busy.
    max_batch: int = Field(default=16, ge=1, le=256)
    # Waiting longer fills batches under a trickle of jobs but adds that much latency to each.
    max_wait_ms: int = Field(default=200, ge=0, le=60_000)
    decoder_chunk: int | None = Field(
        default=None, ge=1, description="Timesteps per decoder call; None runs all in parallel."
    )
    # Memory, not job count, is what limits a sampler call: the decoder runs batch x timesteps
    # samples of (h/8) x (w/8) latents at once. Unset: the measured row for the model and GPU in
    # worker.budget, else 16 x 4 x 64 x 64 (max_batch 16 at 512 px, 4 steps). Raise it on a card
    # with memory to spare, lower it when a batch runs out of memory.
    batch_budget: int | None = Field(
        default=None, ge=1, description="Latent pixels x decoder samples per sampler call."
    )
    # The VAE decodes full-size images, its activations the largest of a call: this many image
    # pixels per decode call (default 16 x 512 x 512: a default batch at 512 px in one call).
    vae_budget: int | None = Field(
        default=None, ge=1, description="Image pixels per VAE decode call."
    )
    upload_workers: int = Field(default=8, ge=1, le=128)
    # JPEG jobs encoded by nvJPEG (torchvision) on a CUDA worker: the host then does almost nothing
    # per image. Off by default: torchvision is optional, and without it (or CUDA) the worker logs
    # once and encodes on the CPU, which costs ~1-2 ms per 512 px JPEG anyway.
    gpu_jpeg: bool = Field(default=False, description="Encode JPEG jobs on the GPU (CUDA).")
    # Must exceed the longest batch (wait + sampling + upload), or the broker redelivers jobs that
    # a worker is still working on; the worker refuses to start otherwise.
    visibility_timeout_s: int = Field(default=3600, ge=10)
    max_attempts: int = Field(default=3, ge=1, le=20)
    # A worker refreshes its held jobs' heartbeats this often; stuck_after_s is three beats, so
    # one slow or missed beat never hands a live worker's jobs to another.
    heartbeat_s: float = Field(default=10.0, gt=0)
    # A running job whose heartbeat is older than this belongs to a dead or stalled worker and is
    # taken back. Together with reconcile_interval_s it bounds recovery after a SIGKILL: the dead
    # worker's jobs sample again within stuck_after_s + reconcile_interval_s + a batch (~45 s).
    # It also ages a delivered-but-unacknowledged message of a queued job into "lost".
    stuck_after_s: float = Field(default=30.0, gt=0)
    # Live workers reconcile on their own this often (one at a time, under a broker lock): take
    # back stale running jobs, publish queued jobs whose message is gone. 0 turns it off (the
    # `loopfree requeue --stuck` CronJob is then the only reconciler).
    reconcile_interval_s: float = Field(default=10.0, ge=0)
    # How long a worker keeps retrying an unreachable database (claims, and results of images
    # already rendered and stored) before its delivery gives up and the jobs are sent again. Longer
    # rides out longer outages without redoing GPU work; but the worker's heartbeats fail too, so
    # past stuck_after_s its jobs may be taken over, and its late results are then refused.
    db_retry_s: float = Field(default=300.0, gt=0)
    # While the object store or database is unreachable a worker pauses (worker.outage) and probes
    # it with jittered exponential backoff up to this many seconds apart: a worker resumes within
    # this long of the outage's end, and a fleet of 100 paused workers sends ~3 probes a second.
    outage_probe_max_s: float = Field(default=30.0, gt=0)
    # The broker holds a window of each model's queued jobs, not the backlog (fleet.dispatch): at
    # least window_min messages (a worker that starts finds work at once), at most window_max
    # (Redis memory: ~700 bytes a message, so 10,000 is ~7 MB per model).
    window_min: int = Field(default=64, ge=1, le=1_000_000)
    window_max: int = Field(default=10_000, ge=1, le=1_000_000)
    # Every live worker tops its model's window up after each claim and at least this often.
    dispatch_interval_s: float = Field(default=1.0, gt=0, le=3600)
    # A submission of at most this many jobs goes straight into the broker with its rows; larger
    # ones wait in the database for the dispatcher, which shares the fleet fairly.
    direct_publish_max: int = Field(default=1_000, ge=0, le=100_000)
    # Who submits (`submit --owner`): the fleet is shared fairly between owners. Unset: the
    # operating system's user name.
    owner: str | None = Field(default=None, description="Owner of submissions (default: OS user).")
    # Owners' shares of a busy fleet relative to each other: "alice=2,bots=0.5" (others weigh 1).
    owner_weights: str = Field(default="", description="Fair-share weights: NAME=WEIGHT,...")
    # Every worker serves Prometheus metrics unless told not to (0). 9400 is the port the images,
    # the compose file, the Kubernetes manifests, their healthchecks and the Prometheus config
    # already use; a worker finding it taken (a second worker on the host, or NVIDIA's
    # dcgm-exporter, whose default it is too) takes the next free one, up to 15 above, and logs it.
    metrics_port: int | None = Field(
        default=9400, ge=0, le=65535, description="First port tried for /metrics; 0: none."
    )
    # SQLite (the embedded default) is always created/migrated by the command that opens it; a
    # shared PostgreSQL database changes only by `loopfree db upgrade`, unless this is set.
    auto_migrate: bool = Field(
        default=False, description="Let every command migrate a PostgreSQL database to head."
    )
    # `loopfree ui` serves prompts and images: on loopback it may run open, but bound to any other
    # address it refuses to start without a token, and with one set every request must carry it.
    ui_token: SecretStr | None = Field(
        default=None, description="Bearer token of the web view (required off loopback)."
    )
    # `loopfree api` takes bodies up to this size: a JSON array of jobs or an uploaded prompt
    # file, streamed to a temporary file as it arrives (a 100,000-line JSONL file is ~10 MB).
    api_max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest request body the API accepts, in bytes.",
    )
    # Each token may send this many requests a second on average, in bursts of up to
    # api_rate_burst (a token bucket per API process: N replicas allow N times as much).
    api_rate_per_s: float = Field(default=20.0, gt=0, description="Requests/s per token.")
    api_rate_burst: int = Field(default=100, ge=1, description="Burst of requests per token.")
    # Webhooks are POSTed from inside the fleet to URLs that submitters choose: hosts that resolve
    # to loopback, private, link-local or metadata addresses are refused (server-side request
    # forgery) unless listed here (core.webhooks). Comma-separated names, addresses or CIDRs.
    webhook_allow: str = Field(
        default="", description="Non-public webhook hosts allowed anyway: names, IPs, CIDRs."
    )
    # Signs every webhook POST (X-Loopfree-Signature, HMAC-SHA256) so receivers can tell our
    # POSTs from forgeries. Unset: POSTs go out unsigned and each worker logs a warning once.
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key of the webhook signature."
    )
    # One attempt (connect, send, the response's status and headers) ends after this many seconds
    # whatever the receiver does, so a receiver that trickles bytes holds a sender thread no longer.
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # A failed delivery is retried with backoff (10 s doubling, capped at 10 min) until this long
    # after the submission finished; the first attempt that fails after that gives up.
    webhook_retry_s: float = Field(default=3600.0, ge=0)

    @property
    def live_for_s(self) -> float:
        """How long a worker counts as live after its last heartbeat: three beats, so one slow
        or missed beat never counts it dead. Its registry row, and the messages it vouches for
        (``fleet.reconcile``), go stale after this."""
        return LIVE_BEATS * self.heartbeat_s

    @property
    def resolved_owner(self) -> str:
        """``owner``, or the operating system's user name; checked (``UserError`` if invalid)."""
        from core.jobspec import check_owner

        if self.owner:
            return check_owner(self.owner)
        import getpass
        import re

        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no user name (a container with a bare uid)
            user = "unknown"
        return re.sub(r"[^A-Za-z0-9._@+-]", "-", user).lstrip("._@+-")[:64] or "unknown"

    @property
    def owner_weight_map(self) -> dict[str, float]:
        """``owner_weights`` parsed; a malformed entry is a ``UserError`` naming it."""
        from core.errors import UserError

        weights: dict[str, float] = {}
        for entry in filter(None, (part.strip() for part in self.owner_weights.split(","))):
            owner, _, value = entry.partition("=")
            try:
                weight = float(value)
            except ValueError:
                weight = -1.0
            if not owner.strip() or not weight > 0:
                raise UserError(
                    f"LOOPFREE_OWNER_WEIGHTS: {entry!r} is not NAME=WEIGHT with a positive "
                    "weight; write e.g. alice=2,bots=0.5"
                )
            weights[owner.strip()] = weight
        return weights

    @property
    def webhook_policy(self) -> WebhookPolicy:
        """``webhook_allow`` parsed; a malformed CIDR is a ``UserError`` naming it."""
        return WebhookPolicy.parse(self.webhook_allow)

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
    """The process's settings, read from the environment on first use. A value the settings
    refuse is an ``InvalidSettings`` naming each variable and what it takes, not a traceback."""
    try:
        return Settings()
    except ValidationError as error:
        raise InvalidSettings(settings_problems(error)) from None


# Values of these settings are never echoed back: they may hold secrets.
_SECRET_HINTS = ("token", "password", "secret", "key")


def settings_problems(error: ValidationError) -> str:
    """One line per refused variable: its name, what was wrong, and its value where safe."""
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        name = f"LOOPFREE_{field.upper()}"
        value = item.get("input")
        shown = ""
        if isinstance(value, str) and not any(hint in field for hint in _SECRET_HINTS):
            shown = f" (got {mask_url(value)!r})" if "url" in field else f" (got {value!r})"
        problems.append(f"{name}: {item['msg']}{shown}")
    return "; ".join(problems) + ". Fix or unset the variable(s) and run the command again"


def mask_url(url: str) -> str:
    """Hide the password in a URL so it can be printed: ``redis://:***@host:6379/0``.

    Without a scheme (``user:secret@host/db``, a common slip) nothing parses as a password, so
    everything before the last ``@`` is hidden instead.
    """
    if "://" not in url:
        return "***@" + url.rpartition("@")[2] if "@" in url else url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
