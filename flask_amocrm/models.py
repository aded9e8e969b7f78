"""The tables of Flask-AmoCRM: the event outbox, delivery attempts, the API log and
stored OAuth tokens.

They are declared on their own :data:`metadata` with names prefixed ``amocrm_``. An app
that passes its Flask-SQLAlchemy ``db`` gets them added to ``db.metadata`` as well, so
``db.create_all()`` sees them; otherwise ``flask amocrm init-db`` (or the first use)
creates them in the embedded database. Their migrations are in
:mod:`flask_amocrm.migrations` (``flask amocrm upgrade-db``): a change here needs a
revision there, and ``tests/test_migrations.py`` fails until it has one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    inspect,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .i18n import N_

#: Event statuses. ``pending``: stored, not yet tried; ``processing``: a worker
#: holds it; ``retrying``: a transient failure, tried again at ``next_attempt_at``;
#: ``delivered``; ``failed``: a permanent failure that waits for a person;
#: ``ignored``: no rule matched; ``cancelled``: a hook said no (the reason is in
#: ``last_error``); it is never sent unless a person retries it; ``spam``: the
#: worker's spam checks held it before any request (the reasons are in
#: ``last_error``); it is never sent unless a person releases it
#: (:mod:`flask_amocrm.worker.spam`).
PENDING = "pending"
PROCESSING = "processing"
RETRYING = "retrying"
DELIVERED = "delivered"
FAILED = "failed"
IGNORED = "ignored"
CANCELLED = "cancelled"
SPAM = "spam"
STATUSES = (PENDING, PROCESSING, RETRYING, DELIVERED, FAILED, IGNORED, CANCELLED, SPAM)
#: The statuses of an event that still waits for a worker: the claim looks among
#: these only, through the partial index ``ix_amocrm_events_waiting``.
WAITING = (PENDING, RETRYING, PROCESSING)
#: That condition as SQL, as the index has it and the claim's query
#: (:func:`flask_amocrm.outbox.due`) repeats it, literals and all.
WAITING_SQL = "status IN ({})".format(", ".join(f"'{s}'" for s in WAITING))
#: How a person reads each status (``_(STATUS_LABELS[status])``; English: the name).
STATUS_LABELS = {
    PENDING: N_("pending"),
    PROCESSING: N_("processing"),
    RETRYING: N_("retrying"),
    DELIVERED: N_("delivered"),
    FAILED: N_("failed"),
    IGNORED: N_("ignored"),
    CANCELLED: N_("cancelled"),
    SPAM: N_("spam"),
}

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def utcnow() -> datetime:
    """The current time as a naive UTC datetime, as stored in every column."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = metadata


class Event(Base):
    """One thing that happened on the site and must reach amoCRM (the outbox row)."""

    __tablename__ = "amocrm_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: A random id that travels with the event into amoCRM, to find it again.
    uid: Mapped[str] = mapped_column(
        String(32), unique=True, default=lambda: uuid.uuid4().hex
    )
    #: ``form`` or ``mail``.
    kind: Mapped[str] = mapped_column(String(10))
    #: The form id or mail event name; the rule is looked up by it.
    source: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: ``[{"field": ..., "name": ..., "url": ...}]``: files are passed as links.
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(12), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    #: While a worker holds the event (status ``processing``), until when.
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: What amoCRM created for it: ``{"lead_id": ..., "contact_id": ..., ...}``.
    remote: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Warnings and remarks gathered while delivering (rounded prices, unknown labels).
    log: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: A key that makes capture idempotent (an import row, a mail's Message-ID).
    dedupe_key: Mapped[str | None] = mapped_column(
        String(200), unique=True, nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow
    )
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    #: What the admin's search looks in, written when the event is stored
    #: (:func:`flask_amocrm.outbox.search_text`): `` +79161234567 ivan@example.com
    #: ivan petrov ``. ``None`` on events stored before it existed.
    search: Mapped[str | None] = mapped_column(Text, nullable=True)

    attempt_rows: Mapped[list[EventAttempt]] = relationship(
        back_populates="event",
        cascade="all, delete-orphan",
        order_by="EventAttempt.id",
    )

    __table_args__ = (
        Index("ix_amocrm_events_due", "status", "next_attempt_at"),
        # the claim: the events that still wait, in id order, without a look at the
        # delivered ones however many they are (a partial index; PostgreSQL reads
        # it, SQLite mostly its index on status, see outbox.oldest_first)
        Index(
            "ix_amocrm_events_waiting",
            "id",
            postgresql_where=text(WAITING_SQL),
            sqlite_where=text(WAITING_SQL),
        ),
        # the admin's list of one status, newest first, a page at a time
        Index("ix_amocrm_events_status_id", "status", "id"),
        # the spam checks' rates: the events stored within a window
        Index("ix_amocrm_events_created_at", "created_at"),
        # the admin's search on PostgreSQL: the words of ``search``
        # (flask_amocrm.outbox.search_filter uses this very expression)
        Index(
            "ix_amocrm_events_search",
            text("to_tsvector('simple', search)"),
            postgresql_using="gin",
        ).ddl_if(dialect="postgresql"),
    )

    def __repr__(self) -> str:
        return f"<Event {self.id} {self.kind}:{self.source} {self.status}>"


#: Indexes only PostgreSQL builds (a GIN index over ``to_tsvector``).
POSTGRESQL_ONLY = frozenset({"ix_amocrm_events_search"})


def copy_tables(target: MetaData) -> None:
    """Add these tables to another metadata (a site's Flask-SQLAlchemy
    ``db.metadata``, so its ``db.create_all()`` and migrations see them), keeping the
    PostgreSQL-only indexes PostgreSQL-only: ``Table.to_metadata`` drops an index's
    ``ddl_if``, and SQLite's ``db.create_all()`` then failed on ``to_tsvector``."""
    for table in metadata.sorted_tables:
        if table.name in target.tables:
            continue
        for index in table.to_metadata(target).indexes:
            if index.name in POSTGRESQL_ONLY:
                index.ddl_if(dialect="postgresql")


def upgrade_tables(connection: Connection) -> list[str]:
    """Bring ``amocrm_*`` tables created by an earlier version up to date: add the
    columns they lack (every column added since is nullable) and the indexes. Return
    what was added (``"amocrm_events.search"``, index names)."""
    inspector = inspect(connection)
    added: list[str] = []
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            kind = column.type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(
                f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"
            )
            added.append(f"{table.name}.{column.name}")
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            only = index._ddl_if  # ``.ddl_if(dialect=...)``: the index of one database
            if only is not None and only.dialect not in (None, connection.dialect.name):
                continue
            if index.name not in indexes:
                index.create(connection, checkfirst=True)
                added.append(str(index.name))
    return added


class EventAttempt(Base):
    """One try at delivering an event, with its outcome."""

    __tablename__ = "amocrm_event_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(
        ForeignKey("amocrm_events.id", ondelete="CASCADE"), index=True
    )
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    #: ``delivered``, ``retrying``, ``failed``, ``ignored`` or ``cancelled``.
    outcome: Mapped[str | None] = mapped_column(String(12), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)

    event: Mapped[Event] = relationship(back_populates="attempt_rows")


class ApiLog(Base):
    """One request to amoCRM and its answer, without credentials."""

    __tablename__ = "amocrm_api_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True
    )
    event_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(2000))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    request_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Token(Base):
    """The OAuth token pair of one amoCRM account (one row per account host)."""

    __tablename__ = "amocrm_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_url: Mapped[str] = mapped_column(String(300), unique=True)
    access_token: Mapped[str] = mapped_column(Text)
    refresh_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    #: Bumped on every refresh: a compare-and-swap guard against a lost lock.
    version: Mapped[int] = mapped_column(Integer, default=0)
    #: Set when amoCRM said the refresh token was revoked; a person must reconnect.
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    #: When the pair was last obtained (code exchange or refresh): the keep-alive
    #: refreshes before amoCRM's three-month refresh-token lifetime runs out.
    refreshed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow
    )

    def __repr__(self) -> str:  # never show the tokens themselves
        return f"<Token {self.base_url} v{self.version}>"


class Flag(Base):
    """A named, expiring marker shared by every process: "an outage is going on",
    "the retention purge ran within the hour". Used where there is no Redis."""

    __tablename__ = "amocrm_flags"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    #: ``None``: until deleted.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Counter(Base):
    """A named counter shared by every process, where there is no Redis: the turn of
    a rule's round-robin list of responsible users."""

    __tablename__ = "amocrm_counters"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), default=0
    )


#: Inbound change statuses. ``pending``: stored, not yet handled; ``processing``:
#: a worker holds it; ``retrying``: a receiver raised, tried again at
#: ``next_attempt_at``; ``done``: every receiver ran.
INBOUND_PENDING = "pending"
INBOUND_PROCESSING = "processing"
INBOUND_RETRYING = "retrying"
INBOUND_DONE = "done"
INBOUND_STATUSES = (INBOUND_PENDING, INBOUND_PROCESSING, INBOUND_RETRYING, INBOUND_DONE)


class InboundChange(Base):
    """One change in amoCRM that reaches the site's signals (a webhook item or an
    events log entry), stored once under its key (:mod:`flask_amocrm.changes`)."""

    __tablename__ = "amocrm_inbound"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True
    )
    #: The change's key: the same whichever way it came.
    key: Mapped[str] = mapped_column(String(200), unique=True)
    #: The key without the time of the change.
    base: Mapped[str] = mapped_column(String(200), index=True)
    #: The signal it is sent as (``lead_status_changed`` ...).
    signal: Mapped[str] = mapped_column(String(40))
    #: ``lead``, ``contact``, ``company`` or ``task``, and its amoCRM id.
    entity: Mapped[str] = mapped_column(String(20))
    entity_id: Mapped[int] = mapped_column(BigInteger)
    #: The signal's keyword arguments besides ``event`` and ``change``.
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The lead's custom field values the webhook carried (``{field id: value}``).
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: When it happened in amoCRM (Unix seconds).
    occurred_at: Mapped[int] = mapped_column(BigInteger)
    #: ``webhook`` or ``events`` (the reconciliation).
    origin: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(12), default=INBOUND_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    #: The receivers that ran without raising (``module.name``): a retry never
    #: runs them again.
    receivers_done: Mapped[list[str]] = mapped_column(JSON, default=list)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow
    )
    done_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (Index("ix_amocrm_inbound_due", "status", "next_attempt_at"),)

    def __repr__(self) -> str:
        return f"<InboundChange {self.id} {self.key} {self.status}>"


class InboundClaim(Base):
    """A slot of time a timed change from amoCRM (a stage move) takes, so that the
    same change read from the webhook and from the events log, whose clocks differ
    by a little, is stored once (:attr:`flask_amocrm.changes.Change.claims`)."""

    __tablename__ = "amocrm_inbound_claims"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    change_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("amocrm_inbound.id", ondelete="CASCADE"),
        index=True,
    )


class EntityKey(Base):
    """One key of a contact or company in the local contact index
    (:mod:`flask_amocrm.worker.index`): a normalised phone, e-mail or name, and the
    entity holding it. A lookup reads candidates here instead of searching amoCRM,
    then verifies them against amoCRM before reusing one."""

    __tablename__ = "amocrm_entity_index"
    __table_args__ = (
        Index("ix_amocrm_entity_index_key", "account", "entity", "kind", "key"),
        Index("ix_amocrm_entity_index_entity", "account", "entity", "entity_id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True
    )
    #: The amoCRM account's host: two accounts never share a key.
    account: Mapped[str] = mapped_column(String(200))
    #: ``contacts`` or ``companies``.
    entity: Mapped[str] = mapped_column(String(12))
    entity_id: Mapped[int] = mapped_column(BigInteger)
    #: ``phone``, ``email`` or ``name`` (:data:`flask_amocrm.dedup.INDEX_KINDS`).
    kind: Mapped[str] = mapped_column(String(8))
    #: The value as duplicate control compares it (E.164 phone, lower-cased e-mail).
    key: Mapped[str] = mapped_column(String(255))
    #: The entity's ``updated_at`` in amoCRM (Unix seconds) when it was read.
    updated_at: Mapped[int] = mapped_column(BigInteger, default=0)
