"""A test site whose forms post to ``/form/<id>`` and send ``form_submitted``."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request

from flask_amocrm import form_submitted


def form_site(make_app: Any, rules: dict[str, Any], **config: Any) -> Flask:
    """An app with ``rules`` whose ``POST /form/<id>`` sends ``form_submitted``
    (files included); the client's own rate limit is lifted, as the sandbox's is by
    the ``fast_sandbox`` fixture."""
    config.setdefault("AMOCRM_RATE_LIMIT", 50)
    app: Flask = make_app(AMOCRM_RULES=rules, **config)

    @app.post("/form/<name>")
    def form(name: str) -> str:
        form_submitted.send(current_app._get_current_object(), form=name,
                            data=request.form, files=request.files)
        return "ok"

    return app
