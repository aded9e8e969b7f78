"""A faithful local amoCRM API v4 for tests, demos, benchmarks and development.

Run it with ``python -m flask_amocrm.sandbox`` or in-process::

    from flask_amocrm.sandbox import SandboxServer

    with SandboxServer() as amo:
        requests.get(amo.url + "/api/v4/account",
                     headers={"Authorization": f"Bearer {amo.token}"})

It shares no code with the rest of flask_amocrm: it is written from the API
documentation alone, so that it can judge the product's client.
"""

from __future__ import annotations

from .app import create_app
from .server import SandboxServer

__all__ = ["SandboxServer", "create_app"]
