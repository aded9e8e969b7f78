"""The amoCRM client: the only code that talks to amoCRM.

* :func:`client_for` gives the client of an app: its token (long-lived, or OAuth from
  the database), the account's shared rate limit, and the API log.
* :func:`metadata_for` gives the account's pipelines, users, fields and task types.
* :func:`event_context` links the calls made inside it to an event in the API log.
* :func:`keep_alive` and :func:`purge_api_log` are for the scheduler.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .apilog import ApiLogSink, Redactor, current_event_id, event_context, purge_api_log
from .auth import (
    LongLivedToken,
    OAuthTokens,
    authorize_url,
    exchange_code,
    keep_alive,
)
from .client import AmoClient, TokenProvider, answer_items, error_for
from .metadata import AccountMetadata, metadata_for, sync_metadata
from .ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter

if TYPE_CHECKING:
    from ..extension import _State

__all__ = [
    "AccountMetadata",
    "AmoClient",
    "LongLivedToken",
    "OAuthTokens",
    "TokenProvider",
    "answer_items",
    "authorize_url",
    "client_for",
    "current_event_id",
    "error_for",
    "event_context",
    "exchange_code",
    "keep_alive",
    "limiter_for",
    "metadata_for",
    "purge_api_log",
    "sync_metadata",
    "token_client_for",
]

_clients: weakref.WeakKeyDictionary[_State, tuple[int, AmoClient, AmoClient]] = (
    weakref.WeakKeyDictionary()
)
_local_limiters: dict[tuple[int, str], LocalRateLimiter] = {}
_lock = threading.Lock()


def limiter_for(state: _State) -> RateLimiter:
    """The account's rate limiter: shared through Redis when it is configured, else
    one per process and account."""
    host = urlsplit(state.settings.base_url).netloc
    rate = state.settings.rate_limit
    if state.settings.redis_url:
        return RedisRateLimiter(state.redis(for_worker=True), f"amocrm:rl:{host}", rate)
    key = (os.getpid(), host)
    with _lock:
        if key not in _local_limiters:
            _local_limiters[key] = LocalRateLimiter(rate)
        return _local_limiters[key]


def _build(state: _State) -> tuple[AmoClient, AmoClient]:
    settings = state.settings
    limiter = limiter_for(state)
    sink = ApiLogSink(state) if settings.log_requests else None
    redactor = Redactor([settings.client_secret, settings.token])
    options = dict(
        timeout=settings.timeout, limiter=limiter, sink=sink, redactor=redactor
    )
    token_client = AmoClient(settings.base_url, None, **options)  # type: ignore[arg-type]
    if settings.token:
        client = AmoClient(settings.base_url, LongLivedToken(settings.token), **options)  # type: ignore[arg-type]
    else:
        client = AmoClient(
            settings.base_url, OAuthTokens(state, token_client), **options
        )  # type: ignore[arg-type]
    client.session = token_client.session  # one connection pool per process
    return client, token_client


def _cached(state: _State) -> tuple[AmoClient, AmoClient]:
    pid = os.getpid()
    with _lock:
        held = _clients.get(state)
    if held is not None and held[0] == pid:
        return held[1], held[2]
    # A forked work horse builds its own: sockets and locks are not shared.
    client, token_client = _build(state)
    with _lock:
        _clients[state] = (pid, client, token_client)
    return client, token_client


def client_for(state: _State) -> AmoClient:
    """The amoCRM client of an app (one per process; cheap to call per event)."""
    return _cached(state)[0]


def token_client_for(state: _State) -> AmoClient:
    """A client of the app's account that sends no token (the OAuth token endpoint)."""
    return _cached(state)[1]
