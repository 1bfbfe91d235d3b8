"""Durable webhook outbox (issue 10).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per webhook a finished submission owes, written in the transaction that marks it
    # finished: deliveries survive worker restarts and are sent by a sender thread, never by the
    # threads that sample, upload or record. (submission_id, generation) is unique: one finish,
    # one delivery; a submission finished anew after `requeue --failed` gets the next generation.
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("submission_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default=sa.text("'pending'"),
                  nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'gave_up')", name=op.f("ck_webhook_deliveries_status")
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_webhook_deliveries_submission_id_submissions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "submission_id", "generation",
            name=op.f("uq_webhook_deliveries_submission_id_generation"),
        ),
    )  # fmt: skip
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        # What the sender polls: pending deliveries by due time.
        batch_op.create_index(
            "ix_webhook_deliveries_status_next_attempt_at", ["status", "next_attempt_at"]
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_status_next_attempt_at")
    op.drop_table("webhook_deliveries")
