"""``flask amocrm preview`` runs the real delivery code: what it prints is what a
delivery of the same event sends to amoCRM, call for call."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from flask_amocrm.amo.recording import RecordingClient
from flask_amocrm.progress import Progress
from flask_amocrm.rules.signing import sign_id
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import form_site, stored_events

PAGE = "http://localhost/form/order?utm_source=google"

FULL_RULE: dict[str, Any] = {
    "contact": {
        "name": "{{ data.name }}",
        "phone": "{{ data.phone }}",
        "email": "{{ data.email }}",
        "note": "Came from {{ site.domain }}",
    },
    "company": {"name": "{{ data.company }}", "note": "Company of {{ data.name }}"},
    "lead": {
        "name": "Order from {{ data.name }}",
        "pipeline": "Partners",
        "price": "{{ data.amount }}",
        "note": "Comment: {{ data.comment }}",
    },
    "task": {"entity": "lead", "text": "Call {{ data.name }}", "deadline": "+2h"},
}

DUPLICATES_RULE: dict[str, Any] = {
    **FULL_RULE,
    "contact": {
        **FULL_RULE["contact"],
        "duplicates": {"match": ["PHONE", "EMAIL"], "strategy": "update"},
    },
    "company": {
        **FULL_RULE["company"],
        "duplicates": {"match": ["name"], "strategy": "note"},
    },
    "lead": {
        **FULL_RULE["lead"],
        "duplicates": {"match": ["name"], "scope": "contact", "strategy": "update"},
    },
}

FORM = {
    "name": "Zoe Unique",
    "phone": "+7 999 123-45-67",
    "email": "zoe.unique@example.com",
    "company": "Zoe Unique Ltd",
    "amount": "1500",
    "comment": "Ring after 5",
}

CALL = re.compile(r"^(GET|POST|PATCH|DELETE) (/\S*)$")


def _printed_calls(output: str) -> list[tuple[str, str, Any]]:
    """``(method, path with query, body)`` of every call ``preview`` printed."""
    calls: list[tuple[str, str, list[str]]] = []
    for line in output.splitlines():
        match = CALL.match(line)
        if match:
            calls.append((match[1], match[2], []))
        elif calls:
            calls[-1][2].append(line)
    return [(m, p, json.loads("\n".join(b)) if b else None) for m, p, b in calls]


def _shape(value: Any) -> Any:
    """The keys of ``value``, recursively; values themselves (ids ...) do not count."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return None


@pytest.mark.parametrize("rule", [FULL_RULE, DUPLICATES_RULE], ids=["plain", "dedup"])
def test_preview_makes_the_calls_delivery_makes(
    make_app: Any, fast_sandbox: Any, rule: dict[str, Any]
) -> None:
    sandbox = fast_sandbox
    app = form_site(make_app, {"forms": {"order": rule}})
    result = app.test_cli_runner().invoke(
        args=["amocrm", "preview", "order", "--data", json.dumps(FORM), "--page", PAGE]
    )
    assert result.exit_code == 0, result.output
    previewed = _printed_calls(result.output)
    # The preview read the account's metadata and sent nothing else.
    assert all(r["method"] == "GET" for r in sandbox.requests())
    assert sandbox.leads() == [] and stored_events(app) == []

    before = len(sandbox.requests())
    app.test_client().post("/form/order?utm_source=google", data=FORM)
    assert deliver_pending(app)["delivered"] == 1
    sent = [
        (r["method"], r["path"] + (f"?{r['query']}" if r["query"] else ""), r["body"])
        for r in sandbox.requests()[before:]
    ]

    # the same calls in the same order, searches with the same parameters ...
    assert [(m, p) for m, p, _ in previewed] == [(m, p) for m, p, _ in sent]
    # ... and bodies of the same shape (ids and request ids differ)
    assert [_shape(b) for _, _, b in previewed] == [_shape(b) for _, _, b in sent]
    paths = [p.split("?")[0] for _, p, _ in sent]
    assert "/api/v4/leads/complex" in paths and "/api/v4/tasks" in paths
    assert {"/api/v4/leads/notes", "/api/v4/contacts/notes"} <= set(paths)
    assert "/api/v4/companies/notes" in paths
    if rule is DUPLICATES_RULE:  # the lookups ran, and found nothing
        assert paths.count("/api/v4/contacts") >= 1
        assert "/api/v4/companies" in paths
        [event] = stored_events(app)
        assert Progress.from_json(event.remote).duplicates == {}


def test_preview_updates_an_entity_the_rule_names(
    make_app: Any, fast_sandbox: Any
) -> None:
    rule = {
        "contact": {"id": "{{ data.contact | signed }}", "name": "{{ data.name }}"},
        "lead": {"name": "Call {{ data.name }}", "note": "n"},
        "task": {"text": "t"},
    }
    app = make_app(AMOCRM_RULES={"forms": {"f": rule}}, AMOCRM_RATE_LIMIT=50)
    result = app.test_cli_runner().invoke(
        args=[
            "amocrm",
            "preview",
            "f",
            "--data",
            json.dumps({"name": "Ann", "contact": sign_id("contact", 7, "test")}),
        ]
    )
    assert result.exit_code == 0, result.output
    calls = _printed_calls(result.output)
    assert [(m, p.split("?")[0]) for m, p, _ in calls] == [
        ("GET", "/api/v4/leads/custom_fields"),  # the event-id field ...
        ("POST", "/api/v4/leads/custom_fields"),  # ... made, as on a fresh install
        ("GET", "/api/v4/contacts"),  # read before it is changed
        ("PATCH", "/api/v4/contacts"),
        ("POST", "/api/v4/leads/complex"),
        ("POST", "/api/v4/leads/notes"),
        ("POST", "/api/v4/tasks"),
    ]
    assert calls[2][1] == "/api/v4/contacts?filter%5Bid%5D%5B%5D=7&limit=250&page=1"
    assert calls[3][2][0]["id"] == 7
    assert calls[4][2][0]["_embedded"]["contacts"] == [{"id": 7}]
    lead_id = calls[5][2][0]["entity_id"]
    assert isinstance(lead_id, int) and calls[6][2][0]["entity_id"] == lead_id


def test_the_recording_client_answers_as_amocrm_does() -> None:
    client = RecordingClient()
    [complex_] = client.create_complex(
        [{"name": "L", "_embedded": {"contacts": [{"id": 7}], "companies": [{}]}}]
    )
    assert complex_ is not None and complex_["contact_id"] == 7
    assert complex_["id"] and complex_["company_id"] not in (None, 7)
    [unsorted] = client.create_unsorted([{"_embedded": {"contacts": [{}]}}])
    assert unsorted is not None and unsorted["uid"]
    assert [len(unsorted["_embedded"][k]) for k in ("leads", "contacts")] == [1, 1]
    assert [a and a["id"] for a in client.add_notes("leads", [{}, {}])] == [6, 7]
    assert client.search("contacts", "+7 1") == []
    assert client.list_tasks("leads", [1, 2]) == []
    assert client.read("leads", [3]) == [{"id": 3, "_embedded": {}}]
    assert client.create_field("leads", {"name": "x"})["id"] == 8
    assert [(c.method, c.path) for c in client.calls] == [
        ("POST", "/api/v4/leads/complex"),
        ("POST", "/api/v4/leads/unsorted/forms"),
        ("POST", "/api/v4/leads/notes"),
        ("GET", "/api/v4/contacts"),
        ("GET", "/api/v4/tasks"),
        ("GET", "/api/v4/leads"),
        ("POST", "/api/v4/leads/custom_fields"),
    ]
    assert client.calls[0].body[0]["request_id"] == "0"
