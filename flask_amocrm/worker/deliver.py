"""Delivering one event: claim it, plan it, send it, record the outcome.

An event is claimed with a lease (an atomic ``UPDATE ... WHERE``), so a second job for
the same event, or a second worker, does nothing. The ids amoCRM returns are committed
the moment it answers, so a retry resumes instead of creating a second lead.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import and_, or_, update

from ..amo.client import AmoClient
from ..errors import AmoCRMError, AuthError, RuleError
from ..extension import _State, get_state
from ..models import (
    DELIVERED,
    FAILED,
    IGNORED,
    PENDING,
    PROCESSING,
    RETRYING,
    Event,
    EventAttempt,
    utcnow,
)
from ..rules.schema import find_rule
from ..signals import event_delivered, event_failed
from .plan import build_plan

log = logging.getLogger("flask_amocrm.worker")

#: How long a worker holds an event before others may take it over (a killed worker).
LEASE = timedelta(minutes=10)
#: The first retry waits about this long; each next one twice as long, up to the cap.
RETRY_BASE_SECONDS = 30


def retry_delay(attempts: int, cap: int) -> float:
    """Exponential backoff with jitter: half fixed, half random (never near zero)."""
    ceiling = min(cap, RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _claimable(now: Any) -> Any:
    return or_(
        Event.status == PENDING,
        and_(Event.status == RETRYING,
             or_(Event.next_attempt_at.is_(None), Event.next_attempt_at <= now)),
        and_(Event.status == PROCESSING, Event.locked_until < now),
    )


def claim(state: _State, event_id: int) -> bool:
    """Take the event for this worker, if it is due and nobody else holds it."""
    now = utcnow()
    with state.session() as session:
        result = session.execute(
            update(Event)
            .where(Event.id == event_id, _claimable(now))
            .values(status=PROCESSING, locked_until=now + LEASE,
                    attempts=Event.attempts + 1)
        )
        session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]


def make_client(state: _State) -> AmoClient:
    """The amoCRM client of this app."""
    token = state.settings.token
    if not token:
        raise AuthError("amoCRM is not connected: no access token is stored yet "
                        "(run 'flask amocrm auth' or connect it in the admin)")
    return AmoClient(state.settings.base_url, token, timeout=state.settings.timeout)


def deliver_event(event_id: int) -> str:
    """Deliver one event of the current app; return its status afterwards.

    Returns ``"skipped"`` when the event is not due or another worker holds it.
    """
    state = get_state()
    if not claim(state, event_id):
        return "skipped"
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with state.session() as session:
        event = session.get(Event, event_id)
        assert event is not None  # claimed just now
        attempt = EventAttempt(event_id=event.id, worker=worker)
        session.add(attempt)
        session.commit()
        error: str | None = None
        try:
            outcome = _send(state, session, event)
        except RuleError as exc:
            outcome, error = FAILED, f"rule error: {exc}"
        except AmoCRMError as exc:
            outcome = RETRYING if exc.retryable else FAILED
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug or a database hiccup: keep trying, loudly
            log.exception("Unexpected error delivering event %s", event_id)
            outcome, error = RETRYING, f"unexpected {type(exc).__name__}: {exc}"

        now = utcnow()
        event.status = outcome
        event.locked_until = None
        event.last_error = error
        if outcome == RETRYING:
            delay = retry_delay(event.attempts, state.settings.retry_max_delay)
            event.next_attempt_at = now + timedelta(seconds=delay)
        else:
            event.next_attempt_at = None
        if outcome == DELIVERED:
            event.delivered_at = now
        attempt.finished_at = now
        attempt.outcome = outcome
        attempt.error = error
        session.commit()

    if outcome == DELIVERED:
        log.info("Event %s delivered: %s", event_id, event.remote)
        event_delivered.send(app, event=event)
    elif outcome == FAILED:
        log.warning("Event %s failed: %s", event_id, error)
        event_failed.send(app, event=event, error=error)
    elif outcome == RETRYING:
        log.warning("Event %s will be retried at %s: %s", event_id,
                    event.next_attempt_at, error)
    return outcome


def _send(state: _State, session: Any, event: Event) -> str:
    if event.remote.get("lead_id"):
        return DELIVERED  # an earlier attempt got that far before it was cut off
    rule = find_rule(state.settings.rules, event.kind, event.source)
    if rule is None:
        event.log = [*event.log, f"no rule for {event.kind} {event.source!r}"]
        return IGNORED
    section = "forms" if event.kind == "form" else "mails"
    plan = build_plan(rule, event, where=f"{section}.{event.source}")
    if plan.warnings:
        event.log = [*event.log, *plan.warnings]
    item = dict(plan.lead, request_id=str(event.id))
    answer = make_client(state).post("/api/v4/leads/complex", [item])
    result = _complex_result(answer, str(event.id))
    event.remote = {
        "lead_id": result.get("id"),
        "contact_id": result.get("contact_id"),
        "company_id": result.get("company_id"),
        "merged": bool(result.get("merged")),
    }
    session.commit()  # the ids are safe before anything else can go wrong
    return DELIVERED


def _complex_result(answer: Any, request_id: str) -> dict[str, Any]:
    """Find our item in a ``leads/complex`` answer (a bare array per the docs; the
    HAL ``_embedded.leads`` shape is accepted too)."""
    items = answer
    if isinstance(answer, dict):
        items = answer.get("_embedded", {}).get("leads", [])
    for item in items or []:
        ids = item.get("request_id")
        ids = ids if isinstance(ids, list) else [ids]
        if request_id in [str(i) for i in ids]:
            return item  # type: ignore[no-any-return]
    raise AmoCRMError(f"leads/complex answered without our item {request_id}: "
                      f"{str(answer)[:300]}")
