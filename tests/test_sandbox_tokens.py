"""Sandbox tokens are JWTs a client can read without the key (two-way reference §5).

amoCRM signs with a key it does not publish; clients (the PHP SDK among them) decode
the payload without verifying the signature to read ``exp`` and ``api_domain``.
"""

from __future__ import annotations

import base64
import json
import re
import time

import jwt
import requests


def _oauth_pair(sandbox):
    code = sandbox.auth_code()
    r = requests.post(
        sandbox.url + "/oauth2/access_token",
        json={
            "client_id": "sandbox-client",
            "client_secret": "sandbox-secret",
            "redirect_uri": "https://site.test/amo",
            "grant_type": "authorization_code",
            "code": code,
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


def _plain_decode(token):
    def part(text):
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))

    header, payload, _sig = token.split(".")
    return part(header), part(payload)


def test_oauth_access_token_decodes_without_verification(sandbox):
    pair = _oauth_pair(sandbox)
    token = pair["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] == claims["iat"] + pair["expires_in"] == claims["iat"] + 86400
    assert claims["exp"] > time.time()
    assert claims["aud"] == "sandbox-client"
    assert isinstance(claims["sub"], str) and claims["sub"].isdigit()
    assert claims["api_domain"] and claims["base_domain"] == "amocrm.ru"
    assert claims["version"] == 2 and claims["grant_type"] == ""
    assert re.fullmatch(r"[0-9a-f]{80}", claims["jti"])
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "JWT" and header["jti"] == claims["jti"]
    # A client with no JWT library: a plain base64 decode gives the same claims.
    assert _plain_decode(token) == (header, claims)
    # And the token works.
    r = requests.get(
        sandbox.url + "/api/v4/account",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200


def test_long_lived_token_exp_is_a_utc_midnight(sandbox):
    token = sandbox.long_lived_token(days=30)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] % 86400 == 0
    assert 29 * 86400 < claims["exp"] - time.time() <= 30 * 86400
    assert claims["api_domain"]
    assert jwt.get_unverified_header(token)["jti"] == claims["jti"]
    r = requests.get(
        sandbox.url + "/api/v4/account",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200
