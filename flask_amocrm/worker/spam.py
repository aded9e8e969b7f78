"""Spam kept out of amoCRM: the checks the worker runs before an event's first
request, and a person's release.

A form event is spam when:

- its honeypot field (``AMOCRM_HONEYPOT_FIELD``, rendered hidden by
  ``{{ amocrm_form_stamp() }}``) is filled: people never see it, bots fill it;
- its stamp (a signed time, rendered by the same helper with the app's
  ``SECRET_KEY``) says it was sent sooner than ``AMOCRM_MIN_FILL_SECONDS`` after its
  page was shown, or the stamp is forged, or it has none where
  ``AMOCRM_FORM_STAMP_REQUIRED`` asks for one;
- more than ``AMOCRM_SPAM_MAX_PER_IP`` forms came from its IP, or more than
  ``AMOCRM_SPAM_MAX_PER_PHONE`` with its phone, within ``AMOCRM_SPAM_WINDOW``
  seconds (counted over the stored events before it, so judging it again gives the
  same answer);

and any event when a ``@amocrm.spam_check`` hook returns a reason. Such an event
ends ``spam`` with the reasons; nothing is sent. A person's release
(:func:`mark_released`; ``flask amocrm release ID``, the admin's button) makes it due
again and it is delivered without being judged again.

The honeypot and stamp fields are taken out of the event's ``data`` the first time
it is screened (kept under ``context["spam"]["fields"]``): rules never see them.
Imported events are not judged.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import current_app
from itsdangerous import BadSignature, TimestampSigner
from markupsafe import Markup, escape
from sqlalchemy import func, select, update

from ..hooks import last_line
from ..i18n import N_, gettext
from ..models import RETRYING, SPAM, Event, utcnow
from ..outbox import append_log, cut_reason
from ..state import AppState, get_state
from ..vocabulary import LOCALES
from .consent import sent_at

log = logging.getLogger("flask_amocrm.worker")

#: The form field of the signed stamp ``{{ amocrm_form_stamp() }}`` renders.
STAMP_FIELD = "amocrm_stamp"
#: The signer's salt: a stamp is good for nothing else signed with the key.
STAMP_SALT = "flask-amocrm.form-stamp"
#: Where the screening's record lives in the event's context.
RECORD = "spam"


def _signer(keys: list[str | bytes]) -> TimestampSigner:
    # itsdangerous signs with the last key and verifies with every one of them
    return TimestampSigner(keys, salt=STAMP_SALT)  # type: ignore[arg-type]


def _keys(app: Any) -> list[str | bytes]:
    """The keys a stamp verifies with: ``SECRET_KEY_FALLBACKS`` (old keys, still
    accepted after a rotation) and ``SECRET_KEY``, last; empty without a key."""
    if not app.secret_key:
        return []
    return [*(app.config.get("SECRET_KEY_FALLBACKS") or []), app.secret_key]


def form_stamp() -> str | None:
    """A new signed stamp: the time the page with the form is rendered; ``None``
    when the app has no ``SECRET_KEY`` to sign it with."""
    keys = _keys(current_app)
    if not keys:
        return None
    return _signer(keys).sign(b"form").decode("ascii")


def form_stamp_input() -> Markup:
    """The hidden inputs a form carries for the spam checks (the Jinja global
    ``amocrm_form_stamp()``): the signed stamp and, when
    ``AMOCRM_HONEYPOT_FIELD`` is set, the honeypot, hidden from people. Without a
    ``SECRET_KEY`` the stamp is left out (logged): the site's page never fails on
    it."""
    stamp = form_stamp()
    html = ""
    if stamp is None:
        log.warning(
            "amocrm_form_stamp() rendered no stamp: the app has no SECRET_KEY to "
            "sign it with"
        )
    else:
        html = f'<input type="hidden" name="{STAMP_FIELD}" value="{escape(stamp)}">'
    honeypot = get_state().settings.honeypot_field
    if honeypot:
        label = escape(gettext("Leave this field empty"))
        html += (
            '<div aria-hidden="true" style="position:absolute;left:-10000px;'
            'top:auto;width:1px;height:1px;overflow:hidden">'
            f'<label>{label} <input type="text" name="{escape(honeypot)}" value="" '
            'tabindex="-1" autocomplete="off"></label></div>'
        )
    return Markup(html)  # noqa: S704 - every value above is escaped


def _locale(state: AppState) -> str:
    return state.settings.locale or LOCALES[0]


def screen(state: AppState, event: Event) -> list[str]:
    """Judge an event before its first request; the reasons it is spam (empty: it
    is not). Takes the honeypot and stamp fields out of its data and records the
    verdict in its context; an event released by a person, or judged not spam
    before, is not judged again."""
    context = dict(event.context or {})
    record = dict(context.get(RECORD) or {})
    data = dict(event.data or {})
    taken = {
        name: data.pop(name)
        for name in (STAMP_FIELD, state.settings.honeypot_field)
        if name and name in data
    }
    if taken:
        # moved, never dropped: kept even if judging below fails and is retried
        record["fields"] = {**(record.get("fields") or {}), **taken}
        context[RECORD] = record
        event.context = dict(context)
        event.data = data
    if record.get("released") or record.get("verdict") == "passed":
        return []
    reasons = judge(state, event, record.get("fields") or {})
    record = dict(record)
    record.update(
        verdict=SPAM if reasons else "passed",
        reasons=reasons,
        at=utcnow().replace(microsecond=0).isoformat() + "Z",
    )
    context[RECORD] = record
    event.context = context
    return reasons


def judge(state: AppState, event: Event, fields: dict[str, Any]) -> list[str]:
    """Why ``event`` is spam (its honeypot and stamp fields in ``fields``)."""
    if (event.context or {}).get("imported"):
        return []
    reasons: list[str] = []
    if event.kind == "form":
        reasons += _honeypot(state, fields)
        reasons += _stamp(state, event, fields)
        reasons += _rates(state, event)
    reasons += _hooks(state, event)
    return reasons


def _honeypot(state: AppState, fields: dict[str, Any]) -> list[str]:
    name = state.settings.honeypot_field
    value = fields.get(name) if name else None
    if value is None or not str(value).strip():
        return []
    return [
        gettext(
            "the hidden field %(field)s, which people never see, was filled in",
            locale=_locale(state),
            field=name,
        )
    ]


def _stamp(state: AppState, event: Event, fields: dict[str, Any]) -> list[str]:
    settings = state.settings
    value = fields.get(STAMP_FIELD)
    required = settings.stamp_required
    if value is None or value == "":
        if required is True or (
            isinstance(required, frozenset) and event.source in required
        ):
            return [
                gettext(
                    "the form carries no stamp of the page it was shown on",
                    locale=_locale(state),
                )
            ]
        return []
    keys = _keys(state.app)
    if not keys:
        return []  # nothing to verify it with: not the visitor's fault
    try:
        _, signed = _signer(keys).unsign(str(value), return_timestamp=True)
    except BadSignature:
        return [gettext("the form's stamp is forged or broken", locale=_locale(state))]
    seconds = (sent_at(event) - signed.replace(tzinfo=None)).total_seconds()
    least = f"{settings.min_fill_seconds:g}"
    if settings.min_fill_seconds and seconds < settings.min_fill_seconds:
        return [
            gettext(
                "sent %(seconds)s s after the form was shown (people take at "
                "least %(least)s s)",
                locale=_locale(state),
                seconds=max(int(seconds), 0),
                least=least,
            )
        ]
    return []


def _rates(state: AppState, event: Event) -> list[str]:
    """More forms from this IP or with this phone within the window than allowed:
    the stored form events before this one are counted (``ix_amocrm_events_
    created_at`` bounds the rows read), plus this one."""
    settings = state.settings
    if not (settings.spam_max_per_ip or settings.spam_max_per_phone):
        return []
    since = event.created_at - timedelta(seconds=settings.spam_window)
    window = (
        Event.kind == "form",
        Event.id < event.id,
        Event.created_at >= since,
        Event.created_at <= event.created_at,
    )
    minutes = max(round(settings.spam_window / 60), 1)
    reasons: list[str] = []
    client = (event.context or {}).get("client") or {}
    ip = str(client.get("ip") or "") if isinstance(client, dict) else ""
    with state.session() as session:
        if settings.spam_max_per_ip and ip:
            same_ip = Event.context[("client", "ip")].as_string() == ip
            count = session.scalar(select(func.count()).where(*window, same_ip)) or 0
            if count + 1 > settings.spam_max_per_ip:
                reasons.append(
                    gettext(
                        "%(count)s forms from this IP within %(minutes)s min "
                        "(at most %(most)s)",
                        locale=_locale(state),
                        count=count + 1,
                        minutes=minutes,
                        most=settings.spam_max_per_ip,
                    )
                )
        phones = [t for t in (event.search or "").split() if t.startswith("+")]
        if settings.spam_max_per_phone:
            for phone in phones[:3]:
                same = Event.search.contains(f" {phone} ", autoescape=True)
                count = session.scalar(select(func.count()).where(*window, same)) or 0
                if count + 1 > settings.spam_max_per_phone:
                    reasons.append(
                        gettext(
                            "%(count)s forms with this phone within "
                            "%(minutes)s min (at most %(most)s)",
                            locale=_locale(state),
                            count=count + 1,
                            minutes=minutes,
                            most=settings.spam_max_per_phone,
                        )
                    )
                    break
    return reasons


def _hooks(state: AppState, event: Event) -> list[str]:
    """The reasons the site's ``spam_check`` hooks give; one that raises is logged
    (its type: the message may quote the visitor's data) and says nothing."""
    reasons: list[str] = []
    for hook in state.hooks.for_event("spam_check", event.kind, event.source):
        try:
            verdict = hook.func(event)
        except Exception as exc:  # noqa: BLE001 - a site's hook, any error
            log.warning(
                "The spam_check hook %s raised %s on event %s; not judged spam by it",
                hook.name,
                type(exc).__name__,
                event.id,
            )
            event.log = append_log(
                event.log,
                [
                    N_(
                        "spam_check hook %(hook)s raised: %(error)s",
                        hook=hook.name,
                        error=last_line(exc),
                    )
                ],
            )
            continue
        if not verdict:
            continue
        reasons.append(
            str(verdict)
            if isinstance(verdict, str)
            else gettext(
                "the spam check %(name)s said so",
                locale=_locale(state),
                name=hook.name,
            )
        )
    return reasons


def spam_reason(state: AppState, reasons: list[str]) -> str:
    """The stored reason of a spam event: ``Spam: reason; reason``. The built-in
    reasons quote no personal data (the IP and phone are on the event itself), so
    ``flask amocrm status`` may show them."""
    text = gettext(
        "Spam: %(reasons)s", locale=_locale(state), reasons="; ".join(reasons)
    )
    return cut_reason(text) or text


def mark_released(state: AppState, event_id: int, who: str) -> bool:
    """Release a spam event: due now, never judged spam again, the release (who,
    when) recorded in its context and log. ``False`` when it is not ``spam``."""
    with state.session() as session:
        event = session.scalar(
            select(Event).where(Event.id == event_id, Event.status == SPAM)
        )
        if event is None:
            return False
        now = utcnow()
        context = dict(event.context or {})
        record = dict(context.get(RECORD) or {})
        record["released"] = {
            "by": who,
            "at": now.replace(microsecond=0).isoformat() + "Z",
        }
        context[RECORD] = record
        line = gettext("Released from spam by %(who)s", locale=_locale(state), who=who)
        done = session.execute(
            update(Event)
            .where(Event.id == event_id, Event.status == SPAM)
            .values(
                status=RETRYING,
                next_attempt_at=now,
                locked_until=None,
                last_error=None,
                context=context,
                log=append_log(event.log, [line]),
            )
        )
        session.commit()
    return bool(done.rowcount)  # type: ignore[attr-defined]


__all__ = [
    "STAMP_FIELD",
    "form_stamp",
    "form_stamp_input",
    "judge",
    "mark_released",
    "screen",
    "spam_reason",
]
