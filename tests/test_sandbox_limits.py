"""Rate limit (429 HTML, no Retry-After), the 403 block, faults and latency."""

from __future__ import annotations

import time

import pytest
import requests

H = {"Authorization": "Bearer sandbox-token"}


def _burst(sandbox, n):
    with requests.Session() as s:
        return [s.get(sandbox.url + "/api/v4/account", headers=H) for _ in range(n)]


def test_rate_limit_429_html(sandbox):
    sandbox.config(rate_limit=3)
    statuses = [r.status_code for r in _burst(sandbox, 5)]
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]
    with requests.Session() as s:
        r = s.get(sandbox.url + "/api/v4/account", headers=H)
    assert r.status_code == 429
    assert r.headers["Content-Type"].startswith("text/html")
    assert "Retry-After" not in r.headers
    time.sleep(1.05)
    assert _burst(sandbox, 1)[0].status_code == 200
    # control endpoints are never limited
    for _ in range(10):
        sandbox.requests()


def test_limit_is_per_token(sandbox):
    sandbox.config(rate_limit=2)
    _burst(sandbox, 3)
    r = requests.get(
        sandbox.url + "/api/v4/account", headers={"Authorization": "Bearer other"}
    )
    assert r.status_code == 401  # rate-limited separately, then refused as unknown


def test_repeated_violations_block(sandbox):
    sandbox.config(rate_limit=1, block_after=3, block_seconds=0.5)
    statuses = [r.status_code for r in _burst(sandbox, 6)]
    assert 429 in statuses and statuses[-1] == 403
    r = requests.get(sandbox.url + "/api/v4/account", headers=H)
    assert r.status_code == 403 and r.headers["Content-Type"].startswith("text/html")
    time.sleep(1.1)
    assert requests.get(sandbox.url + "/api/v4/account", headers=H).status_code == 200
    sandbox.config(rate_limit=1, block_after=2, block_seconds=60)
    _burst(sandbox, 5)
    assert requests.get(sandbox.url + "/api/v4/account", headers=H).status_code == 403
    sandbox.reset()  # lifts the block
    assert requests.get(sandbox.url + "/api/v4/account", headers=H).status_code == 200


def test_fault_count_and_clear(sandbox):
    sandbox.faults(status=503, count=2)
    got = [r.status_code for r in _burst(sandbox, 3)]
    assert got == [503, 503, 200]
    sandbox.faults(status=500, seconds=60)
    assert _burst(sandbox, 1)[0].status_code == 500
    sandbox.faults(clear=True)
    assert _burst(sandbox, 1)[0].status_code == 200
    # not applied to control endpoints
    sandbox.faults(status=503)
    assert sandbox.requests()
    sandbox.faults(clear=True)


def test_fault_drop_and_latency(sandbox):
    sandbox.faults(drop=True, count=1)
    with pytest.raises(requests.ConnectionError):
        requests.get(sandbox.url + "/api/v4/account", headers=H)
    assert requests.get(sandbox.url + "/api/v4/account", headers=H).ok
    sandbox.faults(latency_ms=150, count=1)
    start = time.monotonic()
    requests.get(sandbox.url + "/api/v4/account", headers=H).close()
    assert time.monotonic() - start >= 0.15
    sandbox.faults(status=502, count=1, path="/oauth2")
    r = requests.post(sandbox.url + "/oauth2/access_token", json={})
    assert r.status_code == 502


def test_request_log(sandbox):
    requests.post(sandbox.url + "/api/v4/leads?x=1", headers=H, json=[{"name": "a"}])
    requests.get(sandbox.url + "/api/v4/leads", headers={"Authorization": "Bearer x"})
    log = sandbox.requests()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/api/v4/leads", 200),
        ("GET", "/api/v4/leads", 401),
    ]
    assert log[0]["query"] == "x=1" and log[0]["body"] == [{"name": "a"}]
    assert log[0]["token"] and log[0]["token"] != "sandbox-token"
    assert isinstance(log[0]["time"], float)
    sandbox.reset()
    assert sandbox.requests() == []


def test_a_request_is_counted_when_it_reached_the_machine():
    """A busy sandbox reads a request late; the gateway it stands for counts it when
    it arrived (the kernel's stamp), or the rate limit would count the wait."""
    import socket

    from werkzeug.serving import make_server

    from flask_amocrm.sandbox import create_app
    from flask_amocrm.sandbox.server import ArrivalHandler, stamp_arrivals

    app = create_app(token="sandbox-token", latency_ms=0)
    server = make_server("127.0.0.1", 0, app, request_handler=ArrivalHandler)
    if not stamp_arrivals(server.socket):
        pytest.skip("the kernel does not stamp arrivals here (Linux only)")
    try:
        with socket.create_connection(("127.0.0.1", server.server_port)) as conn:
            before = time.time()
            conn.sendall(
                b"GET /api/v4/account HTTP/1.1\r\nHost: sandbox\r\n"
                b"Authorization: Bearer sandbox-token\r\nConnection: close\r\n\r\n"
            )
            sent = time.time()
            time.sleep(0.3)  # the sandbox is busy: nobody reads the request yet
            server.handle_request()
            read = time.time()
            assert b" 200 OK" in conn.recv(100)
    finally:
        server.server_close()
    (logged,) = app.test_client().get("/_sandbox/requests").get_json()
    assert before <= logged["received"] <= sent + 0.01, (logged, before, sent, read)
    assert read - logged["received"] >= 0.25
