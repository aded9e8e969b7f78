"""Texts a person reads, in English and Russian.

Messages are written in English in the code and the templates (``_("Events")``,
``_("%(count)s events", count=n)``); ``translations/ru/LC_MESSAGES/flask_amocrm.po``
holds their Russian. The catalog is read with Babel when first needed, so the
repository keeps only the ``.po`` file (``make messages`` updates it from the code).

The language is ``AMOCRM_LOCALE`` when the site sets it; otherwise, on a page, the
request's ``Accept-Language``; otherwise English. Mails, worker reasons and CLI output
follow ``AMOCRM_LOCALE`` (there is no browser to ask).

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


def gettext(message: str, /, locale: str | None = None, **params: Any) -> str:
    """``message`` in the current language, with ``%(name)s`` placeholders filled."""
    catalog = _catalog(locale or current_locale())
    text = catalog.ugettext(message) if catalog is not None else message
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


def N_(message: str) -> str:  # noqa: N802 - gettext's own name for it
    """Mark ``message`` for the catalog without translating it here (a label kept
    in a constant and translated where it is shown)."""
    return message


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
