"""Helpers the end-to-end tests share: a site with forms, the events it stored, the
values of a field in what the sandbox holds."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request

from flask_amocrm import Event, form_submitted


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
