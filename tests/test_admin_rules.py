"""The admin's rules page: what ``flask amocrm check`` says, the rules, and a preview
of the calls a rule makes for sample data, without sending anything."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.conftest import CALLBACK_RULES
from tests.helpers.admin import PREFIX, csrf_token
from tests.helpers.browser import shoot
from tests.helpers.xss import CORPUS, assert_inert, watch

ADMIN = {"AMOCRM_ADMIN_AUTH": lambda: True}
RULES = f"{PREFIX}/rules"


def _preview(client: Any, rule: str, data: str, **extra: str) -> str:
    answer = client.post(
        f"{RULES}/preview",
        data={"csrf_token": csrf_token(client, RULES), "rule": rule, "data": data}
        | extra,
    )
    assert answer.status_code == 200
    return str(answer.get_data(as_text=True))


def test_the_check_says_what_the_cli_says(make_app: Any, fast_sandbox: Any) -> None:
    good = make_app(**ADMIN)
    client = good.test_client()
    assert "The rules match the account" not in client.get(RULES).get_data(
        as_text=True
    )  # the check runs when asked: opening the page calls nothing
    html = client.get(f"{RULES}?check=1").get_data(as_text=True)
    assert "The rules match the account." in html
    rules = json.loads(json.dumps(CALLBACK_RULES))
    rules["forms"]["callback"]["lead"]["pipeline"] = "No such pipeline"
    bad = make_app(AMOCRM_RULES=rules, **ADMIN)
    cli = bad.test_cli_runner().invoke(args=["amocrm", "check"])
    problems = [line for line in cli.output.splitlines() if "No such pipeline" in line]
    assert cli.exit_code == 1 and problems
    html = bad.test_client().get(f"{RULES}?check=1").get_data(as_text=True)
    assert "1 problem in the rules" in html
    for line in problems:
        assert line.replace("'", "&#39;") in html


def test_an_unreachable_amocrm_is_a_clear_message_not_a_500(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = make_app(AMOCRM_BASE_URL="http://127.0.0.1:1", **ADMIN)
    answer = app.test_client().get(f"{RULES}?check=1")
    assert answer.status_code == 200
    assert "amoCRM could not be read" in answer.get_data(as_text=True)
    fast_sandbox.faults(status=503, count=100)
    app = make_app(**ADMIN)
    answer = app.test_client().get(f"{RULES}?check=1")
    assert answer.status_code == 200
    assert "amoCRM could not be read" in answer.get_data(as_text=True)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("name=Anna Petrova\nphone=+7 912 345-67-89\n# a note", id="lines"),
        pytest.param('{"name": "Anna Petrova", "phone": "+79123456789"}', id="json"),
    ],
)
def test_the_preview_shows_the_calls_and_sends_nothing(
    make_app: Any, fast_sandbox: Any, data: str
) -> None:
    app = make_app(**ADMIN)
    client = app.test_client()
    before = len(fast_sandbox.requests())
    html = _preview(client, "form:callback", data)
    assert "POST /api/v4/leads/complex" in html
    assert "Callback: Anna Petrova" in html
    writes = [
        r for r in fast_sandbox.requests()[before:] if r["method"] in ("POST", "PATCH")
    ]
    assert writes == [] and fast_sandbox.leads() == []


def test_bad_sample_data_and_template_errors_are_clear_messages(
    make_app: Any, fast_sandbox: Any
) -> None:
    rules = {"forms": {"broken": {"lead": {"name": "{{ data.name.missing.deeper }}"}}}}
    app = make_app(AMOCRM_RULES=rules, **ADMIN)
    client = app.test_client()
    html = _preview(client, "form:broken", "name=Anna\nno equals sign here")
    assert "Line 2 of the sample data is not key=value" in html
    html = _preview(client, "form:broken", "{not json")
    assert "not valid JSON" in html
    html = _preview(client, "form:broken", "[1, 2]")
    assert "not key=value" in html
    html = _preview(client, "form:nope", "name=Anna")
    assert "Choose one of the rules" in html
    html = _preview(client, "form:broken", "name=Anna")
    [message] = re.findall(r'id="am-preview-error">([^<]*)<', html)
    assert message.startswith(
        "The rule cannot be rendered: template error in forms.broken.lead.name"
    )
    # a POST without the page's token is refused
    answer = client.post(f"{RULES}/preview", data={"rule": "form:broken"})
    assert answer.status_code == 400


def test_the_rules_page_in_a_browser_both_languages(
    make_app: Any, fast_sandbox: Any, serve: Any, page: Any, page_ru: Any
) -> None:
    app = make_app(**ADMIN)
    base = serve(app)
    page.goto(f"{base}{RULES}")
    page.select_option("select[name=rule]", "form:callback")
    page.fill("textarea[name=data]", "name=Anna Petrova\nphone=+7 912 345-67-89")
    page.click("text=Show the calls")
    result = page.locator("#am-preview-result").inner_text()
    assert "POST /api/v4/leads/complex" in result and "Anna Petrova" in result
    shoot(page, "rules-preview-en")
    page.click("text=Check the rules")
    assert "The rules match the account." in page.locator("#am-check").inner_text()
    page_ru.set_viewport_size({"width": 375, "height": 800})
    page_ru.goto(f"{base}{RULES}")
    assert page_ru.locator("h1").inner_text() == "Правила"
    page_ru.fill("textarea[name=data]", '{"name": "Анна", "phone": "+79123456789"}')
    page_ru.click("text=Показать запросы")
    assert "Анна" in page_ru.locator("#am-preview-result").inner_text()
    shoot(page_ru, "rules-preview-ru-375")
    width = page_ru.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide on a 375px phone"


def test_hostile_rule_and_sample_data_are_shown_as_text(
    make_app: Any, fast_sandbox: Any, serve: Any, page: Any
) -> None:
    rules = {
        "forms": {
            CORPUS[1]: {
                "lead": {"name": "{{ data.name }}", "tags": list(CORPUS[:3])},
                "contact": {"name": "{{ data.name }}"},
            }
        }
    }
    app = make_app(AMOCRM_RULES=rules, **ADMIN)
    base = serve(app)
    opened = watch(page)
    page.goto(f"{base}{RULES}")
    assert_inert(page, opened)
    page.fill("textarea[name=data]", json.dumps({"name": " ".join(CORPUS)}))
    page.click("button[type=submit]")
    assert_inert(page, opened)
    assert CORPUS[5] in page.locator("textarea[name=data]").input_value()
    assert CORPUS[0] in page.locator("#am-preview-result").inner_text()
    page.locator("details summary").last.click()
    assert CORPUS[2] in page.locator("details pre").last.inner_text()
