"""Pytest plugin: a real headless Chromium, and the site served over real HTTP.

Registered with ``pytest_plugins`` in ``tests/conftest.py``.

- ``browser`` (module): Debian's ``chromium`` driven by Playwright (its own browser
  download cannot be fetched here). One per test module: Playwright's sync API keeps
  an asyncio loop running in the main thread while it is open, which would break a
  later module's ``asyncio.run()``. Skipped, saying what is missing, where Playwright
  or ``chromium`` is not installed (``make test`` installs both where it may).
- ``page``: a fresh browser context and page; ``page_ru`` the same in Russian.
- ``serve(app)``: serves ``app`` on a free port in a thread (a real HTTP server: the
  browser cannot reach the Flask test client) and returns its base URL; stopped at
  the end of the test.
- ``shoot(page, name)``: a full-page screenshot in ``build/screenshots`` (or
  ``$AMOCRM_SCREENSHOTS``): the pictures in ``docs/admin.md`` are chosen from them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.helpers.http import serving

SCREENSHOTS = Path(
    os.environ.get("AMOCRM_SCREENSHOTS")
    or Path(__file__).resolve().parents[2] / "build" / "screenshots"
)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: pip install -e '.[test]'")
    executable = _chromium()
    if executable is None:
        pytest.skip(
            "chromium is not installed: apt-get install chromium (make test does "
            "it where it runs as root with apt)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser: Any, locale: str) -> Iterator[Any]:
    context = browser.new_context(
        locale=locale, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(15000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh context (its own cookies), in English."""
    yield from _page(browser, "en-US")


@pytest.fixture()
def page_ru(browser: Any) -> Iterator[Any]:
    """A page in a fresh context whose browser asks for Russian."""
    yield from _page(browser, "ru-RU")


def _close_when_written(app: Any) -> Any:
    """``app``, whose responses are closed as soon as their body is written.

    werkzeug's development server calls a response's ``close()`` only after it has
    drained the request socket, and a client that resets the connection then (a
    browser following a redirect) makes that drain raise first: the response is
    never closed, and Flask's ``call_on_close`` work (delivery after the response)
    never runs. Production servers close every response; this makes the test server
    do the same."""

    def closing(environ: Any, start_response: Any) -> Any:
        inner = app(environ, start_response)
        try:
            yield from inner
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()

    return closing


@pytest.fixture()
def serve() -> Iterator[Callable[[Flask], str]]:
    with ExitStack() as servers:

        def start(app: Flask) -> str:
            return servers.enter_context(serving(_close_when_written(app)))

        yield start


def shoot(page: Any, name: str) -> Path:
    """Save a full-page screenshot of ``page`` as ``name``.png; return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
