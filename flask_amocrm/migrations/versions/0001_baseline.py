"""The baseline: the amocrm_* tables as Flask-AmoCRM 0.1 has them.

Revision ID: 0001
Revises:
Create Date: 2026-12-02

Databases made before the migrations (``flask amocrm init-db``, the first use, a
site's ``db.create_all()``) are adopted by ``flask amocrm upgrade-db`` and stamped
instead of running it (``flask_amocrm.migrations.adopt``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flask_amocrm.migrations import BaselineRefused

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "amocrm_api_log",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("path", sa.String(length=2000), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Double(), nullable=True),
        sa.Column("request_id", sa.String(length=100), nullable=True),
        sa.Column("request_body", sa.Text(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_amocrm_api_log")),
    )
    op.create_index(
        op.f("ix_amocrm_api_log_created_at"),
        "amocrm_api_log",
        ["created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_amocrm_api_log_event_id"), "amocrm_api_log", ["event_id"], unique=False
    )
    op.create_table(
        "amocrm_counters",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "value",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_amocrm_counters")),
    )
    op.create_table(
        "amocrm_entity_index",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("account", sa.String(length=200), nullable=False),
        sa.Column("entity", sa.String(length=12), nullable=False),
        sa.Column("entity_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_amocrm_entity_index")),
    )
    op.create_index(
        "ix_amocrm_entity_index_entity",
        "amocrm_entity_index",
        ["account", "entity", "entity_id"],
        unique=False,
    )
    op.create_index(
        "ix_amocrm_entity_index_key",
        "amocrm_entity_index",
        ["account", "entity", "kind", "key"],
        unique=False,
    )
    op.create_table(
        "amocrm_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("remote", sa.JSON(), nullable=False),
        sa.Column("log", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("search", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_amocrm_events")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_amocrm_events_dedupe_key")),
        sa.UniqueConstraint("uid", name=op.f("uq_amocrm_events_uid")),
    )
    op.create_index(
        "ix_amocrm_events_created_at", "amocrm_events", ["created_at"], unique=False
    )
    op.create_index(
        "ix_amocrm_events_due",
        "amocrm_events",
        ["status", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        "ix_amocrm_events_status_id", "amocrm_events", ["status", "id"], unique=False
    )
    if op.get_context().dialect.name == "postgresql":
        # the admin's search (models.Event, outbox.search_filter)
        op.create_index(
            "ix_amocrm_events_search",
            "amocrm_events",
            [sa.text("to_tsvector('simple', search)")],
            postgresql_using="gin",
        )
    op.create_table(
        "amocrm_flags",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_amocrm_flags")),
    )
    op.create_table(
        "amocrm_inbound",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("base", sa.String(length=200), nullable=False),
        sa.Column("signal", sa.String(length=40), nullable=False),
        sa.Column("entity", sa.String(length=20), nullable=False),
        sa.Column("entity_id", sa.BigInteger(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("occurred_at", sa.BigInteger(), nullable=False),
        sa.Column("origin", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.Column("receivers_done", sa.JSON(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("done_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_amocrm_inbound")),
        sa.UniqueConstraint("key", name=op.f("uq_amocrm_inbound_key")),
    )
    op.create_index(
        op.f("ix_amocrm_inbound_base"), "amocrm_inbound", ["base"], unique=False
    )
    op.create_index(
        "ix_amocrm_inbound_due",
        "amocrm_inbound",
        ["status", "next_attempt_at"],
        unique=False,
    )
    op.create_table(
        "amocrm_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base_url", sa.String(length=300), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_amocrm_tokens")),
        sa.UniqueConstraint("base_url", name=op.f("uq_amocrm_tokens_base_url")),
    )
    op.create_table(
        "amocrm_event_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=12), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["amocrm_events.id"],
            name=op.f("fk_amocrm_event_attempts_event_id_amocrm_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_amocrm_event_attempts")),
    )
    op.create_index(
        op.f("ix_amocrm_event_attempts_event_id"),
        "amocrm_event_attempts",
        ["event_id"],
        unique=False,
    )
    op.create_table(
        "amocrm_inbound_claims",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column(
            "change_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["change_id"],
            ["amocrm_inbound.id"],
            name=op.f("fk_amocrm_inbound_claims_change_id_amocrm_inbound"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_amocrm_inbound_claims")),
    )
    op.create_index(
        op.f("ix_amocrm_inbound_claims_change_id"),
        "amocrm_inbound_claims",
        ["change_id"],
        unique=False,
    )


def downgrade() -> None:
    # Undoing the baseline would drop every event, attempt, token and log.
    raise BaselineRefused(
        "The baseline of the amocrm_* tables is not undone: it would drop every "
        "event, token and log. To remove Flask-AmoCRM, back the database up and "
        "drop the amocrm_* tables yourself."
    )
