"""What delivering an event would send, without sending it (``flask amocrm preview``).

:func:`preview` builds an unsaved event, plans it as a worker would (without taking a
round-robin turn), and runs the real delivery code on it: the marker step of
:mod:`.markers` and :func:`~.execute.execute` (with :class:`~.lookup.NoLocks`), against
a :class:`~flask_amocrm.amo.recording.RecordingClient`. The calls it made are the
preview. The site's ``before_push`` hooks run on it as they would (a cancel is the
preview's error); the API-call hooks do not (nothing is sent). Nothing is written to
amoCRM or to the database: the event is never added to a session, its progress is
never saved, a marker field the account lacks is "created" by the recording client
only, and the site's source is named without being registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..amo.recording import Call, RecordingClient
from ..errors import AmoCRMError
from ..models import Event
from ..outbox import blank_context
from ..rules.render import build_plan
from ..state import AppState
from ..vocabulary import CAMPAIGN_KEYS
from .deliver import plan_env
from .delivery import Delivery
from .execute import execute
from .lookup import NoLocks
from .markers import mark
from .push import before_push
from .sources import tag_source


@dataclass
class Preview:
    """The calls one event would cause, and what delivering it would note."""

    #: Every call, in the order the worker would make it.
    calls: list[Call]
    #: The plan's warnings (rounded prices, unknown labels ...).
    warnings: list[str]
    #: What the delivery wrote to the event's log (duplicate control's decisions).
    log: list[str]
    #: The error the event would fail with, if any.
    error: AmoCRMError | None


def preview(
    state: AppState,
    rule: dict[str, Any],
    *,
    kind: str,
    source: str,
    data: dict[str, Any],
    page: str | None = None,
) -> Preview:
    """Run the delivery of a ``kind`` event of ``source`` with ``data``, sent from
    ``page``, against a recording client. Raises :class:`AmoCRMError` where a
    delivery would (a rule error, the account's metadata unreadable)."""
    event = preview_event(state, kind=kind, source=source, data=data, page=page)
    return _run(state, rule, event)


def preview_stored(state: AppState, rule: dict[str, Any], stored: Event) -> Preview:
    """What delivering the stored event ``stored`` afresh with ``rule`` would send
    (its data, files and visit as captured), as :func:`preview` does; ``stored``
    itself is not changed."""
    event = Event(
        id=stored.id,
        uid=stored.uid,
        kind=stored.kind,
        source=stored.source,
        data=stored.data or {},
        files=stored.files or [],
        context=stored.context or {},
        remote={},
        log=[],
        attempts=1,
        created_at=stored.created_at,
    )
    return _run(state, rule, event)


def _run(state: AppState, rule: dict[str, Any], event: Event) -> Preview:
    section = "mails" if event.kind == "mail" else "forms"
    plan = build_plan(
        rule,
        event,
        where=f"{section}.{event.source}",
        env=plan_env(state, preview=True),
    )
    client = RecordingClient(state.settings.base_url)
    delivery = Delivery(event=event, plan=plan, save=_keep_nothing)
    ended = before_push(state, delivery)
    if ended is not None:
        return Preview(
            calls=[],
            warnings=list(plan.warnings),
            log=list(event.log or []),
            error=AmoCRMError(
                f"a before_push hook would end it {ended[0]}: {ended[1]}"
            ),
        )
    mark(state, client, [delivery], remember=False)
    tag_source(state, client, [delivery], register=False)
    execute(client, [delivery], locks=NoLocks())
    return Preview(
        calls=client.calls,
        warnings=list(plan.warnings),
        log=list(event.log or []),
        error=delivery.error,
    )


def preview_event(
    state: AppState,
    *,
    kind: str,
    source: str,
    data: dict[str, Any],
    page: str | None = None,
) -> Event:
    """A transient event (never added to a session) as the site would capture it,
    on its first attempt."""
    query = dict(parse_qsl(urlsplit(page).query)) if page else {}
    return Event(
        id=0,
        uid="preview",
        kind=kind,
        source=source,
        data=data,
        files=[],
        remote={},
        log=[],
        attempts=1,
        context={
            **blank_context(
                state.settings.site_name,
                domain=urlsplit(page).hostname if page else None,
            ),
            "utm": {k: v for k, v in query.items() if k in CAMPAIGN_KEYS},
            "page": {"url": page, "referrer": None},
        },
    )


def _keep_nothing() -> None:
    """:attr:`Delivery.save` of a preview: the event is not stored."""
