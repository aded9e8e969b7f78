"""The sweeper: finds events that are due and have no job, and the agent's batch run
(both are run periodically by :mod:`flask_amocrm.worker.schedule`).

Redis is a work cache; the outbox table is the truth. An event is due when it is
``pending`` (Redis was down at capture, or restarted empty), ``retrying`` past its
``next_attempt_at``, or ``processing`` past its lease (its worker was killed).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select

from ..extension import _State, get_state
from ..models import PROCESSING, Event, utcnow
from .deliver import _claimable, deliver_events

log = logging.getLogger("flask_amocrm.worker")

#: A pending event younger than this still has its own job on the way.
_GRACE = timedelta(seconds=10)


def due_event_ids(
    state: _State, limit: int | None = None, *, include_fresh: bool = True
) -> list[int]:
    """Ids of the events that are due, oldest first."""
    now = utcnow()
    query = select(Event.id).where(_claimable(now)).order_by(Event.id)
    if not include_fresh:
        query = query.where(Event.created_at < now - _GRACE)
    if limit is not None:
        query = query.limit(limit)
    with state.session() as session:
        return list(session.scalars(query))


def _lease_expired(state: _State) -> set[int]:
    """Events whose worker stopped holding them without finishing (killed)."""
    with state.session() as session:
        return set(
            session.scalars(
                select(Event.id).where(
                    Event.status == PROCESSING, Event.locked_until < utcnow()
                )
            )
        )


def load_spool(state: _State) -> int:
    """Store the events that were spooled to a file when the database refused them."""
    path = os.path.join(current_app.instance_path, "amocrm-spool.jsonl")
    if not os.path.exists(path):
        return 0
    working = f"{path}.{os.getpid()}.loading"
    os.replace(path, working)
    loaded = 0
    with open(working, encoding="utf-8") as fp:
        lines = [line for line in fp if line.strip()]
    for line in lines:
        record: dict[str, Any] = json.loads(line)
        event = Event(
            **{
                k: v
                for k, v in record.items()
                if k in {"kind", "source", "data", "files", "context", "dedupe_key"}
            }
        )
        with state.session() as session:
            session.add(event)
            session.commit()
        loaded += 1
    os.remove(working)
    return loaded


def process(limit: int | None = None) -> dict[str, int]:
    """Deliver due events in this process (``flask amocrm process``, cron, tests)."""
    state = get_state()
    counts: dict[str, int] = {"spooled": load_spool(state)}
    ids = due_event_ids(state, limit)
    size = state.settings.batch_size
    for start in range(0, len(ids), size):
        for outcome in deliver_events(ids[start : start + size]).values():
            counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def sweep(limit: int | None = None) -> int:
    """Queue every due event that has no job; return how many were queued."""
    from .queue import enqueue_event

    state = get_state()
    queued = 0
    held = _lease_expired(state)
    for event_id in due_event_ids(state, limit, include_fresh=False):
        if enqueue_event(state, event_id, abandoned=event_id in held):
            queued += 1
    if queued:
        log.info("Sweeper queued %s due events", queued)
    return queued
