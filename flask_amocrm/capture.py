"""Capture: the signal receivers that turn what the site sends into stored events.

A receiver never raises into the site's view or mail send and never waits for
amoCRM: it flattens the submitted data, reads the visit (:mod:`.visit`), saves the
uploads (:mod:`.uploads`), stores the event in the outbox and hands it on
(:mod:`.worker.dispatch`) once the response has gone to the visitor. If the database
refuses the event, it is spooled to a file and stored later (:mod:`.outbox`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app

from .alerts import ALERT_HEADER
from .config import Settings
from .errors import describe
from .i18n import N_
from .models import Event
from .outbox import (
    MAX_DEPTH,
    append_log,
    as_text,
    blank_context,
    bounded,
    spool,
    store,
)
from .rules.schema import find_mail_event
from .signals import event_captured
from .state import AppState, get_state
from .uploads import file_links
from .visit import cookies_named, read_visit
from .worker.dispatch import hand_off

log = logging.getLogger("flask_amocrm")

#: Mail header that names the mail event a Flask-Mail message stands for.
MAIL_EVENT_HEADER = "X-AmoCRM-Event"


def on_form_submitted(app: Flask, **kwargs: Any) -> None:
    """Receiver of :data:`~flask_amocrm.signals.form_submitted`."""
    capture("form", kwargs.get("form"), kwargs.get("data"), files=kwargs.get("files"))


def on_mail_sent(app: Flask, **kwargs: Any) -> None:
    """Receiver of :data:`~flask_amocrm.signals.mail_sent`: the mail's ``data``, and
    what its Flask-Mail ``message`` says under ``mail``."""
    capture(
        "mail", kwargs.get("event"), kwargs.get("data"), message=kwargs.get("message")
    )


def on_email_dispatched(app: Flask, **kwargs: Any) -> None:
    """Receiver of Flask-Mail's ``email_dispatched``: a mail tagged with
    :data:`MAIL_EVENT_HEADER`, or matching a mail rule's subject pattern."""
    message = kwargs.get("message")
    try:
        headers = dict(getattr(message, "extra_headers", None) or {})
        if ALERT_HEADER in headers:
            return  # our own alert mails are never captured
        event = headers.get(MAIL_EVENT_HEADER) or find_mail_event(
            get_state(app).settings.rules, getattr(message, "subject", None)
        )
    except Exception:
        log.exception("Flask-AmoCRM could not read a dispatched mail")
        return
    if event:
        capture("mail", event, None, message=message)


def _message_fields(message: Any) -> dict[str, Any]:
    sender = getattr(message, "sender", None)
    if isinstance(sender, tuple):
        sender = f"{sender[0]} <{sender[1]}>"
    return {
        "subject": getattr(message, "subject", None),
        "sender": sender,
        "recipients": [str(r) for r in getattr(message, "recipients", None) or []],
        "body": getattr(message, "body", None),
        "html": getattr(message, "html", None),
    }


def plain(value: Any, depth: int = 0) -> Any:
    """Make submitted data JSON-safe: MultiDicts keep repeated keys as lists. Past
    :data:`~flask_amocrm.outbox.MAX_DEPTH` levels a value is kept as text (a body
    nested 500 deep must not exhaust the stack)."""
    if value.__class__ is str:  # most values: kept as they are, no checks
        return value
    if depth > MAX_DEPTH and isinstance(value, Mapping | list | tuple | set):
        return as_text(value)
    if hasattr(value, "to_dict") and hasattr(value, "getlist"):
        return {
            key: (vals[0] if len(vals) == 1 else vals)
            for key, vals in (
                (k, [plain(v, depth + 1) for v in value.getlist(k)]) for k in value
            )
        }
    if isinstance(value, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v, depth + 1) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def capture(
    kind: str,
    source: Any,
    data: Any,
    *,
    files: Mapping[str, Any] | None = None,
    message: Any = None,
    dedupe_key: str | None = None,
) -> Event | None:
    """Store an event and hand it to delivery; return it, or ``None`` when it could
    not be stored (it is spooled then, and the reason logged). Never raises.

    Each part of the record is built on its own: when one fails (the visit, the
    uploads), the others are kept and the event's log says what is missing, so the
    visitor's data is never lost with it."""
    try:
        state = get_state()
    except RuntimeError:
        log.exception("Flask-AmoCRM: an event was sent but the app is not registered")
        return None
    settings = state.settings
    notes: list[str] = []
    record: dict[str, Any] = {
        "uid": uuid.uuid4().hex,
        "kind": kind,
        "source": _source(source),
        "dedupe_key": dedupe_key,
    }
    values = _data(data, message, settings, notes)
    record["data"] = values
    try:
        record["files"] = file_links(files, settings)
    except Exception as exc:
        log.exception("Flask-AmoCRM could not read the uploads of an event")
        record["files"] = []
        notes.append(
            N_("the uploads could not be read (%(error)s)", error=type(exc).__name__)
        )
    record["context"] = _context(state, values, notes)
    record["log"] = append_log([], notes)
    try:
        event = store(state, **record)
    except Exception as exc:
        # Not log.exception: the traceback of a failed insert shows the SQL
        # parameters, i.e. the visitor's form data; logs carry no personal data.
        log.error(
            "Flask-AmoCRM could not store an event (%s); spooling it",
            describe(exc),
        )
        _spool(record)
        return None
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    event_captured.send(app, event=event)
    _hand_off(state, event.id)
    return event


def _data(
    data: Any, message: Any, settings: Settings, notes: list[str]
) -> dict[str, Any]:
    """The submitted data, within the caps of :func:`~flask_amocrm.outbox.bounded`;
    whatever cannot be read is kept as text."""
    try:
        values = plain(data) if data is not None else {}
    except Exception as exc:
        notes.append(
            N_(
                "the data could not be read as fields (%(error)s)",
                error=type(exc).__name__,
            )
        )
        values = {"value": as_text(data)}
    if not isinstance(values, dict):
        values = {"value": values}
    _drop_csrf_token(values)
    if message is not None:
        try:
            values.setdefault("mail", plain(_message_fields(message)))
        except Exception as exc:
            notes.append(
                N_("the mail could not be read (%(error)s)", error=type(exc).__name__)
            )
    try:
        result = bounded(
            values,
            max_value=settings.max_value_length,
            max_size=settings.max_event_size,
            notes=notes,
        )
    except Exception as exc:
        notes.append(
            N_("the data was kept as text (%(error)s)", error=type(exc).__name__)
        )
        return {"value": as_text(values)[: settings.max_value_length]}
    assert isinstance(result, dict)
    return result


def _drop_csrf_token(values: dict[str, Any]) -> None:
    """Flask-WTF's CSRF field is not something the visitor said."""
    try:
        name = current_app.config.get("WTF_CSRF_FIELD_NAME") or "csrf_token"
    except RuntimeError:
        name = "csrf_token"
    values.pop(str(name), None)


def _context(state: AppState, values: dict[str, Any], notes: list[str]) -> Any:
    settings = state.settings
    try:
        return read_visit(
            site_name=settings.site_name,
            cookie=settings.utm_cookie,
            data=values,
            cookies=rule_cookies(state),
            settings=settings,
        )
    except Exception as exc:
        log.exception("Flask-AmoCRM could not read the visit of an event")
        notes.append(
            N_("the visit could not be read (%(error)s)", error=type(exc).__name__)
        )
        return blank_context(settings.site_name)


def rule_cookies(state: AppState) -> frozenset[str]:
    """The cookies the rules name (``cookies.partner``, ``cookies['x']``): with the
    campaign and analytics ones, the only cookies an event keeps."""
    return state.local("rule_cookies", lambda: cookies_named(state.settings.rules))


def _source(source: Any) -> str:
    try:
        return str(source or "").strip()[:200] or "(unnamed)"
    except Exception:
        return "(unnamed)"


def _spool(record: dict[str, Any]) -> None:
    """Last resort when the database refuses the event: the spool file, which
    ``flask amocrm process`` loads, so the lead is not lost."""
    try:
        path = spool(current_app.instance_path, record)
        log.error("Flask-AmoCRM spooled the event to %s", path)
    except Exception:
        log.exception("Flask-AmoCRM could not spool the event either")
        try:  # keep what can be kept: the data as text
            record = {**record, "data": {"value": as_text(record.get("data"))}}
            record.update(files=[], context={})
            spool(current_app.instance_path, record)
        except Exception:
            log.exception("Flask-AmoCRM lost an event: it could not be spooled")


def _hand_off(state: AppState, event_id: int) -> None:
    try:
        hand_off(state, event_id)
    except Exception:
        log.exception(
            "Flask-AmoCRM stored event %s but could not hand it on; the sweeper or "
            "'flask amocrm process' will deliver it",
            event_id,
        )
