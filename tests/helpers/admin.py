"""Driving the admin pages with Flask's test client (no tests here): the CSRF token
of a page, and starting a connect as the "Connect amoCRM" button does."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

PREFIX = "/amocrm/admin"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client: Any, path: str = f"{PREFIX}/connect") -> str:
    """The CSRF token the page at ``path`` puts in its forms."""
    page = client.get(path)
    assert page.status_code == 200, page.status_code
    found = _TOKEN.search(page.get_data(as_text=True))
    assert found, f"no form with a CSRF token on {path}"
    return found.group(1)


def start_connect(client: Any) -> Any:
    """Press "Connect amoCRM" on the connection page: the answer of the POST (a
    redirect to the grant page)."""
    return client.post(
        f"{PREFIX}/connect/start", data={"csrf_token": csrf_token(client)}
    )


def allow_access(sandbox: Any, location: str, decision: str = "allow") -> str:
    """Press "Allow" (or ``decision``) on the sandbox's grant page that ``location``
    leads to; the path and query amoCRM sends the browser back to."""
    grant = urlsplit(location)
    query = {k: v[0] for k, v in parse_qs(grant.query).items()}
    answer = requests.post(
        f"{sandbox.url}{grant.path}",
        data={**query, "decision": decision},
        allow_redirects=False,
        timeout=5,
    )
    back = urlsplit(answer.headers["Location"])
    return f"{back.path}?{back.query}"


def jwt_expiry(token: str) -> datetime:
    """The ``exp`` of a JWT (naive UTC), read by hand."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return datetime.fromtimestamp(claims["exp"], UTC).replace(tzinfo=None)
