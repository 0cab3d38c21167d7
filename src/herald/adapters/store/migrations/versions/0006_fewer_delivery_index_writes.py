"""fewer index writes per delivery: drop the notification index, provider ids only when set

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 08:00:00

A delivery row is written three times (routed, claimed, result) and on PostgreSQL each version
goes into every index. ``ix_deliveries_notification`` repeated the first column of
``uq_deliveries_recipient (notification_id, user_id, channel)``, which serves the same lookups;
``ix_deliveries_provider_msg`` only needs the versions that carry a provider's message id.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_deliveries_notification', table_name='deliveries')
    op.drop_index('ix_deliveries_provider_msg', table_name='deliveries')
    op.create_index(
        'ix_deliveries_provider_msg',
        'deliveries',
        ['provider_message_id'],
        sqlite_where=sa.text('provider_message_id IS NOT NULL'),
        postgresql_where=sa.text('provider_message_id IS NOT NULL'),
    )


def downgrade() -> None:
    op.drop_index('ix_deliveries_provider_msg', table_name='deliveries')
    op.create_index('ix_deliveries_provider_msg', 'deliveries', ['provider_message_id'])
    op.create_index('ix_deliveries_notification', 'deliveries', ['notification_id'])
