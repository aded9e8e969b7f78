"""Handling changes that came from amoCRM: the site's signals, once per change.

A stored change (:mod:`flask_amocrm.inbox`) is claimed with a lease, then each
receiver of its signal is called in this app's context with the change's values
and the site's own :class:`~flask_amocrm.models.Event` when the lead (or contact)
is the site's. The event is found by the marker field a webhook carries (the uid
the worker wrote on the lead, :mod:`.markers`), else by the lead or contact id in
an event's ``remote`` ids.

A receiver that raises does not stop the others. Those that succeeded are
recorded on the row (``receivers_done``) as soon as the row is finished, and the
row is tried again with the outbound events' backoff
(:func:`~.deliver.retry_delay`, capped by ``AMOCRM_RETRY_MAX_DELAY``), for ever:
a change is never dropped, and a receiver that succeeded is never called again
for it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..inbox import claim_inbound
from ..models import (
    INBOUND_DONE,
    INBOUND_RETRYING,
    Event,
    InboundChange,
    utcnow,
)
from ..outbox import cut_reason
from ..signals import INBOUND_SIGNALS, send_each
from ..state import AppState
from .deliver import retry_delay
from .markers import known_marker_field

log = logging.getLogger("flask_amocrm.worker")


def handle_changes(state: AppState, ids: list[int]) -> dict[int, str]:
    """Send the signals of these changes (those due and not held by another
    worker); return the status each claimed one ended in."""
    claimed = claim_inbound(state, ids)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    outcomes: dict[int, str] = {}
    marker = known_marker_field(state) if claimed else None
    for row_id in claimed:
        with state.session() as session:
            row = session.get(InboundChange, row_id)
            if row is None:
                continue
            outcomes[row_id] = _handle(state, session, app, row, marker)
    return outcomes


def _handle(
    state: AppState, session: Session, app: Any, row: InboundChange, marker: int | None
) -> str:
    signal = INBOUND_SIGNALS.get(row.signal)
    done = list(row.receivers_done or [])
    failures: list[tuple[str, BaseException]] = []
    if signal is not None:
        event = site_event(session, row, marker)
        if event is not None:
            session.expunge(event)

        def record(name: str) -> None:
            # Saved before the next receiver runs: a worker killed after this
            # one never calls it again.
            done.append(name)
            row.receivers_done = list(done)
            session.commit()

        _, failures = send_each(
            signal,
            app,
            list(done),
            on_success=record,
            **dict(row.values or {}),
            event=event,
            change=row,
        )
    row.receivers_done = list(done)
    row.locked_until = None
    if failures:
        name, exc = failures[0]
        row.status = INBOUND_RETRYING
        row.last_error = cut_reason(
            "; ".join(f"{n}: {type(e).__name__}: {e}" for n, e in failures)
        )
        row.next_attempt_at = utcnow() + timedelta(
            seconds=retry_delay(row.attempts, state.settings.retry_max_delay)
        )
        # The message may quote the site's data: only its kind reaches the log.
        log.warning(
            "Change %s (%s): receiver %s raised %s; tried again at %s",
            row.id,
            row.signal,
            name,
            type(exc).__name__,
            row.next_attempt_at,
        )
    else:
        row.status = INBOUND_DONE
        row.last_error = None
        row.next_attempt_at = None
        row.done_at = utcnow()
    status = row.status
    session.commit()
    return status


def _lead_of(row: InboundChange) -> int | None:
    """The lead a change is about, when it is about one."""
    values = row.values or {}
    if row.entity == "lead":
        return row.entity_id
    if values.get("entity_type") == "lead" and values.get("entity_id"):
        return int(values["entity_id"])
    return None


def site_event(
    session: Session, row: InboundChange, marker: int | None
) -> Event | None:
    """The site's event that created the lead (or contact) of this change."""
    uid = (row.fields or {}).get(str(marker)) if marker is not None else None
    if uid:
        found = session.scalar(select(Event).where(Event.uid == str(uid)))
        if found is not None:
            return found
    lead_id = _lead_of(row)
    if lead_id is not None:
        return _by_remote(session, "lead_id", lead_id)
    values = row.values or {}
    if row.entity == "contact" or values.get("entity_type") == "contact":
        contact_id = row.entity_id if row.entity == "contact" else values["entity_id"]
        return _by_remote(session, "contact_id", int(contact_id))
    return None


def _by_remote(session: Session, name: str, entity_id: int) -> Event | None:
    return session.scalar(
        select(Event)
        .where(Event.remote[name].as_integer() == entity_id)
        .order_by(Event.id)
        .limit(1)
    )
