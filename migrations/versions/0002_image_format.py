"""Image format and quality per job (issue 13).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Every job existing before this revision was stored as PNG, so the server default fills them in;
``image_quality`` is NULL for PNG and for lossy jobs that take the format's default quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "image_format", sa.String(length=8), server_default=sa.text("'png'"), nullable=False
            )
        )
        batch_op.add_column(sa.Column("image_quality", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("image_quality")
        batch_op.drop_column("image_format")
