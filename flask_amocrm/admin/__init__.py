"""The admin pages of Flask-AmoCRM, under ``AMOCRM_ADMIN_URL_PREFIX``.

Admin pages change how the site talks to amoCRM, so they exist only when the site
says who may use them: ``@amocrm.admin_auth`` or ``AMOCRM_ADMIN_AUTH`` (see
:mod:`flask_amocrm.admin.blueprint` for the rule). Without either, the routes are not
registered at all.
"""

from __future__ import annotations

import logging

from flask import Flask

from . import (  # noqa: F401  (add their views to the blueprint)
    apilog,
    events,
    health,
    oauth,
    rules,
)
from .blueprint import bp

log = logging.getLogger("flask_amocrm")


def register_admin(app: Flask, prefix: str) -> None:
    """Register the admin pages on ``app`` under ``prefix``.

    Raises :class:`RuntimeError` naming what is missing: the ``admin`` extra
    (Flask-WTF, for the forms' CSRF tokens) or the app's ``SECRET_KEY``."""
    if bp.name in app.blueprints:
        return
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "The Flask-AmoCRM admin pages need Flask-WTF for their CSRF tokens: "
            "pip install 'Flask-AmoCRM[admin]'."
        ) from None
    if not app.secret_key:
        raise RuntimeError(
            "The Flask-AmoCRM admin pages need SECRET_KEY (their forms carry a "
            "CSRF token signed with it)."
        )
    app.register_blueprint(bp, url_prefix=prefix)


def admin_is_off(app: Flask) -> None:
    """Say in the log how to switch the admin pages on."""
    log.info(
        "Flask-AmoCRM admin pages are off on %s: decorate a function with "
        "@amocrm.admin_auth (or set AMOCRM_ADMIN_AUTH) that returns True for the "
        "people who may use them.",
        app.name,
    )
