"""The signals of Flask-AmoCRM.

They live in their own :class:`blinker.Namespace`; Flask's namespace is for Flask's own
signals. Every signal is sent with the real application object as the sender
(``current_app._get_current_object()``), never the ``current_app`` proxy, so a receiver
connected with ``sender=app`` hears only that application. Receivers should accept
``**extra``: more keyword arguments may be added later.
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import Namespace, Signal

log = logging.getLogger("flask_amocrm")

_signals = Namespace()


def send_safely(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Send ``signal`` to each receiver in turn. A receiver that raises is logged
    and the others still run: a site's receiver never breaks capture or delivery,
    and nothing of ours raises into the site."""
    if getattr(signal, "is_muted", False):
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:
            log.exception("A receiver of the %r signal failed", signal.name)


form_submitted = _signals.signal(
    "form-submitted",
    doc="""Sent by the site when a form was submitted.

    Sender: the application. Keyword arguments: ``form`` (the form id the rules use),
    ``data`` (a mapping of the submitted fields; a ``MultiDict`` keeps repeated keys),
    optional ``files`` (a mapping of field name to an uploaded ``FileStorage`` or a URL
    the site already has).
    """,
)

mail_sent = _signals.signal(
    "mail-sent",
    doc="""Sent by the site when it sent a mail that should reach amoCRM.

    Sender: the application. Keyword arguments: ``event`` (the mail event name the
    rules use, for example ``"ORDER_NEW"``), ``data`` (the values the mail was built
    from), optional ``message`` (a Flask-Mail ``Message``: subject, recipients and body
    become available to the rules).
    """,
)

event_captured = _signals.signal(
    "event-captured",
    doc="""Sent by Flask-AmoCRM after an event row was committed to the outbox.

    Sender: the application. Keyword argument: ``event`` (the stored
    :class:`~flask_amocrm.models.Event`).
    """,
)

event_delivered = _signals.signal(
    "event-delivered",
    doc="""Sent by Flask-AmoCRM when an event reached amoCRM.

    Sender: the application. Keyword argument: ``event`` (its ``remote`` attribute holds
    the ids amoCRM gave the lead, contact and company).
    """,
)

event_failed = _signals.signal(
    "event-failed",
    doc="""Sent by Flask-AmoCRM when an event failed permanently and waits for a person.

    Sender: the application. Keyword arguments: ``event`` and ``error`` (the reason, as
    stored in ``event.last_error``).
    """,
)
