"""The functions RQ runs. They take ids only and run inside an app context."""

from __future__ import annotations

from flask import has_app_context

from .job_class import job_app


def deliver(event_id: int) -> str:
    """Deliver one event (``amocrm-event-<id>`` jobs). Returns its status."""
    from .deliver import deliver_event

    if has_app_context():  # AppJob pushed a fresh one
        return deliver_event(event_id)
    with job_app().app_context():  # plain ``rq worker`` with FLASK_APP set
        return deliver_event(event_id)


def sweep() -> int:
    """Queue every event that is due and has no job (the periodic sweeper)."""
    from .sweeper import run_scheduled_sweep

    if has_app_context():
        return run_scheduled_sweep()
    with job_app().app_context():
        return run_scheduled_sweep()
