"""The functions RQ runs. They take ids only and run inside an app context: the one
:class:`~.job_class.AppJob` pushed, or, under a plain ``rq worker``, one of the app
``FLASK_APP`` names."""

from __future__ import annotations

from flask import has_app_context

from ..outbox import batch_with
from ..state import get_state
from .backlog import drain
from .inbound import handle_changes
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
    """The event's batch, and while events are due, batch after batch, several at
    once (:func:`~.backlog.drain`): a burst is delivered by the jobs that are
    running, and the jobs of the events they took are dropped unrun."""
    state = get_state()

    def done(ids: list[int]) -> None:
        drop_jobs(state, [i for i in ids if i != event_id])

    outcomes = drain(state, first=batch_with(state, event_id), after_batch=done)
    return outcomes.get(event_id, "skipped")


def handle_change(change_id: int) -> str:
    """Send the signals of a change from amoCRM (``amocrm-inbound-<id>`` jobs);
    returns its status afterwards (``skipped``: not due, or held elsewhere)."""
    if has_app_context():
        return _handle_change(change_id)
    with flask_app().app_context():
        return _handle_change(change_id)


def _handle_change(change_id: int) -> str:
    return handle_changes(get_state(), [change_id]).get(change_id, "skipped")


def tick() -> dict[str, int]:
    """The periodic job: sweeper, agent, retention, keep-alive (see ``schedule``)."""
    if has_app_context():
        return run_tick(get_state())
    with flask_app().app_context():
        return run_tick(get_state())
