"""Every text a person reads exists in English and Russian."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from flask import Flask

from flask_amocrm.i18n import CATALOGS, DOMAIN, current_locale, gettext, ngettext

ROOT = Path(__file__).resolve().parent.parent
METHODS = [
    ("flask_amocrm/sandbox/**.py", "ignore"),
    ("flask_amocrm/**.py", "python"),
    ("flask_amocrm/admin/templates/**.html", "jinja2"),
]
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


def _catalog() -> Any:
    with (CATALOGS / "ru" / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as po:
        return read_po(po, locale="ru")


def _messages() -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT), METHODS
    ):
        forms = (message,) if isinstance(message, str) else tuple(message)
        found[forms[0]] = forms
    return found


def test_every_message_has_a_russian_translation() -> None:
    catalog = _catalog()
    missing = []
    for msgid, forms in _messages().items():
        entry = catalog.get(msgid)
        strings = () if entry is None else entry.string
        strings = (strings,) if isinstance(strings, str) else tuple(strings or ())
        if not strings or not all(strings):
            missing.append(msgid)
            continue
        wanted = {name for form in forms for name in PLACEHOLDER.findall(form)}
        for text in strings:
            assert set(PLACEHOLDER.findall(text)) <= wanted | {"count"}, (msgid, text)
    assert not missing, (
        "Run `make messages` and translate these in the .po file: "
        + "; ".join(missing[:20])
    )


def test_the_language_follows_the_setting_then_the_browser() -> None:
    app = Flask(__name__)
    with app.test_request_context(headers={"Accept-Language": "ru-RU,ru;q=0.9"}):
        assert current_locale() == "ru"
        assert gettext("Events") == "События"
    with app.test_request_context(headers={"Accept-Language": "de, en;q=0.5"}):
        assert current_locale() == "en"
        assert gettext("Events") == "Events"
    app.config["AMOCRM_LOCALE"] = "en"
    with app.test_request_context(headers={"Accept-Language": "ru"}):
        assert gettext("Events") == "Events"
    app.config["AMOCRM_LOCALE"] = "ru"
    with app.app_context():  # a worker or a command: no browser to ask
        assert gettext("Events") == "События"
    assert gettext("Events") == "Events"  # no app at all


def test_russian_plurals_have_three_forms() -> None:
    assert _catalog().num_plurals == 3
    forms = [
        ngettext("%(count)s call", "%(count)s calls", n, locale="ru")
        for n in (1, 3, 5, 11, 21, 22)
    ]
    assert forms == [
        "1 запрос",
        "3 запроса",
        "5 запросов",
        "11 запросов",
        "21 запрос",
        "22 запроса",
    ]
    assert ngettext("%(count)s call", "%(count)s calls", 1, locale="en") == "1 call"
    assert ngettext("%(count)s call", "%(count)s calls", 5, locale="en") == "5 calls"
