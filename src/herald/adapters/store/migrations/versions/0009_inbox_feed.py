"""inbox feed: the durable, per-user order of live inbox items (stream event ids)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 02:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'inbox_feed',
        sa.Column('user_id', sa.String(length=128), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('delivery_id', sa.String(length=40), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('user_id', 'seq', name='pk_inbox_feed'),
        sa.UniqueConstraint('delivery_id', name='uq_inbox_feed_delivery'),
    )


def downgrade() -> None:
    op.drop_table('inbox_feed')
