"""Helpers the end-to-end tests share: a site with forms, the events it stored, the
values of a field in what the sandbox holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, request

from flask_amocrm import Event, form_submitted
from flask_amocrm.amo import client_for
from flask_amocrm.state import get_state
from flask_amocrm.worker import index

#: How duplicate tests run: searching amoCRM (the contact index off), and with a
#: complete contact index.
INDEX_MODES = ("search", "index")

#: A callback form that makes a contact, a lead with a note and a task: three calls
#: a batch, one after the other.
CALLBACK_NOTE_TASK: dict[str, Any] = {
    "forms": {
        "callback": {
            "contact": {
                "name": "{{ data.name }}",
                "fields": {"PHONE": "{{ data.phone }}"},
            },
            "lead": {
                "name": "Callback: {{ data.name }}",
                "note": "Called from the site",
            },
            "task": {"text": "Call {{ data.name }} back", "deadline": "+1h"},
        }
    }
}


def form_site(make_app: Any, rules: dict[str, Any] | str, **config: Any) -> Flask:
    """An app with ``rules`` whose ``POST /form/<id>`` sends ``form_submitted``
    (files included); the client's own rate limit is lifted, as the sandbox's is by
    the ``fast_sandbox`` fixture."""
    config.setdefault("AMOCRM_RATE_LIMIT", 50)
    app: Flask = make_app(AMOCRM_RULES=rules, **config)

    @app.post("/form/<name>")
    def form(name: str) -> str:
        form_submitted.send(
            current_app._get_current_object(),
            form=name,
            data=request.form,
            files=request.files,
        )
        return "ok"

    return app


def stored_events(app: Flask) -> list[Event]:
    """Every event ``app`` stored, oldest first."""
    with app.app_context(), app.extensions["amocrm"].session() as session:
        return list(session.query(Event).order_by(Event.id))


def field_values(entity: dict[str, Any], name: str) -> list[Any]:
    """The values of the field called ``name`` (its name or code) of an entity as the
    sandbox holds it; ``[]`` when it has none."""
    for item in entity.get("custom_fields_values") or []:
        if name in (item.get("field_name"), item.get("field_code")):
            return [v.get("value") for v in item["values"]]
    return []


def fill_index(app: Flask) -> int:
    """Fill ``app``'s contact index to the end, as the ticks would; the pages read."""
    with app.app_context():
        state = get_state(app)
        client = client_for(state)
        pages = 0
        while index.complete_since(state) is None:
            pages += index.fill_step(state, client)
        return pages


def index_mode(make_app: Callable[..., Flask], mode: str) -> Callable[..., Flask]:
    """``make_app`` for one of :data:`INDEX_MODES`: ``search`` sets
    ``AMOCRM_INDEX_INTERVAL = 0``; ``index`` fills the app's index when it is made
    (from what the sandbox holds then)."""

    def factory(**config: Any) -> Flask:
        if mode == "search":
            config.setdefault("AMOCRM_INDEX_INTERVAL", 0)
        app = make_app(**config)
        if mode == "index":
            fill_index(app)
        return app

    return factory
