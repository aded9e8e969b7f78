"""Hostile and careless input, through real HTTP to a running site, on SQLite and
PostgreSQL: no 500, every event delivered or failed with a stored reason, no other
event held up, no row or file beyond its cap."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
from typing import Any

import pytest
import requests
from flask import Flask, current_app, request

from flask_amocrm import Event, form_submitted
from flask_amocrm.models import DELIVERED, FAILED
from flask_amocrm.state import get_state
from flask_amocrm.worker.agent import process
from tests.conftest import CALLBACK_RULES
from tests.helpers.e2e import stored_events
from tests.helpers.http import serving

GOOD = {"name": "Good Customer", "phone": "+79161112233"}


def _site(make_app: Any, database_uri: str, **config: Any) -> Flask:
    config.setdefault("AMOCRM_RATE_LIMIT", 50)
    config.setdefault("AMOCRM_RULES", CALLBACK_RULES)
    app: Flask = make_app(AMOCRM_DATABASE_URI=database_uri, **config)

    @app.get("/")
    def landing() -> str:
        return "landing"

    @app.post("/form/<name>")
    def form(name: str) -> str:
        form_submitted.send(
            current_app._get_current_object(),
            form=name,
            data=request.form,
            files=request.files,
        )
        return "ok"

    @app.post("/api/<name>")
    def api(name: str) -> str:
        form_submitted.send(
            current_app._get_current_object(), form=name, data=request.get_json()
        )
        return "ok"

    return app


def _post_raw_then_good(app: Flask, body: str) -> tuple[int, int]:
    """POST ``body`` as a raw JSON request, then a good customer's form, over HTTP;
    the two status codes."""
    with serving(app) as base:
        bad = requests.post(
            f"{base}/api/callback",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        good = requests.post(f"{base}/api/callback", json=GOOD)
    return bad.status_code, good.status_code


def _deliver(app: Flask) -> dict[str, int]:
    with app.app_context():
        return process(get_state(app))


def _settled(app: Flask) -> list[Event]:
    """Every event, after asserting each is delivered or failed with its reason."""
    events = stored_events(app)
    for event in events:
        assert event.status in (DELIVERED, FAILED), (event.id, event.status)
        if event.status == FAILED:
            assert event.last_error, event.id
    return events


def _row_size(event: Event) -> int:
    return sum(
        len(json.dumps(part, ensure_ascii=False))
        for part in (event.data, event.files, event.context, event.log)
    )


def test_non_finite_numbers_are_stored_as_strings(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = _site(make_app, database_uri)
    body = '{"name": "Nan Person", "phone": "+79161112234", "n": NaN, "i": -Infinity}'
    assert _post_raw_then_good(app, body) == (200, 200)
    spool = os.path.join(app.instance_path, "amocrm-spool.jsonl")
    assert not os.path.exists(spool)  # stored, not spooled
    counts = _deliver(app)
    assert counts.get("delivered") == 2, counts
    first, second = _settled(app)
    assert first.data == {
        "name": "Nan Person",
        "phone": "+79161112234",
        "n": "NaN",
        "i": "-Infinity",
    }
    assert second.data == GOOD
    names = sorted(c["name"] for c in fast_sandbox.contacts())
    assert names == ["Good Customer", "Nan Person"]


def _deep_cookie() -> str:
    return base64.urlsafe_b64encode(b"[" * 1000).decode("ascii")


def test_a_deeply_nested_campaign_cookie_never_gives_a_500(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = _site(make_app, database_uri)
    cookies = {"amocrm_utm": _deep_cookie()}
    with serving(app) as base:
        pages = [
            requests.get(f"{base}/?utm_source=ads", cookies=cookies),
            requests.get(f"{base}/", cookies=cookies),
        ]
        post = requests.post(
            f"{base}/form/callback?utm_source=ads",
            data={"name": "Real Customer", "phone": "+79161112233"},
            cookies=cookies,
        )
    assert [p.status_code for p in pages] == [200, 200]
    assert post.status_code == 200
    [event] = stored_events(app)
    assert event.data == {"name": "Real Customer", "phone": "+79161112233"}
    assert event.context["utm"] == {"utm_source": "ads"}
    _deliver(app)
    [event] = _settled(app)
    assert event.status == DELIVERED
    [contact] = fast_sandbox.contacts()
    assert contact["name"] == "Real Customer"


def test_a_json_body_500_deep_keeps_the_visitors_data(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = _site(make_app, database_uri)
    deep = "[" * 500 + "]" * 500
    body = '{"name": "Deep Diver", "phone": "+79161112235", "x": ' + deep + "}"
    assert _post_raw_then_good(app, body)[0] == 200
    _deliver(app)
    first, second = _settled(app)
    assert first.data["name"] == "Deep Diver"
    assert first.data["phone"] == "+79161112235"
    assert "[[[" in json.dumps(first.data["x"])  # kept (deep down as text)
    assert any("nested deeper" in line for line in first.log)
    assert second.status == DELIVERED
    names = sorted(c["name"] for c in fast_sandbox.contacts())
    assert names == ["Deep Diver", "Good Customer"]


def test_lone_surrogates_are_cleaned_at_capture(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = _site(make_app, database_uri)
    body = '{"name": "Mal\\ud800lory", "phone": "+79161112236", "\\udfff": "k"}'
    assert _post_raw_then_good(app, body)[0] == 200
    _deliver(app)
    first, second = _settled(app)
    assert first.data["name"] == "Mal\ufffdlory"
    assert first.data["\ufffd"] == "k"
    assert (first.status, second.status) == (DELIVERED, DELIVERED)


def test_sizes_are_capped_per_value_and_per_event(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = _site(
        make_app,
        database_uri,
        AMOCRM_MAX_VALUE_LENGTH=10_000,
        AMOCRM_MAX_EVENT_SIZE=200_000,
    )
    many = {f"k{i}": "v" * 10 for i in range(100_000)}
    with serving(app) as base:
        big = requests.post(
            f"{base}/form/callback",
            data={"name": "Big Value", "phone": "+79161112237", "c": "x" * 2_000_000},
        )
        wide = requests.post(
            f"{base}/api/callback",
            json={"name": "Wide Event", "phone": "+79161112238", **many},
        )
        good = requests.post(f"{base}/form/callback", data=GOOD)
    assert [r.status_code for r in (big, wide, good)] == [200, 200, 200]
    _deliver(app)
    first, second, third = _settled(app)
    assert len(first.data["c"]) == 10_000
    assert any("data.c cut from 2000000 to 10000" in line for line in first.log)
    assert second.data["name"] == "Wide Event"
    assert _row_size(second) < 250_000
    assert any("left out" in line for line in second.log)
    assert [e.status for e in (first, second, third)] == [DELIVERED] * 3


def test_cookies_are_an_allow_list_and_csrf_token_is_not_data(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    rules = json.loads(json.dumps(CALLBACK_RULES))
    rules["forms"]["callback"]["lead"]["name"] = "Callback {{ cookies.partner_ref }}"
    app = _site(make_app, database_uri, AMOCRM_RULES=rules)
    private = {
        "sid": "s1",
        "connect.sid": "s2",
        "jwt": "eyJ.x.y",
        "wordpress_logged_in_abc": "wp",
        "api_key": "k",
        "bearer": "b",
        "access": "a",
        "user_id": "7",
    }
    public = {"_ga": "GA1.2.3", "_ym_uid": "17000", "partner_ref": "p42"}
    with serving(app) as base:
        response = requests.post(
            f"{base}/form/callback",
            data={**GOOD, "csrf_token": "IjQ2ZmZk.secret"},
            cookies={**private, **public},
        )
    assert response.status_code == 200
    [event] = stored_events(app)
    assert event.context["cookies"] == public
    assert event.data == GOOD
    _deliver(app)
    [lead] = fast_sandbox.leads()
    assert lead["name"] == "Callback p42"


def test_a_file_flood_is_bounded(
    make_app: Any, fast_sandbox: Any, database_uri: str, tmp_path: Any
) -> None:
    folder = tmp_path / "uploads"
    app = _site(
        make_app,
        database_uri,
        AMOCRM_UPLOAD_FOLDER=str(folder),
        AMOCRM_UPLOAD_URL="https://files.example.com/up",
        AMOCRM_UPLOAD_MAX_FILES=5,
        AMOCRM_UPLOAD_MAX_TOTAL=3000,
    )
    files = [("cv", (f"cv{i}.pdf", b"x" * 1000, "application/pdf")) for i in range(300)]
    with serving(app) as base:
        flood = requests.post(f"{base}/form/callback", data=GOOD, files=files)
        good = requests.post(f"{base}/form/callback", data=GOOD)
    assert (flood.status_code, good.status_code) == (200, 200)
    saved = [p for p in folder.rglob("*") if p.is_file()]
    assert len(saved) == 3  # the total size stops it before the count does
    assert sum(p.stat().st_size for p in saved) <= 3000
    flooded = stored_events(app)[0]
    assert len(flooded.files) <= 5 + 1
    assert sum(1 for f in flooded.files if f.get("url")) == 3
    assert any("not saved" in (f.get("error") or "") for f in flooded.files)
    _deliver(app)
    assert [e.status for e in _settled(app)] == [DELIVERED, DELIVERED]


def test_a_file_flood_saves_the_default_number_of_files(
    make_app: Any, fast_sandbox: Any, database_uri: str, tmp_path: Any
) -> None:
    folder = tmp_path / "uploads"
    app = _site(
        make_app,
        database_uri,
        AMOCRM_UPLOAD_FOLDER=str(folder),
        AMOCRM_UPLOAD_URL="https://files.example.com/up",
    )
    files = [("cv", (f"cv{i}.pdf", b"%PDF", "application/pdf")) for i in range(100)]
    with serving(app) as base:
        flood = requests.post(f"{base}/form/callback", data=GOOD, files=files)
    assert flood.status_code == 200
    assert len([p for p in folder.rglob("*") if p.is_file()]) == 10
    [event] = stored_events(app)
    assert len(event.files) == 11
    assert event.files[-1]["error"] == "90 more file(s) not saved"


def test_upload_links_never_take_the_visitors_host(
    make_app: Any, fast_sandbox: Any, database_uri: str, tmp_path: Any
) -> None:
    app = _site(
        make_app,
        database_uri,
        SERVER_NAME="shop.example",
        AMOCRM_UPLOAD_FOLDER=str(tmp_path / "uploads"),
        AMOCRM_UPLOAD_URL="/uploads",
    )
    app.url_map.host_matching = False
    with serving(app) as base:
        response = requests.post(
            f"{base}/form/callback",
            data=GOOD,
            files={"cv": ("cv.pdf", b"%PDF", "application/pdf")},
            headers={"Host": "shop.example"},
        )
        evil = requests.post(
            f"{base}/form/callback",
            data=GOOD,
            files={"cv": ("cv.pdf", b"%PDF", "application/pdf")},
            headers={"Host": "evil.example"},
        )
    assert response.status_code == 200
    assert evil.status_code in (200, 404)
    for event in stored_events(app):
        [entry] = event.files
        assert entry["url"].startswith("http://shop.example/uploads/")


def test_a_path_upload_url_without_server_name_is_refused(make_app: Any) -> None:
    with pytest.raises(RuntimeError, match="SERVER_NAME"):
        make_app(AMOCRM_UPLOAD_FOLDER="/tmp/x", AMOCRM_UPLOAD_URL="/uploads")


def test_dates_and_numbers_from_visitors_never_hold_others_up(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = _site(make_app, database_uri)
    body = (
        '{"name": "Odd Values", "phone": "+79161112239", "when": '
        '"0001-01-01T00:00:00+14:00", "big": 1' + "0" * 400 + "}"
    )
    with serving(app) as base:
        odd = requests.post(
            f"{base}/api/callback",
            data=body,
            headers={"Content-Type": "application/json; charset=latin-1"},
        )
        broken = requests.post(
            f"{base}/api/callback",
            data=b"\xff\xfe{not json",
            headers={"Content-Type": "application/json"},
        )
        good = requests.post(f"{base}/api/callback", json=GOOD)
    assert odd.status_code == 200
    assert broken.status_code < 500
    assert good.status_code == 200
    _deliver(app)
    events = _settled(app)
    assert events[-1].data == GOOD and events[-1].status == DELIVERED


def test_sqlite_capture_waits_well_under_a_second_then_spools(
    make_app: Any, fast_sandbox: Any, tmp_path: Any
) -> None:
    path = tmp_path / "locked.sqlite3"
    app = _site(make_app, f"sqlite:///{path}")
    with app.app_context():
        get_state(app).create_tables()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with serving(app) as base:
            started = time.monotonic()
            response = requests.post(f"{base}/form/callback", data=GOOD)
            waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 200
    assert waited < 1.0, waited
    assert stored_events(app) == []
    counts = _deliver(app)
    assert counts["spooled"] == 1 and counts.get("delivered") == 1, counts
    [event] = _settled(app)
    assert event.data == GOOD


def test_warnings_are_recorded_once_and_the_log_is_capped(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = _site(make_app, database_uri)
    with serving(app) as base:
        # a name over amoCRM's limit: the plan warns, with the full value
        requests.post(
            f"{base}/api/callback", json={"name": "N" * 300_000, "phone": "+7916111"}
        )
    fast_sandbox.faults(
        status=503, count=3, method="POST", path="/api/v4/leads/complex"
    )
    for _ in range(4):
        with app.app_context():
            state = get_state(app)
            with state.session() as session:
                event = session.get(Event, stored_events(app)[0].id)
                assert event is not None
                event.next_attempt_at = None
                session.commit()
        _deliver(app)
    [event] = stored_events(app)
    assert event.attempts == 4
    assert event.log, "the plan's warning is recorded"
    assert len(event.log) == len(set(event.log))
    from flask_amocrm.outbox import LOG_MAX_ENTRIES, LOG_MAX_LENGTH

    assert len(event.log) <= LOG_MAX_ENTRIES
    assert all(len(line) <= LOG_MAX_LENGTH for line in event.log)
