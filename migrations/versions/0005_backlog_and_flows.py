"""The database is the backlog: flows, owners, the dispatch window, cancellation (issue 17).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Upgrading a running fleet: every job queued before this revision already has a message in the
broker, so it becomes part of the window (``dispatched_at`` = its creation); new submissions wait
in the backlog until the workers' dispatcher sends them. Upgrade producers and workers together.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BACKLOG = "status = 'queued' AND dispatched_at IS NULL"
WINDOW = "status = 'queued' AND dispatched_at IS NOT NULL"
RUNNING = "status = 'running'"
FLOW_BACKLOG = "backlog > 0"
FLOW_OPEN = "queued > 0 OR running > 0"
_COUNTS = ("queued", "running", "succeeded", "failed", "cancelled")


def upgrade() -> None:
    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "owner", sa.String(length=64), server_default=sa.text("'unknown'"), nullable=False
            )
        )
        batch_op.add_column(sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("rendering_at", sa.DateTime(timezone=True), nullable=True))
        # Counting moved to the flows table; listings page by (submission, status, position).
        batch_op.drop_index("ix_jobs_status")
        batch_op.drop_index("ix_jobs_model_status")
        batch_op.drop_index("ix_jobs_submission_id_status")
        batch_op.create_index(
            "ix_jobs_submission_id_status_position", ["submission_id", "status", "position"]
        )
    # Queued jobs of the old scheme all had a message: they are the window now.
    op.execute("UPDATE jobs SET dispatched_at = created_at WHERE status = 'queued'")
    op.create_index(
        "ix_jobs_backlog",
        "jobs",
        ["submission_id", "model", "priority", "position"],
        postgresql_where=sa.text(BACKLOG),
        sqlite_where=sa.text(BACKLOG),
    )
    op.create_index(
        "ix_jobs_window",
        "jobs",
        ["model", "dispatched_at"],
        postgresql_where=sa.text(WINDOW),
        sqlite_where=sa.text(WINDOW),
    )
    op.create_index(
        "ix_jobs_running",
        "jobs",
        ["heartbeat_at"],
        postgresql_where=sa.text(RUNNING),
        sqlite_where=sa.text(RUNNING),
    )
    op.create_table(
        "flows",
        sa.Column("submission_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *[
            sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False)
            for name in ("backlog", *_COUNTS)
        ],
        sa.Column("first_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_flows_submission_id_submissions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("submission_id", "model", "priority", name=op.f("pk_flows")),
    )
    for name, predicate in (("ix_flows_backlog", FLOW_BACKLOG), ("ix_flows_open", FLOW_OPEN)):
        op.create_index(
            name,
            "flows",
            ["model"],
            postgresql_where=sa.text(predicate),
            sqlite_where=sa.text(predicate),
        )
    # One flow per (submission, model, priority) the jobs already have, counted once.
    counts = ", ".join(
        f"SUM(CASE WHEN status = '{name}' THEN 1 ELSE 0 END)" for name in _COUNTS
    )
    op.execute(
        f"INSERT INTO flows (submission_id, model, priority, owner, created_at, backlog, "
        f"{', '.join(_COUNTS)}, first_started_at, last_finished_at) "
        f"SELECT submission_id, model, priority, 'unknown', MIN(created_at), 0, {counts}, "
        "MIN(started_at), MAX(finished_at) FROM jobs GROUP BY submission_id, model, priority"
    )


def downgrade() -> None:
    op.drop_index("ix_flows_open", table_name="flows")
    op.drop_index("ix_flows_backlog", table_name="flows")
    op.drop_table("flows")
    op.drop_index("ix_jobs_running", table_name="jobs")
    op.drop_index("ix_jobs_window", table_name="jobs")
    op.drop_index("ix_jobs_backlog", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_submission_id_status_position")
        batch_op.create_index("ix_jobs_submission_id_status", ["submission_id", "status"])
        batch_op.create_index("ix_jobs_model_status", ["model", "status"])
        batch_op.create_index("ix_jobs_status", ["status"])
        batch_op.drop_column("rendering_at")
        batch_op.drop_column("dispatched_at")
    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.drop_column("cancelled_at")
        batch_op.drop_column("owner")
