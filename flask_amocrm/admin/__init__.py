"""The admin side of Flask-AmoCRM, under ``/amocrm/admin``.

Admin views change how the site talks to amoCRM, so they exist only when the app says
who may use them: ``AMOCRM_ADMIN_AUTH`` is a callable returning ``True`` for allowed
users (for example ``lambda: current_user.is_authenticated and current_user.is_admin``).
Without it the routes are not registered at all.
"""

from __future__ import annotations

import logging

from flask import Flask

from ..config import Settings
from . import oauth  # noqa: F401  (adds its views to the blueprint)
from .blueprint import bp

log = logging.getLogger("flask_amocrm")


def register_admin(app: Flask, settings: Settings) -> None:
    """Register the admin views on ``app`` if ``AMOCRM_ADMIN_AUTH`` is set."""
    if settings.admin_auth is None:
        log.info(
            "Flask-AmoCRM admin views are off: set AMOCRM_ADMIN_AUTH to a "
            "callable that returns True for allowed users to turn them on."
        )
        return
    app.register_blueprint(bp)
