"""The site as an amoCRM source (issue 13, section 3): registered once per account,
named by every lead we create, read back with ``with=source``; and the sandbox's
``/api/v4/sources``."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import form_site, stored_events

RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
            "lead": {"name": "Callback: {{ data.name }}"},
        },
        "quote": {
            "unsorted": True,
            "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
            "lead": {"name": "Quote: {{ data.name }}"},
        },
    }
}


def _post(app: Flask, form: str, **data: str) -> None:
    app.test_client().post(f"/form/{form}", data=data).close()


def _calls(sandbox: Any, method: str, path: str) -> int:
    return sum(
        1 for r in sandbox.requests() if r["method"] == method and r["path"] == path
    )


def _leads_with_source(amo: Any) -> dict[str, Any]:
    answer = amo.get("/leads", params={"with": "source"})
    assert answer.status_code == 200
    return {
        lead["name"]: lead["_embedded"].get("source")
        for lead in answer.json()["_embedded"]["leads"]
    }


def test_the_source_is_registered_once_and_every_lead_names_it(
    make_app: Any, amo: Any, sandbox: Any
) -> None:
    app = form_site(make_app, RULES, SERVER_NAME="shop.example:8000")
    _post(app, "callback", name="Ann", phone="+79120001122")
    assert deliver_pending(app)["delivered"] == 1
    _post(app, "callback", name="Bob", phone="+79120003344")
    _post(app, "quote", name="Eve", phone="+79120005566")
    assert deliver_pending(app)["delivered"] == 2

    [source] = sandbox.state()["sources"]
    assert source["external_id"] == "shop.example"  # SERVER_NAME's host
    assert source["name"] == "shop.example"
    assert _calls(sandbox, "POST", "/api/v4/sources") == 1
    assert _calls(sandbox, "GET", "/api/v4/sources") == 1  # cached afterwards
    expected = {"id": source["id"], "name": "shop.example"}
    assert _leads_with_source(amo) == {
        "Callback: Ann": expected,
        "Callback: Bob": expected,
        "Quote: Eve": expected,  # the lead of the incoming lead too
    }
    [unsorted] = sandbox.unsorted()
    assert unsorted["_embedded"]["leads"][0]["id"] in [
        lead["id"] for lead in sandbox.leads() if lead["name"] == "Quote: Eve"
    ]
    # without with=source the lead shows none
    plain = amo.get("/leads").json()["_embedded"]["leads"]
    assert all("source" not in lead["_embedded"] for lead in plain)


def test_a_source_made_before_an_answer_was_lost_is_found_not_made_again(
    make_app: Any, amo: Any, sandbox: Any
) -> None:
    made = amo.post(
        "/sources", json=[{"name": "Our shop", "external_id": "shop-site"}]
    ).json()["_embedded"]["sources"][0]
    app = form_site(
        make_app, RULES, AMOCRM_SOURCE="shop-site", AMOCRM_SITE_NAME="Our shop"
    )
    _post(app, "callback", name="Ann", phone="+79120001122")
    assert deliver_pending(app)["delivered"] == 1
    assert _calls(sandbox, "POST", "/api/v4/sources") == 1  # ours above only
    assert len(sandbox.state()["sources"]) == 1
    assert _leads_with_source(amo) == {
        "Callback: Ann": {"id": made["id"], "name": "Our shop"}
    }


def test_no_source_without_server_name_or_with_amocrm_source_false(
    make_app: Any, sandbox: Any
) -> None:
    for config in ({}, {"SERVER_NAME": "shop.example", "AMOCRM_SOURCE": False}):
        sandbox.reset()
        app = form_site(make_app, RULES, **config)
        _post(app, "callback", name="Ann", phone="+79120001122")
        assert deliver_pending(app)["delivered"] == 1
        assert not [r for r in sandbox.requests() if "/sources" in r["path"]]
        assert sandbox.state()["sources"] == []
        assert sandbox.leads()[0].get("source_id") is None


def test_an_account_that_refuses_sources_still_gets_its_leads(
    make_app: Any, sandbox: Any
) -> None:
    sandbox.faults(status=404, path="/api/v4/sources")
    app = form_site(make_app, RULES, AMOCRM_SOURCE="shop-site")
    _post(app, "callback", name="Ann", phone="+79120001122")
    assert deliver_pending(app)["delivered"] == 1
    [event] = stored_events(app)
    assert "amoCRM refused the source 'shop-site': sent without it" in event.log
    [lead] = sandbox.leads()
    assert lead["name"] == "Callback: Ann" and lead.get("source_id") is None
    # not asked again for every lead
    _post(app, "callback", name="Bob", phone="+79120003344")
    assert deliver_pending(app)["delivered"] == 1
    assert sum(1 for r in sandbox.requests() if "/sources" in r["path"]) == 1


@pytest.mark.parametrize("value", ["", "two\nlines", "x" * 101, 5])
def test_a_bad_amocrm_source_fails_at_init(make_app: Any, value: Any) -> None:
    with pytest.raises(RuntimeError, match="AMOCRM_SOURCE"):
        make_app(AMOCRM_SOURCE=value)


# -- the sandbox's /api/v4/sources ---------------------------------------------------


def test_the_sandbox_serves_sources(amo: Any) -> None:
    assert amo.get("/sources").status_code == 204
    answer = amo.post(
        "/sources",
        json=[
            {"name": "Site", "external_id": "site", "request_id": "a"},
            {"name": "Chat", "external_id": "chat", "default": True},
        ],
    )
    assert answer.status_code == 200
    site, chat = answer.json()["_embedded"]["sources"]
    assert (site["request_id"], chat["request_id"]) == ("a", "1")
    assert site["external_id"] == "site" and chat["default"] is True
    assert isinstance(site["pipeline_id"], int)

    again = amo.post("/sources", json=[{"name": "Again", "external_id": "site"}])
    assert again.status_code == 400
    [item] = again.json()["validation-errors"]
    assert item["errors"][0]["path"] == "external_id"
    blank = amo.post("/sources", json=[{"external_id": "x"}])
    assert blank.status_code == 400

    found = amo.get("/sources", params={"filter[external_id]": "chat"}).json()
    assert [s["id"] for s in found["_embedded"]["sources"]] == [chat["id"]]
    assert amo.get(f"/sources/{site['id']}").json()["name"] == "Site"

    patched = amo.patch("/sources", json=[{"id": site["id"], "default": True}])
    assert patched.status_code == 200
    listed = {s["id"]: s for s in amo.get("/sources").json()["_embedded"]["sources"]}
    assert listed[site["id"]]["default"] is True
    assert listed[chat["id"]]["default"] is False  # one default at most

    assert amo.delete(f"/sources/{site['id']}").status_code == 204
    assert amo.get(f"/sources/{site['id']}").status_code == 204


def test_the_sandbox_keeps_a_leads_source(amo: Any) -> None:
    source = amo.post("/sources", json=[{"name": "Site", "external_id": "site"}])
    source_id = source.json()["_embedded"]["sources"][0]["id"]
    made = amo.post(
        "/leads",
        json=[
            {
                "name": "Direct",
                "_embedded": {"source": {"external_id": "site", "type": "widget"}},
            }
        ],
    )
    assert made.status_code == 200
    lead_id = made.json()["_embedded"]["leads"][0]["id"]
    lead = amo.get(f"/leads/{lead_id}", params={"with": "source,source_id"}).json()
    assert lead["_embedded"]["source"] == {"id": source_id, "name": "Site"}
    assert lead["source_id"] == source_id

    unknown = amo.post(
        "/leads/complex",
        json=[{"name": "X", "_embedded": {"source": {"external_id": "nope"}}}],
    )
    assert unknown.status_code == 400
    [item] = unknown.json()["validation-errors"]
    assert item["errors"][0]["path"] == "_embedded.source.external_id"
    assert item["errors"][0]["code"] == "NotSupportedChoice"
