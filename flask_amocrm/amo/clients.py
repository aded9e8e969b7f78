"""The amoCRM client of an app: one per process, kept on the app's state.

:func:`client_for` gives it: its token (long-lived, or the OAuth pair from the
database), the account's shared rate limit (:func:`limiter_for`) and the API log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..meter import Meter, enabled
from .apilog import ApiLogSink, Redactor
from .auth import OAuthTokens
from .client import AmoClient, LongLivedToken, TokenProvider
from .ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter

if TYPE_CHECKING:
    from ..state import AppState


def limiter_for(state: AppState) -> RateLimiter:
    """The account's rate limiter: shared through Redis when it is configured, else
    one per process."""
    rate = state.settings.rate_limit
    if state.settings.redis_url:
        host = urlsplit(state.settings.base_url).netloc
        return RedisRateLimiter(state.redis(for_worker=True), f"amocrm:rl:{host}", rate)
    return state.local("limiter", lambda: LocalRateLimiter(rate))


def _build(state: AppState) -> tuple[AmoClient, AmoClient]:
    settings = state.settings
    limiter = limiter_for(state)
    sink = ApiLogSink(state) if settings.log_requests else None
    redactor = Redactor(settings.secrets())
    meter = Meter(state) if enabled(state) else None

    def make(token: TokenProvider) -> AmoClient:
        return AmoClient(
            settings.base_url,
            token,
            timeout=settings.timeout,
            limiter=limiter,
            sink=sink,
            redactor=redactor,
            meter=meter,
        )

    token_client = make(LongLivedToken(None))
    client = make(
        LongLivedToken(settings.token)
        if settings.token
        else OAuthTokens(state, token_client)
    )
    # The site's API-call hooks see every request but the OAuth token exchanges,
    # whose bodies are credentials.
    client.observer = state.hooks
    client.session = token_client.session  # one connection pool per process
    return client, token_client


def client_for(state: AppState) -> AmoClient:
    """The amoCRM client of an app (one per process; cheap to call per event)."""
    return state.local("clients", lambda: _build(state))[0]


def token_client_for(state: AppState) -> AmoClient:
    """A client of the app's account that sends no token (the OAuth token endpoint)."""
    return state.local("clients", lambda: _build(state))[1]
