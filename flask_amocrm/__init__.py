"""Flask-AmoCRM: turn what happens on a Flask site into amoCRM leads, durably.

Anything not documented here is internal.
"""

from __future__ import annotations

from .errors import AmoCRMError, Cancel
from .extension import AmoCRM
from .hooks import AmoIds, ApiCall
from .models import Event
from .rules.draft import EntityDraft, FieldValue, NoteDraft, PushPlan, TaskDraft
from .rules.signing import sign_id
from .signals import (
    contact_added,
    contact_updated,
    event_cancelled,
    event_captured,
    event_delivered,
    event_failed,
    form_submitted,
    lead_added,
    lead_deleted,
    lead_status_changed,
    lead_updated,
    mail_sent,
    note_added,
    task_completed,
)

__all__ = [
    "AmoCRM",
    "AmoCRMError",
    "AmoIds",
    "ApiCall",
    "Cancel",
    "EntityDraft",
    "Event",
    "FieldValue",
    "NoteDraft",
    "PushPlan",
    "TaskDraft",
    "contact_added",
    "contact_updated",
    "event_cancelled",
    "event_captured",
    "event_delivered",
    "event_failed",
    "form_submitted",
    "lead_added",
    "lead_deleted",
    "lead_status_changed",
    "lead_updated",
    "mail_sent",
    "note_added",
    "sign_id",
    "task_completed",
]
