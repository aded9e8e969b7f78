"""The inbox: the only code that stores changes that came from amoCRM, finds the due
ones and claims them (the twin of :mod:`flask_amocrm.outbox` for the way back).

A change is stored once under its key (:mod:`flask_amocrm.changes`): the same
webhook posted twice, or a change that came by webhook and again from the events
log, is one row. A *timed* change (a stage move) also takes its two slots of time
(``amocrm_inbound_claims``) in the same transaction, so the same move whose two
sources disagree on the second is refused by a unique key, in one statement per
table, without a lock, however many processes store it at once.

A row is *due* when it is ``pending``, ``retrying`` past its ``next_attempt_at``,
or ``processing`` past its lease (its worker was killed); workers claim due rows
in one ``UPDATE ... RETURNING``, as events are claimed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, and_, func, insert, or_, select
from sqlalchemy.exc import IntegrityError

from .changes import Change
from .models import (
    INBOUND_PENDING,
    INBOUND_PROCESSING,
    INBOUND_RETRYING,
    InboundChange,
    InboundClaim,
    utcnow,
)
from .outbox import claim_rows

if TYPE_CHECKING:
    from .state import AppState

log = logging.getLogger("flask_amocrm")


def store_changes(state: AppState, changes: Iterable[Change]) -> list[int]:
    """Store the changes not stored before; return the ids of the new rows."""
    state.ensure_tables()
    new: list[int] = []
    for change in changes:
        row_id = _insert(state, change)
        if row_id is not None:
            new.append(row_id)
    return new


def _insert(state: AppState, change: Change) -> int | None:
    now = utcnow()
    try:
        with state.engine.begin() as connection:
            row_id: int = connection.execute(
                insert(InboundChange)
                .values(
                    key=change.key,
                    base=change.base,
                    signal=change.signal,
                    entity=change.entity,
                    entity_id=change.entity_id,
                    values=change.values,
                    fields={str(k): v for k, v in change.fields.items()},
                    occurred_at=change.at,
                    origin=change.origin,
                    status=INBOUND_PENDING,
                    attempts=0,
                    receivers_done=[],
                    created_at=now,
                    updated_at=now,
                )
                .returning(InboundChange.id)
            ).scalar_one()
            if change.claims:
                connection.execute(
                    insert(InboundClaim),
                    [{"key": key, "change_id": row_id} for key in change.claims],
                )
    except IntegrityError:
        return None  # stored before, under the same key or in the same slot
    return row_id


def due(now: datetime) -> ColumnElement[bool]:
    """The condition of a row that may be claimed at ``now``."""
    return or_(
        InboundChange.status == INBOUND_PENDING,
        and_(
            InboundChange.status == INBOUND_RETRYING,
            or_(
                InboundChange.next_attempt_at.is_(None),
                InboundChange.next_attempt_at <= now,
            ),
        ),
        and_(
            InboundChange.status == INBOUND_PROCESSING,
            InboundChange.locked_until < now,
        ),
    )


def due_inbound(state: AppState, limit: int | None = None) -> list[int]:
    """Ids of the due rows, oldest first."""
    query = select(InboundChange.id).where(due(utcnow())).order_by(InboundChange.id)
    if limit is not None:
        query = query.limit(limit)
    with state.session() as session:
        return list(session.scalars(query))


def claim_inbound(state: AppState, ids: list[int]) -> list[int]:
    """Take the due rows among ``ids`` that nobody else holds; their ids."""
    return claim_rows(state, InboundChange, ids, INBOUND_PROCESSING, due)


def newest_change_at(state: AppState, origin: str) -> int | None:
    """The time of the newest stored change that came from ``origin``."""
    with state.session() as session:
        found = session.scalar(
            select(func.max(InboundChange.occurred_at)).where(
                InboundChange.origin == origin
            )
        )
    return int(found) if found is not None else None
