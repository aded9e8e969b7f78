"""Telling the admins when amoCRM is down, once, and when it is back, once.

An outage starts with the first failure that says amoCRM cannot be reached or refuses
us (network, 5xx, 401 with a dead token, 402, 403 block) and ends with the next
success. Whichever worker sees the edge first sends the mail; the others see the shared
flag and stay quiet, so the admins get two mails per outage, not one per event.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select

from .. import shared
from ..alerts import clear_alert, send_alert
from ..errors import (
    AccountBlockedError,
    AuthError,
    ClientRefusedError,
    PaymentRequiredError,
    ServerError,
    TokenRevokedError,
    TransportError,
    failure_reason,
)
from ..i18n import gettext, localize, ngettext, site_locale
from ..meter import count_outage
from ..models import PENDING, PROCESSING, RETRYING, Event
from ..state import AppState

log = logging.getLogger("flask_amocrm.worker")

#: Failures that mean "amoCRM is down or refuses us", not "this event is bad". A 429
#: is ours to slow down for, not an outage.
OUTAGE_ERRORS = (
    TransportError,
    ServerError,
    AuthError,
    PaymentRequiredError,
    AccountBlockedError,
)
_FLAG = "outage"
_PAUSE = "paused"
#: Seconds without any request after amoCRM answered 403 (a block).
BLOCK_PAUSE = 600


def _waiting(state: AppState) -> int:
    with state.session() as session:
        return int(
            session.scalar(
                select(func.count()).where(
                    Event.status.in_((PENDING, RETRYING, PROCESSING))
                )
            )
            or 0
        )


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def paused(state: AppState) -> str | None:
    """Why no request may be sent now (amoCRM blocked us recently), or ``None``."""
    return shared.get(state, _PAUSE, account=True)


@dataclass(frozen=True)
class Outage:
    """An outage going on: since when (naive UTC, as stored times) and why."""

    since: datetime | None
    reason: str


def outage(state: AppState) -> Outage | None:
    """The outage going on, or ``None`` (amoCRM answered the last call)."""
    value = shared.get(state, _FLAG)
    if value is None:
        return None
    try:
        stored = json.loads(value)
        reason = str(stored["reason"])
    except (ValueError, KeyError, TypeError):
        return Outage(since=None, reason=value)
    try:
        since: datetime | None = datetime.fromtimestamp(
            float(stored["since"]), UTC
        ).replace(tzinfo=None)
    except (ValueError, KeyError, TypeError, OverflowError):
        since = None
    return Outage(since=since, reason=reason)


def current(state: AppState) -> str | None:
    """The reason of the outage going on, or ``None``."""
    found = outage(state)
    return found.reason if found is not None else None


def note_failure(state: AppState, exc: BaseException) -> None:
    """Record a failed call; the first one of an outage mails the admins. A block
    (403) also pauses every worker for :data:`BLOCK_PAUSE` seconds: hammering a
    blocked account only prolongs the block. Access that a person must restore
    (a revoked token, refused credentials) gets its own mail, once."""
    if not isinstance(exc, OUTAGE_ERRORS):
        return
    started = time.time()
    locale = site_locale()  # mails and stored reasons: the site's language
    english = str(failure_reason(exc))[:500]  # for the Python log
    reason = localize(failure_reason(exc), locale)[:500]
    if alert_auth_failure(state, exc):
        # Its own mail said what to do; the outage starts quietly, and its end is
        # announced as any other.
        if shared.set_once(
            state, _FLAG, json.dumps({"since": started, "reason": reason})
        ):
            count_outage(state)
        return
    if isinstance(exc, AccountBlockedError) and shared.set_once(
        state,
        _PAUSE,
        gettext(
            "%(reason)s (since %(when)s)",
            locale=locale,
            reason=reason,
            when=_when(started),
        ),
        seconds=BLOCK_PAUSE,
        account=True,  # the block is the account's: every site feeding it pauses
    ):
        log.error(
            "amoCRM blocked %s: no requests for %s s",
            state.settings.base_url,
            BLOCK_PAUSE,
        )
    if not shared.set_once(
        state, _FLAG, json.dumps({"since": started, "reason": reason})
    ):
        return
    count_outage(state)
    host = state.settings.base_url
    log.error("amoCRM outage started at %s: %s", host, english)
    send_alert(
        gettext("amoCRM is not answering (%(host)s)", locale=locale, host=host),
        gettext(
            "Since %(when)s amoCRM at %(host)s fails or refuses our requests:",
            locale=locale,
            when=_when(started),
            host=host,
        )
        + f"\n\n    {reason}\n\n"
        + _waiting_text(state, locale)
        + " "
        + gettext(
            "Nothing is lost: they are kept and delivered when amoCRM answers "
            "again; you will get one more mail then.",
            locale=locale,
        )
        + "\n"
        + (_token_advice(state, locale) if isinstance(exc, AuthError) else "")
        + (
            "\n"
            + gettext(
                "The account is blocked or not paid: that needs amoCRM's support "
                "or billing.",
                locale=locale,
            )
            + "\n"
            if isinstance(exc, AccountBlockedError | PaymentRequiredError)
            else ""
        ),
    )


def _waiting_text(state: AppState, locale: str) -> str:
    """How many events wait, as a sentence."""
    return ngettext(
        "%(count)s event(s) are waiting.",
        "%(count)s event(s) are waiting.",
        _waiting(state),
        locale=locale,
    )


def _token_advice(state: AppState, locale: str) -> str:
    """What to do about a refused token: it depends on the kind of token."""
    if state.settings.token:
        advice = gettext(
            "The long-lived token (AMOCRM_TOKEN) was refused: it expired or was "
            "revoked. An admin of the amoCRM account makes a new one (the private "
            "integration's 'Keys and scopes', 'Generate long-lived token'), sets it as "
            "AMOCRM_TOKEN and restarts the site and its workers.",
            locale=locale,
        )
    else:
        advice = gettext(
            "The OAuth token was refused: connect amoCRM again ('flask amocrm auth' "
            "or 'Connect amoCRM' in the site's admin).",
            locale=locale,
        )
    return f"\n{advice}\n"


def note_success(state: AppState) -> None:
    """Record a successful call; the first one after an outage mails the admins."""
    value = shared.clear(state, _FLAG)
    if value is None:
        return
    try:
        since = float(json.loads(value)["since"])
    except (ValueError, KeyError, TypeError):
        since = time.time()
    minutes = (time.time() - since) / 60
    host = state.settings.base_url
    locale = site_locale()
    log.warning("amoCRM outage at %s ended after %.1f minutes", host, minutes)
    send_alert(
        gettext("amoCRM answers again (%(host)s)", locale=locale, host=host),
        gettext(
            "amoCRM at %(host)s answers again. The outage began %(when)s and "
            "lasted %(minutes)s minutes.",
            locale=locale,
            host=host,
            when=_when(since),
            minutes=format(minutes, ".1f"),
        )
        + "\n\n"
        + ngettext(
            "%(count)s event(s) are still waiting and are being delivered now.",
            "%(count)s event(s) are still waiting and are being delivered now.",
            _waiting(state),
            locale=locale,
        )
        + "\n",
    )


#: Alerts about access a person must restore, and how long each is not repeated.
_AUTH_ALERT_SECONDS = 30 * 24 * 3600


def alert_auth_failure(state: AppState, exc: BaseException) -> bool:
    """Tell the admins, once, that amoCRM access must be restored by a person: a
    revoked OAuth pair (connect again) or refused client credentials (fix the
    configuration). Whether a mail went out for it: when it did not (already
    sent), the caller treats the failure as any outage."""
    host = state.settings.base_url
    locale = site_locale()
    if isinstance(exc, TokenRevokedError):
        return send_alert(
            gettext("amoCRM access lost: connect amoCRM again", locale=locale),
            gettext(
                "amoCRM refused to refresh the access of %(host)s: %(error)s",
                locale=locale,
                host=host,
                error=exc,
            )
            + "\n\n"
            + gettext(
                "No event is lost: they wait as 'retrying' and are delivered once "
                "amoCRM is connected again. Run 'flask amocrm auth' or use "
                "'Connect amoCRM' in the site's admin.",
                locale=locale,
            ),
            dedupe_key="revoked",
            dedupe_seconds=_AUTH_ALERT_SECONDS,
        )
    if isinstance(exc, ClientRefusedError):
        return send_alert(
            gettext("amoCRM refuses the integration's credentials", locale=locale),
            gettext(
                "amoCRM refused AMOCRM_CLIENT_ID/AMOCRM_CLIENT_SECRET for "
                "%(host)s: %(error)s. Events wait until they are fixed.",
                locale=locale,
                host=host,
                error=exc,
            ),
            dedupe_key="client",
            dedupe_seconds=_AUTH_ALERT_SECONDS,
        )
    return False


def reconnected(state: AppState) -> None:
    """amoCRM was connected again: the next loss of access alerts again. Never
    raises: the connection is made, whatever happens to this bookkeeping."""
    try:
        clear_alert("revoked")
        clear_alert("client")
    except Exception:
        log.exception("Could not reset the amoCRM access alerts")
