"""Shared fixtures: a real Redis, a real database, the sandbox over real HTTP."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import create_engine, text

sys.path.insert(0, os.path.dirname(__file__))

pytest_plugins = ["sandbox_fixtures", "client_support"]

REDIS_URL = os.environ.get("AMOCRM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "AMOCRM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

#: The rule most tests use: a callback form becomes a lead with its contact.
CALLBACK_RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "contact": {
                "name": "{{ data.name }}",
                "fields": {
                    "PHONE": "{{ data.phone }}",
                    "EMAIL": "{{ data.email | default('') }}",
                },
            },
            "lead": {"name": "Callback: {{ data.name }}", "tags": ["site"]},
        }
    }
}


@pytest.fixture(scope="session")
def redis_url() -> str:
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        conn.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis does not answer at {REDIS_URL}: 'make test' starts one.")
    finally:
        conn.close()
    return REDIS_URL


@pytest.fixture()
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


def _postgres_available() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return (
            f"PostgreSQL is not available at {POSTGRES_URL}: {exc.__class__.__name__}"
        )
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def database_uri(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """Each test using it runs on SQLite and on PostgreSQL (skipped, with the reason,
    where PostgreSQL does not answer)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/events.sqlite3"
        return
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    from flask_amocrm.models import metadata

    engine = create_engine(POSTGRES_URL)
    metadata.drop_all(engine)
    yield POSTGRES_URL
    metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture()
def make_app(
    tmp_path: Any, sandbox: Any, request: pytest.FixtureRequest
) -> Callable[..., Flask]:
    """Build a Flask app using Flask-AmoCRM against the sandbox; keyword arguments are
    config keys (``AMOCRM_DELIVERY="inline"``)."""
    from flask_amocrm import AmoCRM

    counter = iter(range(1000))

    def factory(*, db: Any = None, **config: Any) -> Flask:
        n = next(counter)
        app = Flask(f"site{n}", instance_path=str(tmp_path / f"instance{n}"))
        app.config.update(
            TESTING=True,
            SECRET_KEY="test",
            AMOCRM_BASE_URL=sandbox.url,
            AMOCRM_TOKEN=sandbox.token,
            AMOCRM_RULES=CALLBACK_RULES,
            AMOCRM_DELIVERY="deferred",
            AMOCRM_DATABASE_URI=f"sqlite:///{tmp_path}/events{n}.sqlite3",
        )
        app.config.update(config)
        AmoCRM(app, db=db)
        return app

    return factory


@pytest.fixture()
def fast_sandbox(sandbox: Any) -> Any:
    """The sandbox without its rate limit (for tests about rules, not the limit)."""
    sandbox.config(rate_limit=0)
    return sandbox
