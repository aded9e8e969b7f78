"""Registering the extension: configuration, errors that name the key, several apps."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import inspect

from flask_amocrm import AmoCRM, Event


def _app(tmp_path: Any, **config: Any) -> Flask:
    app = Flask("site", instance_path=str(tmp_path))
    app.config.update(AMOCRM_BASE_URL="https://example.amocrm.ru", AMOCRM_TOKEN="t")
    app.config.update(config)
    return app


def test_second_registration_is_refused(tmp_path: Any) -> None:
    app = _app(tmp_path)
    AmoCRM(app)
    with pytest.raises(RuntimeError, match="already been registered.*Import and use"):
        AmoCRM(app)


def test_factory_style_keeps_no_app(tmp_path: Any) -> None:
    amocrm = AmoCRM()
    app = _app(tmp_path)
    amocrm.init_app(app)
    assert app.extensions["amocrm"].extension is amocrm
    assert not any(isinstance(v, Flask) for v in vars(amocrm).values())
    assert app.config["AMOCRM_QUEUE"] == "amocrm"
    assert app.config["AMOCRM_RATE_LIMIT"] == 7


@pytest.mark.parametrize(
    ("config", "key", "words"),
    [
        ({"AMOCRM_BASE_URL": None}, "AMOCRM_BASE_URL", "is not set"),
        ({"AMOCRM_BASE_URL": "ftp://x"}, "AMOCRM_BASE_URL", "http"),
        ({"AMOCRM_BASE_URL": "http://example.amocrm.ru"}, "AMOCRM_BASE_URL", "https"),
        ({"AMOCRM_BASE_URL": "https://www.amocrm.ru"}, "AMOCRM_BASE_URL", "not www"),
        ({"AMOCRM_BASE_URL": "https://a.amocrm.ru/api/v4"}, "AMOCRM_BASE_URL", "path"),
        ({"AMOCRM_TOKEN": None}, "AMOCRM_TOKEN", "is not set"),
        ({"AMOCRM_CLIENT_ID": "id"}, "AMOCRM_TOKEN", "not both"),
        (
            {"AMOCRM_TOKEN": None, "AMOCRM_CLIENT_ID": "id"},
            "AMOCRM_CLIENT_SECRET",
            "required",
        ),
        ({"AMOCRM_DELIVERY": "rq"}, "AMOCRM_DELIVERY", "AMOCRM_REDIS_URL is not set"),
        ({"AMOCRM_DELIVERY": "later"}, "AMOCRM_DELIVERY", "must be one of"),
        ({"AMOCRM_REDIS_URL": "localhost:6379"}, "AMOCRM_REDIS_URL", "redis://"),
        ({"AMOCRM_RATE_LIMIT": 0}, "AMOCRM_RATE_LIMIT", "above 0"),
        ({"AMOCRM_BATCH_SIZE": "many"}, "AMOCRM_BATCH_SIZE", "whole number"),
        (
            {"AMOCRM_ADMIN_EMAILS": ["a@b.c\r\nBcc: x@y.z"]},
            "AMOCRM_ADMIN_EMAILS",
            "invalid address",
        ),
        ({"AMOCRM_RULEZ": {}}, "AMOCRM_RULEZ", "not a Flask-AmoCRM setting"),
        ({"AMOCRM_RULES": "/nonexistent/rules.toml"}, "AMOCRM_RULES", "cannot be read"),
        (
            {"AMOCRM_RULES": {"forms": {"callback": {"lead": {"nmae": "x"}}}}},
            "forms.callback.lead.nmae",
            "not a setting of lead",
        ),
        ({"AMOCRM_RULES": {"form": {}}}, "AMOCRM_RULES: form", "not a section"),
    ],
)
def test_bad_config_fails_at_init_naming_the_key(
    tmp_path: Any, config: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(RuntimeError) as info:
        AmoCRM(_app(tmp_path, **config))
    assert key in str(info.value)
    assert words in str(info.value)


def test_delivery_defaults_follow_redis(tmp_path: Any) -> None:
    app = _app(tmp_path)
    AmoCRM(app)
    assert app.extensions["amocrm"].settings.delivery == "inline"
    app2 = _app(tmp_path, AMOCRM_REDIS_URL="redis://127.0.0.1:6379/15")
    AmoCRM(app2)
    assert app2.extensions["amocrm"].settings.delivery == "rq"


def test_rules_load_from_toml_file(tmp_path: Any) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[forms.callback.lead]\nname = "Call {{ data.name }}"\n')
    app = _app(tmp_path, AMOCRM_RULES=str(path))
    AmoCRM(app)
    rules = app.extensions["amocrm"].settings.rules
    assert rules["forms"]["callback"]["lead"]["name"] == "Call {{ data.name }}"


def test_embedded_sqlite_lives_in_the_instance_folder(tmp_path: Any) -> None:
    app = _app(tmp_path, AMOCRM_DELIVERY="deferred")
    amocrm = AmoCRM(app)
    with app.test_request_context("/"):
        event = amocrm.submit("callback", {"name": "Ann"})
    assert event is not None
    assert (tmp_path / "amocrm.sqlite3").exists()


def test_two_apps_do_not_see_each_others_events(make_app: Any) -> None:
    first, second = make_app(), make_app()
    with first.test_request_context("/"):
        first.extensions["amocrm"].extension.submit("callback", {"name": "One"})
    with second.test_request_context("/"):
        second.extensions["amocrm"].extension.submit("callback", {"name": "Two"})
        second.extensions["amocrm"].extension.submit("callback", {"name": "Three"})
    for app, names in ((first, ["One"]), (second, ["Two", "Three"])):
        with app.app_context(), app.extensions["amocrm"].session() as session:
            stored = [e.data["name"] for e in session.query(Event).order_by(Event.id)]
        assert stored == names


def test_shared_flask_sqlalchemy_db(tmp_path: Any, database_uri: str) -> None:
    from flask_sqlalchemy import SQLAlchemy

    db = SQLAlchemy()
    app = _app(
        tmp_path, SQLALCHEMY_DATABASE_URI=database_uri, AMOCRM_DELIVERY="deferred"
    )
    db.init_app(app)
    AmoCRM(app, db=db)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["amocrm", "init-db"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        tables = set(inspect(db.engine).get_table_names())
        assert {"amocrm_events", "amocrm_event_attempts"} <= tables
        assert all(t.startswith("amocrm_") for t in tables)
        # the app's own metadata knows them, so db.create_all() / migrations see them
        assert "amocrm_events" in db.metadata.tables
    with app.test_request_context("/"):
        event = app.extensions["amocrm"].extension.submit("callback", {"name": "Db"})
    assert event is not None
    with app.app_context():
        assert db.session.get(Event, event.id).data == {"name": "Db"}
        db.session.remove()
        db.engine.dispose()


def test_uploads_that_would_run_as_pages_are_refused_in_config(tmp_path: Any) -> None:
    app = _app(
        tmp_path,
        AMOCRM_UPLOAD_FOLDER=str(tmp_path),
        AMOCRM_UPLOAD_URL="/up",
        SERVER_NAME="localhost",
        AMOCRM_UPLOAD_EXTENSIONS=["pdf", "SVG"],
    )
    with pytest.raises(RuntimeError, match="AMOCRM_UPLOAD_EXTENSIONS lists .svg"):
        AmoCRM(app)


def test_a_relative_rules_path_is_taken_from_the_app_root(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rules.json").write_text('{"forms": {"callback": {}}}')
    monkeypatch.chdir("/")  # a worker started from elsewhere
    app = Flask("site", root_path=str(tmp_path), instance_path=str(tmp_path))
    app.config.update(
        AMOCRM_BASE_URL="https://example.amocrm.ru",
        AMOCRM_TOKEN="t",
        AMOCRM_RULES="rules.json",
    )
    AmoCRM(app)
    assert app.extensions["amocrm"].settings.rules == {"forms": {"callback": {}}}
