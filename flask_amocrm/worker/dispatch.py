"""What happens to a stored event next, in each delivery mode (``AMOCRM_DELIVERY``).

- ``rq``: its id is queued for a worker;
- ``inline``: it is delivered in this process, together with the other due events (so
  retries happen on the next form even without cron);
- ``deferred``: nothing; the agent (``flask amocrm process`` or the periodic job)
  delivers it with the next batch.

Changes stored from amoCRM (webhooks, the events log) are handed on the same way by
:func:`hand_off_changes`.

In a request this happens once the response has gone to the visitor, so neither Redis
nor amoCRM adds to their wait. If the process dies before that, the event is
``pending`` in the table and the sweeper takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from flask import after_this_request, current_app, has_request_context

from ..inbox import due_inbound
from ..outbox import batch_with, make_due
from ..state import AppState
from .deliver import deliver_events, next_batch_size
from .inbound import handle_changes
from .queue import enqueue_change, enqueue_event, enqueue_new_event
from .spam import mark_released

log = logging.getLogger("flask_amocrm.worker")


def hand_off(state: AppState, event_id: int) -> None:
    """Hand a stored event on as its delivery mode says; in a request, after the
    response was sent. A failure is logged: the event stays due in the table."""
    mode = state.settings.delivery
    if mode == "deferred":
        return

    def run() -> None:
        if mode == "rq":
            enqueue_new_event(state, event_id)
        elif mode == "inline":
            deliver_events(batch_with(state, event_id)[: next_batch_size(state)])

    _soon(run, [event_id])


def hand_off_many(state: AppState, event_ids: Iterable[int]) -> None:
    """Hand on events that were made due (``retry``, ``import``): queued one by one
    in ``rq`` mode. In ``inline`` mode, inside a request (the admin's retry), they
    are delivered after the response, in batches; otherwise they stay due in the
    table, where ``flask amocrm process``, the agent or the next inline delivery
    takes them."""
    mode = state.settings.delivery
    ids = list(event_ids)
    if mode == "rq":
        for event_id in ids:
            enqueue_event(state, event_id)
    elif mode == "inline" and ids and has_request_context():

        def run() -> None:
            start = 0
            while start < len(ids):
                size = next_batch_size(state)
                deliver_events(ids[start : start + size])
                start += size

        _soon(run, ids)


def retry(
    state: AppState, *, ids: Iterable[int] = (), status: str | None = None
) -> list[int]:
    """Make events due again and hand them on (``flask amocrm retry``, the admin's
    retry): the events ``ids``, or every event in ``status`` (``failed`` or
    ``ignored``). Returns the ids of those made due."""
    due = make_due(state, ids=ids, status=status)
    hand_off_many(state, due)
    return due


def release(state: AppState, event_id: int, who: str) -> bool:
    """Release an event held as spam (``flask amocrm release ID``, the admin's
    button): it is made due, handed on as :func:`hand_off_many` does, and delivered
    without being judged spam again. ``False`` when it is not ``spam``."""
    if not mark_released(state, event_id, who):
        return False
    hand_off_many(state, [event_id])
    return True


def hand_off_changes(state: AppState, change_ids: list[int]) -> None:
    """Hand on changes stored from amoCRM (a webhook, the events log) as the
    delivery mode says: ``rq`` queues one job per change; ``inline`` sends their
    signals in this process (in a request, after the response: amoCRM waits at
    most 2 seconds for it), with up to ``AMOCRM_BATCH_SIZE`` other due changes
    (retries); ``deferred`` leaves them to the agent. A failure is logged: the rows
    stay due in the table."""
    mode = state.settings.delivery
    if mode == "deferred" or not change_ids:
        return

    def run() -> None:
        if mode == "rq":
            for change_id in change_ids:
                enqueue_change(state, change_id)
        else:
            due = due_inbound(state, state.settings.batch_size)
            handle_changes(state, list(dict.fromkeys([*change_ids, *due])))

    _soon(run, change_ids, what="change")


def _soon(run: Callable[[], None], ids: list[int], *, what: str = "event") -> None:
    """Run ``run`` in an app context: after the response in a request, else now.
    A failure is logged: the events (or changes) stay due in the table."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def guarded() -> None:
        try:
            with app.app_context():
                run()
        except Exception:
            log.exception(
                "Flask-AmoCRM stored %s %s but could not hand it on; the sweeper "
                "or 'flask amocrm process' will take it",
                what,
                ", ".join(map(str, ids[:10])),
            )

    if has_request_context():

        @after_this_request
        def _later(response: Any) -> Any:
            response.call_on_close(guarded)
            return response

    else:
        guarded()
