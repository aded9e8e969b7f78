"""Pytest plugin: the amoCRM sandbox on a free port, for tests over real HTTP.

Registered with ``pytest_plugins`` in ``tests/conftest.py``.

- ``sandbox_server`` (session): one running :class:`SandboxServer` with a short
  block time, so rate-limit tests stay fast.
- ``sandbox`` (function): the same server, reset to the seed before the test.
- ``amo``: a ``requests.Session`` bound to the sandbox with the long-lived token;
  ``amo.url(path)`` builds API URLs. It lifts the rate limit (tests of endpoints
  are not tests of the limit); ``sandbox`` alone keeps the real 7 requests/s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from flask_amocrm.sandbox import SandboxServer


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    """A sandbox serving on a free port for the whole test session."""
    server = SandboxServer(block_after=5, block_seconds=1.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def sandbox(sandbox_server: SandboxServer) -> SandboxServer:
    """The session's sandbox, reset to its seeded account."""
    sandbox_server.reset()
    return sandbox_server


class AmoSession(requests.Session):
    """A session that sends the sandbox's Bearer token to ``base + path``."""

    def __init__(self, base: str, token: str) -> None:
        super().__init__()
        self.base = base
        self.headers["Authorization"] = f"Bearer {token}"

    def url(self, path: str) -> str:
        """``/api/v4`` + path on the sandbox."""
        return f"{self.base}/api/v4{path}"

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if isinstance(url, str) and url.startswith("/"):
            url = self.url(url)
        return super().request(method, url, *args, **kwargs)


@pytest.fixture()
def amo(sandbox: SandboxServer) -> Iterator[AmoSession]:
    """A ``requests`` session on the reset sandbox with the long-lived token."""
    sandbox.config(rate_limit=0)
    session = AmoSession(sandbox.url, sandbox.token)
    try:
        yield session
    finally:
        session.close()


def sandbox_api(sandbox: Any, method: str, path: str, body: Any = None) -> Any:
    """``method`` on the sandbox's ``/api/v4`` + ``path`` with its token, outside the
    code under test (to set up or read back the account); the decoded JSON answer,
    or None for an empty one. Raises on an HTTP error."""
    answer = requests.request(
        method,
        f"{sandbox.url}/api/v4{path}",
        json=body,
        headers={"Authorization": f"Bearer {sandbox.token}"},
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json() if answer.content else None


def api_requests(sandbox: Any) -> list[tuple[str, str]]:
    """The (method, path) of each ``/api/v4`` request the sandbox has received, in
    order."""
    return [
        (r["method"], r["path"])
        for r in sandbox.requests()
        if r["path"].startswith("/api/v4")
    ]
