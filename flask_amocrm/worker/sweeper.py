"""The sweeper: queues the events that are due and have no job (run periodically by
:mod:`.schedule` in ``rq`` mode, and once when a worker starts).

Redis is a work cache; the outbox table is the truth. An event is due when it is
``pending`` (Redis was down at capture, or restarted empty), ``retrying`` past its
``next_attempt_at``, or ``processing`` past its lease (its worker was killed).
"""

from __future__ import annotations

import logging

from ..inbox import due_inbound
from ..outbox import due_ids, lease_expired
from ..state import AppState
from .queue import enqueue_change, enqueue_event, jobs_waiting
from .rules_file import reload_rules

log = logging.getLogger("flask_amocrm.worker")


def sweep(
    state: AppState, limit: int | None = None, *, include_fresh: bool = False
) -> int:
    """Queue every due event that has no job; return how many were queued.

    ``include_fresh`` also queues pending events younger than the grace period (a
    burst worker: it must not stop while one waits for a job that never comes). An
    event that has its job already is not queued twice (:func:`enqueue_event`)."""
    queued = 0
    # A rule switched on again in the rules file makes its held events due.
    reload_rules(state)
    held = lease_expired(state)
    due = due_ids(state, limit, include_fresh=include_fresh)
    waiting = jobs_waiting(state, due, abandoned=held)
    for event_id in due:
        if event_id in waiting:
            continue
        if enqueue_event(state, event_id, abandoned=event_id in held):
            queued += 1
    if queued:
        log.info("Sweeper queued %s due events", queued)
    return queued


def sweep_changes(state: AppState, limit: int | None = None) -> int:
    """Queue every due change from amoCRM that has no job (one stored while Redis
    was down, or whose receiver raised and whose retry time has come)."""
    queued = sum(
        1 for change_id in due_inbound(state, limit) if enqueue_change(state, change_id)
    )
    if queued:
        log.info("Sweeper queued %s due changes from amoCRM", queued)
    return queued
