"""``flask amocrm check`` and ``preview``, and the shared round-robin turn."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flask_amocrm.state import get_state
from flask_amocrm.worker.deliver import turn


@pytest.fixture()
def fast_sandbox(sandbox: Any) -> Any:
    sandbox.config(rate_limit=0)
    return sandbox


BAD_RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "responsible": "Gleb Old",
            "contact": {
                "name": "{{ data.name }}",
                "phone": "{{ data.phone }}",
                "fields": {"Interests": ["Windows", "Gates"]},
            },
            "lead": {
                "pipeline": "Sales",
                "status": "Closed",
                "fields": {
                    "Colour": "red",
                    "Delivery type": {"enum": "Drone"},
                    "Lead Comment": "{{ data.x }}",
                },
                "responsible": ["Anna Petrova", "Nobody"],
            },
            "task": {"type": "Lunch"},
        }
    }
}


def test_check_names_every_problem(make_app: Any, fast_sandbox: Any) -> None:
    app = make_app(AMOCRM_RULES=BAD_RULES, AMOCRM_RATE_LIMIT=50)
    result = app.test_cli_runner().invoke(args=["amocrm", "check"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert sorted(lines[:-1]) == sorted(
        [
            "forms.callback.responsible: the user 'Gleb Old' is not active",
            "forms.callback.contact.fields.Interests: 'Gates' is not one of the values "
            "of 'Interests' (Windows, Doors, Roofs)",
            "forms.callback.lead.responsible: there is no user 'Nobody'",
            "forms.callback.lead.fields.Colour: the leads have no field 'Colour'",
            "forms.callback.lead.fields.Delivery type: 'Drone' is not one of the "
            "values of 'Delivery type' (Courier, Pickup, Post)",
            "forms.callback.lead.status: there is no status 'Closed' in that pipeline",
            "forms.callback.task.type: there is no task type 'Lunch'",
        ]
    )
    assert "7 problem(s)" in lines[-1]


def test_check_passes_good_rules(make_app: Any, fast_sandbox: Any) -> None:
    app = make_app(AMOCRM_RATE_LIMIT=50)  # conftest's callback rule
    result = app.test_cli_runner().invoke(args=["amocrm", "check"])
    assert result.exit_code == 0, result.output
    assert "The rules match the account." in result.output


def test_preview_prints_calls_without_sending(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "callback": {
                "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
                "lead": {
                    "name": "Call {{ data.name }}",
                    "pipeline": "Partners",
                    "responsible": ["Anna Petrova", "Boris Ivanov"],
                },
                "task": {"text": "Call {{ data.name }}", "deadline": "+1h"},
            }
        }
    }
    app = make_app(AMOCRM_RULES=rules, AMOCRM_RATE_LIMIT=50)
    result = app.test_cli_runner().invoke(
        args=[
            "amocrm",
            "preview",
            "callback",
            "--data",
            '{"name": "Ann", "phone": "+7 1"}',
            "--page",
            "https://shop.test/?utm_source=google",
        ]
    )
    assert result.exit_code == 0, result.output
    # the worker's own steps: the event-id field is looked for (and made) first
    assert result.output.index("GET /api/v4/leads/custom_fields") < (
        result.output.index("POST /api/v4/leads/complex")
    )
    assert "POST /api/v4/tasks" in result.output
    body = result.output.split("POST /api/v4/leads/complex\n")[1].split("\nPOST")[0]
    [lead] = json.loads(body)
    assert lead["name"] == "Call Ann" and lead["pipeline_id"] == 7000002
    assert lead["responsible_user_id"] == 8000002
    assert lead["custom_fields_values"][0]["values"] == [{"value": "google"}]
    assert all(r["method"] == "GET" for r in sandbox.requests())
    assert sandbox.leads() == []
    # previewing does not take a round-robin turn
    again = app.test_cli_runner().invoke(
        args=["amocrm", "preview", "callback", "--data", '{"name": "B", "phone": "1"}']
    )
    assert '"responsible_user_id": 8000002' in again.output

    missing = app.test_cli_runner().invoke(args=["amocrm", "preview", "nope"])
    assert missing.exit_code == 1 and "no rule for form 'nope'" in missing.output
    broken = app.test_cli_runner().invoke(
        args=["amocrm", "preview", "callback", "--data", "{}"]
    )
    assert broken.exit_code == 1 and "forms.callback.lead.name" in broken.output


@pytest.mark.parametrize("with_redis", [False, True])
def test_round_robin_turns_are_shared(
    make_app: Any,
    fast_sandbox: Any,
    with_redis: bool,
    request: pytest.FixtureRequest,
    tmp_path: Any,
) -> None:
    # two apps on one database: two web nodes or workers sharing one counter
    config: dict[str, Any] = {
        "AMOCRM_DATABASE_URI": f"sqlite:///{tmp_path}/shared.sqlite3"
    }
    if with_redis:
        request.getfixturevalue("redis_conn")
        config["AMOCRM_REDIS_URL"] = request.getfixturevalue("redis_url")
    first, second = make_app(**config), make_app(**config)
    turns = []
    for app in (first, second, first, second, first):
        with app.app_context():
            turns.append(turn(get_state(app), "forms.x.lead.responsible", 2))
    assert turns == [0, 1, 0, 1, 0]
    with first.app_context():
        assert turn(get_state(first), "forms.x.lead.responsible", 2, take=False) == 1
        assert turn(get_state(first), "single", 1) == 0
