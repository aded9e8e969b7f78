"""Texts a person reads, in English and Russian.

Messages are written in English in the code and the templates (``_("Events")``,
``_("%(count)s events", count=n)``); ``translations/ru/LC_MESSAGES/flask_amocrm.po``
holds their Russian. The catalog is read with Babel when first needed, so the
repository keeps only the ``.po`` file (``make messages`` updates it from the code).

The language is ``AMOCRM_LOCALE`` when the site sets it; otherwise, on a page, the
request's ``Accept-Language``; otherwise English. Mails, worker reasons and CLI output
follow ``AMOCRM_LOCALE`` (there is no browser to ask); what is stored or mailed is
written in :func:`site_locale`, even inside a visitor's request.

Text that is made where no reader is known yet (a rule error raised inside the
worker, a reason kept until it is stored) is written with :func:`N_` and placeholders:
it reads as English (logs, ``str()``) and is translated by :func:`localize` where it
is stored or shown (:func:`flask_amocrm.outbox.cut_reason`, ``append_log``, the CLI).

Our own catalog and functions: a site's Flask-Babel, its domain and its locale
selector are left alone.
"""

from __future__ import annotations

import functools
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from flask import current_app, has_app_context, has_request_context, request

from .vocabulary import LOCALES

#: The folder of the message catalogs.
CATALOGS = Path(__file__).parent / "translations"
#: The gettext domain of this package.
DOMAIN = "flask_amocrm"


@functools.cache
def _catalog(locale: str) -> Translations | None:
    """The translations of ``locale``, compiled in memory from its ``.po`` file;
    ``None`` for English (the messages themselves) or a missing catalog."""
    path = CATALOGS / locale / "LC_MESSAGES" / f"{DOMAIN}.po"
    if locale == LOCALES[0] or not path.exists():
        return None
    with path.open("rb") as po:
        catalog = read_po(po, locale=locale, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def current_locale() -> str:
    """The language of the text being written now (see the module's docstring)."""
    if not has_app_context():
        return LOCALES[0]
    configured = current_app.config.get("AMOCRM_LOCALE")
    if configured in LOCALES:
        return str(configured)
    if has_request_context():
        return request.accept_languages.best_match(LOCALES, LOCALES[0]) or LOCALES[0]
    return LOCALES[0]


def site_locale() -> str:
    """The language of what is stored or mailed (reasons, an event's log, alerts):
    ``AMOCRM_LOCALE``, else English; a visitor's browser does not choose it."""
    if has_app_context() and current_app.config.get("AMOCRM_LOCALE") in LOCALES:
        return str(current_app.config["AMOCRM_LOCALE"])
    return LOCALES[0]


def gettext(message: str, /, locale: str | None = None, **params: Any) -> str:
    """``message`` in the current language, with ``%(name)s`` placeholders filled."""
    catalog = _catalog(locale or current_locale())
    text = catalog.ugettext(message) if catalog is not None else str(message)
    return text % params if params else text


def ngettext(
    singular: str, plural: str, count: int, /, locale: str | None = None, **params: Any
) -> str:
    """The form of ``singular``/``plural`` for ``count`` (Russian has three), with
    ``%(count)s`` and the other placeholders filled."""
    catalog = _catalog(locale or current_locale())
    if catalog is None:
        text = singular if count == 1 else plural
    else:
        text = catalog.ungettext(singular, plural, count)
    return text % {"count": count, **params}


#: The short name, as in the code and templates.
_ = gettext


class Message(str):
    """A message as English text that remembers its ``msgid`` and ``params``, so
    :func:`localize` can write it in the reader's language later (see :func:`N_`)."""

    msgid: str
    params: dict[str, Any]

    def __new__(cls, msgid: str, params: dict[str, Any] | None = None) -> Message:
        params = dict(params or {})
        self = super().__new__(cls, msgid % params if params else msgid)
        self.msgid = msgid
        self.params = params
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (Message, (self.msgid, self.params))


def N_(message: str, /, **params: Any) -> Message:  # noqa: N802 - gettext's own name
    """Mark ``message`` for the catalog without translating it here: a label kept in
    a constant (translated where it is shown, ``_(LABEL)``), or a message made before
    its reader is known (an error raised in the worker). The result is the English
    text, with ``params`` filled; :func:`localize` translates it, and the messages
    and exceptions among ``params`` with it."""
    return Message(message, params)


def message_of(exc: BaseException) -> str:
    """What ``exc`` says, kept translatable: its :func:`N_` message when it was
    raised with one (English as a ``str``), else ``str(exc)``."""
    first = exc.args[0] if len(exc.args) == 1 else None
    return first if isinstance(first, Message) else str(exc)


def localize(value: Any, /, locale: str | None = None) -> str:
    """``value`` as the reader reads it: a :func:`N_` message, or an exception raised
    with one, in the current language (its parameters too); anything else as
    ``str(value)``."""
    if isinstance(value, BaseException):
        first = value.args[0] if len(value.args) == 1 else None
        return localize(first, locale) if isinstance(first, Message) else str(value)
    if not isinstance(value, Message):
        return str(value)
    params = {
        name: localize(param, locale)
        if isinstance(param, Message | BaseException)
        else param
        for name, param in value.params.items()
    }
    return gettext(value.msgid, locale=locale, **params)


def format_datetime(
    value: datetime | None, timezone: str, *, seconds: bool = True
) -> str:
    """A stored naive-UTC time, as a person in ``timezone`` reads it:
    ``2026-12-02 10:15:03``. ``None`` is shown as an em dash."""
    if value is None:
        return "—"
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    local = aware.astimezone(ZoneInfo(timezone))
    return local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
