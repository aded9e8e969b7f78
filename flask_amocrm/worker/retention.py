"""Retention: delivered events and their attempts are deleted after
``AMOCRM_RETENTION_DAYS`` (personal data is kept no longer than needed), and the
files visitors uploaded with them (CVs, passports) are deleted with them. Events that
still wait, failed or were ignored are kept: they need a person or a rule. Changes
from amoCRM whose signals were all sent go after the same number of days (amoCRM
sends a webhook again for at most a few hours, and reconciliation reads only the
last interval, so an old key is never needed again)."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select

from ..models import (
    DELIVERED,
    INBOUND_DONE,
    Event,
    EventAttempt,
    InboundChange,
    InboundClaim,
    utcnow,
)
from ..state import AppState

log = logging.getLogger("flask_amocrm")

#: Events read at a time while purging.
_CHUNK = 500


def purge_events(state: AppState, days: int | None = None) -> int:
    """Delete delivered events older than ``days``, and their uploaded files;
    return how many events."""
    cutoff = utcnow() - timedelta(days=days or state.settings.retention_days)
    old = select(Event.id).where(Event.status == DELIVERED, Event.delivered_at < cutoff)
    count = 0
    with state.session() as session:
        while True:
            rows = session.execute(
                select(Event.id, Event.files)
                .where(Event.id.in_(old))
                .order_by(Event.id)
                .limit(_CHUNK)
            ).all()
            if not rows:
                break
            ids = [row.id for row in rows]
            for row in rows:
                remove_uploads(state, row.files)
            session.execute(delete(EventAttempt).where(EventAttempt.event_id.in_(ids)))
            session.execute(delete(Event).where(Event.id.in_(ids)))
            session.commit()
            count += len(ids)
    return count


def purge_changes(state: AppState, days: int | None = None) -> int:
    """Delete the changes from amoCRM handled more than ``days`` ago; how many."""
    cutoff = utcnow() - timedelta(days=days or state.settings.retention_days)
    old = select(InboundChange.id).where(
        InboundChange.status == INBOUND_DONE, InboundChange.done_at < cutoff
    )
    with state.session() as session:
        session.execute(delete(InboundClaim).where(InboundClaim.change_id.in_(old)))
        result = session.execute(delete(InboundChange).where(InboundChange.id.in_(old)))
        session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def remove_uploads(state: AppState, files: Any) -> None:
    """Delete the files of an event saved under ``AMOCRM_UPLOAD_FOLDER`` (only
    there: a stored path that leads elsewhere is left alone)."""
    folder = state.settings.upload_folder
    if not folder or not isinstance(files, list):
        return
    root = os.path.realpath(folder)
    for entry in files:
        relative = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(relative, str) or not relative:
            continue
        path = os.path.realpath(os.path.join(root, relative))
        if not path.startswith(root + os.sep):
            continue
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("Flask-AmoCRM could not delete an upload: %s", exc.strerror)
