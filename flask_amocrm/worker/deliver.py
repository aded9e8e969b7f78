"""Delivering events: claim them, plan them, send them together, record outcomes.

An event is claimed with a lease (an atomic ``UPDATE ... WHERE``), so a second job for
the same event, or a second worker, does nothing. The ids amoCRM returns are committed
the moment it answers, so a retry resumes instead of creating a second lead.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app
from sqlalchemy import select

from .. import shared
from ..amo.apilog import event_context
from ..amo.clients import client_for
from ..amo.metadata import metadata_for
from ..errors import (
    AmoCRMError,
    CallVetoed,
    RuleError,
    ValidationError,
    describe,
    failure_reason,
)
from ..hooks import for_events
from ..i18n import N_, message_of
from ..meter import count_outcomes
from ..models import (
    CANCELLED,
    DELIVERED,
    FAILED,
    IGNORED,
    RETRYING,
    SPAM,
    Event,
    EventAttempt,
    utcnow,
)
from ..outbox import append_log, claim, claim_due, cut_reason
from ..progress import Progress
from ..rules.plan import Plan, PlanEnv
from ..rules.render import build_plan
from ..rules.schema import find_rule
from ..signals import event_cancelled, event_delivered, event_failed
from ..state import AppState, get_state
from .consent import missing_consent, record_consent
from .delivery import Delivery
from .execute import execute, shares_wide_calls
from .index import contact_index
from .lease import LeaseKeeper
from .lookup import key_locks
from .markers import forget_marker_field, mark
from .outage import note_failure, note_success, paused
from .push import after_push, before_push, reapply
from .rules_file import reload_rules
from .sources import forget_source, tag_source
from .spam import screen, spam_reason

log = logging.getLogger("flask_amocrm.worker")

#: Errors of an event's own values while its plan is built (``OverflowError`` for a
#: date out of range or an integer too large for a float, ``ValueError`` for digits
#: Python will not read, ``UnicodeError``): the event fails, it is not retried.
VALUE_ERRORS = (OverflowError, ValueError, UnicodeError, RecursionError)

#: What an attempt says when another worker took its events over (its lease ran out
#: while this one was stopped): that worker writes their outcome.
LEASE_LOST = N_("the lease ran out and another worker took the event over")

#: The first retry waits about this long; each next one twice as long, up to the cap.
RETRY_BASE_SECONDS = 30


def retry_delay(attempts: int, cap: int) -> float:
    """Exponential backoff with jitter: half fixed, half random (never near zero)."""
    ceiling = min(cap, RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def deliver_event(event_id: int) -> str:
    """Deliver one event of the current app; return its status afterwards.

    Returns ``"skipped"`` when the event is not due or another worker holds it.
    """
    return deliver_events([event_id]).get(event_id, "skipped")


#: A batch after one that had nothing to write 250 a call
#: (:func:`~.execute.shares_wide_calls`), and the first batch a process delivers, is
#: at most one call's worth of leads (amoCRM takes 50 a call): its first request
#: leaves as soon as those are planned, and a larger batch would share no call more.
#: A batch with notes, tasks or links is followed by a full one
#: (``AMOCRM_BATCH_SIZE``): they go 250 a call.
NARROW_BATCH = 50


class _LastBatch:
    """What the last batch this process planned said of the events coming."""

    wide = False


def next_batch_size(state: AppState) -> int:
    """How many events the next batch of this process takes: ``AMOCRM_BATCH_SIZE``
    after a batch that had notes, tasks or links to write, else at most
    :data:`NARROW_BATCH`."""
    size = state.settings.batch_size
    if state.local("last_batch", _LastBatch).wide:
        return size
    return min(size, NARROW_BATCH)


def deliver_events(
    event_ids: list[int], *, planned: Callable[[], None] | None = None
) -> dict[int, str]:
    """Deliver a batch of events of the current app together.

    Returns the status each claimed event ended in; events that were not due or that
    another worker holds are left out. ``planned`` as for :func:`deliver_claimed`.
    """
    return deliver_claimed(claim_events(event_ids), planned=planned)


def claim_events(event_ids: list[int], *, fill: bool = False) -> list[int]:
    """Claim those of these events of the current app that are due and that
    nobody else holds (:func:`~flask_amocrm.outbox.claim`). With ``fill``, as many
    of the oldest due events nobody holds as another worker took of them
    (:func:`~flask_amocrm.outbox.claim_due`), so the batch is full anyway."""
    state = get_state()
    reload_rules(state)  # a rules file fixed since the last batch is used now
    wanted = list(dict.fromkeys(event_ids))
    claimed = claim(state, wanted)
    if fill and len(claimed) < len(wanted):
        claimed += claim_due(state, len(wanted) - len(claimed))
    return claimed


def deliver_due(
    limit: int, *, planned: Callable[[], None] | None = None
) -> dict[int, str]:
    """Claim up to ``limit`` of the oldest due events of the current app and
    deliver them together (:func:`~flask_amocrm.outbox.claim_due`); the status each
    ended in, nothing when none was due. ``planned`` as for
    :func:`deliver_claimed`."""
    state = get_state()
    reload_rules(state)
    return deliver_claimed(claim_due(state, limit), planned=planned)


def deliver_claimed(
    claimed: list[int], *, planned: Callable[[], None] | None = None
) -> dict[int, str]:
    """Deliver the events this worker has just claimed, together. ``planned()`` is
    called once their plans are built, before the first call to amoCRM."""
    if not claimed:
        return {}
    state = get_state()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    worker = f"{socket.gethostname()}:{os.getpid()}"
    outcomes: dict[int, tuple[str, str | None]] = {}
    with state.session() as session:
        events = list(
            session.scalars(
                select(Event).where(Event.id.in_(claimed)).order_by(Event.id)
            )
        )
        attempts = {e.id: EventAttempt(event_id=e.id, worker=worker) for e in events}
        session.add_all(attempts.values())
        session.commit()

        # Renewed while the batch is sent: another worker takes an event only
        # when this one stopped holding it (killed, or stopped for longer than
        # the lease), and then writes its outcome itself.
        keeper = LeaseKeeper(state, {e.id: e.locked_until for e in events})
        with keeper:
            deliveries: list[Delivery] = []
            for event in events:
                try:
                    with for_events([event.id]):
                        held = _screen(state, event)
                        delivery = None if held else _prepare(state, session, event)
                except RuleError as exc:
                    outcomes[event.id] = (
                        FAILED,
                        N_("rule error: %(error)s", error=exc),
                    )
                    continue
                except VALUE_ERRORS as exc:
                    # A date out of range, a number too large: this event's data can
                    # never be sent as it is, so it fails now instead of retrying.
                    outcomes[event.id] = (
                        FAILED,
                        N_(
                            "value error: %(kind)s: %(error)s",
                            kind=type(exc).__name__,
                            error=str(exc)[:200],
                        ),
                    )
                    continue
                except Exception as exc:  # Redis or the database hiccuped: try later
                    log.exception(
                        "Unexpected error planning event %s",
                        event.id,
                        extra={"event_id": event.id},
                    )
                    outcomes[event.id] = (
                        RETRYING,
                        N_("unexpected %(error)s", error=describe(exc)),
                    )
                    continue
                if held:
                    outcomes[event.id] = held
                    continue
                if delivery is None:
                    outcomes[event.id] = (
                        (DELIVERED, None)
                        if Progress.from_json(event.remote).lead_id
                        else (IGNORED, None)
                    )
                    continue
                ended = before_push(state, delivery)
                if ended is not None:
                    outcomes[event.id] = ended
                    continue
                deliveries.append(delivery)

            if deliveries:
                wide = shares_wide_calls(deliveries)
                state.local("last_batch", _LastBatch).wide = wide
            if planned is not None:
                planned()
            batch_error = _run(state, deliveries, claimed)
            stale = [d for d in deliveries if stale_metadata(d.error)]
            if batch_error is None and stale and _refresh_caches(state):
                # amoCRM says a field, enum or status we had cached is gone: with the
                # metadata read again, these events are planned and sent once more.
                again: list[Delivery] = []
                for old in stale:
                    deliveries.remove(old)
                    try:
                        with for_events([old.event.id]):
                            delivery = _prepare(state, session, old.event)
                        if delivery is not None:
                            reapply(delivery, old.edits)
                    except RuleError as exc:
                        outcomes[old.event.id] = (
                            FAILED,
                            N_("rule error: %(error)s", error=exc),
                        )
                        continue
                    except Exception:  # noqa: BLE001 - keep the first answer's error
                        delivery = old
                    if delivery is None:
                        outcomes[old.event.id] = (IGNORED, None)
                        continue
                    again.append(delivery)
                deliveries += again
                batch_error = _run(
                    state, [d for d in again if d.error is None], claimed
                )
            for delivery in deliveries:
                event = delivery.event
                if isinstance(delivery.error, CallVetoed):
                    vetoed = delivery.error
                    outcomes[event.id] = (
                        CANCELLED if vetoed.cancelled else FAILED,
                        message_of(vetoed),
                    )
                elif delivery.error is not None:
                    failure = delivery.error
                    outcomes[event.id] = (
                        RETRYING if failure.retryable else FAILED,
                        failure_reason(failure),
                    )
                    if failure.retryable:
                        note_failure(
                            state, failure
                        )  # e.g. the metadata could not be read
                elif delivery.plan.done(delivery.progress):
                    outcomes[event.id] = (DELIVERED, None)
                else:
                    outcomes[event.id] = batch_error or (
                        RETRYING,
                        N_("nothing was created; trying again"),
                    )

        lost = keeper.renew()
        now = utcnow()
        kinds: dict[int, str] = {}
        for event in events:
            if event.id in lost:
                attempts[event.id].finished_at = now
                attempts[event.id].error = cut_reason(LEASE_LOST)
                del outcomes[event.id]
                continue
            outcome, error = outcomes[event.id]
            kinds[event.id] = _kind(error)  # from the English, before translating
            error = cut_reason(error)
            outcomes[event.id] = (outcome, error)
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
            attempt = attempts[event.id]
            attempt.finished_at = now
            attempt.outcome = outcome
            attempt.error = error
        session.commit()
    events = [e for e in events if e.id not in lost]
    count_outcomes(state, events)

    for event in events:
        outcome, error = outcomes[event.id]
        if outcome == DELIVERED:
            log.info(
                "Event %s delivered: %s",
                event.id,
                Progress.from_json(event.remote).ids(),
                extra={"event_id": event.id},
            )
            event_delivered.send(app, event=event)
        elif outcome == FAILED:
            # The reason may quote what the visitor sent: it stays on the event.
            log.warning(
                "Event %s failed (%s)",
                event.id,
                kinds[event.id],
                extra={"event_id": event.id},
            )
            event_failed.send(app, event=event, error=error)
        elif outcome == CANCELLED:
            # The reason is the site's own words: it stays on the event.
            log.info(
                "Event %s cancelled by a hook", event.id, extra={"event_id": event.id}
            )
            event_cancelled.send(app, event=event, reason=error)
        elif outcome == SPAM:
            # The reasons may quote the visitor's IP or phone: they stay on the event.
            log.info(
                "Event %s held as spam; nothing was sent",
                event.id,
                extra={"event_id": event.id},
            )
        elif outcome == RETRYING:
            log.warning(
                "Event %s will be retried at %s (%s)",
                event.id,
                event.next_attempt_at,
                kinds[event.id],
                extra={"event_id": event.id},
            )
    after_push(state, [e for e in events if outcomes[e.id][0] == DELIVERED])
    return {event_id: outcome for event_id, (outcome, _) in outcomes.items()}


def _secret_keys(app: Any) -> list[str | bytes] | None:
    """The keys signed ids verify with: Flask's ``SECRET_KEY_FALLBACKS`` (old keys,
    still accepted after a rotation) and the current ``SECRET_KEY``, last."""
    if not app.secret_key:
        return None
    return [*(app.config.get("SECRET_KEY_FALLBACKS") or []), app.secret_key]


def _kind(reason: str | None) -> str:
    """What kind of failure a reason is (its words before the first colon), for the
    Python log: the rest may quote what the visitor sent. Given the reason as the
    code writes it (English), never its translation, whose words may be ordered
    otherwise."""
    return (reason or "").split(":", 1)[0][:80] or "no reason"


def _run(
    state: AppState, deliveries: list[Delivery], claimed: list[int]
) -> tuple[str, str] | None:
    """Send these deliveries; the outcome of every one of them if the whole batch
    failed, else ``None`` (each delivery's own error is on it)."""
    pause = paused(state) if deliveries else None
    if pause:
        return (
            RETRYING,
            N_("paused, no request sent: amoCRM blocked us: %(pause)s", pause=pause),
        )
    remaining = [d for d in deliveries if d.error is None]
    if not remaining:
        return None
    marked = sourced = False  # each once: a veto below runs the rest again
    while remaining:
        try:
            with (
                event_context(remaining[0].event.id if len(remaining) == 1 else None),
                for_events(d.event.id for d in remaining),
            ):
                client = client_for(state)
                if not marked:
                    mark(state, client, remaining)
                    marked = True
                if not sourced:
                    tag_source(state, client, remaining)
                    sourced = True
                execute(
                    client,
                    remaining,
                    locks=key_locks(state),
                    index=contact_index(state),
                )
        except CallVetoed as exc:
            # A before_api_call hook refused a request: the events it was for end
            # there; the others go on from where their progress says.
            hit = [d for d in remaining if d.event.id in exc.events]
            if not hit:
                return (CANCELLED if exc.cancelled else FAILED, message_of(exc))
            for delivery in hit:
                delivery.error = exc
            remaining = [d for d in remaining if d.error is None]
            continue
        except AmoCRMError as exc:
            note_failure(state, exc)
            return (RETRYING if exc.retryable else FAILED, failure_reason(exc))
        except Exception as exc:  # a bug or a database hiccup: keep trying, loudly
            log.exception(
                "Unexpected error delivering events %s",
                claimed,
                extra={"event_ids": claimed},
            )
            return (RETRYING, N_("unexpected %(error)s", error=describe(exc)))
        break
    note_success(state)
    return None


#: amoCRM's code for "this field, enum, pipeline or status is not one of the
#: account's" (in ``validation-errors``; the sandbox gives it too, sandbox/errors.py).
STALE_CODES = frozenset({"NotSupportedChoice"})
#: At most one metadata refresh this often (seconds) for such answers, across workers.
STALE_REFRESH_SECONDS = 60


def stale_metadata(error: BaseException | None) -> bool:
    """Whether amoCRM refused an item because an id we took from the cached
    metadata (a field, an enum, a status, the marker field) no longer exists."""
    if not isinstance(error, ValidationError):
        return False
    return any(
        err.get("code") in STALE_CODES
        for item in error.errors
        for err in (item.get("errors") or [])
        if isinstance(err, dict)
    )


def _refresh_caches(state: AppState) -> bool:
    """Read the account's metadata again and forget the marker field's and the
    site source's ids; whether this worker did (another one may have done it within
    the last minute)."""
    if not shared.set_once(
        state, "stale-refresh", seconds=STALE_REFRESH_SECONDS, account=True
    ):
        return False
    log.warning("amoCRM refused a cached id: reading the account's metadata again")
    forget_marker_field(state)
    forget_source(state)
    try:
        metadata_for(state, refresh=True)
    except AmoCRMError as exc:
        log.warning("Could not read the account's metadata again: %s", exc)
        return False
    return True


def _screen(state: AppState, event: Event) -> tuple[str, str] | None:
    """Before an event's first request (nothing of it reached amoCRM yet): record
    its consent evidence, judge it spam or not, and check the consent its rule
    requires. Its outcome when it goes no further (``spam``, ``failed``), else
    ``None``."""
    if Progress.from_json(event.remote).to_json() != Progress().to_json():
        return None  # an earlier attempt sent something: it was screened then
    record_consent(state, event)
    reasons = screen(state, event)
    if reasons:
        return (SPAM, spam_reason(state, reasons))
    rule = find_rule(state.settings.rules, event.kind, event.source)
    missing = missing_consent(state, rule, event) if rule is not None else None
    return (FAILED, missing) if missing else None


def _prepare(state: AppState, session: Any, event: Event) -> Delivery | None:
    """The event's delivery, or ``None`` when there is no rule for it. A plan whose
    steps an earlier attempt finished is returned as well: it sends nothing."""
    rule = find_rule(state.settings.rules, event.kind, event.source)
    if rule is None:
        event.log = append_log(
            event.log,
            [
                N_(
                    "no rule for %(kind)s %(source)s",
                    kind=event.kind,
                    source=repr(event.source),
                )
            ],
        )
        return None
    section = "forms" if event.kind == "form" else "mails"
    try:
        plan = build_plan(
            rule, event, where=f"{section}.{event.source}", env=plan_env(state)
        )
    except RuleError:
        raise
    except AmoCRMError as exc:  # the metadata could not be read: try again later
        return Delivery(event=event, plan=Plan(), save=session.commit, error=exc)
    if plan.warnings and not plan.done(Progress.from_json(event.remote)):
        # once, however often the event is tried; the log is capped (outbox)
        event.log = append_log(event.log, plan.warnings)
    return Delivery(event=event, plan=plan, save=session.commit)


def plan_env(state: AppState, *, preview: bool = False) -> PlanEnv:
    """What planning needs from this app: the account's metadata (fetched only when
    a rule needs it), the shared round-robin turns, the time zone and working day.
    ``preview`` looks at the turns without taking them."""
    return PlanEnv(
        metadata=lambda: metadata_for(state),
        pick=lambda key, count: turn(state, key, count, take=not preview),
        tz=ZoneInfo(state.settings.timezone),
        workday_end=state.settings.workday_end,
        phone_region=state.settings.phone_region,
        secret_key=_secret_keys(state.app),
        upload_folder=state.settings.upload_folder,
    )


def turn(state: AppState, key: str, count: int, *, take: bool = True) -> int:
    """The index (``0 … count-1``) of the next of ``count`` users at the rule key
    ``key``, in turn across every worker on every machine; ``take=False`` only
    looks at whose turn it is."""
    if count <= 1:
        return 0
    name = f"turn:{key}"
    if take:
        return (shared.incr(state, name) - 1) % count
    return shared.peek(state, name) % count
