"""How delivery is doing, as ``flask amocrm status``, ``health`` and ``check``, the
admin's health and rules pages, the health endpoint and the metrics tell it: one
function for each question, so they never disagree, and one verdict,
:func:`check_health`, for "is it healthy".

The outage and the 403 pause are :mod:`.outage`'s (:func:`.outage.outage`,
:func:`.outage.paused`); the token's state is
:func:`flask_amocrm.amo.connect.token_state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import RedisError
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from ..amo.connect import TokenState, token_state
from ..amo.metadata import metadata_for
from ..i18n import N_, Message
from ..models import FAILED, PENDING, PROCESSING, RETRYING, ApiLog, Event, utcnow
from ..outbox import due, on_hold
from ..rules.check import check_rules
from ..state import AppState
from .outage import Outage, outage, paused
from .queue import get_queue

#: The window of :func:`requests_last_minute`.
MINUTE = timedelta(seconds=60)
#: An event due this long ago and still not delivered is late: ``flask amocrm
#: status`` lists it as stuck, and the health check fails (:func:`late_after`).
STUCK_AFTER = timedelta(minutes=15)
#: The statuses :class:`Health` counts: the events not finished yet.
OPEN_STATUSES = (PENDING, PROCESSING, RETRYING, FAILED)


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


def late_after(state: AppState) -> timedelta:
    """How long the oldest due event may wait before delivery counts as not keeping
    up: :data:`STUCK_AFTER`, or two agent runs when events wait for the agent
    (``deferred``: ``flask amocrm process`` from cron)."""
    if state.settings.delivery == "deferred":
        return max(STUCK_AFTER, timedelta(seconds=2 * state.settings.agent_interval))
    return STUCK_AFTER


@dataclass(frozen=True)
class Problem:
    """Why the site is not healthy: a stable ``code`` for machines, and what a
    person reads (an :func:`~flask_amocrm.i18n.N_` message)."""

    code: str
    message: Message


@dataclass(frozen=True)
class Health:
    """The site's health as :func:`check_health` found it, without calling amoCRM.

    Everything here is safe to show to anybody: no token, no address, no reason
    quoted from amoCRM or from an event (those are in :attr:`outage` and
    :attr:`pause`, which :meth:`as_json` leaves out)."""

    checked_at: datetime  # naive UTC
    problems: list[Problem]
    delivery: str
    enabled: bool
    outage: Outage | None = None
    pause: str | None = None
    token: TokenState | None = None
    #: Open events by status (:data:`OPEN_STATUSES`); empty if the database failed.
    events: dict[str, int] = field(default_factory=dict)
    #: Since when the oldest due event waits (naive UTC); ``None``: nothing is due.
    due_since: datetime | None = None
    #: RQ only: jobs waiting on the queue and the workers listening (``None``:
    #: Redis did not answer, or not ``rq``).
    queue_depth: int | None = None
    workers: list[WorkerInfo] | None = None
    #: RQ only: the kind of error Redis failed with (``None``: it answered).
    redis_error: str | None = None

    @property
    def healthy(self) -> bool:
        """No problem found."""
        return not self.problems

    @property
    def oldest_due_age(self) -> float | None:
        """Seconds the oldest due event has waited; ``None``: nothing is due."""
        if self.due_since is None:
            return None
        return max(0.0, (self.checked_at - self.due_since).total_seconds())

    def as_json(self) -> dict[str, Any]:
        """The report as the health endpoint and ``flask amocrm health --json`` give
        it: stable keys, codes instead of sentences, no secret, no personal data."""
        token = self.token
        return {
            "status": "ok" if self.healthy else "failing",
            "problems": [p.code for p in self.problems],
            "checked_at": _iso(self.checked_at),
            "amocrm": {
                "reachable": self.outage is None,
                "outage_since": _iso(self.outage.since) if self.outage else None,
                "paused": self.pause is not None,
            },
            "token": None
            if token is None
            else {
                "kind": token.kind,
                "connected": token.connected,
                "expires_at": _iso(token.expires_at),
            },
            "delivery": {
                "mode": self.delivery,
                "enabled": self.enabled,
                "events": dict(self.events),
                "oldest_due_age_seconds": None
                if self.oldest_due_age is None
                else round(self.oldest_due_age, 1),
                "queue_depth": self.queue_depth,
                "workers": None if self.workers is None else len(self.workers),
            },
        }


def _iso(when: datetime | None) -> str | None:
    return when.replace(tzinfo=UTC).isoformat() if when is not None else None


def _token_problem(token: TokenState, now: datetime) -> Problem | None:
    if token.revoked_at is not None:
        return Problem(
            "token",
            N_("amoCRM refused to refresh the OAuth token: connect amoCRM again."),
        )
    if not token.connected:
        return Problem("token", N_("amoCRM is not connected: there is no token."))
    if token.kind == "long-lived" and token.expires_at and token.expires_at < now:
        return Problem("token", N_("The long-lived token (AMOCRM_TOKEN) has expired."))
    return None


def _open_events(state: AppState) -> dict[str, int]:
    with state.session() as session:
        rows = session.execute(
            select(Event.status, func.count())
            .where(Event.status.in_(OPEN_STATUSES))
            .group_by(Event.status)
        ).all()
    found = {status: int(count) for status, count in rows}
    return {status: found.get(status, 0) for status in OPEN_STATUSES}


def check_health(state: AppState) -> Health:
    """Whether the site delivers its events, told from what the workers record and
    the database holds (no request to amoCRM): the one verdict that ``flask amocrm
    health``, the health endpoint, the metrics and the admin's health page give.

    Not healthy: the events database cannot be read; amoCRM is unreachable (an
    outage going on) or has blocked the account (the pause); there is no usable
    token; under RQ, Redis does not answer or no worker listens; or the oldest due
    event has waited longer than :func:`late_after`. Events that failed and wait
    for a person, and delivery switched off on purpose, are reported, not
    problems."""
    settings = state.settings
    now = utcnow()
    problems: list[Problem] = []
    found: dict[str, Any] = {}
    try:
        found["outage"] = outage(state)
        found["pause"] = paused(state)
        found["token"] = token_state(state)
        found["events"] = _open_events(state)
        found["due_since"] = oldest_due(state)
    except SQLAlchemyError as exc:
        problems.append(
            Problem(
                "database",
                N_(
                    "The events database cannot be read: %(error)s.",
                    error=type(exc).__name__,
                ),
            )
        )
    if found.get("outage") is not None:
        problems.append(
            Problem(
                "outage",
                N_("amoCRM is unreachable: %(reason)s", reason=found["outage"].reason),
            )
        )
    if found.get("pause"):
        problems.append(
            Problem(
                "paused",
                N_("Requests paused after a block: %(reason)s", reason=found["pause"]),
            )
        )
    token_problem = _token_problem(found["token"], now) if "token" in found else None
    if token_problem is not None:
        problems.append(token_problem)
    if settings.delivery == "rq":
        try:
            found["queue_depth"] = queue_depth(state)
            found["workers"] = listening_workers(state)
        except RedisError as exc:
            found["redis_error"] = type(exc).__name__
            problems.append(
                Problem(
                    "redis",
                    N_(
                        "Redis does not answer (%(error)s): events wait.",
                        error=type(exc).__name__,
                    ),
                )
            )
        if found.get("workers") == []:
            problems.append(
                Problem(
                    "no_workers",
                    N_(
                        "No worker is listening on queue %(queue)s.",
                        queue=repr(settings.queue),
                    ),
                )
            )
    due_since = found.get("due_since")
    if due_since is not None and now - due_since > late_after(state):
        problems.append(
            Problem(
                "late",
                N_(
                    "The oldest due event has waited more than %(minutes)s min.",
                    minutes=int(late_after(state).total_seconds() // 60),
                ),
            )
        )
    return Health(
        checked_at=now,
        problems=problems,
        delivery=settings.delivery,
        enabled=settings.enabled,
        **found,
    )
