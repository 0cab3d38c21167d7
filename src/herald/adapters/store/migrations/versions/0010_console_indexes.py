"""console read indexes: dead and failed deliveries, notifications by template and topic, ambiguous attempts

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 02:30:00

Each index is partial or on columns written once, so the delivery hot path (claim, result)
writes no more index entries than before, except for a delivery entering ``dead``/``failed``
or an attempt that was ambiguous.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for status in ('dead', 'failed'):
        op.create_index(
            f'ix_deliveries_{status}',
            'deliveries',
            ['id'],
            sqlite_where=sa.text(f"status = '{status}'"),
            postgresql_where=sa.text(f"status = '{status}'"),
        )
    op.create_index('ix_notifications_template', 'notifications', ['template', 'id'])
    op.create_index(
        'ix_notifications_topic',
        'notifications',
        ['topic', 'id'],
        sqlite_where=sa.text('topic IS NOT NULL'),
        postgresql_where=sa.text('topic IS NOT NULL'),
    )
    op.create_index(
        'ix_attempts_ambiguous',
        'attempts',
        ['at'],
        sqlite_where=sa.text('ambiguous = true'),
        postgresql_where=sa.text('ambiguous = true'),
    )


def downgrade() -> None:
    op.drop_index('ix_attempts_ambiguous', table_name='attempts')
    op.drop_index('ix_notifications_topic', table_name='notifications')
    op.drop_index('ix_notifications_template', table_name='notifications')
    op.drop_index('ix_deliveries_failed', table_name='deliveries')
    op.drop_index('ix_deliveries_dead', table_name='deliveries')
