"""A site puts the admin pages inside its own admin layout by overriding one
template, exactly as docs/admin.md shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flask import Flask

from flask_amocrm import AmoCRM

DOCS = Path(__file__).resolve().parent.parent / "docs" / "admin.md"

SITE_LAYOUT = """<!doctype html>
<html><head><title>{% block title %}{% endblock %} · Shop admin</title>
{% block head %}<meta name="site" content="shop">{% endblock %}</head>
<body><header id="site-header">Shop admin</header>{% block body %}{% endblock %}
<footer id="site-footer">© shop</footer></body></html>
"""


def _documented_override() -> str:
    """The override template as docs/admin.md gives it."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Inside the site's own admin layout", 1)[1]
    return re.search(r"```jinja\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def _site(tmp_path: Path, sandbox: Any) -> Flask:
    templates = tmp_path / "templates"
    (templates / "admin").mkdir(parents=True)
    (templates / "amocrm_admin").mkdir()
    (templates / "admin" / "layout.html").write_text(SITE_LAYOUT, encoding="utf-8")
    (templates / "amocrm_admin" / "base.html").write_text(
        _documented_override(), encoding="utf-8"
    )
    app = Flask("shop", template_folder=str(templates), instance_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="test",
        AMOCRM_BASE_URL=sandbox.url,
        AMOCRM_TOKEN=sandbox.token,
        AMOCRM_DATABASE_URI=f"sqlite:///{tmp_path}/events.sqlite3",
        AMOCRM_DELIVERY="deferred",
    )
    amocrm = AmoCRM(app)
    amocrm.admin_auth(lambda: True)
    return app


def test_the_pages_render_inside_the_sites_layout(
    tmp_path: Path, sandbox: Any, serve: Any, page: Any
) -> None:
    app = _site(tmp_path, sandbox)
    page.goto(f"{serve(app)}/amocrm/admin/events")
    assert page.locator("#site-header").inner_text() == "Shop admin"
    assert page.locator("#site-footer").is_visible()
    assert page.locator("meta[name=site]").count() == 1  # the site's head is kept
    assert page.locator(".am h1").inner_text() == "Events"
    assert page.title() == "Events · Shop admin"
    # the extension's styles apply inside the site's page: the menu is the dark bar
    background = page.locator(".am-top").evaluate(
        "e => getComputedStyle(e).backgroundColor"
    )
    assert background == "rgb(24, 32, 44)"
    nav = page.locator(".am-nav a").all_inner_texts()
    assert "Events" in nav and "Health" in nav
