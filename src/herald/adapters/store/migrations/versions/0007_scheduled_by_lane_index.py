"""partial index of scheduled deliveries by lane and due time (paced promotion)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_deliveries_due_lane',
        'deliveries',
        ['priority', 'due_at'],
        sqlite_where=sa.text("status = 'scheduled'"),
        postgresql_where=sa.text("status = 'scheduled'"),
    )


def downgrade() -> None:
    op.drop_index('ix_deliveries_due_lane', table_name='deliveries')
