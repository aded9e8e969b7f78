"""The site's push hooks in the worker: ``before_push`` and ``after_push``.

``before_push`` hooks run once per delivery attempt of an event, after its plan was
rendered and before the first request that writes anything for it; they get the
event and a :class:`~flask_amocrm.rules.draft.PushPlan` to change. A hook raising
:class:`~flask_amocrm.Cancel` ends the event ``cancelled``; one raising anything else
fails that event alone.

On a retry the hooks run again on a plan rendered afresh; the steps earlier attempts
finished are not repeated (:class:`~flask_amocrm.progress.Progress`), so a hook never
makes a second lead, and a change to an entity that exists already does not reach it
(the ``update`` step aside). What a hook adds (a note, a task) makes a step of its own,
which a retry still sends if an earlier attempt did not.

``after_push`` hooks run once an event is delivered, after ``event_delivered``; one
that raises cannot undo the delivery: it is logged and remarked on the event.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import Cancel, RuleError
from ..hooks import AmoIds, for_events, last_line
from ..i18n import N_
from ..models import CANCELLED, FAILED, Event
from ..outbox import append_log
from ..progress import Progress
from ..rules.draft import apply_draft, draft_of
from ..state import AppState
from .delivery import Delivery

log = logging.getLogger("flask_amocrm.worker")


def before_push(state: AppState, delivery: Delivery) -> tuple[str, str] | None:
    """Run the event's ``before_push`` hooks on its plan; the event's outcome when
    a hook ended it (cancelled or failed), else ``None``."""
    event = delivery.event
    hooks = state.hooks.for_event("before_push", event.kind, event.source)
    if not hooks or delivery.error is not None:
        return None
    before = draft_of(delivery.plan)
    view = draft_of(delivery.plan)
    for hook in hooks:
        try:
            with for_events([event.id]):
                hook.func(event, view)
        except Cancel as exc:
            log.info(
                "Event %s cancelled by the before_push hook %s", event.id, hook.name
            )
            return (CANCELLED, exc.reason)
        except Exception as exc:  # noqa: BLE001 - a site's hook, any error
            log.warning(
                "The before_push hook %s raised %s on event %s",
                hook.name,
                type(exc).__name__,
                event.id,
            )
            return (
                FAILED,
                N_(
                    "before_push hook %(hook)s raised: %(error)s",
                    hook=hook.name,
                    error=last_line(exc),
                ),
            )
    try:
        apply_draft(delivery.plan, before, view)
    except RuleError as exc:
        return (FAILED, str(exc))
    delivery.edits = (before, view)
    return None


def reapply(delivery: Delivery, edits: Any) -> None:
    """Put the changes the hooks made in this attempt on a plan rendered again
    (without calling the hooks a second time)."""
    if edits is not None:
        apply_draft(delivery.plan, *edits)
        delivery.edits = edits


def amo_ids(event: Event) -> AmoIds:
    """What amoCRM made of a delivered event."""
    progress = Progress.from_json(event.remote)
    return AmoIds(
        lead_id=progress.lead_id,
        contact_id=progress.contact_id,
        company_id=progress.company_id,
        unsorted_uid=progress.unsorted_uid,
        note_ids={k: list(v) for k, v in progress.note_ids.items()},
        task_ids=list(progress.task_ids),
    )


def after_push(state: AppState, events: list[Event]) -> None:
    """Run the ``after_push`` hooks of these delivered events. A hook that raises
    is logged (its type: the message may quote the visitor's data) and remarked
    in the event's log; the others still run."""
    remarks: dict[int, list[str]] = {}
    for event in events:
        for hook in state.hooks.for_event("after_push", event.kind, event.source):
            try:
                hook.func(event, amo_ids(event))
            except Exception as exc:  # noqa: BLE001 - it cannot undo the delivery
                log.warning(
                    "The after_push hook %s raised %s on delivered event %s",
                    hook.name,
                    type(exc).__name__,
                    event.id,
                )
                remarks.setdefault(event.id, []).append(
                    N_(
                        "after_push hook %(hook)s raised: %(error)s",
                        hook=hook.name,
                        error=last_line(exc),
                    )
                )
    if not remarks:
        return
    with state.session() as session:
        for event in events:
            if event.id not in remarks:
                continue
            row = session.get(Event, event.id)
            if row is not None:
                row.log = append_log(row.log, remarks[event.id])
                event.log = row.log
        session.commit()
