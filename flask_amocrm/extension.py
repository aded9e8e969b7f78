"""The :class:`AmoCRM` extension: registration on an app, and the public methods.

The top floor of the package: it wires the pieces below it (configuration, capture,
commands, admin pages) to an application, and nothing inside the package imports it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask

from .admin import admin_is_off, register_admin
from .capture import capture, on_email_dispatched, on_form_submitted, on_mail_sent
from .cli import amocrm_cli
from .config import log_json_wanted, read_settings
from .hooks import ApiCall, Hooks, PushHook
from .jsonlog import use_json_logs
from .metrics import register_metrics
from .models import Event, copy_tables
from .probe import register_health
from .rules.schema import check_consent_fields, validate_rules
from .signals import form_submitted, mail_sent
from .state import AppState, get_state
from .visit import decode_form, remember_visit
from .webhook import register_webhook
from .worker.spam import form_stamp_input

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

F = TypeVar("F", bound=Callable[..., Any])
AuthHook = TypeVar("AuthHook", bound=Callable[[], Any])


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
        #: The hooks registered with the decorators below; every app this instance
        #: is registered on shares them (docs/hooks.md).
        self.hooks = Hooks()
        self._admin_auth: Callable[[], Any] | None = None
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
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
        if log_json_wanted(app):
            use_json_logs()
        settings = read_settings(app)
        if settings.log_json:
            use_json_logs(settings.secrets())  # mask the secrets too, now known
        validate_rules(
            settings.rules,
            secret_key=app.secret_key,
            marks=[m.name for m in settings.ad_marks],
        )
        check_consent_fields(
            settings.rules, [name for name, _ in settings.consent_fields]
        )
        if self._db is not None:
            copy_tables(self._db.metadata)
        state = AppState(app, settings, self._db, extension=self, hooks=self.hooks)
        app.extensions["amocrm"] = state
        self._apps.add(app)

        form_submitted.connect(on_form_submitted, sender=app)
        mail_sent.connect(on_mail_sent, sender=app)
        try:
            from flask_mail import email_dispatched
        except ImportError:
            pass
        else:
            email_dispatched.connect(on_email_dispatched, sender=app)

        app.after_request(lambda response: remember_visit(response, settings))
        app.before_request(lambda: decode_form(settings))
        app.cli.add_command(amocrm_cli)
        if self._admin_auth is not None:
            state.admin_auth = self._admin_auth
        if state.admin_auth is not None:
            register_admin(app, settings.admin_url_prefix)
        else:
            admin_is_off(app)
        register_webhook(app, settings)
        register_health(app, settings)
        register_metrics(app, settings)
        app.add_template_global(form_stamp_input, "amocrm_form_stamp")

    def admin_auth(self, hook: AuthHook) -> AuthHook:
        """Decorate the function that says who may use the admin pages, and switch
        them on (under ``AMOCRM_ADMIN_URL_PREFIX``)::

            @amocrm.admin_auth
            def may_run_amocrm():
                if not current_user.is_authenticated:
                    return redirect(url_for("login", next=request.path))
                return current_user.is_admin

        It is called on every admin request. ``True`` admits; a response is sent as
        it is; anything else (``False``, ``None``, a truthy non-bool) is a 403.
        Decorate before the app serves its first request."""
        self._admin_auth = hook
        for app in list(self._apps):
            state = app.extensions["amocrm"]
            state.admin_auth = hook
            register_admin(app, state.settings.admin_url_prefix)
        return hook

    # -- hooks (docs/hooks.md) --------------------------------------------------------

    def before_push(
        self,
        func: F | None = None,
        /,
        *,
        form: str | None = None,
        mail: str | None = None,
    ) -> F | Callable[[F], F]:
        """Register ``func(event, plan)``, called in the worker before the first
        request for an event, with its :class:`~flask_amocrm.PushPlan` to change.
        Raising :class:`~flask_amocrm.Cancel` cancels the event. ``form=`` or
        ``mail=`` narrows it to one form or mail event."""
        return self._push_hook(self.hooks.before_push, func, form, mail)

    def after_push(
        self,
        func: F | None = None,
        /,
        *,
        form: str | None = None,
        mail: str | None = None,
    ) -> F | Callable[[F], F]:
        """Register ``func(event, ids)``, called once an event was delivered, with
        the :class:`~flask_amocrm.AmoIds` amoCRM gave it."""
        return self._push_hook(self.hooks.after_push, func, form, mail)

    def spam_check(
        self,
        func: F | None = None,
        /,
        *,
        form: str | None = None,
        mail: str | None = None,
    ) -> F | Callable[[F], F]:
        """Register ``func(event)``, called in the worker before an event's first
        request to amoCRM: it returns why the event is spam (a string, kept as the
        reason) or ``None``/``False``. An event it calls spam ends ``spam`` and is
        never sent until a person releases it; a check that raises is logged and
        does not make the event spam. ``form=`` or ``mail=`` narrows it."""
        return self._push_hook(self.hooks.spam_check, func, form, mail)

    def before_api_call(
        self, func: Callable[[ApiCall], Any]
    ) -> Callable[[ApiCall], Any]:
        """Register ``func(call)``, called before every request to amoCRM with its
        :class:`~flask_amocrm.ApiCall`; raising :class:`~flask_amocrm.Cancel`
        vetoes the request and cancels the events it was for."""
        self.hooks.before_api_call.append(func)
        return func

    def after_api_call(
        self, func: Callable[[ApiCall], Any]
    ) -> Callable[[ApiCall], Any]:
        """Register ``func(call)``, called after every request to amoCRM, with the
        answer's ``status`` and ``answer`` (or ``error``) set on the call."""
        self.hooks.after_api_call.append(func)
        return func

    @staticmethod
    def _push_hook(
        hooks: list[PushHook],
        func: F | None,
        form: str | None,
        mail: str | None,
    ) -> F | Callable[[F], F]:
        if form is not None and mail is not None:
            raise TypeError(
                "Narrow a push hook to a form or to a mail event, not both."
            )

        def register(f: F) -> F:
            hooks.append(PushHook(f, form=form, mail=mail))
            return f

        return register(func) if func is not None else register

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
