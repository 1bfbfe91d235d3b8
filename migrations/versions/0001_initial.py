"""Initial schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Submissions and jobs with the indexes the queue path needs. Timestamps are plain
``DateTime(timezone=True)`` here; ``storage.models.UTCDateTime`` only changes how Python
converts values, not the column type, and migrations must not import model code.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "submissions",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("defaults", sa.JSON(), nullable=False),
        sa.Column("job_count", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("webhook_url", sa.String(length=2048), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("webhook_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("job_count >= 0", name=op.f("ck_submissions_job_count_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submissions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_submissions_idempotency_key")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("submission_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("line_number", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("prompt_truncated", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("5"), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "running",
                "succeeded",
                "failed",
                "cancelled",
                name="job_status",
                native_enum=False,
                length=16,
            ),
            server_default=sa.text("'queued'"),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("batch_id", sa.String(length=64), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.Column("queue_wait_s", sa.Float(), nullable=True),
        sa.Column("sample_s", sa.Float(), nullable=True),
        sa.Column("upload_s", sa.Float(), nullable=True),
        sa.Column("gpu_share_s", sa.Float(), nullable=True),
        sa.Column("image_uri", sa.String(length=2048), nullable=True),
        sa.Column("image_bytes", sa.BigInteger(), nullable=True),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_jobs_attempts_non_negative")),
        sa.CheckConstraint("position >= 0", name=op.f("ck_jobs_position_non_negative")),
        sa.CheckConstraint("priority >= 0 AND priority <= 9", name=op.f("ck_jobs_priority_range")),
        sa.CheckConstraint(
            "seed >= 0 AND seed <= 9223372036854775807", name=op.f("ck_jobs_seed_range")
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_jobs_submission_id_submissions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint(
            "submission_id", "position", name=op.f("uq_jobs_submission_id_position")
        ),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_finished_at", ["finished_at"], unique=False)
        batch_op.create_index("ix_jobs_model_status", ["model", "status"], unique=False)
        batch_op.create_index("ix_jobs_status", ["status"], unique=False)
        batch_op.create_index(
            "ix_jobs_submission_id_status", ["submission_id", "status"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_submission_id_status")
        batch_op.drop_index("ix_jobs_status")
        batch_op.drop_index("ix_jobs_model_status")
        batch_op.drop_index("ix_jobs_finished_at")

    op.drop_table("jobs")
    op.drop_table("submissions")
