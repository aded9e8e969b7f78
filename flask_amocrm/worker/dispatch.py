"""What happens to a stored event next, in each delivery mode (``AMOCRM_DELIVERY``).

- ``rq``: its id is queued for a worker;
- ``inline``: it is delivered in this process, together with the other due events (so
  retries happen on the next form even without cron);
- ``deferred``: nothing; the agent (``flask amocrm process`` or the periodic job)
  delivers it with the next batch.

In a request this happens once the response has gone to the visitor, so neither Redis
nor amoCRM adds to their wait. If the process dies before that, the event is
``pending`` in the table and the sweeper takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flask import after_this_request, current_app, has_request_context

from ..outbox import batch_with
from ..state import AppState
from .deliver import deliver_events
from .queue import enqueue_event, enqueue_new_event

log = logging.getLogger("flask_amocrm.worker")


def hand_off(state: AppState, event_id: int) -> None:
    """Hand a stored event on as its delivery mode says; in a request, after the
    response was sent. A failure is logged: the event stays due in the table."""
    mode = state.settings.delivery
    if mode == "deferred":
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def run() -> None:
        try:
            if mode == "rq":
                enqueue_new_event(state, event_id)
            elif mode == "inline":
                with app.app_context():
                    deliver_events(batch_with(state, event_id))
        except Exception:
            log.exception(
                "Flask-AmoCRM stored event %s but could not hand it on; the sweeper "
                "or 'flask amocrm process' will deliver it",
                event_id,
            )

    if has_request_context():

        @after_this_request
        def _later(response: Any) -> Any:
            response.call_on_close(run)
            return response

    else:
        run()


def hand_off_many(state: AppState, event_ids: Iterable[int]) -> None:
    """Hand on events that were made due outside a request (``retry``, ``import``):
    queued one by one in ``rq`` mode. In the other modes they stay due in the table,
    where ``flask amocrm process``, the agent or the next inline delivery takes
    them."""
    if state.settings.delivery != "rq":
        return
    for event_id in event_ids:
        enqueue_event(state, event_id)
