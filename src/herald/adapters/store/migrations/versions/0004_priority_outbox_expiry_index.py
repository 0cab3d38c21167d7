"""outbox relayed by priority; partial index for the expiry sweep

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_outbox_due', table_name='outbox')
    op.create_index('ix_outbox_due', 'outbox', ['priority', 'due_at', 'id'])
    op.create_index(
        'ix_deliveries_expiry',
        'deliveries',
        ['expires_at'],
        sqlite_where=sa.text('expires_at IS NOT NULL'),
        postgresql_where=sa.text('expires_at IS NOT NULL'),
    )


def downgrade() -> None:
    op.drop_index('ix_deliveries_expiry', table_name='deliveries')
    op.drop_index('ix_outbox_due', table_name='outbox')
    op.create_index('ix_outbox_due', 'outbox', ['due_at', 'id'])
