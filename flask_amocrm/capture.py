"""Capture: the signal receivers that turn what the site sends into stored events.

A receiver never raises into the site's view or mail send and never waits for
amoCRM: it flattens the submitted data, reads the visit (:mod:`.visit`), saves the
uploads (:mod:`.uploads`), stores the event in the outbox and hands it on
(:mod:`.worker.dispatch`) once the response has gone to the visitor. If the database
refuses the event, it is spooled to a file and stored later (:mod:`.outbox`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app

from .alerts import ALERT_HEADER
from .models import Event
from .outbox import spool, store
from .rules.schema import find_mail_event
from .signals import event_captured
from .state import AppState, get_state
from .uploads import file_links
from .visit import read_visit
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


def plain(value: Any) -> Any:
    """Make submitted data JSON-safe: MultiDicts keep repeated keys as lists."""
    if hasattr(value, "to_dict") and hasattr(value, "getlist"):
        return {
            key: (vals[0] if len(vals) == 1 else vals)
            for key, vals in ((k, [plain(v) for v in value.getlist(k)]) for k in value)
        }
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
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
    not be stored (it is spooled then, and the reason logged). Never raises."""
    try:
        state = get_state()
    except RuntimeError:
        log.exception("Flask-AmoCRM: an event was sent but the app is not registered")
        return None
    record: dict[str, Any] = {"kind": kind, "source": _source(source)}
    try:
        values = plain(data) if data is not None else {}
        if not isinstance(values, dict):
            values = {"value": values}
        if message is not None:
            values.setdefault("mail", _message_fields(message))
        record["data"] = values
        record["files"] = file_links(files, state.settings)
        record["context"] = read_visit(
            site_name=state.settings.site_name,
            cookie=state.settings.utm_cookie,
            data=values,
        )
        record["dedupe_key"] = dedupe_key
        event = store(state, **record)
    except Exception as exc:
        # Not log.exception: the traceback of a failed insert shows the SQL
        # parameters, i.e. the visitor's form data; logs carry no personal data.
        log.error("Flask-AmoCRM could not store an event: %s", safe_reason(exc))
        _spool(record)
        return None
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    event_captured.send(app, event=event)
    _hand_off(state, event.id)
    return event


def safe_reason(exc: BaseException) -> str:
    """What went wrong, without the values involved: the exception's type and the
    first line of the database's own message (its DETAIL and CONTEXT lines, and
    SQLAlchemy's parameter list, quote the data)."""
    orig = getattr(exc, "orig", None)
    inner = orig if isinstance(orig, BaseException) else exc
    first = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    if orig is None and hasattr(exc, "statement"):
        first = ""
    name = type(exc).__name__
    if inner is not exc:
        name = f"{name} ({type(inner).__name__})"
    return f"{name}: {first[:200]}" if first else name


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


def _hand_off(state: AppState, event_id: int) -> None:
    try:
        hand_off(state, event_id)
    except Exception:
        log.exception(
            "Flask-AmoCRM stored event %s but could not hand it on; the sweeper or "
            "'flask amocrm process' will deliver it",
            event_id,
        )
