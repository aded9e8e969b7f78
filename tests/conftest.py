"""Shared fixtures: a real Redis, a real database, the sandbox over real HTTP.

Redis: the session starts its own ``redis-server`` on a free port (databases 15 and
14 for ``redis_url`` and ``redis14``) unless ``AMOCRM_TEST_REDIS_URL`` and
``AMOCRM_TEST_CLIENT_REDIS_URL`` name databases the tests may flush.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import create_engine, text

from tests.helpers.redis_server import RedisServer, RedisServerError

pytest_plugins = [
    "tests.helpers.sandbox",
    "tests.helpers.client",
    "tests.helpers.browser",
]

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
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>`` of a ``redis-server`` this session starts on a
    free port, and stops at its end. Only used where an ``AMOCRM_TEST_*REDIS_URL``
    variable does not name a Redis to use instead."""
    server = RedisServer(tmp_path_factory.mktemp("redis-server"))
    problem = None
    try:
        server.start()
    except RedisServerError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield server.url
    finally:
        server.stop()


def _redis_url(request: pytest.FixtureRequest, variable: str, db: int) -> str:
    """The Redis URL in ``variable``, else database ``db`` of the session's own
    server; fails the test when it does not answer."""
    url = os.environ.get(variable) or f"{request.getfixturevalue('redis_server')}/{db}"
    conn = redis.Redis.from_url(url)
    try:
        conn.ping()
        answers = True
    except redis.ConnectionError:
        answers = False
    finally:
        conn.close()
    if not answers:
        pytest.fail(f"Redis does not answer at {url} ({variable}).", pytrace=False)
    return url


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """Database 15 of the session's own Redis, or ``AMOCRM_TEST_REDIS_URL``."""
    return _redis_url(request, "AMOCRM_TEST_REDIS_URL", 15)


@pytest.fixture(scope="session")
def client_redis_url(request: pytest.FixtureRequest) -> str:
    """Database 14 of the session's own Redis, or ``AMOCRM_TEST_CLIENT_REDIS_URL``;
    the ``test_client_*`` modules' keys live there."""
    return _redis_url(request, "AMOCRM_TEST_CLIENT_REDIS_URL", 14)


@pytest.fixture()
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    """A connection to ``redis_url``, its database flushed before and after."""
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture()
def redis14(client_redis_url: str) -> Iterator[str]:
    """``client_redis_url``, its database empty, for the client's keys."""
    conn = redis.Redis.from_url(client_redis_url)
    conn.flushdb()
    yield client_redis_url
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
    engine = create_engine(POSTGRES_URL)
    drop_tables(engine)
    yield POSTGRES_URL
    drop_tables(engine)
    engine.dispose()


def drop_tables(engine: Any) -> None:
    """Drop the ``amocrm_*`` tables and the revision they were stamped with."""
    from flask_amocrm.migrations import VERSION_TABLE
    from flask_amocrm.models import metadata

    metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))


@pytest.fixture()
def make_app(
    tmp_path: Any, sandbox: Any, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Flask]]:
    """Build a Flask app using Flask-AmoCRM against the sandbox; keyword arguments are
    config keys (``AMOCRM_DELIVERY="inline"``). Their database connections are
    closed at the end of the test."""
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
        apps.append(app)
        return app

    apps: list[Flask] = []
    yield factory
    for app in apps:
        state = app.extensions.get("amocrm")
        if state is not None:
            state.dispose()


@pytest.fixture()
def fast_sandbox(sandbox: Any) -> Any:
    """The sandbox without its rate limit (for tests about rules, not the limit)."""
    sandbox.config(rate_limit=0)
    return sandbox
