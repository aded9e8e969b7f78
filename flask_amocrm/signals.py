"""The signals of Flask-AmoCRM.

They live in their own :class:`blinker.Namespace`; Flask's namespace is for Flask's own
signals. Every signal is sent with the real application object as the sender
(``current_app._get_current_object()``), never the ``current_app`` proxy, so a receiver
connected with ``sender=app`` hears only that application. Receivers should accept
``**extra``: more keyword arguments may be added later. A receiver that raises is
logged and never reaches the sender (:class:`SafeSignal`). The signals of changes in
amoCRM (``lead_added`` ... ``task_completed``) are sent by a worker through
:func:`send_each`, which keeps which receivers succeeded so that one that raised is
called again later, alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
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

# -- amoCRM -> site: sent by a worker, once per change (docs/webhooks.md) ------------

_INBOUND_COMMON = """
    Sent by a Flask-AmoCRM worker (in an app context) once per change, whether it
    came by webhook or from the events log. Sender: the application. Every one of
    these signals also passes ``change`` (the stored
    :class:`~flask_amocrm.models.InboundChange`: ``key``, ``origin``,
    ``occurred_at``, ``values``). A receiver that raises is called again later with
    backoff until it succeeds; a receiver that succeeded is never called again for
    that change."""

lead_added = _signals.signal(
    "lead-added",
    doc="""A lead was created in amoCRM.

    Keyword arguments: ``lead_id``, ``pipeline_id``, ``status_id``,
    ``responsible_user_id`` (``None`` when the source did not say), ``event`` (the
    site's :class:`~flask_amocrm.models.Event` that created the lead, or ``None``
    when the lead is not the site's), ``change``."""
    + _INBOUND_COMMON,
)

lead_status_changed = _signals.signal(
    "lead-status-changed",
    doc="""A lead moved to another stage (status 142 is won, 143 lost).

    Keyword arguments: ``lead_id``, ``pipeline_id``, ``status_id`` (where it is
    now), ``old_pipeline_id``, ``old_status_id`` (where it was; either may be
    ``None`` when the source did not say), ``responsible_user_id``, ``event`` (the
    site's event that created the lead, or ``None``), ``change``."""
    + _INBOUND_COMMON,
)

lead_updated = _signals.signal(
    "lead-updated",
    doc="""A lead was edited (webhooks only: the events log has no single entry
    for an edit).

    Keyword arguments: ``lead_id``, ``pipeline_id``, ``status_id``,
    ``responsible_user_id``, ``event`` (or ``None``), ``change``."""
    + _INBOUND_COMMON,
)

lead_deleted = _signals.signal(
    "lead-deleted",
    doc="""A lead was deleted.

    Keyword arguments: ``lead_id``, ``event`` (or ``None``), ``change``."""
    + _INBOUND_COMMON,
)

contact_added = _signals.signal(
    "contact-added",
    doc="""A contact was created in amoCRM.

    Keyword arguments: ``contact_id``, ``responsible_user_id`` (or ``None``),
    ``event`` (the site's event that created the contact, or ``None``),
    ``change``."""
    + _INBOUND_COMMON,
)

contact_updated = _signals.signal(
    "contact-updated",
    doc="""A contact was edited (webhooks only).

    Keyword arguments: ``contact_id``, ``responsible_user_id``, ``event`` (or
    ``None``), ``change``."""
    + _INBOUND_COMMON,
)

note_added = _signals.signal(
    "note-added",
    doc="""A note was added to a lead, contact or company.

    Keyword arguments: ``note_id``, ``entity_type`` (``lead``, ``contact`` or
    ``company``), ``entity_id``, ``note_type`` and ``text`` (as the webhook sends
    them; ``None`` from the events log), ``event`` (the site's event of that lead
    or contact, or ``None``), ``change``."""
    + _INBOUND_COMMON,
)

task_completed = _signals.signal(
    "task-completed",
    doc="""A task was completed.

    Keyword arguments: ``task_id``, ``entity_type`` and ``entity_id`` (what the
    task is about; ``None`` from the events log), ``text``, ``result`` (the
    result text, or ``None``), ``event`` (the site's event of that lead, or
    ``None``), ``change``."""
    + _INBOUND_COMMON,
)

#: The signals of changes in amoCRM, by the name the inbound table stores.
INBOUND_SIGNALS: dict[str, SafeSignal] = {
    "lead_added": lead_added,
    "lead_status_changed": lead_status_changed,
    "lead_updated": lead_updated,
    "lead_deleted": lead_deleted,
    "contact_added": contact_added,
    "contact_updated": contact_updated,
    "note_added": note_added,
    "task_completed": task_completed,
}


def receiver_name(receiver: Callable[..., Any]) -> str:
    """A receiver's stable name (``module.qualname``), the same in every process:
    what the inbound table records as done."""
    # A callable object is named by its class: its repr would carry its address.
    kind = receiver if hasattr(receiver, "__qualname__") else type(receiver)
    module = getattr(kind, "__module__", None) or "?"
    return f"{module}.{kind.__qualname__}"


def send_each(
    signal: SafeSignal,
    sender: Any,
    done: Iterable[str],
    *,
    on_success: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> tuple[list[str], list[tuple[str, BaseException]]]:
    """Call each receiver of ``signal`` for ``sender`` whose name is not in
    ``done``; return the names of those that succeeded and ``(name, exception)``
    for those that raised. ``on_success(name)`` is called right after each
    receiver that succeeded (to record it before the next one runs). Nothing
    propagates: the caller decides what a failure means (the inbound worker
    retries it later). A coroutine receiver is a failure: these signals are
    sent from a worker, not an event loop."""
    skip = set(done)
    succeeded: list[str] = []
    failed: list[tuple[str, BaseException]] = []
    if signal.is_muted:
        return succeeded, failed
    seen: dict[str, int] = {}
    for receiver in signal.receivers_for(sender):
        name = receiver_name(receiver)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:  # two receivers of one name: number the later ones
            name = f"{name}#{seen[name]}"
        if name in skip:
            continue
        if iscoroutinefunction(receiver):
            failed.append((name, TypeError("an async receiver cannot be called")))
            continue
        try:
            receiver(sender, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every receiver failure is kept
            failed.append((name, exc))
            continue
        succeeded.append(name)
        if on_success is not None:
            on_success(name)
    return succeeded, failed
