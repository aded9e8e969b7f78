"""The outbox: the only code that creates events, finds the due ones, claims them and
makes them due again.

The ``amocrm_events`` table is the truth; Redis is only a work cache. An event is
*due* when it is ``pending`` (never tried: Redis was down at capture, or restarted
empty), ``retrying`` past its ``next_attempt_at``, or ``processing`` past its lease
(its worker was killed). A worker *claims* due events with a lease in one atomic
``UPDATE ... WHERE ... RETURNING``, so two workers never hold the same event.

When the database refuses an event at capture, its record goes to the *spool*, a
JSON-lines file in the instance folder, which :func:`load_spool` stores later.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, insert, or_, select, update
from sqlalchemy.orm import Session

from .models import FAILED, IGNORED, PENDING, PROCESSING, RETRYING, Event, utcnow

if TYPE_CHECKING:
    from .state import AppState

log = logging.getLogger("flask_amocrm")

#: How long a worker holds an event before others may take it over (a killed
#: worker). Longer than the RQ job timeout, after which RQ stops a job itself, so a
#: slow job never shares its event with a second worker.
LEASE = timedelta(minutes=15)
#: A pending event younger than this still has its own job on the way.
GRACE = timedelta(seconds=10)
#: The columns a new event may be given; the rest start as every event does.
FIELDS = ("kind", "source", "data", "files", "context", "dedupe_key", "created_at")
#: The fields of a spooled record that are stored.
SPOOLED = ("kind", "source", "data", "files", "context", "dedupe_key")
#: The spool's file name, in the app's instance folder.
SPOOL_NAME = "amocrm-spool.jsonl"


# -- creating --------------------------------------------------------------------------


def new_values(**fields: Any) -> dict[str, Any]:
    """The column values of a new event: ``fields`` (see :data:`FIELDS`) over the
    values every new event starts with."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"not fields of a new event: {sorted(unknown)}")
    now = utcnow()
    values: dict[str, Any] = {
        "uid": uuid.uuid4().hex,
        "kind": "form",
        "source": "(unnamed)",
        "data": {},
        "files": [],
        "context": {},
        "dedupe_key": None,
        "status": PENDING,
        "attempts": 0,
        "remote": {},
        "log": [],
        "created_at": now,
        "updated_at": now,
    }
    values.update({k: v for k, v in fields.items() if v is not None})
    return values


def store(state: AppState, **fields: Any) -> Event:
    """Insert one event and commit; return it (detached, fully loaded).

    A Core ``INSERT`` on a pooled connection: the ORM's unit of work costs more than
    the insert itself on this hot path, where the visitor waits.
    """
    if not state.tables_ready:
        state.create_tables()
    values = new_values(**fields)
    with state.engine.begin() as connection:
        event_id = connection.execute(
            insert(Event).values(**values).returning(Event.id)
        ).scalar_one()
    return Event(id=event_id, **values)


def add(session: Session, **fields: Any) -> Event:
    """Add a new event to ``session`` (the caller commits)."""
    event = Event(**new_values(**fields))
    session.add(event)
    return event


def known_keys(session: Session, keys: Iterable[str]) -> set[str]:
    """Which of these ``dedupe_key`` values events already have."""
    wanted = list(keys)
    if not wanted:
        return set()
    return set(
        session.scalars(select(Event.dedupe_key).where(Event.dedupe_key.in_(wanted)))
    )


# -- due events ------------------------------------------------------------------------


def due(now: datetime) -> ColumnElement[bool]:
    """The condition of an event that may be claimed at ``now``."""
    return or_(
        Event.status == PENDING,
        and_(
            Event.status == RETRYING,
            or_(Event.next_attempt_at.is_(None), Event.next_attempt_at <= now),
        ),
        and_(Event.status == PROCESSING, Event.locked_until < now),
    )


def due_ids(
    state: AppState, limit: int | None = None, *, include_fresh: bool = True
) -> list[int]:
    """Ids of the events that are due, oldest first. ``include_fresh=False`` leaves
    out pending events so young that their own job is still on the way."""
    now = utcnow()
    query = select(Event.id).where(due(now)).order_by(Event.id)
    if not include_fresh:
        query = query.where(Event.created_at < now - GRACE)
    if limit is not None:
        query = query.limit(limit)
    with state.session() as session:
        return list(session.scalars(query))


def batch_with(state: AppState, event_id: int) -> list[int]:
    """``event_id`` and other due events, up to ``AMOCRM_BATCH_SIZE`` in all: a burst
    delivered together shares its API calls."""
    size = state.settings.batch_size
    others = [i for i in due_ids(state, size) if i != event_id]
    return [event_id, *others][:size]


def lease_expired(state: AppState) -> set[int]:
    """Events whose worker stopped holding them without finishing (killed)."""
    with state.session() as session:
        return set(
            session.scalars(
                select(Event.id).where(
                    Event.status == PROCESSING, Event.locked_until < utcnow()
                )
            )
        )


def claim(state: AppState, event_ids: list[int]) -> list[int]:
    """Take the events that are due and that nobody else holds, in one statement;
    return their ids. Two workers claiming the same ids split them, never share."""
    if not event_ids:
        return []
    now = utcnow()
    with state.session() as session:
        claimed = set(
            session.scalars(
                update(Event)
                .where(Event.id.in_(event_ids), due(now))
                .values(
                    status=PROCESSING,
                    locked_until=now + LEASE,
                    attempts=Event.attempts + 1,
                )
                .returning(Event.id)
            )
        )
        session.commit()
    return [i for i in event_ids if i in claimed]


def make_due(
    state: AppState,
    *,
    ids: Iterable[int] = (),
    status: str | None = None,
) -> list[int]:
    """Make events due now (``flask amocrm retry``): the events ``ids``, or every
    event in ``status`` (``failed`` or ``ignored``). Returns their ids; an id that
    does not exist is left out."""
    if status is not None and status not in (FAILED, IGNORED):
        raise ValueError(f"only failed or ignored events are retried, not {status!r}")
    with state.session() as session:
        query = select(Event)
        query = (
            query.where(Event.status == status)
            if status is not None
            else query.where(Event.id.in_(list(ids)))
        )
        events = list(session.scalars(query))
        for event in events:
            event.status = RETRYING
            event.next_attempt_at = utcnow()
            event.locked_until = None
        session.commit()
        return [e.id for e in events]


# -- the spool -------------------------------------------------------------------------


def spool_path(instance_path: str) -> str:
    """Where events go that the database refused."""
    return os.path.join(instance_path, SPOOL_NAME)


def spool(instance_path: str, record: dict[str, Any]) -> str:
    """Append an event the database refused to the spool; return the file's path."""
    os.makedirs(instance_path, exist_ok=True)
    path = spool_path(instance_path)
    line = json.dumps(record, default=str)
    with open(path, "a", encoding="utf-8") as fp:
        fp.write(line + "\n")
    return path


def load_spool(state: AppState, instance_path: str) -> int:
    """Store the events that were spooled to a file when the database refused them;
    return how many."""
    path = spool_path(instance_path)
    if not os.path.exists(path):
        return 0
    working = f"{path}.{os.getpid()}.loading"
    os.replace(path, working)
    loaded = 0
    with open(working, encoding="utf-8") as fp:
        lines = [line for line in fp if line.strip()]
    for line in lines:
        record: dict[str, Any] = json.loads(line)
        with state.session() as session:
            add(session, **{k: v for k, v in record.items() if k in SPOOLED})
            session.commit()
        loaded += 1
    os.remove(working)
    return loaded
