"""The hooks a site registers on :class:`~flask_amocrm.AmoCRM`, kept where the floors
below the extension can reach them.

``@amocrm.before_push``, ``@amocrm.after_push``, ``@amocrm.before_api_call`` and
``@amocrm.after_api_call`` (and ``@amocrm.spam_check``) add functions to the app's
:class:`Hooks` (``AppState.hooks``); the worker calls the push hooks around each event
(and the spam checks before its first request), and the amoCRM
client calls the API-call hooks around each request (it gets :class:`Hooks` as its
``observer``, so the client never imports the worker). docs/hooks.md shows them.

A leaf module: it imports only :mod:`flask_amocrm.errors`.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from .errors import CallVetoed, Cancel
from .i18n import N_

log = logging.getLogger("flask_amocrm")

#: The ids of the events the amoCRM requests made now are for (set by the worker).
call_events: ContextVar[tuple[int, ...]] = ContextVar(
    "flask_amocrm_call_events", default=()
)


@contextlib.contextmanager
def for_events(ids: Any) -> Iterator[None]:
    """The requests made inside the block are for the events ``ids``."""
    token = call_events.set(tuple(int(i) for i in ids))
    try:
        yield
    finally:
        call_events.reset(token)


@dataclass
class ApiCall:
    """One request to amoCRM, as the API-call hooks see it.

    ``before_api_call`` gets it before the request goes out and may change
    ``params`` and ``body`` (what is sent is what they hold afterwards);
    ``after_api_call`` gets the same object with ``status`` and ``answer`` (the
    parsed JSON, ``None`` for an empty answer), or ``error`` when no answer came.
    """

    #: ``GET``, ``POST``, ``PATCH`` or ``DELETE``.
    method: str
    #: The path on the account's host, ``/api/v4/leads/complex``.
    path: str
    #: The query parameters (``None``: none).
    params: dict[str, Any] | None
    #: The JSON body (``None`` for a GET); a copy of its own for each request.
    body: Any
    #: The ids of the events the request is for (empty for a request made for none,
    #: such as ``flask amocrm sync``). A veto cancels these events.
    events: tuple[int, ...] = ()
    #: The HTTP status of the answer (after).
    status: int | None = None
    #: The parsed answer (after).
    answer: Any = None
    #: Why no answer came: a timeout or a dropped connection (after).
    error: str | None = None


@dataclass(frozen=True)
class AmoIds:
    """What amoCRM made of a delivered event, as an ``after_push`` hook gets it."""

    lead_id: int | None = None
    contact_id: int | None = None
    company_id: int | None = None
    #: The incoming lead's uid (Unsorted).
    unsorted_uid: str | None = None
    #: Notes added, per API entity (``leads``, ``contacts``, ``companies``).
    note_ids: dict[str, list[int]] = field(default_factory=dict)
    task_ids: list[int] = field(default_factory=list)


@dataclass
class PushHook:
    """A push hook with its narrowing: only events of form ``form`` or mail event
    ``mail`` (neither: every event)."""

    func: Callable[..., Any]
    form: str | None = None
    mail: str | None = None

    def wants(self, kind: str, source: str) -> bool:
        """Whether this hook is for an event of ``kind`` and ``source``."""
        if self.form is None and self.mail is None:
            return True
        if kind == "form":
            return self.form is not None and self.form == source
        return self.mail is not None and self.mail == source

    @property
    def name(self) -> str:
        """The hook's name, for logs and reasons."""
        return str(getattr(self.func, "__qualname__", None) or repr(self.func))


def last_line(exc: BaseException) -> str:
    """The last line of ``exc``'s traceback (``ValueError: bad phone``)."""
    lines = traceback.format_exception_only(type(exc), exc)
    return (lines[-1] if lines else type(exc).__name__).strip()


@dataclass
class Hooks:
    """The hooks registered on one :class:`~flask_amocrm.AmoCRM` instance."""

    before_push: list[PushHook] = field(default_factory=list)
    after_push: list[PushHook] = field(default_factory=list)
    before_api_call: list[Callable[[ApiCall], Any]] = field(default_factory=list)
    after_api_call: list[Callable[[ApiCall], Any]] = field(default_factory=list)
    #: ``@amocrm.spam_check``: ``func(event)`` returns why the event is spam (a
    #: string), or ``None``/``False`` (flask_amocrm.worker.spam).
    spam_check: list[PushHook] = field(default_factory=list)

    def for_event(self, which: str, kind: str, source: str) -> list[PushHook]:
        """The ``before_push``, ``after_push`` or ``spam_check`` hooks for an event,
        in the order they were registered."""
        hooks: list[PushHook] = getattr(self, which)
        return [h for h in hooks if h.wants(kind, source)]

    # -- the amoCRM client's observer --------------------------------------------------

    @property
    def observes(self) -> bool:
        """Whether any API-call hook is registered (the client copies bodies only
        then)."""
        return bool(self.before_api_call or self.after_api_call)

    def before_call(self, call: ApiCall) -> None:
        """Run the ``before_api_call`` hooks. A hook raising :class:`Cancel` vetoes
        the request; one raising anything else fails it: both raise
        :class:`~flask_amocrm.errors.CallVetoed` and nothing is sent."""
        for hook in list(self.before_api_call):
            name = getattr(hook, "__qualname__", repr(hook))
            try:
                hook(call)
            except Cancel as exc:
                raise CallVetoed(
                    N_(
                        "before_api_call hook %(hook)s vetoed %(method)s %(path)s: "
                        "%(reason)s",
                        hook=name,
                        method=call.method,
                        path=call.path,
                        reason=exc.reason,
                    ),
                    events=call.events,
                ) from None
            except Exception as exc:  # noqa: BLE001 - a site's hook, any error
                log.warning(
                    "The before_api_call hook %s raised %s on %s %s",
                    name,
                    type(exc).__name__,
                    call.method,
                    call.path,
                )
                raise CallVetoed(
                    N_(
                        "before_api_call hook %(hook)s raised: %(error)s",
                        hook=name,
                        error=last_line(exc),
                    ),
                    events=call.events,
                    cancelled=False,
                ) from None

    def after_call(self, call: ApiCall) -> None:
        """Run the ``after_api_call`` hooks; one that raises is logged (its type
        only: the answer may hold personal data) and the others still run."""
        for hook in list(self.after_api_call):
            try:
                hook(call)
            except Exception as exc:  # noqa: BLE001 - it cannot undo the request
                log.warning(
                    "The after_api_call hook %s raised %s on %s %s (ignored)",
                    getattr(hook, "__qualname__", repr(hook)),
                    type(exc).__name__,
                    call.method,
                    call.path,
                )


__all__ = [
    "AmoIds",
    "ApiCall",
    "Hooks",
    "PushHook",
    "call_events",
    "for_events",
    "last_line",
]
