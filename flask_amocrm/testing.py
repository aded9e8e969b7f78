"""Helpers for testing a site that uses Flask-AmoCRM.

::

    from flask_amocrm.testing import record_events

    with record_events(app) as events:
        client.post("/callback", data={...})
    assert events[0].source == "callback"
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask

from .models import Event
from .signals import event_captured
from .state import get_state
from .worker.agent import process


@contextmanager
def record_events(app: Flask) -> Iterator[list[Event]]:
    """Collect the events ``app`` captures inside the block (as they were stored)."""
    events: list[Event] = []

    def record(sender: Flask, event: Event, **extra: Any) -> None:
        events.append(event)

    with event_captured.connected_to(record, sender=app):
        yield events


def deliver_pending(app: Flask, limit: int | None = None) -> dict[str, int]:
    """Deliver every due event of ``app`` now, in this process, and send the
    signals of the due changes from amoCRM (``changes_done`` counts them)."""
    with app.app_context():
        return process(get_state(app), limit)
