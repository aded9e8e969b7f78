"""Operations: the health check (``flask amocrm health``, the health endpoint, the
admin's verdict), the Prometheus metrics and the JSON logs, against a site served over
real HTTP, real workers in child processes, a real Redis and the sandbox."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from flask_amocrm.meter import endpoint
from flask_amocrm.models import Event, utcnow
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from tests.conftest import CALLBACK_RULES
from tests.helpers.e2e import form_site, stored_events
from tests.helpers.http import serving
from tests.helpers.process import flask_command, start_worker, stop
from tests.helpers.sandbox import api_requests

T = TypeVar("T")

HEALTH = "/ops/health"
METRICS = "/ops/metrics"
OPS = {"AMOCRM_HEALTH_PATH": HEALTH, "AMOCRM_METRICS_PATH": METRICS}
#: What visitors send: none of it may reach a metric or a log line.
VISITOR = {
    "name": "Anna Petrova",
    "phone": "+7 912 345-67-89",
    "email": "anna.petrova@example.org",
}
PERSONAL = ("Anna", "Petrova", "anna.petrova", "912 345", "9123456789", "345-67-89")


def _until(check: Callable[[], T | None], what: str, seconds: float = 90) -> T:
    """Wait for ``check()`` to give something (the workers run in other processes);
    fail, naming ``what``, if it never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"never happened: {what}")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _config(app: Flask) -> dict[str, Any]:
    return {k: v for k, v in app.config.items() if k.startswith("AMOCRM_")}


def _rq_site(make_app: Any, redis_url: str, **config: Any) -> Flask:
    return form_site(
        make_app,
        CALLBACK_RULES,
        AMOCRM_DELIVERY="rq",
        AMOCRM_REDIS_URL=redis_url,
        **OPS,
        **config,
    )


def _post_forms(base: str, n: int, **data: str) -> None:
    for i in range(n):
        answer = requests.post(
            f"{base}/form/callback",
            data={"name": f"Visitor {i}", "phone": f"+7912{i:07d}", **data},
            timeout=10,
        )
        assert answer.status_code == 200


# -- against a running site and a real worker ------------------------------------------


def test_health_and_metrics_of_a_served_site_follow_a_real_worker_and_an_outage(
    make_app: Any, fast_sandbox: Any, redis_conn: Any, redis_url: str, tmp_path: Any
) -> None:
    app = _rq_site(make_app, redis_url)
    config = _config(app)
    with serving(app) as base:
        # no worker yet: the events wait, and the check says so
        _post_forms(base, 3)
        answer = requests.get(f"{base}{HEALTH}", timeout=10)
        assert answer.status_code == 503
        assert answer.json()["problems"] == ["no_workers"]
        assert answer.json()["delivery"]["queue_depth"] == 3
        assert requests.get(f"{base}{HEALTH}/ready", timeout=10).status_code == 200

        (tmp_path / "w").mkdir()
        worker = start_worker(tmp_path / "w", config)
        try:
            body = _until(
                lambda: (
                    requests.get(f"{base}{HEALTH}", timeout=10).json()
                    if all(e.status == "delivered" for e in stored_events(app))
                    else None
                ),
                "three events delivered by the worker",
            )
            healthy = requests.get(f"{base}{HEALTH}", timeout=10)
            assert healthy.status_code == 200, body
            report = healthy.json()
            assert report["status"] == "ok" and report["problems"] == []
            assert report["delivery"]["workers"] == 1
            assert report["delivery"]["events"]["pending"] == 0
            assert report["token"] == {
                "kind": "long-lived",
                "connected": True,
                "expires_at": None,
            }
            assert fast_sandbox.token not in healthy.text
            assert fast_sandbox.url not in healthy.text

            page = requests.get(f"{base}{METRICS}", timeout=10)
            assert page.status_code == 200
            assert page.headers["Content-Type"].startswith("text/plain")
            samples = _samples(page.text)
            assert _metric(samples, "amocrm_events_total", outcome="delivered") == 3
            assert _metric(samples, "amocrm_delivery_delay_seconds_count") == 3
            assert _metric(samples, "amocrm_delivery_delay_seconds_bucket", le="+Inf")
            calls = {
                labels: value
                for (name, labels), value in samples.items()
                if name == "amocrm_api_calls_total"
            }
            # every request the sandbox received was counted, by its endpoint
            assert sum(calls.values()) == len(api_requests(fast_sandbox))
            assert (
                _metric(
                    samples,
                    "amocrm_api_calls_total",
                    method="POST",
                    endpoint="/api/v4/leads/complex",
                    status="200",
                )
                >= 1
            )
            assert _metric(samples, "amocrm_workers") == 1
            assert _metric(samples, "amocrm_healthy") == 1
            assert _metric(samples, "amocrm_outage") == 0
            assert _metric(samples, "amocrm_events_open", status="pending") == 0

            done = flask_command(tmp_path, config, "health")
            assert done.returncode == 0, done.stdout + done.stderr
            assert done.stdout.startswith("Healthy")

            # amoCRM answers 503: the worker records the outage, the check fails
            fast_sandbox.faults(status=503, count=10000)
            _post_forms(base, 1)
            [failing] = _until(
                lambda: (
                    [a]
                    if (a := requests.get(f"{base}{HEALTH}")).json()["problems"]
                    else None
                ),
                "the outage seen by the health endpoint",
            )
            assert failing.status_code == 503
            assert failing.json()["problems"] == ["outage"]
            assert failing.json()["amocrm"]["reachable"] is False
            assert failing.json()["amocrm"]["outage_since"]
            assert "HTTP 503" not in failing.text  # no reason quoted to strangers
            assert fast_sandbox.token not in failing.text

            done = flask_command(tmp_path, config, "health")
            assert done.returncode == 1
            assert "amoCRM is unreachable" in done.stdout
            done = flask_command(tmp_path, config, "health", "--json")
            assert done.returncode == 1
            assert json.loads(done.stdout)["problems"] == ["outage"]
            assert fast_sandbox.token not in done.stdout

            samples = _samples(requests.get(f"{base}{METRICS}", timeout=10).text)
            assert _metric(samples, "amocrm_outages_total") == 1
            assert _metric(samples, "amocrm_outage") == 1
            assert _metric(samples, "amocrm_healthy") == 0
            assert _metric(samples, "amocrm_events_total", outcome="retrying") >= 1
            assert _metric(samples, "amocrm_events_open", status="retrying") == 1
            assert (
                sum(
                    value
                    for (name, labels), value in samples.items()
                    if name == "amocrm_api_calls_total" and ("status", "503") in labels
                )
                >= 1
            )
        finally:
            fast_sandbox.faults(clear=True)
            out, err = stop(worker)
            print("worker output:", out, err[-3000:])  # shown if the test fails


def test_the_rate_limit_waits_are_counted_across_processes(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str, tmp_path: Any
) -> None:
    sandbox.config(rate_limit=0)
    app = _rq_site(make_app, redis_url, AMOCRM_RATE_LIMIT=2)
    with serving(app) as base:
        for _ in range(2):  # two worker processes, one after the other
            _post_forms(base, 2)
            done = flask_command(tmp_path, _config(app), "worker", "--burst")
            assert done.returncode == 0, done.stderr
        assert [e.status for e in stored_events(app)] == ["delivered"] * 4
        page = requests.get(f"{base}{METRICS}", timeout=10).text
    samples = _samples(page)
    waits = _metric(samples, "amocrm_rate_limit_waits_total")
    calls = sum(v for (n, _), v in samples.items() if n == "amocrm_api_calls_total")
    assert calls == len(api_requests(sandbox)) >= 2
    # at 2 requests a second, every request after the first waits for its slot
    assert 1 <= waits < calls
    assert _metric(samples, "amocrm_rate_limit_wait_seconds_total") > 0
    for word in ("Visitor", "+7912"):
        assert word not in page


# -- JSON logs -------------------------------------------------------------------------


def test_json_logs_of_a_worker_carry_event_ids_and_no_personal_data(
    make_app: Any, fast_sandbox: Any, redis_conn: Any, redis_url: str, tmp_path: Any
) -> None:
    app = _rq_site(make_app, redis_url)
    with serving(app) as base:
        for i in range(2):
            answer = requests.post(
                f"{base}/form/callback", data={**VISITOR, "i": str(i)}, timeout=10
            )
            assert answer.status_code == 200
    ids = [e.id for e in stored_events(app)]
    # JSON logs in the worker only: this process's loggers stay as pytest has them
    config = {**_config(app), "AMOCRM_LOG_JSON": True}
    done = flask_command(tmp_path, config, "worker", "--burst")
    assert done.returncode == 0, done.stderr
    assert [e.status for e in stored_events(app)] == ["delivered", "delivered"]
    # what amoCRM got holds the visitor's data: the logs must not
    assert {c["name"] for c in fast_sandbox.contacts()} == {"Anna Petrova"}

    output = done.stdout + done.stderr
    print(output)  # shown if the test fails
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert lines, output
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    delivered = {
        line["event_id"]
        for line in lines
        if line["logger"] == "flask_amocrm.worker" and "delivered" in line["message"]
    }
    assert delivered == set(ids)
    # every request made for the events names them
    api = [line for line in lines if line["message"].startswith("amoCRM POST")]
    assert api and all(set(line["event_ids"]) <= set(ids) for line in api)
    assert any(set(line["event_ids"]) == set(ids) for line in api)
    for word in (*PERSONAL, fast_sandbox.token):
        assert word not in output


def test_json_log_lines_mask_what_looks_personal_or_secret(make_app: Any) -> None:
    from flask_amocrm.jsonlog import JsonFormatter

    formatter = JsonFormatter(["s3cr3t-token-value"])
    import logging

    record = logging.LogRecord(
        "flask_amocrm.x",
        logging.WARNING,
        __file__,
        1,
        "call %s for %s at %s with Bearer abc.def; lead 12345678 at %s",
        (
            "+7 (912) 345-67-89",
            "anna@example.org",
            "s3cr3t-token-value",
            "2026-12-02 10:50:00",
        ),
        None,
    )
    record.event_id = 7
    line = json.loads(formatter.format(record))
    assert line["message"] == (
        "call [phone] for [email] at [secret] with Bearer [secret]; lead 12345678 "
        "at 2026-12-02 10:50:00"
    )
    assert line["event_id"] == 7 and line["event_ids"] == [7]
    try:
        raise ValueError("anna@example.org")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = json.loads(formatter.format(record))
    assert line["exc_type"] == "ValueError" and "anna" not in json.dumps(line)


# -- without Redis, and the one verdict ------------------------------------------------


def test_without_redis_the_counts_live_in_the_database(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = form_site(
        make_app, CALLBACK_RULES, AMOCRM_DATABASE_URI=database_uri, **OPS
    )  # deferred: delivered by the agent ('flask amocrm process')
    client = app.test_client()
    for i in range(2):
        client.post(
            "/form/callback", data={"name": f"V{i}", "phone": f"+7912{i:07d}"}
        ).close()
    assert deliver_pending(app)["delivered"] == 2
    samples = _samples(client.get(METRICS).get_data(as_text=True))
    assert _metric(samples, "amocrm_events_total", outcome="delivered") == 2
    calls = sum(v for (n, _), v in samples.items() if n == "amocrm_api_calls_total")
    assert calls == len(api_requests(fast_sandbox)) >= 1
    assert _metric(samples, "amocrm_delivery_delay_seconds_count") == 2
    assert ("amocrm_workers", ()) not in samples  # no RQ: no workers to count
    answer = client.get(HEALTH)
    assert answer.status_code == 200 and answer.json["delivery"]["mode"] == "deferred"


def test_a_database_that_does_not_answer_fails_both_checks(make_app: Any) -> None:
    app = make_app(
        AMOCRM_DATABASE_URI="postgresql+psycopg://postgres@127.0.0.1:1/none", **OPS
    )
    client = app.test_client()
    answer = client.get(HEALTH)
    assert answer.status_code == 503
    assert answer.json["problems"] == ["database"]
    ready = client.get(f"{HEALTH}/ready")
    assert ready.status_code == 503 and ready.json["problems"] == ["database"]
    result = app.test_cli_runner().invoke(args=["amocrm", "health"])
    assert result.exit_code == 1
    assert "The events database cannot be read" in result.output


def _jwt(exp: int) -> str:
    """A token shaped as amoCRM's (a JWT) that expires at ``exp``."""

    def part(value: dict[str, Any]) -> str:
        raw = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
        return raw.rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'exp': exp})}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"AMOCRM_TOKEN": _jwt(1700000000)}, "token"),
        (
            {"AMOCRM_DELIVERY": "rq", "AMOCRM_REDIS_URL": "redis://127.0.0.1:1/0"},
            "redis",
        ),
    ],
)
def test_an_expired_token_or_a_silent_redis_fail_the_check(
    make_app: Any, config: dict[str, Any], problem: str
) -> None:
    app = make_app(**config, **OPS)
    answer = app.test_client().get(HEALTH)
    assert answer.status_code == 503
    assert answer.json["problems"] == [problem]
    assert app.config["AMOCRM_TOKEN"] not in answer.get_data(as_text=True)


def test_an_event_due_too_long_fails_the_check(make_app: Any) -> None:
    app = make_app(**OPS)  # deferred: the agent runs every 300 s
    client = app.test_client()
    amocrm = app.extensions["amocrm"].extension
    with app.app_context():
        event = amocrm.submit("callback", {"name": "Ann", "phone": "+79120001122"})
    assert event is not None
    assert client.get(HEALTH).status_code == 200
    with app.app_context(), get_state(app).session() as session:
        stored = session.get(Event, event.id)
        assert stored is not None
        stored.updated_at = utcnow() - timedelta(minutes=16)
        session.commit()
    answer = client.get(HEALTH)
    assert answer.status_code == 503 and answer.json["problems"] == ["late"]
    assert answer.json["delivery"]["oldest_due_age_seconds"] >= 16 * 60


def test_the_admin_page_the_command_and_the_endpoint_give_one_verdict(
    make_app: Any, sandbox: Any
) -> None:
    from tests.helpers.admin import PREFIX

    app = make_app(AMOCRM_ADMIN_AUTH=lambda: True, AMOCRM_LOCALE="ru", **OPS)
    client = app.test_client()
    cli = app.test_cli_runner()
    assert "всё в порядке" in client.get(f"{PREFIX}/").get_data(as_text=True)
    result = cli.invoke(args=["amocrm", "health"])
    assert result.exit_code == 0 and result.output.startswith("Всё в порядке")
    amocrm = app.extensions["amocrm"].extension
    with app.app_context():
        amocrm.submit("callback", {"name": "Ann", "phone": "+79120001122"})
    sandbox.faults(status=503, count=1000)
    assert deliver_pending(app)["retrying"] == 1
    html = client.get(f"{PREFIX}/").get_data(as_text=True)
    result = cli.invoke(args=["amocrm", "health"])
    assert result.exit_code == 1
    assert client.get(HEALTH).status_code == 503
    problem = "amoCRM недоступна"
    assert problem in html and problem in result.output


# -- configuration and labels ----------------------------------------------------------


def test_endpoint_labels_carry_no_ids() -> None:
    assert endpoint("/api/v4/leads/31234567/notes") == "/api/v4/leads/{id}/notes"
    assert endpoint("/api/v4/leads/complex") == "/api/v4/leads/complex"
    assert endpoint("/api/v4/contacts?query=%2B79123456789") == "/api/v4/contacts"
    assert (
        endpoint("/v1.0/files/3fa85f64-5717-4562-b3fc-2c963f66afa6")
        == "/v1.0/files/{id}"
    )
    assert endpoint("/upload/AbC123xyz/part") == "/upload/{id}/part"


def test_the_endpoints_are_off_unless_asked_for(make_app: Any) -> None:
    client = make_app().test_client()
    assert client.get("/amocrm/health").status_code == 404
    assert client.get("/amocrm/metrics").status_code == 404


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"AMOCRM_HEALTH_PATH": "health"}, "AMOCRM_HEALTH_PATH"),
        ({"AMOCRM_METRICS_PATH": "/m?x"}, "AMOCRM_METRICS_PATH"),
        (
            {"AMOCRM_HEALTH_PATH": "/ops", "AMOCRM_METRICS_PATH": "/ops/"},
            "AMOCRM_METRICS_PATH",
        ),
        ({"AMOCRM_LOG_JSON": "maybe"}, "AMOCRM_LOG_JSON"),
    ],
)
def test_a_wrong_key_fails_at_init_app_naming_it(
    make_app: Any, config: dict[str, Any], key: str
) -> None:
    with pytest.raises(RuntimeError, match=f"^{key} "):
        make_app(**config)


def test_metrics_without_prometheus_client_say_which_extra_to_install(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(RuntimeError, match=r"flask-amocrm\[metrics\]"):
        make_app(AMOCRM_METRICS_PATH="/metrics")


def test_every_metric_and_key_is_documented(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str
) -> None:
    from tests.helpers.process import ROOT

    app = _rq_site(make_app, redis_url)
    page = app.test_client().get(METRICS).get_data(as_text=True)
    names = {
        f"{f.name}_total" if f.type == "counter" else f.name
        for f in text_string_to_metric_families(page)
    }
    assert {"amocrm_events_total", "amocrm_queue_jobs", "amocrm_workers"} <= names
    for doc in ("docs/operations.md", "docs/ru/operations.md"):
        text = Path(ROOT, doc).read_text(encoding="utf-8")
        for name in names:
            assert f"`{name}`" in text, (doc, name)
    configuration = Path(ROOT, "docs", "configuration.md").read_text("utf-8")
    for key in ("AMOCRM_HEALTH_PATH", "AMOCRM_METRICS_PATH", "AMOCRM_LOG_JSON"):
        assert f"### `{key}`" in configuration
