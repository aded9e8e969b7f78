"""The claim's partial index: the events that still wait.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Finding the due events (``flask_amocrm.outbox.due``) on PostgreSQL reads this index
instead of walking the primary key past every delivered event (SQLite mostly reads
its index on status; both support the partial index).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WAITING = "status IN ('pending', 'retrying', 'processing')"


def upgrade() -> None:
    op.create_index(
        "ix_amocrm_events_waiting",
        "amocrm_events",
        ["id"],
        unique=False,
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )


def downgrade() -> None:
    op.drop_index("ix_amocrm_events_waiting", table_name="amocrm_events")
