"""funnel rollups kept per hour and per UTC day (a size column), clustered on their key

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 03:30:00

A week by day read every hourly row of the week (168 per group and metric); the daily rows are
kept beside the hourly ones, the same counts summed by day. Existing hourly counts are kept and
their daily sums written.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_KEY = ("template", "category", "channel", "provider", "metric")


def _create(name: str, *, sized: bool) -> None:
    columns = [sa.Column("size", sa.Integer(), nullable=False)] if sized else []
    op.create_table(
        name,
        *columns,
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("template", sa.String(length=128), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("metric", sa.String(length=80), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*(["size"] if sized else []), "bucket", *_KEY, name=f"pk_{name}"),
        sqlite_with_rowid=False,
    )


def upgrade() -> None:
    keys = ", ".join(_KEY)
    _create("delivery_rollups_sized", sized=True)
    op.execute(
        f"INSERT INTO delivery_rollups_sized (size, bucket, {keys}, count) "  # noqa: S608
        f"SELECT 3600, bucket, {keys}, count FROM delivery_rollups"
    )
    op.execute(
        f"INSERT INTO delivery_rollups_sized (size, bucket, {keys}, count) "  # noqa: S608
        f"SELECT 86400, (bucket / 86400) * 86400, {keys}, sum(count) FROM delivery_rollups "
        f"GROUP BY (bucket / 86400) * 86400, {keys}"
    )
    op.drop_table("delivery_rollups")
    op.rename_table("delivery_rollups_sized", "delivery_rollups")


def downgrade() -> None:
    keys = ", ".join(_KEY)
    _create("delivery_rollups_hourly", sized=False)
    op.execute(
        f"INSERT INTO delivery_rollups_hourly (bucket, {keys}, count) "  # noqa: S608
        f"SELECT bucket, {keys}, count FROM delivery_rollups WHERE size = 3600"
    )
    op.drop_table("delivery_rollups")
    op.rename_table("delivery_rollups_hourly", "delivery_rollups")
