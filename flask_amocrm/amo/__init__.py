"""The amoCRM client: the only code that talks to amoCRM.

* :func:`client_for` builds the client of an app (token, shared rate limit, logging).
* :func:`metadata_for` gives the account's pipelines, users, fields and task types.
"""

from __future__ import annotations

from .client import AmoClient
from .metadata import AccountMetadata, metadata_for, sync_metadata

__all__ = ["AccountMetadata", "AmoClient", "client_for", "metadata_for", "sync_metadata"]


def client_for(state):  # type: ignore[no-untyped-def]  # replaced by the full client
    """The amoCRM client of an app's state."""
    from ..worker.deliver import make_client

    return make_client(state)
