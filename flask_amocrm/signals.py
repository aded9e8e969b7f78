"""The signals of Flask-AmoCRM.

They live in their own :class:`blinker.Namespace`; Flask's namespace is for Flask's own
signals. Every signal is sent with the real application object as the sender
(``current_app._get_current_object()``), never the ``current_app`` proxy, so a receiver
connected with ``sender=app`` hears only that application. Receivers should accept
``**extra``: more keyword arguments may be added later. A receiver that raises is
logged and never reaches the sender (:class:`SafeSignal`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from inspect import iscoroutinefunction
from typing import Any

from blinker import NamedSignal, Namespace

log = logging.getLogger("flask_amocrm")


class SafeSignal(NamedSignal):
    """A signal whose receivers can never break the sender.

    Blinker lets a raising receiver's exception propagate to whoever sent the
    signal, and the receivers after it are not called. For these signals that would
    mean a site's view failing because a receiver of ``form_submitted`` broke, or a
    delivery stopping because a site's receiver of ``event_delivered`` did. So each
    receiver is called on its own: one that raises is logged (with its traceback)
    and the others still run.
    """

    def send(
        self,
        sender: Any | None = None,
        /,
        *,
        _async_wrapper: Callable[
            [Callable[..., Coroutine[Any, Any, Any]]], Callable[..., Any]
        ]
        | None = None,
        **kwargs: Any,
    ) -> list[tuple[Callable[..., Any], Any]]:
        """Call every receiver connected to ``sender`` (or to any sender); return
        ``(receiver, result)`` for those that did not raise."""
        if self.is_muted:
            return []
        results = []
        for receiver in self.receivers_for(sender):
            call = receiver
            if iscoroutinefunction(receiver):
                if _async_wrapper is None:  # a mistake in the wiring: say so
                    raise RuntimeError("Cannot send to a coroutine function.")
                call = _async_wrapper(receiver)
            try:
                result = call(sender, **kwargs)
            except Exception:
                log.exception("A receiver of the %r signal failed", self.name)
                continue
            results.append((receiver, result))
        return results

    async def send_async(
        self,
        sender: Any | None = None,
        /,
        *,
        _sync_wrapper: Callable[
            [Callable[..., Any]], Callable[..., Coroutine[Any, Any, Any]]
        ]
        | None = None,
        **kwargs: Any,
    ) -> list[tuple[Callable[..., Any], Any]]:
        """Await every receiver as :meth:`send` calls them: one that raises is
        logged, the others still run."""
        if self.is_muted:
            return []
        results = []
        for receiver in self.receivers_for(sender):
            call = receiver
            if not iscoroutinefunction(receiver):
                if _sync_wrapper is None:  # a mistake in the wiring: say so
                    raise RuntimeError("Cannot send to a non-coroutine function.")
                call = _sync_wrapper(receiver)
            try:
                result = await call(sender, **kwargs)
            except Exception:
                log.exception("A receiver of the %r signal failed", self.name)
                continue
            results.append((receiver, result))
        return results


class _Namespace(Namespace):
    def signal(self, name: str, doc: str | None = None) -> SafeSignal:
        if name not in self:
            self[name] = SafeSignal(name, doc)
        found = self[name]
        assert isinstance(found, SafeSignal)
        return found


_signals = _Namespace()


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

event_cancelled = _signals.signal(
    "event-cancelled",
    doc="""Sent by Flask-AmoCRM when a hook cancelled an event (a ``before_push`` hook,
    or a ``before_api_call`` hook vetoing one of its requests, raised
    :class:`~flask_amocrm.Cancel`).

    Sender: the application. Keyword arguments: ``event`` and ``reason`` (as stored
    in ``event.last_error``).
    """,
)
