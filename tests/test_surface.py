"""The surface a site owner and an admin touch: admin auth and OAuth views, the base
URL checks, settings from the environment, the CLI's messages, the sandbox's control
endpoints, the packaging metadata, the docs and ``make demo`` (issue 11: items 14,
18, 20, 25, 28, 30, 31)."""

from __future__ import annotations

import configparser
import logging
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import requests
from flask import Flask
from packaging.requirements import Requirement

from flask_amocrm import AmoCRM, Event
from flask_amocrm.models import utcnow
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from tests.helpers.admin import allow_access, start_connect
from tests.helpers.client import OAUTH
from tests.helpers.process import child_env

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- item 14: admin auth, OAuth state and referer -------------------------------------


class _User:
    def is_admin(self) -> bool:
        return False


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(lambda: _User().is_admin, id="a bound method, not called"),
        pytest.param(lambda: "no", id="a non-empty string"),
        pytest.param(lambda: 1, id="the number 1"),
    ],
)
def test_admin_admits_only_a_hook_returning_true(amo_app: Any, hook: Any) -> None:
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=hook)
    client = app.test_client()
    assert client.get("/amocrm/admin/connect").status_code == 403
    assert client.get("/amocrm/admin/oauth/callback?code=x&state=y").status_code == 403


def test_a_non_ascii_state_is_a_clear_400(amo_app: Any) -> None:
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=lambda: True)
    client = app.test_client()
    start_connect(client)
    answer = client.get("/amocrm/admin/oauth/callback?code=x&state=%D1%8F%D1%8F")
    assert answer.status_code == 400
    assert b"state" in answer.data


def test_a_second_connect_page_keeps_the_first_connect_working(
    sandbox: Any, amo_app: Any
) -> None:
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=lambda: True)
    client = app.test_client()
    first = start_connect(client)
    # another connect started meanwhile (another tab)
    assert start_connect(client).status_code == 302
    done = client.get(allow_access(sandbox, first.location))
    assert done.status_code == 200 and b"connected" in done.data
    # the state is spent: the same callback again is refused
    assert client.get(allow_access(sandbox, first.location)).status_code == 400


def test_the_oauth_referer_cannot_forge_log_lines(
    amo_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=lambda: True)
    client = app.test_client()
    start = start_connect(client)
    state = parse_qs(urlsplit(start.location).query)["state"][0]
    client.get(
        "/amocrm/admin/oauth/callback",
        query_string={
            "code": "bad-code",
            "state": state,
            "referer": "evil.example\r\nFAKE LOG LINE",
        },
    )
    messages = [r.getMessage() for r in caplog.records]
    assert any("evil.example" in m for m in messages)
    assert not any("\n" in m or "\r" in m for m in messages)


# -- item 18: the base URL ------------------------------------------------------------


def _bare_app(tmp_path: Any, **config: Any) -> Flask:
    app = Flask("site", instance_path=str(tmp_path))
    app.config.update(AMOCRM_TOKEN="t", AMOCRM_DELIVERY="deferred")
    app.config.update(config)
    return app


@pytest.mark.parametrize(
    "url",
    [
        "http://example.amocrm.ru.",
        "http://example.amocrm.ru.:80",
        "http://example.kommo.com.",
        "http://EXAMPLE.AMOCRM.RU",
    ],
)
def test_https_check_has_no_trailing_dot_bypass(tmp_path: Any, url: str) -> None:
    with pytest.raises(RuntimeError, match="AMOCRM_BASE_URL must use https"):
        AmoCRM(_bare_app(tmp_path, AMOCRM_BASE_URL=url))


def test_a_trailing_dot_on_an_https_account_is_dropped(tmp_path: Any) -> None:
    app = _bare_app(tmp_path, AMOCRM_BASE_URL="https://example.amocrm.ru.")
    AmoCRM(app)
    assert get_state(app).settings.base_url == "https://example.amocrm.ru"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "AMOCRM_BASE_URL" in r.getMessage()
    ]


def test_production_app_on_a_loopback_url_is_warned(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    AmoCRM(_bare_app(tmp_path / "a", AMOCRM_BASE_URL="http://127.0.0.1:8089"))
    assert len(_warnings(caplog)) == 1
    caplog.clear()
    AmoCRM(_bare_app(tmp_path / "b", AMOCRM_BASE_URL="http://localhost:8089"))
    assert len(_warnings(caplog)) == 1
    caplog.clear()
    for config in ({"TESTING": True}, {"DEBUG": True}):
        AmoCRM(
            _bare_app(tmp_path / "c", AMOCRM_BASE_URL="http://127.0.0.1:1", **config)
        )
    AmoCRM(_bare_app(tmp_path / "d", AMOCRM_BASE_URL="https://example.amocrm.ru"))
    assert _warnings(caplog) == []


# -- item 20: the sandbox's control endpoints -----------------------------------------


def test_sandbox_control_refuses_form_posts_and_foreign_hosts(sandbox: Any) -> None:
    sandbox.config(latency_ms=1)
    # a web page's cross-origin form post
    answer = requests.post(
        sandbox.url + "/_sandbox/reset",
        data={"x": "1"},
        headers={"Origin": "http://evil.example"},
        timeout=5,
    )
    assert answer.status_code == 415
    answer = requests.post(sandbox.url + "/_sandbox/reset", timeout=5)
    assert answer.status_code == 415
    assert sandbox.config()["latency_ms"] == 1  # nothing was reset
    # DNS rebinding: the browser sends the attacker's host name
    for method, path in (
        ("GET", "/_sandbox/state"),
        ("POST", "/_sandbox/oauth/code"),
        ("POST", "/_sandbox/reset"),
    ):
        answer = requests.request(
            method,
            sandbox.url + path,
            json={},
            headers={"Host": "attacker.example"},
            timeout=5,
        )
        assert answer.status_code == 403, path
    assert sandbox.config()["latency_ms"] == 1
    # the sandbox's own clients go on working
    port = urlsplit(sandbox.url).port
    ok = requests.get(
        sandbox.url + "/_sandbox/config", headers={"Host": f"localhost:{port}"}
    )
    assert ok.status_code == 200
    sandbox.reset()
    assert sandbox.config()["latency_ms"] == 0


# -- item 25: dependency floors -------------------------------------------------------


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def test_dependency_floors_exclude_versions_with_advisories() -> None:
    requirements = {
        (r := Requirement(line)).name.lower(): r
        for line in _setup_cfg()["options"]["install_requires"].strip().splitlines()
    }
    # Public advisories: Werkzeug < 3.0.6 (CVE-2024-49767, multipart exhaustion),
    # requests < 2.32.4 (CVE-2024-47081), Jinja2 < 3.1.6 (CVE-2025-27516).
    refused = {"werkzeug": "3.0.5", "requests": "2.32.3", "jinja2": "3.1.5"}
    for name, version in refused.items():
        assert name in requirements, name
        assert not requirements[name].specifier.contains(version), name
    # The build: setuptools < 78.1.1 (CVE-2024-6345, CVE-2025-47273); 77 is also the
    # first to read the SPDX `license` expression setup.cfg gives.
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as fp:
        build = [Requirement(r) for r in tomllib.load(fp)["build-system"]["requires"]]
    [setuptools] = [r for r in build if r.name == "setuptools"]
    assert not setuptools.specifier.contains("78.1.0")
    from importlib.metadata import version as installed

    for name, requirement in requirements.items():
        assert requirement.specifier.contains(installed(name)), name


# -- item 28: settings from the environment -------------------------------------------


def test_numbers_and_booleans_from_the_environment_are_read(tmp_path: Any) -> None:
    app = _bare_app(
        tmp_path,
        AMOCRM_BASE_URL="https://example.amocrm.ru",
        AMOCRM_RATE_LIMIT="5",
        AMOCRM_TIMEOUT="2.5",
        AMOCRM_BATCH_SIZE=" 10 ",
        AMOCRM_LOG_REQUESTS="0",
    )
    AmoCRM(app)
    settings = get_state(app).settings
    assert settings.rate_limit == 5.0
    assert settings.timeout == 2.5
    assert settings.batch_size == 10
    assert settings.log_requests is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AMOCRM_RATE_LIMIT", "fast"),
        ("AMOCRM_RATE_LIMIT", "nan"),
        ("AMOCRM_TIMEOUT", "inf"),
        ("AMOCRM_TIMEOUT", "-1"),
        ("AMOCRM_LOG_REQUESTS", "maybe"),
    ],
)
def test_a_bad_setting_string_fails_naming_the_key(
    tmp_path: Any, key: str, value: str
) -> None:
    app = _bare_app(tmp_path, AMOCRM_BASE_URL="https://example.amocrm.ru")
    app.config[key] = value
    with pytest.raises(RuntimeError, match=key):
        AmoCRM(app)


def test_example_app_starts_with_numbers_from_the_environment(
    sandbox: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from example_app.site import create_app

    for name in list(os.environ):
        if name.startswith("AMOCRM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AMOCRM_BASE_URL", sandbox.url)
    monkeypatch.setenv("AMOCRM_TOKEN", sandbox.token)
    monkeypatch.setenv("AMOCRM_DELIVERY", "deferred")
    monkeypatch.setenv("AMOCRM_RATE_LIMIT", "5")
    monkeypatch.setenv("AMOCRM_TIMEOUT", "2.5")
    monkeypatch.setenv("AMOCRM_LOG_REQUESTS", "false")
    monkeypatch.setenv("EXAMPLE_INSTANCE_PATH", str(tmp_path))
    app = create_app()
    settings = get_state(app).settings
    assert (settings.rate_limit, settings.timeout) == (5.0, 2.5)
    assert settings.log_requests is False


# -- item 30: the CLI's messages ------------------------------------------------------


def _one_clear_line(result: Any) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_status_before_the_tables_exist_says_so(
    tmp_path: Any, database_uri: str
) -> None:
    from flask_sqlalchemy import SQLAlchemy

    db = SQLAlchemy()
    app = _bare_app(
        tmp_path,
        AMOCRM_BASE_URL="https://example.amocrm.ru",
        SQLALCHEMY_DATABASE_URI=database_uri,
    )
    db.init_app(app)
    AmoCRM(app, db=db)
    try:
        result = app.test_cli_runner().invoke(args=["amocrm", "status"])
        assert "init-db" in _one_clear_line(result)
    finally:
        with app.app_context():
            db.engine.dispose()


def test_worker_with_redis_down_says_so(make_app: Any) -> None:
    app = make_app(
        AMOCRM_REDIS_URL=f"redis://:secret-pw@127.0.0.1:{_free_port()}/0",
        AMOCRM_DELIVERY="rq",
    )
    result = app.test_cli_runner().invoke(args=["amocrm", "worker", "--burst"])
    line = _one_clear_line(result)
    assert "Redis" in line and "secret-pw" not in line


def test_process_prints_readable_lines(make_app: Any, fast_sandbox: Any) -> None:
    app = make_app(AMOCRM_RATE_LIMIT=50)
    with app.test_request_context("/"):
        app.extensions["amocrm"].extension.submit(
            "callback", {"name": "Ann", "phone": "+79161112233"}
        )
    result = app.test_cli_runner().invoke(args=["amocrm", "process"])
    assert result.exit_code == 0, result.output
    assert "{" not in result.output
    assert "delivered: 1" in result.output.splitlines()


def test_status_lists_failed_and_stuck_events_without_personal_data(
    make_app: Any, fast_sandbox: Any
) -> None:
    rules = {"forms": {"callback": {"lead": {"name": "{{ data.name.nope.x }}"}}}}
    app = make_app(AMOCRM_RULES=rules, AMOCRM_RATE_LIMIT=50)
    ext = app.extensions["amocrm"].extension
    with app.test_request_context("/"):
        bad = ext.submit("callback", {"name": "Zoe Secret", "phone": "+79161234567"})
    assert bad is not None
    deliver_pending(app)
    with app.test_request_context("/"):
        stuck = ext.submit("callback", {"name": "Yan Hidden", "phone": "+79160000000"})
    assert stuck is not None
    state = get_state(app)
    with state.session() as session:
        row = session.get(Event, stuck.id)
        assert row is not None
        # due an hour ago, and nothing has delivered it
        row.next_attempt_at = row.created_at = utcnow() - timedelta(hours=1)
        session.commit()
        failed = session.get(Event, bad.id)
        assert failed is not None and failed.status == "failed"
        reason = (failed.last_error or "").splitlines()[0]
    result = app.test_cli_runner().invoke(args=["amocrm", "status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    [failed_line] = [line for line in lines if f"#{bad.id} " in line]
    assert "form callback" in failed_line and reason[:40] in failed_line
    [stuck_line] = [line for line in lines if f"#{stuck.id} " in line]
    assert "pending" in stuck_line
    for secret in ("Zoe", "Secret", "79161234567", "Yan", "Hidden"):
        assert secret not in result.output


def test_status_warns_when_no_worker_listens(make_app: Any, redis_url: str) -> None:
    queue = f"amocrm-status-{_free_port()}"
    app = make_app(AMOCRM_REDIS_URL=redis_url, AMOCRM_DELIVERY="rq", AMOCRM_QUEUE=queue)
    result = app.test_cli_runner().invoke(args=["amocrm", "status"])
    assert result.exit_code == 0, result.output
    assert f"no worker is listening on queue {queue!r}" in result.output


# -- item 31: docs, preview --subject, the install, make demo -------------------------


def test_the_import_format_and_the_redirect_path_are_documented(
    amo_app: Any,
) -> None:
    from flask_amocrm.importer import _RESERVED

    docs = "\n".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")
    )
    section = docs[docs.index("## Importing past events") :]
    for column in sorted(_RESERVED) + ["fields"]:
        assert f"`{column}`" in section, column
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=lambda: True)
    [rule] = [
        r for r in app.url_map.iter_rules() if r.endpoint == "amocrm_admin.callback"
    ]
    assert rule.rule in (ROOT / "docs" / "configuration.md").read_text("utf-8")


def test_preview_of_a_mail_takes_its_subject(make_app: Any, fast_sandbox: Any) -> None:
    rules = {"mails": {"order": {"lead": {"name": "Mail: {{ mail.subject }}"}}}}
    app = make_app(AMOCRM_RULES=rules)
    result = app.test_cli_runner().invoke(
        args=["amocrm", "preview", "order", "--mail", "--subject", "Order 42"]
    )
    assert result.exit_code == 0, result.output
    assert '"name": "Mail: Order 42"' in result.output


def test_the_install_metadata_gives_setuptools_nothing_to_warn_about() -> None:
    from setuptools import find_namespace_packages
    from setuptools.config.setupcfg import read_configuration

    config = read_configuration(ROOT / "setup.cfg", ignore_option_errors=False)
    metadata, options = config["metadata"], config["options"]
    # an SPDX `license` expression with License :: classifiers is deprecated
    assert metadata["license"]
    assert not [c for c in metadata["classifiers"] if c.startswith("License ::")]
    # every directory shipped as package data is a package, and every pattern matches
    packages = set(options["packages"])
    for package, patterns in options["package_data"].items():
        base = ROOT / package.replace(".", "/")
        for pattern in patterns:
            matches = [p for p in base.glob(pattern) if p.is_file()]
            assert matches, f"{package}: {pattern} matches no file"
            for path in matches:
                folder = path.parent.relative_to(ROOT).as_posix().replace("/", ".")
                assert folder in packages, folder
    assert packages >= set(
        find_namespace_packages(
            str(ROOT), include=["flask_amocrm*"], exclude=["*.__pycache__"]
        )
    )


def test_make_demo_says_its_urls_stop_and_leaves_no_redis_keys(
    redis_server: str,
) -> None:
    url = f"{redis_server}/11"
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    before = set(conn.keys())
    env = child_env(str(ROOT), DEMO_REDIS_URL=url)
    for name in list(env):
        if name.startswith("AMOCRM_"):
            del env[name]
    done = subprocess.run(
        [sys.executable, "-m", "example_app.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RQ worker" in done.stdout
    assert "stop working" in done.stdout
    assert set(conn.keys()) == before
