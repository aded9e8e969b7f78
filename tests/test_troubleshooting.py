"""The troubleshooting pages name what a person really meets: each amoCRM error is
provoked against the sandbox (``/_sandbox/faults``) through a real delivery, and the
kind of the reason stored on the event, and the subject of the alert mail, must stand
on ``docs/troubleshooting.md`` (English) and ``docs/ru/troubleshooting.md`` (Russian)
as the code writes them. A new error, or a reworded one, fails here until the page
says what it means."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_amocrm.amo import exchange_code
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from tests.helpers.client import OAUTH
from tests.helpers.e2e import stored_events

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = {"en": DOCS / "troubleshooting.md", "ru": DOCS / "ru" / "troubleshooting.md"}

LEAD_RULES = {"forms": {"callback": {"lead": {"name": "Callback: {{ data.name }}"}}}}


def _oauth(sandbox: Any, make_app: Callable[..., Flask], **config: Any) -> Flask:
    app = make_app(**OAUTH, **config)
    with app.app_context():
        exchange_code(get_state(), sandbox.auth_code())
    return app


def _submit(app: Flask, name: str = "Ann") -> None:
    with app.app_context():
        event = app.extensions["amocrm"].extension.submit(
            "callback", {"name": name, "phone": "+79120001122"}
        )
    assert event is not None


def _fault(**spec: Any) -> Callable[[Any, Flask], None]:
    """Deliver one event while the sandbox answers with ``spec``."""

    def provoke(sandbox: Any, app: Flask) -> None:
        _submit(app)
        sandbox.faults(**spec)
        deliver_pending(app)
        sandbox.faults(clear=True)

    return provoke


def _deliver(sandbox: Any, app: Flask) -> None:
    _submit(app)
    deliver_pending(app)


def _field_deleted_twice(sandbox: Any, app: Flask) -> None:
    """A field we cached (the marker field) is deleted in amoCRM: the first refusal
    reads the account again and succeeds; a second within the minute is stored."""
    for name in ("Ann", "Bob", "Cid"):
        _submit(app, name)
        deliver_pending(app)
        sandbox.reset()  # the account lost its fields


#: name: (how the app is made, how the error is provoked, the rules, what the
#: stored reason starts with in English, what it must also say)
CASES: dict[str, tuple[Any, Any, dict[str, Any], str, str]] = {
    "401 revoked": (_oauth, _fault(status=401), LEAD_RULES, "TokenRevokedError", ""),
    "401 long-lived": (None, _fault(status=401), LEAD_RULES, "AuthError", ""),
    "402": (None, _fault(status=402), LEAD_RULES, "PaymentRequiredError", ""),
    "403 blocked": (None, _fault(status=403), LEAD_RULES, "AccountBlockedError", ""),
    "429": (None, _fault(status=429), LEAD_RULES, "RateLimitError", ""),
    "5xx": (None, _fault(status=503), LEAD_RULES, "ServerError", ""),
    "network": (None, _fault(drop=True), LEAD_RULES, "TransportError", ""),
    "NotSupportedChoice": (
        None,
        _field_deleted_twice,
        LEAD_RULES,
        "ValidationError",
        "NotSupportedChoice",
    ),
    "rule error": (
        None,
        _deliver,
        {"forms": {"callback": {"lead": {"name": "{{ data.missing.deep }}"}}}},
        "rule error",
        "",
    ),
    "unknown field": (
        None,
        _deliver,
        {"forms": {"callback": {"lead": {"name": "x", "fields": {"No such": "y"}}}}},
        "rule error",
        "",
    ),
}


def _page(locale: str) -> str:
    path = PAGES[locale]
    assert path.exists(), f"{path} is missing"
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("locale", ["en", "ru"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_amocrm_error_a_person_meets_is_on_the_troubleshooting_page(
    make_app: Any, sandbox: Any, case: str, locale: str
) -> None:
    from flask_mail import Mail

    maker, provoke, rules, english_kind, also = CASES[case]
    config = {
        "AMOCRM_RULES": rules,
        "AMOCRM_LOCALE": locale,
        "AMOCRM_ADMIN_EMAILS": ["ops@example.com"],
        "MAIL_SUPPRESS_SEND": True,
        "MAIL_DEFAULT_SENDER": "site@example.com",
    }
    app = maker(sandbox, make_app, **config) if maker else make_app(**config)
    mail = Mail(app)
    with mail.record_messages() as outbox:
        provoke(sandbox, app)
    stored = stored_events(app)[-1]
    reason = stored.last_error or ""
    assert stored.status in ("retrying", "failed"), reason
    kind = reason.split(":", 1)[0]
    if locale == "en":
        assert kind == english_kind, reason
    else:  # the kind is written in Russian (a class's name keeps it, explained)
        assert kind != english_kind, reason
    page = _page(locale)
    assert kind in page, f"{case}: {kind!r} (stored: {reason!r}) is not on {locale}"
    assert also in reason and also in page
    host = app.config["AMOCRM_BASE_URL"]
    for message in outbox:
        subject = re.sub(r"\s*\(" + re.escape(host) + r"\)$", "", message.subject)
        assert subject in page, f"{case}: the mail {subject!r} is not on {locale}"
