"""Flask-AmoCRM: turn what happens on a Flask site into amoCRM leads, durably.

Anything not documented here is internal.
"""

from __future__ import annotations

from .errors import AmoCRMError
from .extension import AmoCRM
from .models import Event
from .rules.signing import sign_id
from .signals import (
    event_captured,
    event_delivered,
    event_failed,
    form_submitted,
    mail_sent,
)

__all__ = [
    "AmoCRM",
    "AmoCRMError",
    "Event",
    "event_captured",
    "event_delivered",
    "event_failed",
    "form_submitted",
    "mail_sent",
    "sign_id",
]
