"""The functions RQ runs. They take ids only and run inside an app context."""

from __future__ import annotations

from flask import has_app_context

from .job_class import job_app


def deliver(event_id: int) -> str:
    """Deliver an event (``amocrm-event-<id>`` jobs), together with other due events
    up to ``AMOCRM_BATCH_SIZE``, so a burst shares API calls. Returns its status."""
    if has_app_context():  # AppJob pushed a fresh one
        return _deliver(event_id)
    with job_app().app_context():  # plain ``rq worker`` with FLASK_APP set
        return _deliver(event_id)


def _deliver(event_id: int) -> str:
    from ..extension import get_state
    from .deliver import deliver_events
    from .queue import drop_jobs
    from .sweeper import due_event_ids

    state = get_state()
    others = due_event_ids(state, state.settings.batch_size)
    batch = [event_id] + [i for i in others if i != event_id]
    outcomes = deliver_events(batch[: state.settings.batch_size])
    drop_jobs(state, [i for i in outcomes if i != event_id])
    return outcomes.get(event_id, "skipped")


def tick() -> dict[str, int]:
    """The periodic job: sweeper, agent, retention, keep-alive (see ``schedule``)."""
    from .schedule import run_tick

    if has_app_context():
        return run_tick()
    with job_app().app_context():
        return run_tick()
