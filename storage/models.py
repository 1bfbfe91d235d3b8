"""Typed SQLAlchemy models: one row per submission (bulk submit) and one row per job (image).

The database is the source of truth for a job's state; broker messages only carry job ids. Every
status change goes through the guarded updates in ``storage.jobs``.
"""

from __future__ import annotations

import enum
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.jobspec import (
    DEFAULT_PRIORITY,
    MAX_MODEL_CHARS,
    MAX_OWNER_CHARS,
    MAX_PRIORITY,
    MAX_SEED,
    MIN_PRIORITY,
)

# Named constraints and indexes: Alembic can only alter or drop what has a stable name, and SQLite
# batch migrations rebuild tables from these names.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class JobStatus(str, enum.Enum):
    """Where a job is in its life. ``succeeded``, ``failed`` and ``cancelled`` are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no time zones and hands back naive datetimes; storing UTC and re-attaching the zone
    on the way out makes comparisons and subtraction behave the same as on PostgreSQL.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC time")
        value = value.astimezone(timezone.utc)
        # SQLite stores text; a fixed, zone-less format keeps string comparisons chronological.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (what every timestamp column holds)."""
    return datetime.now(timezone.utc)


def aware_utc(value: datetime | str | None) -> datetime | None:
    """An aware UTC datetime from an aggregate (``min``, ``max``), whichever way the driver typed
    it: aggregates bypass the column type's result processing, and SQLite hands back naive text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime}


class Submission(Base):
    """One bulk submit: a prompt file turned into ``job_count`` jobs."""

    __tablename__ = "submissions"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    created_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(1024))
    defaults: Mapped[dict[str, Any]]
    job_count: Mapped[int] = mapped_column(Integer)
    # A client-chosen key: submitting again with the same key returns the first submission.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    finished_at: Mapped[datetime | None]
    webhook_sent_at: Mapped[datetime | None]
    # Who submitted it: the name the dispatcher shares the fleet between (``fleet.dispatch``).
    owner: Mapped[str] = mapped_column(String(MAX_OWNER_CHARS), server_default=text("'unknown'"))
    # Set by ``loopfree cancel``: the dispatcher sends none of its backlog any more, workers claim
    # none of its jobs, and its queued rows move to ``cancelled`` in chunks.
    cancelled_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("job_count >= 0", name="job_count_non_negative"),
        # One owner's submissions, newest first, a keyset page at a time (the API's listing for
        # a token that sees only its owner's work).
        Index("ix_submissions_owner_created_at_id", "owner", "created_at", "id"),
    )


_STATUS_TYPE = Enum(
    JobStatus,
    name="job_status",
    native_enum=False,  # a plain VARCHAR: adding a status later needs no PostgreSQL ALTER TYPE
    create_constraint=False,  # the named check constraint below does the job portably
    length=16,
    values_callable=lambda statuses: [s.value for s in statuses],
)


_STATUS_LIST = ", ".join(f"'{s.value}'" for s in JobStatus)

BACKLOG_PREDICATE = "status = 'queued' AND dispatched_at IS NULL"
"""Queued jobs without a message: the backlog, which only the database holds."""
WINDOW_PREDICATE = "status = 'queued' AND dispatched_at IS NOT NULL"
"""Queued jobs with a message in the broker: the window."""
RUNNING_PREDICATE = "status = 'running'"
FLOW_BACKLOG_PREDICATE = "backlog > 0"
"""Flows the dispatcher may send from."""
FLOW_OPEN_PREDICATE = "queued > 0 OR running > 0"
"""Flows with work a worker still has to do."""


class Job(Base):
    """One image to render, and after rendering, where it went and how long it took."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    submission_id: Mapped[str] = mapped_column(
        Uuid(as_uuid=False), ForeignKey("submissions.id", ondelete="CASCADE")
    )
    # Index of the job within its submission; with submission_id it makes resubmission idempotent.
    position: Mapped[int] = mapped_column(Integer)
    line_number: Mapped[int] = mapped_column(Integer)

    prompt: Mapped[str] = mapped_column(Text)
    prompt_truncated: Mapped[bool] = mapped_column(Boolean, server_default=false())
    seed: Mapped[int] = mapped_column(BigInteger)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(MAX_MODEL_CHARS))
    priority: Mapped[int] = mapped_column(Integer, server_default=text(str(DEFAULT_PRIORITY)))
    # ``metadata`` is reserved on declarative classes, hence the Python name; the column keeps
    # JobSpec's field name (see ``JOB_ATTRIBUTES``).
    caller_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    # How the image is encoded (png, webp, jpeg) and, for the lossy ones, at what quality (NULL:
    # the format's default); the key's extension and the content type follow the format.
    image_format: Mapped[str] = mapped_column(String(8), server_default=text("'png'"))
    image_quality: Mapped[int | None] = mapped_column(Integer)

    status: Mapped[JobStatus] = mapped_column(
        _STATUS_TYPE, server_default=text(f"'{JobStatus.QUEUED.value}'")
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Refreshed by the worker while it renders; a stale heartbeat means the worker died.
    heartbeat_at: Mapped[datetime | None]
    # A queued job with a message in the broker (the window) has this set: when it was published,
    # refreshed while a worker holds the message unclaimed. NULL: the job waits in the backlog,
    # the database alone, until the dispatcher sends it (``fleet.dispatch``).
    dispatched_at: Mapped[datetime | None]
    # When the sampler call that renders this job started; NULL while it is only claimed.
    rendering_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(255))
    batch_id: Mapped[str | None] = mapped_column(String(64))
    batch_size: Mapped[int | None] = mapped_column(Integer)
    # Jobs in the sampler call that rendered this one; a delivery (batch_size) is split into
    # groups of equal size and steps, so this is the batch the GPU actually ran.
    group_size: Mapped[int | None] = mapped_column(Integer)

    # Timings in seconds.
    queue_wait_s: Mapped[float | None] = mapped_column(Float)
    sample_s: Mapped[float | None] = mapped_column(Float)
    upload_s: Mapped[float | None] = mapped_column(Float)
    gpu_share_s: Mapped[float | None] = mapped_column(Float)

    image_uri: Mapped[str | None] = mapped_column(String(2048))
    image_bytes: Mapped[int | None] = mapped_column(BigInteger)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("submission_id", "position"),
        # A submission's jobs in one status, page by page (keyset on position); its running jobs.
        Index("ix_jobs_submission_id_status_position", "submission_id", "status", "position"),
        # Recent finished jobs, for throughput and latency stats.
        Index("ix_jobs_finished_at", "finished_at"),
        # Three partial indexes hold only the work in flight, never the backlog's finished past:
        # the backlog the dispatcher takes from (in position order per flow), the window of jobs
        # with a message, and the running jobs the reconciler checks heartbeats of. Queries that
        # use them spell the predicate with literals (``storage.window``), or neither planner
        # matches it.
        Index(
            "ix_jobs_backlog",
            "submission_id",
            "model",
            "priority",
            "position",
            postgresql_where=text(BACKLOG_PREDICATE),
            sqlite_where=text(BACKLOG_PREDICATE),
        ),
        Index(
            "ix_jobs_window",
            "model",
            "dispatched_at",
            postgresql_where=text(WINDOW_PREDICATE),
            sqlite_where=text(WINDOW_PREDICATE),
        ),
        Index(
            "ix_jobs_running",
            "heartbeat_at",
            postgresql_where=text(RUNNING_PREDICATE),
            sqlite_where=text(RUNNING_PREDICATE),
        ),
        CheckConstraint(f"status IN ({_STATUS_LIST})", name="status"),
        CheckConstraint(f"seed >= 0 AND seed <= {MAX_SEED}", name="seed_range"),
        CheckConstraint(
            f"priority >= {MIN_PRIORITY} AND priority <= {MAX_PRIORITY}", name="priority_range"
        ),
        CheckConstraint("position >= 0", name="position_non_negative"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
    )

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status.value} attempts={self.attempts}>"


class Flow(Base):
    """One submission's jobs of one model at one priority: the unit the dispatcher shares a
    model's fleet between (``fleet.dispatch``), and where those jobs are counted by status.

    The counts are kept by every status change, in its own transaction (``storage.counters``),
    so ``loopfree status`` of a million-job submission reads a few rows, not a million. ``backlog``
    counts the flow's queued jobs that have no message yet (``jobs.dispatched_at`` NULL): the
    dispatcher sends from flows whose backlog is above zero and sets it to zero when it finds none
    left, so a count that ran high corrects itself.
    """

    __tablename__ = "flows"

    submission_id: Mapped[str] = mapped_column(
        Uuid(as_uuid=False), ForeignKey("submissions.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(MAX_MODEL_CHARS), primary_key=True)
    priority: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(MAX_OWNER_CHARS))
    created_at: Mapped[datetime]
    backlog: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    queued: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    running: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    succeeded: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cancelled: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The first claim and the last finish of its jobs: a finished flow's rate is its images over
    # the time between the two.
    first_started_at: Mapped[datetime | None]
    last_finished_at: Mapped[datetime | None]

    __table_args__ = (
        # The dispatcher's question (which flows of a model have a backlog) and the scaling
        # signal's (which have open work) read only the flows they ask about, however many
        # finished flows a model has behind it. Queries spell the predicates as these literals.
        Index(
            "ix_flows_backlog",
            "model",
            postgresql_where=text(FLOW_BACKLOG_PREDICATE),
            sqlite_where=text(FLOW_BACKLOG_PREDICATE),
        ),
        Index(
            "ix_flows_open",
            "model",
            postgresql_where=text(FLOW_OPEN_PREDICATE),
            sqlite_where=text(FLOW_OPEN_PREDICATE),
        ),
    )

    @property
    def open(self) -> int:
        return self.queued + self.running


class Worker(Base):
    """A live (or recently live) worker process, upserted at start and on every heartbeat.

    A row whose ``last_beat_at`` is older than ``ttl_s`` is a dead worker; ``storage.workers``
    reads only live ones and prunes the rest.
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(255))
    queue: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    last_beat_at: Mapped[datetime]
    ttl_s: Mapped[float] = mapped_column(Float)
    images_done: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    jobs_in_hand: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    __table_args__ = (Index("ix_workers_model_last_beat_at", "model", "last_beat_at"),)


class WebhookDelivery(Base):
    """A webhook a finished submission owes: the durable outbox that ``storage.webhooks`` fills
    when it marks the submission finished and that the workers' sender threads drain.

    ``status`` is ``pending`` (due at ``next_attempt_at``; a claimed attempt pushes that forward
    by a lease), ``sent`` (a 2xx answer) or ``gave_up``. One row per (submission, generation):
    a submission finished again after ``requeue --failed`` owes a new one.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    submission_id: Mapped[str] = mapped_column(
        Uuid(as_uuid=False), ForeignKey("submissions.id", ondelete="CASCADE")
    )
    generation: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("submission_id", "generation"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        CheckConstraint("status IN ('pending', 'sent', 'gave_up')", name="status"),
    )


class ApiToken(Base):
    """A bearer token of the HTTP API (``api/``) and the web view: only the SHA-256 of the token
    is stored, never the token; ``id`` is its public part (``lf_<id>_...``), which ``tokens list``
    shows and ``tokens revoke`` takes. A token acts for ``owner``, the name the dispatcher shares
    the fleet between, and sees only that owner's submissions unless it is ``admin``."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(MAX_OWNER_CHARS))
    admin: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # Limits on the owner's totals while this token is used (NULL: none): jobs open at once, and
    # cost units per UTC day (one unit: a 512 x 512 image at 4 steps; see ``storage.usage``).
    quota_queued: Mapped[int | None] = mapped_column(BigInteger)
    quota_daily_units: Mapped[int | None] = mapped_column(BigInteger)
    note: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_api_tokens_owner", "owner"),
        CheckConstraint("quota_queued IS NULL OR quota_queued >= 0", name="quota_queued"),
        CheckConstraint(
            "quota_daily_units IS NULL OR quota_daily_units >= 0", name="quota_daily_units"
        ),
    )


class OwnerUsage(Base):
    """What an owner's submissions cost on one UTC day, in pixel x step units (``width x height
    x steps`` summed over the jobs), charged before the jobs are written (``storage.usage``)."""

    __tablename__ = "owner_usage"

    owner: Mapped[str] = mapped_column(String(MAX_OWNER_CHARS), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    pixel_steps: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    jobs: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


JOB_ATTRIBUTES: dict[str, str] = {
    column.name: Job.__mapper__.get_property_by_column(column).key for column in Job.__table__.c
}
"""Every column of ``jobs`` (in table order) -> the ``Job`` attribute that holds it. They differ
only where a name is reserved (``metadata`` -> ``caller_metadata``); code that goes by column
name (status listings, ``storage.submissions.spec_of``) reads attributes through this."""
