"""Sandbox auth: Bearer required, long-lived token, OAuth code and refresh grants."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import requests

from flask_amocrm.sandbox import SandboxServer


def _token(sandbox, **body):
    base = {
        "client_id": "sandbox-client",
        "client_secret": "sandbox-secret",
        "redirect_uri": "https://site.test/amo",
    }
    base.update(body)
    return requests.post(sandbox.url + "/oauth2/access_token", json=base)


def test_bearer_required(sandbox):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        r = requests.get(sandbox.url + "/api/v4/account", headers=headers)
        assert r.status_code == 401
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert r.json()["type"] == "https://httpstatus.es/401"
        assert r.json()["title"] == "Unauthorized"
    ok = requests.get(
        sandbox.url + "/api/v4/account",
        headers={"Authorization": "Bearer sandbox-token"},
    )
    assert ok.status_code == 200


def test_code_flow_refresh_and_reuse(sandbox):
    code = sandbox.auth_code()
    r = _token(sandbox, grant_type="authorization_code", code=code)
    assert r.status_code == 200, r.text
    pair = r.json()
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 86400
    assert pair["access_token"].count(".") == 2 and pair["server_time"]
    api = requests.get(
        sandbox.url + "/api/v4/account",
        headers={"Authorization": f"Bearer {pair['access_token']}"},
    )
    assert api.status_code == 200
    # a code works once
    again = _token(sandbox, grant_type="authorization_code", code=code)
    assert again.status_code == 400
    assert again.json()["hint"] == "Authorization code has been revoked"
    # refresh gives a new pair; the old refresh token is dead at once
    new = _token(
        sandbox, grant_type="refresh_token", refresh_token=pair["refresh_token"]
    )
    assert new.status_code == 200
    assert new.json()["refresh_token"] != pair["refresh_token"]
    reuse = _token(
        sandbox, grant_type="refresh_token", refresh_token=pair["refresh_token"]
    )
    assert reuse.status_code == 401
    body = reuse.json()
    assert body["hint"] == "Token has been revoked"
    assert body["type"].endswith("/OAuthProblemJson")
    assert body["title"] == "Некорректный запрос"
    bad = _token(
        sandbox,
        grant_type="refresh_token",
        client_secret="wrong",
        refresh_token=new.json()["refresh_token"],
    )
    assert bad.status_code == 401 and bad.json()["title"] == "Некорректный клиент"
    assert _token(sandbox, grant_type="password").status_code == 400


def test_access_token_expires():
    with SandboxServer(access_token_ttl=1) as amo:
        pair = _token(amo, grant_type="authorization_code", code=amo.auth_code()).json()
        assert pair["expires_in"] == 1
        headers = {"Authorization": f"Bearer {pair['access_token']}"}
        assert requests.get(amo.url + "/api/v4/account", headers=headers).ok
        time.sleep(1.1)
        r = requests.get(amo.url + "/api/v4/account", headers=headers)
        assert r.status_code == 401
        fresh = _token(
            amo, grant_type="refresh_token", refresh_token=pair["refresh_token"]
        ).json()
        headers = {"Authorization": f"Bearer {fresh['access_token']}"}
        assert requests.get(amo.url + "/api/v4/account", headers=headers).ok


def test_ttl_configurable_at_run_time(sandbox):
    sandbox.config(access_token_ttl=5)
    pair = _token(
        sandbox, grant_type="authorization_code", code=sandbox.auth_code()
    ).json()
    assert pair["expires_in"] == 5


def test_authorize_page_redirects_with_code(sandbox):
    page = requests.get(
        sandbox.url + "/oauth", params={"client_id": "sandbox-client", "state": "xyz"}
    )
    assert page.status_code == 200 and "Allow" in page.text
    assert (
        requests.get(sandbox.url + "/oauth", params={"client_id": "other"}).status_code
        == 400
    )
    r = requests.post(
        sandbox.url + "/oauth",
        data={
            "client_id": "sandbox-client",
            "state": "xyz",
            "decision": "allow",
            "redirect_uri": "https://site.test/amo",
        },
        allow_redirects=False,
    )
    assert r.status_code == 302
    location = urlparse(r.headers["Location"])
    query = parse_qs(location.query)
    assert location.netloc == "site.test" and query["state"] == ["xyz"]
    assert query["referer"]
    pair = _token(sandbox, grant_type="authorization_code", code=query["code"][0])
    assert pair.status_code == 200
    # the log never holds secrets
    logged = [e for e in sandbox.requests() if e["path"] == "/oauth2/access_token"]
    assert logged and logged[0]["body"]["client_secret"] == "***"
