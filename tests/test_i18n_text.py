"""Texts read outside the admin pages (alert mails, CLI output, reasons and notes
stored on events) follow ``AMOCRM_LOCALE``; the Python log stays English."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_amocrm import Event
from flask_amocrm.errors import RuleError
from flask_amocrm.i18n import N_, localize
from flask_amocrm.models import utcnow
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import stored_events

RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "contact": {"name": "{{ data.name }}"},
            "lead": {
                "name": "Callback: {{ data.name }}",
                "fields": {
                    "Lead Quantity": "{{ data.qty | default('') }}",
                    "Lead Visit date": "{{ data.visit | default('') }}",
                },
            },
        },
        # a pipeline the account does not have: every event of it fails
        "order": {"lead": {"name": "Order", "pipeline": "No such pipeline"}},
    }
}


def _submit(app: Flask, form: str, **data: Any) -> int:
    with app.app_context():
        event = app.extensions["amocrm"].extension.submit(form, data)
        assert event is not None
        return int(event.id)


def _make_due(app: Flask) -> None:
    with app.app_context(), app.extensions["amocrm"].session() as session:
        for event in session.query(Event).filter(Event.status == "retrying"):
            event.next_attempt_at = utcnow() - timedelta(seconds=1)
        session.commit()


def _events(app: Flask) -> dict[int, Event]:
    return {e.id: e for e in stored_events(app)}


def _site(make_app: Any, **config: Any) -> Flask:
    app: Flask = make_app(AMOCRM_RULES=RULES, AMOCRM_RATE_LIMIT=50, **config)
    return app


def test_stored_reasons_and_warnings_are_in_russian(
    make_app: Any, fast_sandbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = _site(make_app, AMOCRM_LOCALE="ru", AMOCRM_MAX_VALUE_LENGTH=100)
    rule = _submit(app, "order", name="Ann")
    value = _submit(app, "callback", name="Bob", visit="0001-01-01T00:00:00+14:00")
    warned = _submit(app, "callback", name="Cid", qty="many", note="x" * 150)
    with caplog.at_level(logging.WARNING, logger="flask_amocrm"):
        deliver_pending(app)
    events = _events(app)

    assert events[rule].status == "failed"
    assert events[rule].last_error == (
        "ошибка в правиле: forms.order.lead.pipeline: в аккаунте нет воронки "
        "'No such pipeline' (см. 'flask amocrm check')"
    )
    assert events[value].status == "failed"
    assert (events[value].last_error or "").startswith("недопустимое значение: ")
    assert events[warned].status == "delivered", events[warned].last_error
    log = events[warned].log or []
    # the capture's note (a value cut) and the rule's warning (not a number)
    assert "data.note: обрезано с 150 до 100 символов" in log
    assert any("'many' — не число; значение не записано" in line for line in log), log
    # the sales team reads in amoCRM what could not be written
    [note] = [n["params"]["text"] for n in fast_sandbox.notes("leads")]
    assert note.splitlines() == [
        "Flask-AmoCRM не смог записать некоторые значения так, как сказано в правиле:",
        "- Lead Quantity: 'many' — не число; значение не записано",
    ]
    # the Python log stays English: it is read by developers
    messages = [r.getMessage() for r in caplog.records]
    assert f"Event {rule} failed (rule error)" in messages
    assert not any("ошибка" in m for m in messages)


def test_the_same_reasons_stay_english_by_default(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_MAX_VALUE_LENGTH=100)
    rule = _submit(app, "order", name="Ann")
    warned = _submit(app, "callback", name="Cid", qty="many", note="x" * 150)
    deliver_pending(app)
    events = _events(app)
    assert events[rule].last_error == (
        "rule error: forms.order.lead.pipeline: there is no pipeline "
        "'No such pipeline' in the account (see 'flask amocrm check')"
    )
    log = events[warned].log or []
    assert "data.note cut from 150 to 100 characters" in log
    assert any("'many' is not a number; it was not written" in x for x in log), log


def test_an_outage_is_mailed_in_russian_start_and_end(
    make_app: Any, sandbox: Any
) -> None:
    from flask_mail import Mail

    app = make_app(
        AMOCRM_LOCALE="ru",
        AMOCRM_ADMIN_EMAILS=["ops@example.com"],
        MAIL_SUPPRESS_SEND=True,
        MAIL_DEFAULT_SENDER="site@example.com",
    )
    mail = Mail(app)
    for name in ("Ann", "Bob"):
        _submit(app, "callback", name=name, phone="+79120001122")
    sandbox.faults(status=503, count=1000)
    with mail.record_messages() as outbox:
        assert deliver_pending(app).get("retrying") == 2
        _make_due(app)
        assert deliver_pending(app).get("retrying") == 2
        assert len(outbox) == 1
        for event in stored_events(app):  # why they wait, for the admin's page
            assert (event.last_error or "").startswith(
                "ServerError (сбой на стороне amoCRM): "
            ), event.last_error
        down = outbox[0]
        assert down.subject == f"[amoCRM] amoCRM не отвечает ({sandbox.url})"
        assert "не выполняет или отклоняет наши запросы" in down.body
        assert "ServerError (сбой на стороне amoCRM)" in down.body
        assert "Ждут 2 события." in down.body
        assert "Ничего не потеряно" in down.body
        sandbox.faults(clear=True)
        _make_due(app)
        assert deliver_pending(app)["delivered"] == 2
        assert len(outbox) == 2
        up = outbox[1]
        assert up.subject == f"[amoCRM] amoCRM снова отвечает ({sandbox.url})"
        assert "снова отвечает. Сбой начался" in up.body


def test_status_prints_russian(make_app: Any, fast_sandbox: Any) -> None:
    app = _site(make_app, AMOCRM_LOCALE="ru")
    bad = _submit(app, "order", name="Ann")
    _submit(app, "callback", name="Bob")
    deliver_pending(app)
    result = app.test_cli_runner().invoke(args=["amocrm", "status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    counts = {" ".join(line.split()[:-1]): line.split()[-1] for line in lines[:7]}
    assert counts == {
        "в очереди": "0",
        "доставляется": "0",
        "повтор": "0",
        "доставлено": "1",
        "ошибка": "1",
        "пропущено": "0",
        "отменено": "0",
    }
    assert "С ошибкой (1), сначала новые:" in lines
    [failed] = [line for line in lines if f"#{bad} " in line]
    assert f"#{bad} ошибка form order " in failed
    assert "ошибка в правиле: forms.order.lead.pipeline" in failed


def test_status_stays_english_by_default(make_app: Any, fast_sandbox: Any) -> None:
    app = _site(make_app)
    bad = _submit(app, "order", name="Ann")
    deliver_pending(app)
    lines = app.test_cli_runner().invoke(args=["amocrm", "status"]).output.splitlines()
    assert "failed     1" in lines
    assert "Failed (1), newest first:" in lines
    [failed] = [line for line in lines if f"#{bad} " in line]
    assert f"#{bad} failed form order " in failed and ": rule error: " in failed


def test_check_and_preview_print_russian(make_app: Any, fast_sandbox: Any) -> None:
    app = _site(make_app, AMOCRM_LOCALE="ru")
    check = app.test_cli_runner().invoke(args=["amocrm", "check"])
    assert check.exit_code == 1
    assert "forms.order.lead.pipeline: нет воронки 'No such pipeline'" in check.output
    assert "1 проблема в AMOCRM_RULES." in check.output
    preview = app.test_cli_runner().invoke(
        args=["amocrm", "preview", "callback", "--data", '{"name": "A", "qty": "x"}']
    )
    assert preview.exit_code == 0, preview.output
    assert "предупреждение: Lead Quantity: 'x' — не число; значение не записано" in (
        preview.output.splitlines()
    ), preview.output
    missing = app.test_cli_runner().invoke(args=["amocrm", "preview", "nope"])
    assert "Нет правила для form 'nope'." in missing.output


def test_a_message_reads_english_until_it_is_localized() -> None:
    app = Flask(__name__)
    error = RuleError(N_("%(where)s: there is no user %(user)s", where="x", user="'A'"))
    reason = N_("rule error: %(error)s", error=error)
    assert str(reason) == "rule error: x: there is no user 'A'"
    assert localize(reason) == str(reason)  # no app: English
    app.config["AMOCRM_LOCALE"] = "ru"
    with app.app_context():
        assert localize(reason) == "ошибка в правиле: x: нет пользователя 'A'"
        assert localize(error) == "x: нет пользователя 'A'"
        assert localize("plain text") == "plain text"
        assert str(error) == "x: there is no user 'A'"  # logs and tracebacks


def test_a_visitors_browser_does_not_choose_the_stored_language(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_MAX_VALUE_LENGTH=100)
    with app.test_request_context(headers={"Accept-Language": "ru-RU,ru;q=0.9"}):
        event = app.extensions["amocrm"].extension.submit(
            "callback", {"name": "Ann", "note": "x" * 150}
        )
        assert event is not None
    [stored] = stored_events(app)
    assert stored.log == ["data.note cut from 150 to 100 characters"]


def test_the_notes_flask_amocrm_writes_into_amocrm_are_in_russian(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_LOCALE="ru")
    with app.app_context():
        event = app.extensions["amocrm"].extension.submit(
            "callback", {"name": "Ann"}, files={"cv": "ftp://example.com/cv.pdf"}
        )
        assert event is not None
    assert deliver_pending(app).get("delivered") == 1
    [stored] = stored_events(app)
    assert stored.files[0]["error"] == "не ссылка http(s)"
    [note] = [n["params"]["text"] for n in fast_sandbox.notes("leads")]
    assert note.splitlines() == ["Файлы:", "- cv.pdf (не ссылка http(s))"]


def test_webhooks_status_prints_russian(make_app: Any, fast_sandbox: Any) -> None:
    app = make_app(AMOCRM_LOCALE="ru")
    result = app.test_cli_runner().invoke(args=["amocrm", "webhooks", "status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "Вебхук этого сайта в amoCRM не зарегистрирован." in lines
    assert any(line.startswith("изменения из amoCRM: ") for line in lines), lines
    assert any(line.startswith("сверка: ") for line in lines), lines
