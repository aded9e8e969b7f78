"""Fixtures and helpers shared by the ``test_client_*`` modules (no tests here).

A pytest plugin (``pytest_plugins`` in ``tests/conftest.py``). The client's tests use
the ``redis14`` fixture (``tests/conftest.py``: database 14, flushed around each test)
and build apps against the session's sandbox.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.helpers.process import child_env

OAUTH = {
    "AMOCRM_TOKEN": None,
    "AMOCRM_CLIENT_ID": "sandbox-client",
    "AMOCRM_CLIENT_SECRET": "sandbox-secret",
    "AMOCRM_REDIRECT_URI": "http://localhost/amocrm/admin/oauth/callback",
}


def app_config(sandbox: Any, db_path: str, **config: Any) -> dict[str, Any]:
    """The config of a test app on the sandbox (JSON-safe, for subprocesses too)."""
    base = {
        "TESTING": True,
        "SECRET_KEY": "test",
        "AMOCRM_BASE_URL": sandbox.url,
        "AMOCRM_TOKEN": sandbox.token,
        "AMOCRM_DELIVERY": "deferred",
        "AMOCRM_DATABASE_URI": f"sqlite:///{db_path}",
    }
    base.update(config)
    return base


def build_app(config: dict[str, Any], instance: str) -> Flask:
    """A Flask app with Flask-AmoCRM from ``config``."""
    from flask_amocrm import AmoCRM

    app = Flask("client_site", instance_path=instance)
    app.config.update(config)
    AmoCRM(app)
    return app


@pytest.fixture()
def amo_app(sandbox: Any, tmp_path: Any) -> Callable[..., Flask]:
    """``amo_app(**config)``: an app on the reset sandbox (long-lived token). Each
    app has its own client and limiter: a 429 in one test never slows the next."""

    def factory(**config: Any) -> Flask:
        return build_app(
            app_config(sandbox, str(tmp_path / "events.sqlite3"), **config),
            str(tmp_path / "instance"),
        )

    return factory


def fast(client: Any) -> Any:
    """Shorten a client's back-off so retry tests stay quick."""
    client.backoff = 0.01
    client.rate_limit_backoff = 0.05
    return client


CHILD = r"""
import json, sys, time
from tests.helpers.client import build_app
from flask_amocrm.amo import client_for
from flask_amocrm.state import get_state
spec = json.loads(sys.argv[1])
app = build_app(spec["config"], spec["instance"])
with app.app_context():
    client = client_for(get_state())
    delay = spec["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    results = []
    for _ in range(spec["calls"]):
        try:
            client.get(spec["path"])
            results.append("ok")
        except Exception as exc:
            results.append(type(exc).__name__ + ": " + str(exc))
print(json.dumps(results))
"""


def run_children(
    config: dict[str, Any],
    instance: str,
    *,
    processes: int,
    calls: int,
    path: str = "/api/v4/account",
    start_in: float = 1.5,
    meanwhile: Callable[[float], None] | None = None,
) -> list[list[str]]:
    """Run ``processes`` real Python processes that each build the app and make
    ``calls`` GETs, all starting at the same moment; return their results.
    ``meanwhile(start_at)`` runs while they do (``start_at``: ``time.time()`` of
    their start)."""
    spec = {
        "config": config,
        "instance": instance,
        "calls": calls,
        "path": path,
        "start_at": time.time() + start_in,
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for _ in range(processes)
    ]
    if meanwhile is not None:
        meanwhile(spec["start_at"])
    results = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def max_per_second(times: list[float]) -> int:
    """The most requests in any window of one second."""
    times = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def busiest_second(log: list[dict[str, Any]]) -> int:
    """The most of these sandbox requests counted in any one second (when they
    arrived), once it is checked that the sandbox answered every one of them: never
    a 429 or 403."""
    assert {r["status"] for r in log} == {200}, sorted({r["status"] for r in log})
    return max_per_second([r["received"] for r in log])
