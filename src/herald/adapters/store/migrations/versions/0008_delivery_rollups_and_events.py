"""delivery funnel rollups per hour, and delivery engagement events (opens, clicks)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 02:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delivery_rollups",
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("template", sa.String(length=128), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("metric", sa.String(length=80), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "template", "category", "channel", "provider", "metric"),
    )
    op.create_table(
        "delivery_events",
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("link", sa.Integer(), nullable=False),
        sa.Column("machine", sa.Boolean(), nullable=False),
        sa.Column("why", sa.String(length=32), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", "kind", "link", "machine"),
    )


def downgrade() -> None:
    op.drop_table("delivery_events")
    op.drop_table("delivery_rollups")
