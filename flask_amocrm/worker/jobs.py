"""The functions RQ runs. They take ids only and run inside an app context: the one
:class:`~.job_class.AppJob` pushed, or, under a plain ``rq worker``, one of the app
``FLASK_APP`` names."""

from __future__ import annotations

from flask import has_app_context

from ..outbox import batch_with
from ..state import get_state
from .deliver import deliver_events
from .job_class import flask_app
from .queue import drop_jobs
from .schedule import run_tick


def deliver(event_id: int) -> str:
    """Deliver an event (``amocrm-event-<id>`` jobs), together with other due events
    up to ``AMOCRM_BATCH_SIZE``, so a burst shares API calls. Returns its status."""
    if has_app_context():
        return _deliver(event_id)
    with flask_app().app_context():
        return _deliver(event_id)


def _deliver(event_id: int) -> str:
    state = get_state()
    outcomes = deliver_events(batch_with(state, event_id))
    drop_jobs(state, [i for i in outcomes if i != event_id])
    return outcomes.get(event_id, "skipped")


def tick() -> dict[str, int]:
    """The periodic job: sweeper, agent, retention, keep-alive (see ``schedule``)."""
    if has_app_context():
        return run_tick(get_state())
    with flask_app().app_context():
        return run_tick(get_state())
