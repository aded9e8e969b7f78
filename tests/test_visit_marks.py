"""What a lead carries from the visit: the ad marks (``AMOCRM_AD_MARKS``, signed
campaign cookie), the visitor's path (``journey``), and the site's own text (an IDN
domain, a form posted in windows-1251), end to end through a real app and the
sandbox over HTTP."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask, g, redirect, session
from itsdangerous import Signer

from flask_amocrm.testing import deliver_pending
from flask_amocrm.visit import CAMPAIGN_SALT, JOURNEY_SALT
from tests.helpers.e2e import field_values, form_site, stored_events

RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "format": "text",
            "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
            "lead": {
                "name": "Call from {{ data.name }}",
                "note": "Came from {{ site.domain }}",
            },
        }
    }
}


def _signed(secret: str, salt: str, value: Any) -> str:
    """A cookie value as the extension writes it (base64 of compact JSON, signed
    with itsdangerous), signed with ``secret``."""
    payload = base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")
    return Signer(secret, salt=salt).sign(payload).decode("ascii")


def _site(make_app: Any, rules: dict[str, Any] = RULES, **config: Any) -> Flask:
    """A shop: HTML pages (one names its title), a static file, a redirect, and the
    form at ``POST /form/callback``."""
    app = form_site(make_app, rules, **config)

    @app.get("/")
    @app.get("/sofas")
    @app.get("/cart")
    @app.get("/checkout")
    @app.get("/p/<path:rest>")
    def page(rest: str = "") -> str:
        return "<html><body>page</body></html>"

    @app.get("/sofas/aurora")
    def aurora() -> str:
        g.amocrm_page_title = "Sofa Aurora"
        return "<html><body>Aurora</body></html>"

    @app.get("/go")
    def go() -> Any:
        return redirect("/cart")

    @app.get("/api/price")
    def price() -> dict[str, int]:
        return {"price": 100}

    return app


def _deliver(app: Flask, sandbox: Any) -> tuple[dict[str, Any], list[str]]:
    """Deliver the one event; the lead and its notes' texts in the sandbox."""
    assert deliver_pending(app)["delivered"] == 1
    [event] = stored_events(app)
    assert event.status == "delivered", event.last_error
    [lead] = sandbox.leads()
    notes = [n["params"]["text"] for n in sandbox.notes("leads")]
    return lead, notes


def test_a_ga_cookie_becomes_the_client_id_without_its_prefix(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)
    client = app.test_client()
    client.set_cookie("_ga", "GA1.2.1234567890.1700000000")
    client.set_cookie("_fbp", "fb.1.1700000000.42")
    client.post("/form/callback", data={"name": "Ann", "phone": "+79120001122"})
    [event] = stored_events(app)
    assert event.context["utm"]["_ga"] == "1234567890.1700000000"
    lead, notes = _deliver(app, fast_sandbox)
    assert field_values(lead, "GCLIENTID") == ["1234567890.1700000000"]
    # _fbp has no standard tracking field: a line of the lead's note
    [note] = notes
    assert "Ad marks: _fbp=fb.1.1700000000.42" in note.splitlines()


def test_a_ga4_cookie_and_a_mark_in_the_session(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)

    @app.get("/set-session")
    def set_session() -> str:
        session["yclid"] = "777"
        return "<html></html>"

    client = app.test_client()
    client.get("/set-session")
    client.set_cookie("_ga", "GA1.1.55.66")
    client.set_cookie("yclid", "from-cookie")  # the session comes first
    client.post("/form/callback", data={"name": "Bo", "phone": "+79120001123"})
    lead, _notes = _deliver(app, fast_sandbox)
    assert field_values(lead, "GCLIENTID") == ["55.66"]
    assert field_values(lead, "YCLID") == ["777"]


def test_a_custom_mark_from_the_query_is_kept_as_first_touch(
    make_app: Any, fast_sandbox: Any
) -> None:
    rules = {
        "forms": {
            "callback": {
                "format": "text",
                "tracking": {"partner": "note"},
                "lead": {
                    "name": "Call",
                    "fields": {"Lead Comment": "first: {{ utm_first.partner }}"},
                },
            }
        }
    }
    app = _site(make_app, rules, AMOCRM_AD_MARKS=["*", "partner"])
    client = app.test_client()
    client.get("/?partner=acme&utm_source=ya")
    client.get("/sofas")
    client.get("/sofas/aurora?partner=globex")
    client.get("/cart")
    client.post("/form/callback", data={"name": "Cy", "phone": "+79120001124"})
    [event] = stored_events(app)
    assert event.context["utm_first"]["partner"] == "acme"
    assert event.context["utm_first"]["utm_source"] == "ya"
    # the last touch is the latest page that brought marks, all of them
    assert event.context["utm"] == {"partner": "globex"}
    lead, notes = _deliver(app, fast_sandbox)
    assert field_values(lead, "Lead Comment") == ["first: acme"]
    assert "Ad marks: partner=globex" in notes[0].splitlines()


def test_a_mark_the_site_does_not_keep_is_not_read(make_app: Any) -> None:
    app = _site(make_app, AMOCRM_AD_MARKS="utm_*, gclid")
    client = app.test_client()
    client.set_cookie("_ga", "GA1.2.1.2")
    client.post("/form/callback?gclid=g1&yclid=y1&utm_term=t", data={"name": "D"})
    [event] = stored_events(app)
    assert event.context["utm"] == {"gclid": "g1", "utm_term": "t"}


@pytest.mark.parametrize(
    "value",
    [
        _signed(
            "another site's secret",
            CAMPAIGN_SALT,
            {"first": {"utm_source": "forged"}, "last": {"utm_source": "forged"}},
        ),
        # the cookie as it was written before it was signed
        base64.urlsafe_b64encode(
            json.dumps({"first": {"utm_source": "old"}, "last": {}}).encode()
        ).decode(),
        # signed by the site, for the path cookie: not a campaign cookie
        _signed(
            "test",
            JOURNEY_SALT,
            {"first": {"utm_source": "swapped"}, "last": {"utm_source": "swapped"}},
        ),
    ],
    ids=["forged", "unsigned", "other-salt"],
)
def test_a_campaign_cookie_the_site_did_not_sign_is_ignored(
    make_app: Any, fast_sandbox: Any, value: str
) -> None:
    app = _site(make_app)
    client = app.test_client()
    client.set_cookie("amocrm_utm", value)
    client.post("/form/callback", data={"name": "Eve", "phone": "+79120001125"})
    [event] = stored_events(app)
    assert event.context["utm"] == {} and event.context["utm_first"] == {}
    lead, _notes = _deliver(app, fast_sandbox)
    assert field_values(lead, "UTM_SOURCE") == []


def test_the_journey_of_a_four_page_visit_is_in_the_leads_note(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)
    client = app.test_client()
    client.get("/sofas?utm_source=ya", headers={"Referer": "https://ya.ru/"})
    client.get("/sofas/aurora")
    client.get("/api/price")  # JSON: not a page
    client.get("/static/app.css")  # a static file (404 here, never a page)
    client.get("/go")  # a redirect: not a page
    client.get("/cart")
    client.get("/checkout")
    client.post("/form/callback", data={"name": "Fay", "phone": "+79120001126"})
    [event] = stored_events(app)
    journey = event.context["journey"]
    assert [p["path"] for p in journey["pages"]] == [
        "/sofas?utm_source=ya",
        "/sofas/aurora",
        "/cart",
        "/checkout",
    ]
    assert journey["pages"][1]["title"] == "Sofa Aurora"
    assert journey["landing"] == "/sofas?utm_source=ya"
    assert journey["referrer"] == "https://ya.ru/"
    assert journey["count"] == 4
    _lead, [note] = _deliver(app, fast_sandbox)
    assert re.search(
        r"^Path: /sofas\?utm_source=ya → /sofas/aurora → /cart → /checkout, \d s$",
        note,
        re.M,
    )


def test_a_long_visit_is_told_in_minutes_and_its_landing_kept(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_LOCALE="ru")
    client = app.test_client()
    now = int(time.time())
    pages = [["/sofas/aurora", "Sofa Aurora", 300], ["/cart", "", 350]]
    value = {"s": now - 360, "t": now - 10, "l": "/?utm_source=ya", "r": ""}
    value.update(n=7, p=pages)
    client.set_cookie("amocrm_journey", _signed("test", JOURNEY_SALT, value))
    client.get("/checkout")
    client.post("/form/callback", data={"name": "Kit", "phone": "+79120001129"})
    _lead, [note] = _deliver(app, fast_sandbox)
    assert re.search(
        r"^Путь: /\?utm_source=ya → … → /sofas/aurora → /cart → /checkout, 6 мин$",
        note,
        re.M,
    )


def test_the_path_note_is_in_russian_when_the_site_is(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_LOCALE="ru")
    client = app.test_client()
    client.get("/sofas")
    client.get("/cart")
    client.post("/form/callback", data={"name": "Gus", "phone": "+79120001127"})
    _lead, [note] = _deliver(app, fast_sandbox)
    assert re.search(r"^Путь: /sofas → /cart, \d с$", note, re.M)


def test_the_journey_cookie_stays_under_2_kb_after_100_pages(make_app: Any) -> None:
    app = _site(make_app, AMOCRM_JOURNEY_PAGES=30)
    client = app.test_client()
    longest = 0
    for n in range(100):
        tail = "x" * (n * 7 % 400)  # long paths are cut
        response = client.get(f"/p/{n}/{tail}?q={quote('диван ' * 20)}")
        [cookie] = [
            h for h in response.headers.getlist("Set-Cookie") if "amocrm_journey" in h
        ]
        longest = max(longest, len(cookie))
    assert longest < 2048
    client.post("/form/callback", data={"name": "Hal"})
    [event] = stored_events(app)
    pages = event.context["journey"]["pages"]
    assert 1 <= len(pages) <= 30
    assert pages[-1]["path"].startswith("/p/99/")
    assert event.context["journey"]["count"] == 100
    assert event.context["journey"]["landing"] in (None, "") or event.context[
        "journey"
    ]["landing"].startswith("/p/0/")


def test_a_forged_journey_cookie_is_ignored(make_app: Any) -> None:
    app = _site(make_app)
    client = app.test_client()
    value = {"s": 1, "t": 1, "l": "/evil", "r": "", "n": 1, "p": [["/evil", "", 0]]}
    forged = _signed("not the site", JOURNEY_SALT, value)
    # the same value signed by the site is read (so the test can fail)
    client.set_cookie("amocrm_journey", _signed("test", JOURNEY_SALT, value))
    client.post("/form/callback", data={"name": "Ida"})
    client.set_cookie("amocrm_journey", forged)
    client.post("/form/callback", data={"name": "Ida"})
    believed, forged_event = stored_events(app)
    assert believed.context["journey"]["pages"][0]["path"] == "/evil"
    assert "journey" not in forged_event.context


def test_an_idn_domain_and_a_cp1251_form_read_right(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)
    client = app.test_client()
    body = "name=" + quote("Иван Петров", encoding="cp1251") + "&phone=%2B79120001128"
    response = client.post(
        "/form/callback",
        data=body.encode("ascii"),
        content_type="application/x-www-form-urlencoded; charset=windows-1251",
        base_url="http://xn--80aswg.xn--p1ai/",
    )
    assert response.status_code == 200
    [event] = stored_events(app)
    assert event.data["name"] == "Иван Петров"
    assert event.context["site"]["domain"] == "сайт.рф"
    assert event.context["site"]["host"] == "xn--80aswg.xn--p1ai"
    lead, [note] = _deliver(app, fast_sandbox)
    assert lead["name"] == "Call from Иван Петров"
    assert "Came from сайт.рф" in note
    [contact] = fast_sandbox.contacts()
    assert contact["name"] == "Иван Петров"


def test_a_configured_form_encoding_reads_an_undeclared_form(make_app: Any) -> None:
    app = _site(make_app, AMOCRM_FORM_ENCODING="cp1251")
    client = app.test_client()
    body = "name=" + quote("Олег", encoding="cp1251")
    client.post(
        "/form/callback",
        data=body.encode("ascii"),
        content_type="application/x-www-form-urlencoded",
    )
    # a form that declares UTF-8 is read as UTF-8 still
    client.post("/form/callback", data={"name": "Юля"})
    assert [e.data["name"] for e in stored_events(app)] == ["Олег", "Юля"]


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"AMOCRM_AD_MARKS": ["utm_*", "bad mark"]}, "AMOCRM_AD_MARKS"),
        ({"AMOCRM_AD_MARKS": 5}, "AMOCRM_AD_MARKS"),
        ({"AMOCRM_FORM_ENCODING": "klingon-1"}, "AMOCRM_FORM_ENCODING"),
        ({"AMOCRM_JOURNEY_PAGES": -1}, "AMOCRM_JOURNEY_PAGES"),
        (
            {
                "AMOCRM_AD_MARKS": ["utm_*"],
                "AMOCRM_RULES": {"forms": {"a": {"tracking": {"partner": "X"}}}},
            },
            "forms.a.tracking.partner",
        ),
    ],
)
def test_bad_settings_fail_at_init_naming_the_key(
    make_app: Any, config: dict[str, Any], problem: str
) -> None:
    with pytest.raises(RuntimeError, match=problem.replace(".", r"\.")):
        make_app(**config)


def test_the_admin_page_shows_the_idn_domain_and_the_path(make_app: Any) -> None:
    app = _site(make_app, AMOCRM_ADMIN_AUTH=lambda: True)
    client = app.test_client()
    idn = "http://xn--80aswg.xn--p1ai/"
    client.get("/sofas", base_url=idn)
    client.get("/sofas/aurora", base_url=idn)
    # the admin pages are not part of the visitor's path
    assert client.get("/amocrm/admin/events", base_url=idn).status_code == 200
    client.post("/form/callback", data={"name": "Jo"}, base_url=idn)
    [event] = stored_events(app)
    assert [p["path"] for p in event.context["journey"]["pages"]] == [
        "/sofas",
        "/sofas/aurora",
    ]
    page = client.get(f"/amocrm/admin/events/{event.id}").get_data(as_text=True)
    assert "сайт.рф" in page and "xn--80aswg" not in page
    assert re.search(r"Path: /sofas → /sofas/aurora, \d s", page)


def test_openstat_is_split_into_its_marks(make_app: Any, fast_sandbox: Any) -> None:
    app = _site(make_app)
    client = app.test_client()
    openstat = base64.urlsafe_b64encode(b"direct.yandex.ru;4321;98765;site.ru").decode()
    client.get(f"/?_openstat={openstat.rstrip('=')}")
    client.get("/?_openstat=not-base64!")
    client.post("/form/callback", data={"name": "Lu", "phone": "+79120001130"})
    [event] = stored_events(app)
    assert event.context["utm_first"] == {
        "_openstat": openstat.rstrip("="),
        "openstat_service": "direct.yandex.ru",
        "openstat_campaign": "4321",
        "openstat_ad": "98765",
        "openstat_source": "site.ru",
    }
    assert event.context["utm"] == {"_openstat": "not-base64!"}
