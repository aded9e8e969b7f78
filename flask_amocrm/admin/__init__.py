"""The admin side of Flask-AmoCRM, under ``/amocrm/admin``.

Admin views change how the site talks to amoCRM, so they exist only when the app says
who may use them: ``AMOCRM_ADMIN_AUTH`` is a callable returning ``True`` for allowed
users (for example ``lambda: current_user.is_authenticated and current_user.is_admin``).
Without it the routes are not registered at all.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Blueprint, abort, current_app

if TYPE_CHECKING:
    from flask import Flask

    from ..config import Settings

log = logging.getLogger("flask_amocrm")

#: The admin blueprint; every view on it passes ``AMOCRM_ADMIN_AUTH`` first.
bp = Blueprint("amocrm_admin", __name__, url_prefix="/amocrm/admin")


@bp.before_request
def _require_admin() -> None:
    from ..extension import get_state

    allowed = get_state().settings.admin_auth
    if allowed is None or not allowed():
        abort(403)


def register_admin(app: Flask, settings: Settings) -> None:
    """Register the admin views on ``app`` if ``AMOCRM_ADMIN_AUTH`` is set."""
    if settings.admin_auth is None:
        log.info(
            "Flask-AmoCRM admin views are off: set AMOCRM_ADMIN_AUTH to a "
            "callable that returns True for allowed users to turn them on."
        )
        return
    from . import oauth  # noqa: F401  (adds its views to the blueprint)

    app.register_blueprint(bp)


def _state_settings() -> Settings:
    from ..extension import get_state

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return get_state(app).settings
