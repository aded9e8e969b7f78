"""The :class:`AmoCRM` extension: registration on an app, and the public methods.

The top floor of the package: it wires the pieces below it (configuration, capture,
commands, admin pages) to an application, and nothing inside the package imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask

from .admin import register_admin
from .capture import capture, on_email_dispatched, on_form_submitted, on_mail_sent
from .cli import amocrm_cli
from .config import read_settings
from .models import Event, metadata
from .rules.schema import validate_rules
from .signals import form_submitted, mail_sent
from .state import AppState, get_state
from .visit import remember_campaign
from .webhook import register_webhook

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy


class AmoCRM:
    """Feed amoCRM from a Flask site.

    ``amocrm = AmoCRM(app)``, or ``amocrm = AmoCRM()`` at import time and
    ``amocrm.init_app(app)`` in the app factory. Pass ``db=db`` to keep the events in
    the app's own Flask-SQLAlchemy database (tables prefixed ``amocrm_``); otherwise
    they live in ``AMOCRM_DATABASE_URI``, by default an SQLite file in the instance
    folder.
    """

    def __init__(
        self, app: Flask | None = None, *, db: SQLAlchemy | None = None
    ) -> None:
        self._db = db
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension on ``app``: read and check the configuration, connect
        the signals, add the ``flask amocrm`` commands."""
        if "amocrm" in app.extensions:
            raise RuntimeError(
                "A 'AmoCRM' instance has already been registered on this Flask app."
                " Import and use that instance instead."
            )
        settings = read_settings(app)
        validate_rules(settings.rules, secret_key=app.secret_key)
        if self._db is not None:
            for table in metadata.sorted_tables:
                if table.name not in self._db.metadata.tables:
                    table.to_metadata(self._db.metadata)
        app.extensions["amocrm"] = AppState(app, settings, self._db, extension=self)

        form_submitted.connect(on_form_submitted, sender=app)
        mail_sent.connect(on_mail_sent, sender=app)
        try:
            from flask_mail import email_dispatched
        except ImportError:
            pass
        else:
            email_dispatched.connect(on_email_dispatched, sender=app)

        cookie, days = settings.utm_cookie, settings.utm_cookie_days
        app.after_request(lambda response: remember_campaign(response, cookie, days))
        app.cli.add_command(amocrm_cli)
        register_admin(app, settings)
        register_webhook(app, settings)

    def submit(
        self,
        form: str,
        data: Mapping[str, Any] | None,
        files: Mapping[str, Any] | None = None,
    ) -> Event | None:
        """Capture a submitted form, as sending :data:`form_submitted` does.

        Returns the stored event, or ``None`` if it could not be stored (the reason is
        logged). Never raises into the caller.
        """
        return capture("form", form, data, files=files)

    def get_event(self, event_id: int) -> Event | None:
        """The stored event with this id, in the current app's database."""
        with get_state().session() as session:
            return session.get(Event, event_id)
