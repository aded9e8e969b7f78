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
from datetime import UTC, datetime

from sqlalchemy import func, select

from .. import flags
from ..alerts import send_alert
from ..errors import (
    AccountBlockedError,
    AmoCRMError,
    AuthError,
    PaymentRequiredError,
    ServerError,
    TransportError,
)
from ..extension import _State
from ..models import PENDING, PROCESSING, RETRYING, Event

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


def _waiting(state: _State) -> int:
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


def paused(state: _State) -> str | None:
    """Why no request may be sent now (amoCRM blocked us recently), or ``None``."""
    return flags.get(state, _PAUSE)


def note_failure(state: _State, exc: AmoCRMError) -> None:
    """Record a failed call; the first one of an outage mails the admins. A block
    (403) also pauses every worker for :data:`BLOCK_PAUSE` seconds: hammering a
    blocked account only prolongs the block."""
    if not isinstance(exc, OUTAGE_ERRORS):
        return
    started = time.time()
    reason = f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, AccountBlockedError) and flags.set_once(
        state, _PAUSE, f"{reason} (since {_when(started)})", seconds=BLOCK_PAUSE
    ):
        log.error(
            "amoCRM blocked %s: no requests for %s s",
            state.settings.base_url,
            BLOCK_PAUSE,
        )
    if not flags.set_once(
        state, _FLAG, json.dumps({"since": started, "reason": reason})
    ):
        return
    host = state.settings.base_url
    log.error("amoCRM outage started at %s: %s", host, reason)
    send_alert(
        f"amoCRM is not answering ({host})",
        f"Since {_when(started)} amoCRM at {host} fails or refuses our requests:\n\n"
        f"    {reason}\n\n"
        f"{_waiting(state)} event(s) are waiting. Nothing is lost: they are kept and "
        "delivered when amoCRM answers again; you will get one more mail then.\n"
        + (
            "\nThe token was refused: reconnect amoCRM (flask amocrm auth).\n"
            if isinstance(exc, AuthError)
            else ""
        )
        + (
            "\nThe account is blocked or not paid: that needs amoCRM's support or "
            "billing.\n"
            if isinstance(exc, AccountBlockedError | PaymentRequiredError)
            else ""
        ),
    )


def note_success(state: _State) -> None:
    """Record a successful call; the first one after an outage mails the admins."""
    value = flags.clear(state, _FLAG)
    if value is None:
        return
    try:
        since = float(json.loads(value)["since"])
    except (ValueError, KeyError, TypeError):
        since = time.time()
    minutes = (time.time() - since) / 60
    host = state.settings.base_url
    log.warning("amoCRM outage at %s ended after %.1f minutes", host, minutes)
    send_alert(
        f"amoCRM answers again ({host})",
        f"amoCRM at {host} answers again. The outage began {_when(since)} and "
        f"lasted {minutes:.1f} minutes.\n\n{_waiting(state)} event(s) are still "
        "waiting and are being delivered now.\n",
    )
