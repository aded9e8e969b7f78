"""Exceptions raised by Flask-AmoCRM.

Configuration mistakes raise :class:`RuntimeError` at ``init_app``, as the Pallets
extensions do. Everything that goes wrong while talking to amoCRM or applying a rule
is an :class:`AmoCRMError`; its ``retryable`` attribute says whether trying the same
thing again later can succeed.
"""

from __future__ import annotations

from typing import Any

from .i18n import N_, Message


class AmoCRMError(Exception):
    """Base class of every error this package raises about amoCRM or a rule."""

    #: Whether the same call may succeed later without anybody changing anything.
    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RuleError(AmoCRMError):
    """A rule is invalid or could not be rendered for an event (permanent)."""


class APIError(AmoCRMError):
    """amoCRM answered with a status that is not a success."""

    def __init__(
        self, message: str, *, status: int | None = None, body: Any = None
    ) -> None:
        super().__init__(message, status=status)
        self.body = body


class TransportError(APIError):
    """The request did not complete: connection refused or dropped, or a timeout.

    ``sent`` tells whether the request may have reached amoCRM (a read timeout) or
    certainly did not (a refused connection).
    """

    retryable = True

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class AuthError(APIError):
    """401: the token is missing, expired, revoked, or the client is not authorised."""

    retryable = True  # a person reconnecting, or a refresh, fixes it: events wait


class TokenRevokedError(AuthError):
    """amoCRM refused to refresh the OAuth pair: a person must connect amoCRM again.

    Events wait (``retrying``) until then; the worker tells the admins once."""


class ClientRefusedError(AuthError):
    """amoCRM refused the integration's ``AMOCRM_CLIENT_ID``/``AMOCRM_CLIENT_SECRET``:
    the configuration must be fixed. Events wait until then."""


class PaymentRequiredError(APIError):
    """402: the account is not paid, or its plan lacks the feature."""

    retryable = True


class AccountBlockedError(APIError):
    """403 with an HTML page: the account or IP is blocked for abusing the rate limit.

    Retryable (events wait), but the client never retries it by itself: only amoCRM
    support lifts the block, and hammering a blocked account makes it worse.
    """

    retryable = True


class ForbiddenError(APIError):
    """403 with a JSON problem body: the token's user lacks the rights for this call."""


class NotFoundError(APIError):
    """404: the entity or endpoint does not exist."""


class ValidationError(APIError):
    """400: amoCRM rejected the data; ``errors`` holds its ``validation-errors``."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 400,
        body: Any = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.errors = errors or []


class RateLimitError(APIError):
    """429: too many requests per second."""

    retryable = True


class ServerError(APIError):
    """5xx: amoCRM failed; 504 on a batch means the batch was too large or slow."""

    retryable = True


class LockTimeoutError(AmoCRMError):
    """Another process held a shared lock for too long; the work is tried again
    later (see :mod:`flask_amocrm.shared`)."""

    retryable = True


class CallVetoed(AmoCRMError):
    """A ``before_api_call`` hook refused a request (it raised :class:`Cancel`), or
    failed: the request was not sent. ``events`` are the ids of the events the
    request was for; ``cancelled`` tells a veto (the events end ``cancelled``) from
    a hook that raised something else (they fail)."""

    def __init__(
        self, message: str, *, events: tuple[int, ...] = (), cancelled: bool = True
    ) -> None:
        super().__init__(message)
        self.events = events
        self.cancelled = cancelled


class Cancel(Exception):  # noqa: N818 - the public name the design fixes
    """Raised by a ``before_push`` or ``before_api_call`` hook to stop an event: it
    ends ``cancelled``, with ``reason`` stored as its ``last_error``.

    ``raise flask_amocrm.Cancel("test order")``
    """

    def __init__(self, reason: str = N_("cancelled by a hook")) -> None:
        super().__init__(reason)
        # a Message (the default) stays translatable until it is stored
        self.reason = reason if isinstance(reason, Message) else str(reason)


class ImportRowError(ValueError):
    """A row of an import file cannot be imported; the message names the line."""


class UploadRefused(Exception):
    """An upload was not saved; the message says why, for the event's note."""


def describe(exc: BaseException) -> str:
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


#: What each failure is called in a stored reason: its class's name, which the
#: catalog explains in other languages (an office manager reads the reason).
LABELS = {
    "AmoCRMError": N_("AmoCRMError"),
    "RuleError": N_("RuleError"),
    "APIError": N_("APIError"),
    "TransportError": N_("TransportError"),
    "AuthError": N_("AuthError"),
    "TokenRevokedError": N_("TokenRevokedError"),
    "ClientRefusedError": N_("ClientRefusedError"),
    "PaymentRequiredError": N_("PaymentRequiredError"),
    "AccountBlockedError": N_("AccountBlockedError"),
    "ForbiddenError": N_("ForbiddenError"),
    "NotFoundError": N_("NotFoundError"),
    "ValidationError": N_("ValidationError"),
    "RateLimitError": N_("RateLimitError"),
    "ServerError": N_("ServerError"),
    "LockTimeoutError": N_("LockTimeoutError"),
}


def failure_reason(exc: BaseException) -> Message:
    """The stored reason of a failed delivery: ``ValidationError: <what amoCRM
    said>`` (in English; :func:`~flask_amocrm.i18n.localize` names the kind in the
    reader's language)."""
    name = type(exc).__name__
    return N_("%(kind)s: %(error)s", kind=LABELS.get(name, name), error=exc)
