"""Tokens: a long-lived token, or an OAuth 2.0 pair stored in the database.

amoCRM's refresh tokens work once, for everybody: a refresh token that was used is
dead, and two workers refreshing together lock the account out. So exactly one
process refreshes at a time, across all workers and machines, under the shared lock
of :mod:`flask_amocrm.shared` (a Redis lock, or a row of ``amocrm_flags``; neither
holds a database transaction open during the HTTP call).

Whoever gets the lock re-reads the row first: if another process refreshed meanwhile,
its token is used and amoCRM is not called. The new pair is written with a
compare-and-swap on ``version``, which fences a lock that expired during a slow call.

A refresh that amoCRM refuses ("Token has been revoked", expired) marks the row
``revoked_at`` and raises :class:`~flask_amocrm.errors.TokenRevokedError`: from then
on no process calls amoCRM for that account and every event waits as ``retrying``
(the worker tells the admins). Connecting again
(:func:`~flask_amocrm.amo.connect.exchange_code`) clears it and delivery resumes.

Both tokens are stored encrypted (:func:`seal`, Fernet from :mod:`cryptography`) with
the key of ``AMOCRM_TOKEN_KEY``, or one derived from ``SECRET_KEY``. A row written in
clear text by an older version is still read, and encrypted on that first read.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select, update

from .. import shared
from ..errors import (
    APIError,
    AuthError,
    ClientRefusedError,
    TokenRevokedError,
    TransportError,
)
from ..models import Token, utcnow
from .client import token_claims

if TYPE_CHECKING:
    from ..config import Settings
    from ..state import AppState
    from .client import AmoClient

log = logging.getLogger("flask_amocrm.amo")

#: Refresh this long before the access token expires.
REFRESH_MARGIN = timedelta(minutes=10)
#: The longest a refresh may hold the lock (the token call has its own timeouts).
LOCK_SECONDS = 30
#: How long a process keeps the token it read before looking at the row again.
LOCAL_SECONDS = 60.0
TOKEN_PATH = "/oauth2/access_token"


#: What starts an encrypted token in the table; anything else is clear text.
SEALED = "fernet:"


def _cipher(settings: Settings) -> MultiFernet | None:
    keys = settings.token_keys
    return MultiFernet([Fernet(key) for key in keys]) if keys else None


def seal(settings: Settings, value: str | None) -> str | None:
    """``value`` encrypted for the ``amocrm_tokens`` table (unchanged without a
    key, or when it is empty)."""
    cipher = _cipher(settings)
    if not value or cipher is None:
        return value
    return SEALED + cipher.encrypt(value.encode()).decode()


def unseal(settings: Settings, value: str | None) -> str | None:
    """A token as the table holds it, decrypted; clear text is returned as it is.
    :class:`AuthError` when the key cannot decrypt it (the key changed)."""
    if not value or not value.startswith(SEALED):
        return value
    cipher = _cipher(settings)
    try:
        if cipher is None:
            raise InvalidToken
        return cipher.decrypt(value[len(SEALED) :].encode()).decode()
    except InvalidToken:
        raise AuthError(
            "the stored amoCRM tokens cannot be decrypted: AMOCRM_TOKEN_KEY (or "
            "SECRET_KEY, which it defaults to) changed. Put the old key first in "
            "a list, or connect amoCRM again ('flask amocrm auth')"
        ) from None


def read_row(state: AppState, row: Token) -> Token:
    """``row`` (detached) with its tokens decrypted; a clear-text row is encrypted
    in the table now."""
    access, refresh = row.access_token, row.refresh_token
    row.access_token = unseal(state.settings, access) or ""
    row.refresh_token = unseal(state.settings, refresh)
    clear = [v for v in (access, refresh) if v and not v.startswith(SEALED)]
    if clear and state.settings.token_keys:
        with state.session() as session:
            session.execute(
                update(Token)
                .where(
                    Token.id == row.id,
                    Token.version == row.version,
                    Token.access_token == access,
                )
                .values(
                    access_token=seal(state.settings, row.access_token),
                    refresh_token=seal(state.settings, row.refresh_token),
                )
            )
            session.commit()
        log.info("amoCRM tokens of %s are now stored encrypted", row.base_url)
    return row


class OAuthTokens:
    """The OAuth pair of one account, kept in the ``amocrm_tokens`` table.

    ``token_client`` is an :class:`AmoClient` for the account that sends no token; it
    calls the token endpoint, under the same rate limit and API log as the rest.
    """

    def __init__(self, state: AppState, token_client: AmoClient) -> None:
        self.state = state
        self.settings = state.settings
        self.base_url = state.settings.base_url
        self.token_client = token_client
        self._thread_lock = threading.Lock()
        self._held: tuple[float, str, datetime | None] | None = None

    # -- the provider protocol -----------------------------------------------------

    def access_token(self) -> str:
        """The stored access token, refreshed first if it expires within 10 minutes."""
        held = self._held
        if (
            held is not None
            and time.monotonic() - held[0] < LOCAL_SECONDS
            and (held[2] is None or held[2] - utcnow() > REFRESH_MARGIN)
        ):
            return held[1]
        row = self._load()
        if row.expires_at is not None and row.expires_at - utcnow() <= REFRESH_MARGIN:
            return self.refresh(row.access_token) or row.access_token
        self._held = (time.monotonic(), row.access_token, row.expires_at)
        return row.access_token

    def refresh(self, rejected: str, *, force: bool = False) -> str | None:
        """Get a token better than ``rejected``: another process's fresh one, or a new
        pair from amoCRM. ``force`` refreshes even if the stored token is fine (the
        keep-alive). Raises :class:`AuthError` when the account must be reconnected."""
        self._held = None
        with self._thread_lock, self._lock():
            row = self._load()
            if not force and row.access_token != rejected and not _expiring(row):
                log.info(
                    "amoCRM token of %s was refreshed by another process", self.base_url
                )
                self._held = (time.monotonic(), row.access_token, row.expires_at)
                return row.access_token
            if not row.refresh_token:
                raise AuthError(
                    "amoCRM refused the token and there is no refresh "
                    "token: connect amoCRM again ('flask amocrm auth')"
                )
            return self._refresh_row(row)

    def forget(self) -> None:
        """Drop the token this process holds; the next call reads the row."""
        self._held = None

    # -- internals -----------------------------------------------------------------

    def _load(self) -> Token:
        with self.state.session() as session:
            row = session.scalar(select(Token).where(Token.base_url == self.base_url))
        if row is None or not row.access_token:
            raise AuthError(
                "amoCRM is not connected yet: run 'flask amocrm auth' or "
                "use 'Connect amoCRM' in the admin"
            )
        if row.revoked_at is None:
            row = read_row(self.state, row)
        if row.revoked_at is not None:
            raise TokenRevokedError(
                f"amoCRM access was revoked at {row.revoked_at:%Y-%m-%d %H:%M} UTC; "
                "events wait until a person connects amoCRM again "
                "('flask amocrm auth' or 'Connect amoCRM' in the admin)"
            )
        return row

    def _refresh_row(self, row: Token) -> str:
        body = {
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret,
            "grant_type": "refresh_token",
            "refresh_token": row.refresh_token,
            "redirect_uri": self.settings.redirect_uri,
        }
        self.token_client.redactor.add(row.refresh_token)
        self.token_client.redactor.add(self.settings.client_secret)
        try:
            try:
                pair = self._refresh_call(body)
            except TransportError as exc:
                if not exc.sent:
                    raise  # it never reached amoCRM: the token is surely unspent
                # The answer was lost. amoCRM may not have got the request (then
                # the same refresh token works now), or may have carried it out (then
                # that token is dead, "Token has been revoked", and the new pair it
                # sent is lost with the answer). Send it once more, at once.
                log.warning(
                    "amoCRM token refresh of %s lost its answer (%s); sending the "
                    "same refresh token once more",
                    self.base_url,
                    exc,
                )
                pair = self._refresh_call(body)
        except (TransportError, APIError) as exc:
            if exc.retryable and not isinstance(exc, AuthError):
                raise  # amoCRM is down or busy: try again later, the token is fine
            return self._refused(row, exc)  # re-reads the row before giving up
        new = store_pair(self.state, pair, expected_version=row.version)
        self.token_client.redactor.add(new.access_token)
        self._held = (time.monotonic(), new.access_token, new.expires_at)
        log.info(
            "amoCRM token of %s refreshed (version %s)", self.base_url, new.version
        )
        return new.access_token

    def _refresh_call(self, body: dict[str, Any]) -> Any:
        """One call of the token endpoint with the refresh grant ``body``."""
        return self.token_client.request(
            "POST", TOKEN_PATH, json_body=body, auth=False, oauth=True
        )

    def _refused(self, row: Token, exc: APIError) -> str:
        current = self._load()
        if current.refresh_token != row.refresh_token:
            # Someone else refreshed in between (a lock that expired): theirs is good.
            return current.access_token
        body = exc.body if isinstance(exc.body, dict) else {}
        bad_client = "клиент" in str(body.get("title", "")).lower() or (
            "client" in str(body.get("title", "")).lower()
        )
        if bad_client:
            raise ClientRefusedError(
                f"amoCRM refused the client credentials (AMOCRM_CLIENT_ID, "
                f"AMOCRM_CLIENT_SECRET): {exc}",
                status=exc.status,
                body=exc.body,
            ) from None
        moved = self._moved_to(row, exc)
        if moved:
            # The account was renamed or moved: the refresh token is not spent, it
            # is refused on this host only. Nothing is marked revoked.
            raise AuthError(
                f"amoCRM says this account now lives at {moved}: set AMOCRM_BASE_URL "
                f"to https://{moved} and restart (the refresh on {self.base_url} "
                f"answered {exc.status})",
                status=exc.status,
                body=exc.body,
            ) from None
        with self.state.session() as session:
            marked = session.execute(
                update(Token)
                .where(
                    Token.id == row.id,
                    Token.version == row.version,
                    Token.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
        if marked:
            log.error(
                "amoCRM refresh token of %s was refused (%s): delivery stops "
                "until amoCRM is connected again",
                self.base_url,
                exc,
            )
        raise TokenRevokedError(
            f"amoCRM access was revoked: {exc}; connect amoCRM again",
            status=exc.status,
            body=exc.body,
        ) from None

    def _moved_to(self, row: Token, exc: APIError) -> str | None:
        """After a refused refresh (401 or 404): the domain amoCRM names for the
        account when it is not ours, asked of the ``api_domain`` in the access
        token (``GET /oauth2/account/current/subdomain`` with the refresh token,
        as amoCRM's PHP SDK does); ``None`` when it is ours or cannot be told."""
        if exc.status not in (401, 404) or not row.refresh_token:
            return None
        api_domain = token_claims(row.access_token).get("api_domain")
        ours = urlsplit(self.base_url)
        if not isinstance(api_domain, str) or not _trusted_api_domain(
            api_domain, ours.netloc
        ):
            return None
        try:
            answer = self.token_client.request(
                "GET",
                "/oauth2/account/current/subdomain",
                auth=False,
                oauth=True,
                host=f"{ours.scheme}://{api_domain}",
                headers={"X-Refresh-Token": row.refresh_token},
            )
        except (TransportError, APIError) as lookup:
            log.info("amoCRM account domain lookup failed: %s", lookup)
            return None
        domain = answer.get("domain") if isinstance(answer, dict) else None
        if not isinstance(domain, str) or not domain or "/" in domain:
            return None
        if domain.lower() in (ours.netloc.lower(), (ours.hostname or "").lower()):
            return None
        return domain

    def _lock(self) -> AbstractContextManager[None]:
        # The account's refresh token is one, whichever site refreshes it.
        return shared.lock(
            self.state,
            "token-refresh",
            ttl=LOCK_SECONDS,
            wait=LOCK_SECONDS + 5,
            account=True,
        )

    def refresh_if_older(self, age: timedelta) -> bool:
        """Refresh the pair if it was obtained more than ``age`` ago (the
        keep-alive); whether this call refreshed it. Safe from every process at
        once: whoever comes second sees the fresh row and does nothing."""
        with self._thread_lock, self._lock():
            row = self._load()
            if not row.refresh_token:
                return False
            if row.refreshed_at is not None and utcnow() - row.refreshed_at < age:
                return False
            self._refresh_row(row)
        return True


#: The hosts an ``api_domain`` claim may name: amoCRM's and Kommo's own.
_API_SUFFIXES = (".amocrm.ru", ".kommo.com", ".amocrm.com")


def _trusted_api_domain(api_domain: str, account_netloc: str) -> bool:
    """Whether the refresh token may be sent to ``api_domain``: a host of amoCRM's
    own, or, for an account elsewhere (the sandbox), the account's own host."""
    host = api_domain.lower()
    if host.endswith(_API_SUFFIXES) and all(c.isalnum() or c in ".-" for c in host):
        return True
    return host == account_netloc.lower()


def _expiring(row: Token) -> bool:
    return row.expires_at is not None and row.expires_at - utcnow() <= REFRESH_MARGIN


def store_pair(
    state: AppState, pair: dict[str, Any], *, expected_version: int | None = None
) -> Token:
    """Save a token pair from amoCRM. With ``expected_version`` the row is only
    replaced if nobody else wrote it since (compare-and-swap)."""
    access = pair.get("access_token")
    if not access:
        raise AuthError("amoCRM's token answer had no access_token")
    now = utcnow()
    expires_in = pair.get("expires_in")
    values = {
        "access_token": seal(state.settings, access),
        "refresh_token": seal(state.settings, pair.get("refresh_token")),
        "expires_at": (
            now + timedelta(seconds=int(expires_in)) if expires_in else None
        ),
        "revoked_at": None,
        "refreshed_at": now,
        "updated_at": now,
    }
    base_url = state.settings.base_url
    with state.session() as session:
        if expected_version is not None:
            swapped = session.execute(
                update(Token)
                .where(Token.base_url == base_url, Token.version == expected_version)
                .values(version=expected_version + 1, **values)
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
            if not swapped:
                log.warning(
                    "amoCRM token of %s changed while it was being refreshed; "
                    "keeping the newer one",
                    base_url,
                )
        else:
            row = session.scalar(select(Token).where(Token.base_url == base_url))
            if row is None:
                session.add(Token(base_url=base_url, version=1, **values))
            else:
                for key, value in values.items():
                    setattr(row, key, value)
                row.version = (row.version or 0) + 1
            session.commit()
        row = session.scalar(select(Token).where(Token.base_url == base_url))
    assert row is not None
    return read_row(state, row)


def authorize_url(settings: Settings, state_value: str | None = None) -> str:
    """Where to send a person to allow access: amoCRM's or Kommo's
    grant page, or the sandbox's ``/oauth`` for any other base URL."""
    host = urlsplit(settings.base_url).hostname or ""
    if host.endswith(".amocrm.ru"):
        page = "https://www.amocrm.ru/oauth"
    elif host.endswith((".kommo.com", ".amocrm.com")):
        page = "https://www.kommo.com/oauth"
    else:
        page = f"{settings.base_url}/oauth"
    query = {"client_id": settings.client_id or "", "mode": "post_message"}
    if page.startswith(settings.base_url) and settings.redirect_uri:
        # amoCRM knows the integration's redirect URI; a sandbox learns it here.
        query["redirect_uri"] = settings.redirect_uri
    if state_value:
        query["state"] = state_value
    return f"{page}?{urlencode(query)}"


def new_state_value() -> str:
    """A random ``state`` for the code flow."""
    return secrets.token_urlsafe(24)
