"""The amoCRM client: the only code that talks to amoCRM.

* :func:`client_for` gives the client of an app: its token (long-lived, or OAuth from
  the database), the account's shared rate limit, and the API log.
* :func:`metadata_for` gives the account's pipelines, users, fields and task types.
* :class:`RecordingClient` has the same verbs and sends nothing (previews).
* :func:`event_context` links the calls made inside it to an event in the API log.
* :func:`keep_alive` and :func:`purge_api_log` are for the scheduler.
"""

from __future__ import annotations

from .apilog import ApiLogSink, Redactor, current_event_id, event_context, purge_api_log
from .auth import OAuthTokens, authorize_url
from .client import AmoClient, LongLivedToken, TokenProvider, answer_items, error_for
from .clients import client_for, limiter_for, token_client_for
from .connect import exchange_code, keep_alive
from .metadata import AccountMetadata, metadata_for, sync_metadata
from .recording import Call, RecordingClient

__all__ = [
    "AccountMetadata",
    "AmoClient",
    "ApiLogSink",
    "Call",
    "LongLivedToken",
    "OAuthTokens",
    "RecordingClient",
    "Redactor",
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
