"""Bearer tokens and OAuth 2.0.

Long-lived tokens are the fixed string given at start-up, or JWTs issued on request
(``POST /_sandbox/long_lived_token``) that expire at midnight UTC of their last day,
as amoCRM's do. OAuth access tokens are HS256 JWTs with ``exp`` and ``api_domain``
(clients such as the Krukov SDK decode them); refresh tokens are opaque, live three
months and work once. ``moved_to`` plays an account that was renamed: refreshes on
this host answer 404, and ``GET /oauth2/account/current/subdomain`` (with the header
``X-Refresh-Token``) names the new domain. amoCRM's OAuth server is built on
thephpleague/oauth2-server, whose error statuses we follow: a bad client is 401, a
bad or reused refresh token is 401 with a hint, a bad code is 400.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request

from .errors import OAuthError
from .store import Store

CODE_TTL = 20 * 60  # an authorization code lives 20 minutes
REFRESH_TTL = 90 * 24 * 3600  # a refresh token lives 3 months

BAD_REQUEST_TITLE = "Некорректный запрос"
BAD_REQUEST_DETAIL = "В запросе отсутствует ряд параметров или параметры невалидны"
BAD_CLIENT_TITLE = "Некорректный клиент"
BAD_CLIENT_DETAIL = "Авторизация клиента не прошла"

bp = Blueprint("sandbox_oauth", __name__)


def fingerprint(token: str | None) -> str | None:
    """A short, non-secret name for a token, for logs."""
    if not token:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Auth:
    """Checks bearer tokens and issues OAuth grants, stored in the :class:`Store`."""

    def __init__(
        self,
        store: Store,
        *,
        token: str | None,
        client_id: str | None,
        client_secret: str | None,
        redirect_uri: str | None,
        access_token_ttl: int,
    ) -> None:
        self.store = store
        self.long_lived = {token} if token else set()
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.access_token_ttl = access_token_ttl
        #: A domain the account "moved" to: refreshes here answer 404 (see above).
        self.moved_to: str | None = None

    @property
    def _oauth(self) -> dict[str, Any]:
        oauth = self.store.data.setdefault("oauth", {})
        oauth.setdefault("codes", {})
        oauth.setdefault("refresh", {})
        if "key" not in oauth:
            # Kept in the state so that tokens survive a restart with --state.
            oauth["key"] = secrets.token_hex(32)
        return oauth

    # -- access tokens ---------------------------------------------------------

    def make_access_token(self, api_domain: str) -> str:
        """A signed JWT that expires after ``access_token_ttl`` seconds."""
        return self._jwt(api_domain, int(time.time()) + int(self.access_token_ttl))

    def make_long_lived_token(self, api_domain: str, days: int) -> tuple[str, int]:
        """A long-lived token (a signed JWT, no refresh token) valid ``days`` days:
        it expires at midnight UTC, as amoCRM's do. The token and its ``exp``."""
        now = int(time.time())
        exp = (now // 86400 + max(1, int(days))) * 86400
        return self._jwt(api_domain, exp), exp

    def _jwt(self, api_domain: str, exp: int) -> str:
        now = int(time.time())
        jti = secrets.token_hex(40)  # amoCRM's: 80 hex characters, also in the header
        header = {"typ": "JWT", "alg": "HS256", "jti": jti}
        payload = {
            "aud": self.client_id,
            "jti": jti,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "sub": str(self.store.data["account"]["current_user_id"]),
            "grant_type": "",
            "account_id": self.store.account_id,
            "base_domain": "amocrm.ru",
            "version": 2,
            "scopes": ["crm", "files", "notifications", "push_notifications"],
            "api_domain": api_domain,
        }
        signing = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(payload, separators=(",", ":")).encode())
        )
        with self.store.lock:
            key = self._oauth["key"].encode()
        sig = hmac.new(key, signing.encode(), hashlib.sha256).digest()
        return signing + "." + _b64(sig)

    def check_bearer(self, header: str | None) -> str | None:
        """None when the ``Authorization`` header is acceptable, else the reason."""
        if not header or not header.startswith("Bearer "):
            return "Authorization header with a Bearer token is required"
        token = header[len("Bearer ") :].strip()
        if token in self.long_lived:
            return None
        parts = token.split(".")
        if len(parts) != 3:
            return "Invalid token"
        with self.store.lock:
            key = self._oauth["key"].encode()
        expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256)
        try:
            ok = hmac.compare_digest(_b64(expected.digest()), parts[2])
            payload = json.loads(_unb64(parts[1]))
        except (ValueError, UnicodeDecodeError):
            return "Invalid token"
        if not ok:
            return "Invalid token"
        if int(payload.get("exp", 0)) <= time.time():
            return "Token has expired"
        return None

    # -- grants ----------------------------------------------------------------

    def issue_code(self, client_id: str, redirect_uri: str | None) -> str:
        """A one-time authorization code, valid 20 minutes."""
        code = "def50200" + secrets.token_hex(40)
        with self.store.lock:
            self._oauth["codes"][code] = {
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "expires": int(time.time()) + CODE_TTL,
                "used": False,
            }
            self.store.touch()
        return code

    def _issue_pair(self, api_domain: str) -> dict[str, Any]:
        refresh = "def50200" + secrets.token_hex(48)
        self._oauth["refresh"][refresh] = {
            "client_id": self.client_id,
            "expires": int(time.time()) + REFRESH_TTL,
            "used": False,
        }
        self.store.touch()
        return {
            "token_type": "Bearer",
            "expires_in": int(self.access_token_ttl),
            "access_token": self.make_access_token(api_domain),
            "refresh_token": refresh,
            "server_time": int(time.time()),
        }

    def exchange(self, body: dict[str, Any], api_domain: str) -> dict[str, Any]:
        """``POST /oauth2/access_token``: a code or refresh token → a new pair."""
        if self.client_id is None:
            raise OAuthError(
                401,
                BAD_CLIENT_TITLE,
                BAD_CLIENT_DETAIL,
                "OAuth is not configured in this sandbox",
            )
        for name in ("client_id", "client_secret", "grant_type"):
            if not body.get(name):
                raise OAuthError(
                    400,
                    BAD_REQUEST_TITLE,
                    BAD_REQUEST_DETAIL,
                    f"Check the `{name}` parameter",
                )
        if body["client_id"] != self.client_id or not hmac.compare_digest(
            str(body["client_secret"]), str(self.client_secret)
        ):
            raise OAuthError(401, BAD_CLIENT_TITLE, BAD_CLIENT_DETAIL, None)
        grant = body["grant_type"]
        with self.store.lock:
            if grant == "authorization_code":
                return self._exchange_code(body, api_domain)
            if grant == "refresh_token":
                if self.moved_to:
                    raise OAuthError(
                        404, "Not found", "The account is not on this domain", None
                    )
                return self._exchange_refresh(body, api_domain)
        raise OAuthError(
            400,
            "Неподдерживаемый тип авторизации",
            "The authorization grant type is not supported by the "
            "authorization server.",
            "Check that all required parameters have been provided",
        )

    def _exchange_code(self, body: dict[str, Any], api_domain: str) -> dict[str, Any]:
        code = body.get("code")
        if not code:
            raise OAuthError(
                400, BAD_REQUEST_TITLE, BAD_REQUEST_DETAIL, "Check the `code` parameter"
            )
        grant = self._oauth["codes"].get(code)
        if grant is None:
            raise OAuthError(
                400,
                BAD_REQUEST_TITLE,
                BAD_REQUEST_DETAIL,
                "Cannot decrypt the authorization code",
            )
        if grant["used"]:
            raise OAuthError(
                400,
                BAD_REQUEST_TITLE,
                BAD_REQUEST_DETAIL,
                "Authorization code has been revoked",
            )
        if grant["expires"] < time.time():
            raise OAuthError(
                400,
                BAD_REQUEST_TITLE,
                BAD_REQUEST_DETAIL,
                "Authorization code has expired",
            )
        wanted = self.redirect_uri or grant.get("redirect_uri")
        if wanted and body.get("redirect_uri") != wanted:
            raise OAuthError(401, BAD_CLIENT_TITLE, BAD_CLIENT_DETAIL, None)
        grant["used"] = True
        return self._issue_pair(api_domain)

    def _exchange_refresh(
        self, body: dict[str, Any], api_domain: str
    ) -> dict[str, Any]:
        token = body.get("refresh_token")
        if not token:
            raise OAuthError(
                400,
                BAD_REQUEST_TITLE,
                BAD_REQUEST_DETAIL,
                "Check the `refresh_token` parameter",
            )
        grant = self._oauth["refresh"].get(token)
        if grant is None:
            raise OAuthError(
                401,
                BAD_REQUEST_TITLE,
                BAD_REQUEST_DETAIL,
                "Cannot decrypt the refresh token",
            )
        if grant["used"]:
            # Single use across all clients: the second use is refused.
            raise OAuthError(
                401, BAD_REQUEST_TITLE, BAD_REQUEST_DETAIL, "Token has been revoked"
            )
        if grant["expires"] < time.time():
            raise OAuthError(
                401, BAD_REQUEST_TITLE, BAD_REQUEST_DETAIL, "Token has expired"
            )
        grant["used"] = True
        return self._issue_pair(api_domain)


def get_auth() -> Auth:
    """The current sandbox's :class:`Auth`."""
    return current_app.extensions["amocrm_sandbox"].auth


def _request_body() -> dict[str, Any]:
    if request.is_json or (request.data and request.data.lstrip()[:1] == b"{"):
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise OAuthError(
                400,
                BAD_REQUEST_TITLE,
                BAD_REQUEST_DETAIL,
                "The request body is not valid JSON",
            )
        return data
    return request.form.to_dict()


@bp.post("/oauth2/access_token")
def access_token() -> Response:
    """Exchange an authorization code or a refresh token for a token pair."""
    body = _request_body()
    pair = get_auth().exchange(body, api_domain=request.host)
    return current_app.response_class(
        json.dumps(pair), status=200, mimetype="application/json"
    )


@bp.get("/oauth2/account/current/subdomain")
def current_subdomain() -> Response:
    """The account's domain, found by its refresh token (header ``X-Refresh-Token``,
    no bearer token): 400 without it, 401 for an unknown or used one."""
    from .errors import problem_body, problem_response

    auth = get_auth()
    token = request.headers.get("X-Refresh-Token")
    if not token:
        return problem_response(400, problem_body(400, "X-Refresh-Token is required"))
    with auth.store.lock:
        grant = auth._oauth["refresh"].get(token)
        valid = grant is not None and not grant["used"]
        account = dict(auth.store.data["account"])
    if not valid:
        return problem_response(401, problem_body(401, "Invalid refresh token"))
    domain = auth.moved_to or request.host
    return current_app.response_class(
        json.dumps(
            {
                "id": account["id"],
                "subdomain": domain.split(".")[0],
                "domain": domain,
                "top_level_domain": domain.rsplit(".", 1)[-1],
            }
        ),
        mimetype="application/json",
    )


@bp.get("/oauth2/account/subdomain")
def account_subdomain() -> Response:
    """The account's current subdomain."""
    sandbox = current_app.extensions["amocrm_sandbox"]
    reason = sandbox.auth.check_bearer(request.headers.get("Authorization"))
    if reason is not None:
        from .errors import problem_body, problem_response

        return problem_response(401, problem_body(401, reason))
    account = sandbox.store.data["account"]
    return current_app.response_class(
        json.dumps(
            {
                "id": account["id"],
                "subdomain": account["subdomain"],
                "domain": request.host,
                "top_level_domain": "ru",
            }
        ),
        mimetype="application/hal+json",
    )


@bp.route("/oauth", methods=["GET", "POST"])
def authorize() -> Response | str:
    """The consent page of the code flow (amoCRM's ``www.amocrm.ru/oauth``).

    GET shows the request; POST with ``decision=allow`` issues a code and redirects
    to the redirect URI with ``code``, ``state`` and ``referer``. Without a redirect
    URI the code is shown on the page, as the integration's "Keys" tab does.
    """
    auth = get_auth()
    params = request.values
    client_id = params.get("client_id", "")
    state = params.get("state", "")
    redirect_uri = auth.redirect_uri or params.get("redirect_uri") or None
    known = auth.client_id is not None and client_id == auth.client_id
    if request.method == "GET" or not known:
        status = 200 if known else 400
        return Response(
            render_template(
                "sandbox/authorize.html",
                client_id=client_id,
                state=state,
                known=known,
                redirect_uri=redirect_uri,
                mode=params.get("mode", ""),
                code=None,
            ),
            status=status,
            mimetype="text/html",
        )
    if params.get("decision") != "allow":
        if redirect_uri:
            return redirect(
                _with_query(redirect_uri, error="access_denied", state=state)
            )
        return Response("Access denied", status=200, mimetype="text/plain")
    code = auth.issue_code(client_id, redirect_uri)
    if redirect_uri:
        # referer names the account host a client should call; here, the sandbox.
        return redirect(
            _with_query(
                redirect_uri,
                code=code,
                state=state,
                referer=request.host,
                client_id=client_id,
            )
        )
    return render_template(
        "sandbox/authorize.html",
        client_id=client_id,
        state=state,
        known=True,
        redirect_uri=None,
        mode="",
        code=code,
    )


def _with_query(url: str, **params: str) -> str:
    from urllib.parse import urlencode

    sep = "&" if "?" in url else "?"
    return url + sep + urlencode(params)
