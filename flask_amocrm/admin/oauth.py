"""Connecting amoCRM from the admin: the OAuth 2.0 code flow.

``/amocrm/admin/connect`` stores a random ``state`` in the session and sends the admin
to amoCRM's grant page (the sandbox's for a sandbox base URL). amoCRM sends the
browser back to ``AMOCRM_REDIRECT_URI``, which must point at
``/amocrm/admin/oauth/callback``, with ``code``, ``state`` and ``referer``; the view
checks the state, exchanges the code and stores the tokens.
"""

from __future__ import annotations

import hmac

from flask import Response, current_app, redirect, render_template, request, session

from ..amo.auth import authorize_url, new_state_value
from ..amo.connect import exchange_code
from ..errors import AmoCRMError
from ..state import get_state
from ..worker.outage import reconnected
from .blueprint import bp

_SESSION_KEY = "_amocrm_oauth_state"
#: How many connects may be in progress in one session at once (several tabs): a new
#: GET of the connect page adds a state and never replaces the one a connect uses.
_MAX_STATES = 5


def _pending_states() -> list[str]:
    value = session.get(_SESSION_KEY)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _take_state(got: str) -> bool:
    """Whether ``got`` is a state of a connect in progress; it is spent if so."""
    pending = _pending_states()
    given = got.encode("utf-8", "replace")
    # compared as bytes: hmac.compare_digest refuses str with non-ASCII characters
    matches = [v for v in pending if hmac.compare_digest(v.encode("utf-8"), given)]
    if not matches:
        return False
    session[_SESSION_KEY] = [v for v in pending if v not in matches]
    return True


def _page(title: str, text: str, status: int = 200) -> Response:
    html = render_template("amocrm_admin/message.html", title=title, text=text)
    return current_app.response_class(html, status=status)


@bp.get("/connect")
def connect() -> Response:
    """Start the code flow: remember a state, go to the grant page."""
    settings = get_state().settings
    if not settings.client_id:
        return _page(
            "amoCRM uses a long-lived token",
            "OAuth is not configured (AMOCRM_CLIENT_ID is not set).",
            400,
        )
    value = new_state_value()
    session[_SESSION_KEY] = [*_pending_states(), value][-_MAX_STATES:]
    return redirect(authorize_url(settings, value))  # type: ignore[return-value]


@bp.get("/oauth/callback")
def callback() -> Response:
    """The redirect URI: check the state, exchange the code, show the outcome."""
    got = request.args.get("state", "")
    valid = bool(got) and _take_state(got)
    if request.args.get("error"):
        return _page(
            "amoCRM was not connected",
            f"amoCRM answered: {request.args['error']}.",
            400,
        )
    if not valid:
        return _page(
            "amoCRM was not connected",
            "The request did not come from a connection started here "
            "(state mismatch). Start again from the admin.",
            400,
        )
    code = request.args.get("code", "")
    if not code:
        return _page("amoCRM was not connected", "amoCRM sent no code.", 400)
    try:
        row = exchange_code(get_state(), code, referer=request.args.get("referer"))
    except AmoCRMError as exc:
        return _page("amoCRM was not connected", f"The code was refused: {exc}", 400)
    reconnected(get_state())
    return _page(
        "amoCRM is connected",
        f"Connected to {row.base_url}. Waiting events will be delivered.",
    )
