"""Connecting an account over OAuth, and keeping the connection alive.

:func:`exchange_code` turns the code amoCRM's grant page gives into a stored token
pair; :func:`keep_alive` refreshes a pair before amoCRM's three-month refresh-token
lifetime runs out on a quiet site.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import delete, select

from ..errors import AuthError
from ..models import Token, utcnow
from .auth import TOKEN_PATH, OAuthTokens, store_pair
from .client import token_claims
from .clients import client_for, token_client_for

if TYPE_CHECKING:
    from ..state import AppState

log = logging.getLogger("flask_amocrm.amo")

#: The kinds of connection: a long-lived token from the settings, or an OAuth pair.
LONG_LIVED = "long-lived"
OAUTH = "oauth"


@dataclass(frozen=True)
class TokenState:
    """What can be told about the account's token without calling amoCRM. Times
    are naive UTC, as stored."""

    #: :data:`LONG_LIVED` or :data:`OAUTH`.
    kind: str
    #: Whether there is a token to send (an OAuth pair stored and not revoked).
    connected: bool
    #: When the access token expires: a long-lived token's ``exp`` claim, an OAuth
    #: row's ``expires_at``; ``None`` when not known.
    expires_at: datetime | None = None
    #: When the OAuth pair was last obtained (code exchange or refresh).
    refreshed_at: datetime | None = None
    #: When amoCRM refused to refresh the OAuth pair (a person must reconnect).
    revoked_at: datetime | None = None


def token_state(state: AppState) -> TokenState:
    """The state of the account's token (see :class:`TokenState`)."""
    settings = state.settings
    if settings.token:
        # read without checking the signature, as the client does (token_claims)
        exp = token_claims(settings.token).get("exp")
        expires = (
            datetime.fromtimestamp(exp, UTC).replace(tzinfo=None)
            if isinstance(exp, int | float) and not isinstance(exp, bool)
            else None
        )
        return TokenState(kind=LONG_LIVED, connected=True, expires_at=expires)
    with state.session() as session:
        row = session.scalar(select(Token).where(Token.base_url == settings.base_url))
    if row is None or not row.access_token:
        return TokenState(kind=OAUTH, connected=False)
    return TokenState(
        kind=OAUTH,
        connected=row.revoked_at is None,
        expires_at=row.expires_at,
        refreshed_at=row.refreshed_at,
        revoked_at=row.revoked_at,
    )


def disconnect(state: AppState) -> bool:
    """Forget the stored OAuth pair of the account (amoCRM is not told: the
    integration stays installed there until an admin removes it). Whether there was
    one. Events wait as ``retrying`` until amoCRM is connected again."""
    with state.session() as session:
        gone = session.execute(
            delete(Token).where(Token.base_url == state.settings.base_url)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    tokens = client_for(state).tokens
    if isinstance(tokens, OAuthTokens):
        tokens.forget()
    if gone:
        log.warning(
            "amoCRM disconnected: %s (tokens forgotten)", state.settings.base_url
        )
    return bool(gone)


def exchange_code(state: AppState, code: str, *, referer: str | None = None) -> Token:
    """Exchange an authorization code for a token pair and store it; this also
    reconnects an account whose refresh token was revoked. The caller tells the
    alerts that access is back."""
    settings = state.settings
    if not settings.client_id:
        raise AuthError(
            "OAuth is not configured: set AMOCRM_CLIENT_ID, "
            "AMOCRM_CLIENT_SECRET and AMOCRM_REDIRECT_URI"
        )
    if (
        referer
        and urlsplit(f"//{referer}").hostname != urlsplit(settings.base_url).hostname
    ):
        # the referer is the visitor's query string: quoted (repr), so CR/LF in it
        # cannot start a forged log line
        log.warning(
            "amoCRM sent the code from %r, but AMOCRM_BASE_URL is %s",
            referer[:200],
            settings.base_url,
        )
    client = token_client_for(state)
    client.redactor.add(code)
    client.redactor.add(settings.client_secret)
    pair = client.request(
        "POST",
        TOKEN_PATH,
        auth=False,
        oauth=True,
        json_body={
            "client_id": settings.client_id,
            "client_secret": settings.client_secret,
            "grant_type": "authorization_code",
            "code": code.strip(),
            "redirect_uri": settings.redirect_uri,
        },
    )
    row = store_pair(state, pair)
    tokens = client_for(state).tokens
    if isinstance(tokens, OAuthTokens):
        tokens.forget()
    log.info("amoCRM connected: %s (token version %s)", settings.base_url, row.version)
    return row


def keep_alive(state: AppState) -> bool:
    """Refresh the OAuth pair if it was obtained more than ``AMOCRM_KEEPALIVE_DAYS``
    ago, so a quiet site never reaches amoCRM's three-month refresh-token expiry.
    Returns whether it refreshed. Safe to call from every scheduler at once."""
    if not state.settings.client_id:
        return False
    with state.session() as session:
        row = session.scalar(
            select(Token).where(Token.base_url == state.settings.base_url)
        )
    if row is None or row.revoked_at is not None or not row.refresh_token:
        return False
    limit = timedelta(days=state.settings.keepalive_days)
    if row.refreshed_at is not None and utcnow() - row.refreshed_at < limit:
        return False
    tokens = client_for(state).tokens
    if not isinstance(tokens, OAuthTokens):
        return False
    refreshed = tokens.refresh_if_older(limit)
    if refreshed:
        log.info("amoCRM keep-alive refreshed the token of %s", state.settings.base_url)
    return refreshed
