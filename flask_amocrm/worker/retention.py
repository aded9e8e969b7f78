"""Retention: delivered events and their attempts are deleted after
``AMOCRM_RETENTION_DAYS`` (personal data is kept no longer than needed). Events that
still wait, failed or were ignored are kept: they need a person or a rule."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from ..models import DELIVERED, Event, EventAttempt, utcnow
from ..state import AppState


def purge_events(state: AppState, days: int | None = None) -> int:
    """Delete delivered events older than ``days``; return how many."""
    cutoff = utcnow() - timedelta(days=days or state.settings.retention_days)
    old = select(Event.id).where(Event.status == DELIVERED, Event.delivered_at < cutoff)
    with state.session() as session:
        session.execute(delete(EventAttempt).where(EventAttempt.event_id.in_(old)))
        result = session.execute(delete(Event).where(Event.id.in_(old)))
        count = result.rowcount  # type: ignore[attr-defined]
        session.commit()
    return int(count or 0)
