"""The door amoCRM comes back through: ``POST {AMOCRM_WEBHOOK_PATH}/<secret>``.

amoCRM does not sign its webhooks, so the address carries a secret
(``AMOCRM_WEBHOOK_SECRET``), compared in constant time; a wrong one answers 404,
as an address that does not exist. The endpoint is registered only when the
secret is set.

The body is parsed (:mod:`flask_amocrm.changes`, pure), each change is stored
once in the inbox and the answer goes back at once: amoCRM waits at most two
seconds. The site's signals are sent by a worker (or, in ``inline`` mode, after
the response). A body that is not an amoCRM webhook, or past the parser's
bounds, answers 400 and nothing of it is stored; a database that cannot store
it answers 503, so amoCRM sends the webhook again later.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from flask import Blueprint, Flask, Response, abort, request
from sqlalchemy.exc import SQLAlchemyError

from .changes import MAX_BYTES, PayloadError, parse_form, webhook_changes
from .config import Settings
from .inbox import store_changes
from .state import get_state
from .worker.dispatch import hand_off_changes
from .worker.index import webhook_entities

log = logging.getLogger("flask_amocrm")

#: The endpoint's name (``url_for("amocrm_webhook.receive", secret=...)``).
BLUEPRINT = "amocrm_webhook"
_FORM = "application/x-www-form-urlencoded"


def _text(body: str, status: int) -> Response:
    return Response(body + "\n", status=status, mimetype="text/plain")


def receive(secret: str) -> Response:
    """Store the changes of one webhook; answer 200 at once."""
    state = get_state()
    expected = state.settings.webhook_secret or ""
    if not expected or not hmac.compare_digest(
        secret.encode("utf-8", "surrogateescape"), expected.encode("utf-8")
    ):
        abort(404)
    length = request.content_length
    if length is not None and length > MAX_BYTES:
        return _text(f"refused: the body is larger than {MAX_BYTES} bytes", 400)
    if request.mimetype != _FORM:
        return _text(f"refused: send {_FORM}, as amoCRM does", 400)
    body = request.stream.read(MAX_BYTES + 1)
    try:
        changes = webhook_changes(body, received_at=int(time.time()))
    except PayloadError as exc:
        log.warning("Refused a webhook: %s", exc)
        return _text(f"refused: {exc}", 400)
    try:
        stored = store_changes(state, changes)
    except SQLAlchemyError as exc:
        log.error("Could not store a webhook (%s); amoCRM will send it again",
                  type(exc).__name__)  # fmt: skip
        return _text("not stored; send it again later", 503)
    hand_off_changes(state, stored)
    try:  # the contact index learns the contacts' new phones and e-mails at once
        webhook_entities(state, parse_form(body))
    except Exception:  # it is a cache: the changes are stored all the same
        log.exception("The contact index could not read a webhook")
    return _text("ok", 200)


def register_webhook(app: Flask, settings: Settings) -> None:
    """Add the webhook endpoint to ``app`` when ``AMOCRM_WEBHOOK_SECRET`` is set."""
    if not settings.webhook_secret:
        return
    bp = Blueprint(BLUEPRINT, __name__)
    bp.add_url_rule(
        f"{settings.webhook_path}/<secret>", "receive", receive, methods=["POST"]
    )
    app.register_blueprint(bp)
    _exempt_from_csrf(app, bp)


def _exempt_from_csrf(app: Flask, bp: Blueprint) -> None:
    """amoCRM cannot send a CSRF token: exempt the endpoint from Flask-WTF's
    ``CSRFProtect``, whether it was set up before this extension or after (then
    on the first request, before its check runs: this hook was added first)."""

    def exempt() -> bool:
        csrf: Any = app.extensions.get("csrf")
        if csrf is None or not hasattr(csrf, "exempt"):
            return False
        csrf.exempt(bp)
        return True

    if exempt():
        return
    done = [False]

    def exempt_later() -> None:
        if not done[0]:
            done[0] = exempt() or done[0]

    app.before_request(exempt_later)
