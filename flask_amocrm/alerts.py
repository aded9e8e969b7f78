"""E-mail alerts to the site's admins (``AMOCRM_ADMIN_EMAILS``).

Mail goes through Flask-Mail when the app has it, otherwise through :mod:`smtplib`
with the same ``MAIL_*`` keys. Every alert carries the ``X-AmoCRM-Alert: 1`` header, so
the extension never captures its own alerts as events. Messages are built with
:class:`email.message.EmailMessage`, which refuses CR/LF in headers; subjects are
flattened to one line anyway (no header injection), and recipients only ever come
from the configuration.

An alert with a ``dedupe_key`` is sent once per ``dedupe_seconds``, across all
processes (a shared flag, :mod:`flask_amocrm.shared`).
"""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage
from typing import Any

from flask import current_app

from . import shared
from .state import get_state

log = logging.getLogger("flask_amocrm.alerts")

#: The header that marks our own mails.
ALERT_HEADER = "X-AmoCRM-Alert"


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def clear_alert(key: str) -> None:
    """Forget that the alert ``key`` was sent (the problem is over), so the next
    occurrence alerts again."""
    shared.clear(get_state(), f"alert:{key}")


def send_alert(
    subject: str,
    body: str,
    *,
    dedupe_key: str | None = None,
    dedupe_seconds: int = 3600,
) -> bool:
    """Mail ``subject`` and ``body`` to ``AMOCRM_ADMIN_EMAILS`` from the current app.

    Returns whether a mail was sent. Never raises: a broken mail server is logged,
    it must not hide the problem being reported.
    """
    try:
        settings = get_state().settings
        recipients = list(settings.admin_emails)
        subject = _one_line(f"[amoCRM] {subject}")
        if not recipients:
            log.warning("Alert not mailed (AMOCRM_ADMIN_EMAILS is empty): %s", subject)
            return False
        if dedupe_key and not shared.set_once(
            get_state(), f"alert:{dedupe_key}", seconds=dedupe_seconds
        ):
            log.info("Alert already sent, not repeated: %s", subject)
            return False
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        if app.extensions.get("mail") is not None:
            _send_flask_mail(app, subject, body, recipients)
        else:
            _send_smtp(app.config, subject, body, recipients)
    except Exception:
        log.exception("Could not send the alert %r", subject)
        return False
    log.warning("Alert mailed to %d admin(s): %s", len(recipients), subject)
    return True


def _send_flask_mail(app: Any, subject: str, body: str, recipients: list[str]) -> None:
    from flask_mail import Message

    message = Message(
        subject=subject,
        recipients=list[str | tuple[str, str]](recipients),
        body=body,
        extra_headers={ALERT_HEADER: "1"},
    )
    app.extensions["mail"].send(message)


def _send_smtp(config: Any, subject: str, body: str, recipients: list[str]) -> None:
    sender = config.get("MAIL_DEFAULT_SENDER") or "flask-amocrm@localhost"
    if isinstance(sender, tuple | list):
        sender = f"{sender[0]} <{sender[1]}>"
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = _one_line(sender)
    message["To"] = ", ".join(recipients)
    message[ALERT_HEADER] = "1"
    message.set_content(body)
    host = config.get("MAIL_SERVER") or "localhost"
    use_ssl = bool(config.get("MAIL_USE_SSL"))
    port = int(config.get("MAIL_PORT") or (465 if use_ssl else 25))
    smtp_class = smtplib.SMTP_SSL if use_ssl else smtplib.SMTP
    with smtp_class(host, port, timeout=10) as smtp:
        if config.get("MAIL_USE_TLS") and not use_ssl:
            smtp.starttls()
        if config.get("MAIL_USERNAME"):
            smtp.login(config["MAIL_USERNAME"], config.get("MAIL_PASSWORD") or "")
        smtp.send_message(message)
