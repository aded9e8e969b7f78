"""How delivery is doing, as ``flask amocrm status`` and ``check`` and the admin's
health and rules pages tell it: one function for each question, so the command and the
pages never disagree.

The outage and the 403 pause are :mod:`.outage`'s (:func:`.outage.outage`,
:func:`.outage.paused`); the token's state is
:func:`flask_amocrm.amo.connect.token_state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, select

from ..amo.metadata import metadata_for
from ..models import PROCESSING, ApiLog, Event, utcnow
from ..outbox import due, on_hold
from ..rules.check import check_rules
from ..state import AppState
from .queue import get_queue

#: The window of :func:`requests_last_minute`.
MINUTE = timedelta(seconds=60)


@dataclass(frozen=True)
class WorkerInfo:
    """One RQ worker listening on the app's queue."""

    name: str
    #: RQ's word for it: ``idle``, ``busy``, ``suspended`` ...
    state: str
    #: When it last said it is alive (aware UTC), if it ever did.
    last_heartbeat: datetime | None


def listening_workers(state: AppState) -> list[WorkerInfo]:
    """The RQ workers registered for the app's queue (RQ's worker registry). Raises
    the Redis error when Redis does not answer."""
    from rq import Worker

    out = []
    for worker in Worker.all(queue=get_queue(state)):
        said = worker.get_state()  # RQ's WorkerStatus, or the text it stored
        out.append(
            WorkerInfo(
                name=worker.name,
                state=str(getattr(said, "value", said) or "?"),
                last_heartbeat=worker.last_heartbeat,
            )
        )
    return out


def queue_depth(state: AppState) -> int:
    """How many jobs wait on the app's RQ queue. Raises the Redis error when Redis
    does not answer."""
    return int(get_queue(state).count)


def check_account(state: AppState) -> list[str]:
    """``flask amocrm check``: the account's metadata read afresh, and every
    problem of the rules against it (empty when all is well). Raises
    :class:`~flask_amocrm.errors.AmoCRMError` when the account cannot be read."""
    meta = metadata_for(state, refresh=True)
    return check_rules(state.settings.rules, meta)


def waiting_since() -> ColumnElement[Any]:
    """Since when an event has waited for delivery: a held event since its lease
    ran out, the others since they were last made due (or stored)."""
    return case(
        (Event.status == PROCESSING, Event.locked_until),
        else_=func.coalesce(Event.next_attempt_at, Event.updated_at),
    )


def oldest_due(state: AppState) -> datetime | None:
    """Since when the event that has waited longest among the due ones has been
    waiting (naive UTC); ``None`` when nothing is due."""
    now = utcnow()
    # events whose delivery is switched off are not due: they wait for a person
    with state.session() as session:
        found = session.scalar(
            select(func.min(waiting_since())).where(due(now, on_hold(state)))
        )
    return found if isinstance(found, datetime) else None


def requests_last_minute(state: AppState) -> int | None:
    """How many requests went to amoCRM in the last minute; ``None`` when requests
    are not logged (``AMOCRM_LOG_REQUESTS`` off).

    Counted from the API log table, not from the rate limiter: the limiter keeps
    only the next free slot (:mod:`flask_amocrm.amo.ratelimit`), not a count."""
    if not state.settings.log_requests:
        return None
    since = utcnow() - MINUTE
    with state.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(ApiLog)
                .where(ApiLog.created_at >= since)
            )
            or 0
        )


def budget_per_minute(state: AppState) -> int:
    """The requests amoCRM allows in a minute: ``AMOCRM_RATE_LIMIT`` × 60."""
    return int(state.settings.rate_limit * 60)
