"""Connecting amoCRM from the admin: the connection page and the OAuth 2.0 code flow.

``/connect`` shows the connection: the kind of token, the account, the token's state.
Its "Connect amoCRM" button POSTs (with the page's CSRF token) to ``/connect/start``,
which stores a random ``state`` in the session and sends the admin to amoCRM's grant
page (the sandbox's for a sandbox base URL): a link from another site cannot start a
connect. amoCRM sends the browser back to ``AMOCRM_REDIRECT_URI``, which must point at
``/oauth/callback``, with ``code``, ``state`` and ``referer``; the view checks the
state, exchanges the code, stores the tokens and says what happened. "Disconnect"
(``/connect/disconnect``, a POST) forgets the stored tokens.
"""

from __future__ import annotations

import hmac

from flask import (
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from ..amo.auth import authorize_url, new_state_value
from ..amo.clients import client_for
from ..amo.connect import disconnect, exchange_code, token_state
from ..errors import AmoCRMError
from ..i18n import gettext
from ..state import get_state
from ..worker.outage import reconnected
from .blueprint import bp

_SESSION_KEY = "_amocrm_oauth_state"
#: How many connects may be in progress in one session at once (several tabs): a new
#: connect adds a state and never replaces the one another connect uses.
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
    html = render_template(
        "amocrm_admin/message.html",
        title=title,
        text=text,
        back=url_for("amocrm_admin.connect"),
    )
    return current_app.response_class(html, status=status)


def _account_name() -> str | None:
    """The account's name as amoCRM gives it, or ``None`` when it cannot be read."""
    try:
        answer = client_for(get_state()).get("/api/v4/account")
    except AmoCRMError:
        return None
    name = answer.get("name") if isinstance(answer, dict) else None
    return str(name) if name else None


@bp.get("/connect")
def connect() -> str:
    """The connection: kind, account, token state; connect and disconnect."""
    state = get_state()
    return render_template(
        "amocrm_admin/connect.html",
        settings=state.settings,
        token=token_state(state),
        oauth=bool(state.settings.client_id),
    )


@bp.post("/connect/start")
def connect_start() -> Response:
    """Start the code flow: remember a state, go to the grant page."""
    settings = get_state().settings
    if not settings.client_id:
        return _page(
            gettext("amoCRM uses a long-lived token"),
            gettext("OAuth is not configured (AMOCRM_CLIENT_ID is not set)."),
            400,
        )
    value = new_state_value()
    session[_SESSION_KEY] = [*_pending_states(), value][-_MAX_STATES:]
    return redirect(authorize_url(settings, value))  # type: ignore[return-value]


@bp.post("/connect/disconnect")
def connect_disconnect() -> Response:
    """Forget the stored OAuth tokens."""
    if disconnect(get_state()):
        flash(
            gettext(
                "amoCRM is disconnected: the stored tokens are forgotten. Events "
                "wait until amoCRM is connected again."
            ),
            "amocrm-ok",
        )
    else:
        flash(gettext("There were no stored tokens to forget."), "amocrm-error")
    return redirect(url_for("amocrm_admin.connect"))  # type: ignore[return-value]


@bp.get("/oauth/callback")
def callback() -> Response:
    """The redirect URI: check the state, exchange the code, show the outcome."""
    failed = gettext("amoCRM was not connected")
    got = request.args.get("state", "")
    valid = bool(got) and _take_state(got)
    if request.args.get("error"):
        return _page(
            failed,
            gettext("amoCRM answered: %(error)s.", error=request.args["error"][:200]),
            400,
        )
    if not valid:
        return _page(
            failed,
            gettext(
                "The request did not come from a connection started here "
                "(state mismatch). Start again from the connection page."
            ),
            400,
        )
    code = request.args.get("code", "")
    if not code:
        return _page(failed, gettext("amoCRM sent no code."), 400)
    try:
        row = exchange_code(get_state(), code, referer=request.args.get("referer"))
    except AmoCRMError as exc:
        return _page(
            failed, gettext("The code was refused: %(error)s", error=str(exc)), 400
        )
    reconnected(get_state())
    name = _account_name()
    account = f"{name} ({row.base_url})" if name else row.base_url
    return _page(
        gettext("amoCRM is connected"),
        gettext(
            "Connected to %(account)s. Waiting events will be delivered.",
            account=account,
        ),
    )
