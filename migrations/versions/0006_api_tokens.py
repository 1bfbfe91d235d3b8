"""Tokens, daily usage and an owner's submissions by date: the HTTP API (issue 18).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

Only adds: the ``api_tokens`` table (hashes of bearer tokens, their owner, admin flag, quotas),
``owner_usage`` (cost units per owner and UTC day) and an index listing one owner's submissions
newest first. Nothing running reads them but ``loopfree api``, ``loopfree tokens`` and the web
view's token check, so it can be applied before or after the workers are upgraded.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("quota_queued", sa.BigInteger(), nullable=True),
        sa.Column("quota_daily_units", sa.BigInteger(), nullable=True),
        sa.Column("note", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "quota_queued IS NULL OR quota_queued >= 0", name=op.f("ck_api_tokens_quota_queued")
        ),
        sa.CheckConstraint(
            "quota_daily_units IS NULL OR quota_daily_units >= 0",
            name=op.f("ck_api_tokens_quota_daily_units"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
    )
    op.create_index("ix_api_tokens_owner", "api_tokens", ["owner"])
    op.create_table(
        "owner_usage",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("pixel_steps", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("owner", "day", name=op.f("pk_owner_usage")),
    )
    op.create_index(
        "ix_submissions_owner_created_at_id", "submissions", ["owner", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_submissions_owner_created_at_id", table_name="submissions")
    op.drop_table("owner_usage")
    op.drop_index("ix_api_tokens_owner", table_name="api_tokens")
    op.drop_table("api_tokens")
