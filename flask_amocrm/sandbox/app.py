"""The sandbox application: wiring, request hooks and error handlers.

Order of work for an API request, as the real service's layers do it: injected
faults and latency (the network), the rate limit and block (the gateway), then the
bearer token, then the endpoint. Every ``/api/v4``, ``/drive`` (amoCRM's file
service, ``drive.py``) and OAuth request is logged.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from .auth import Auth, fingerprint
from .auth import bp as oauth_bp
from .bulk import seed_bulk
from .control import RequestLog
from .control import bp as control_bp
from .drive import DriveLimits
from .drive import bp as drive_bp
from .drive import entity_bp as drive_entity_bp
from .errors import (
    ApiError,
    OAuthError,
    html_response,
    problem_body,
    problem_response,
)
from .events import WebhookSender
from .faults import Faults
from .limits import ARRIVED, RateLimiter
from .store import Store
from .views import complex as complex_views
from .views import (
    entities,
    links,
    meta,
    notes,
    page,
    schema,
    sources,
    tags,
    tasks,
    unsorted,
)
from .views import events as events_views

EXTENSION_KEY = "amocrm_sandbox"
SECRET_KEYS = ("client_secret", "code", "refresh_token")


class Sandbox:
    """Per-app state: settings, the account store, auth, limiter, faults, log."""

    def __init__(
        self,
        *,
        token: str,
        rate_limit: float,
        block_after: int,
        block_seconds: float,
        latency_ms: float,
        client_id: str | None,
        client_secret: str | None,
        redirect_uri: str | None,
        access_token_ttl: int,
        state_file: str | None,
        subdomain: str,
        seed_contacts: int = 0,
        seed_companies: int = 0,
    ) -> None:
        self.token = token
        self.latency_ms = latency_ms
        self.store = Store(subdomain=subdomain, state_file=state_file)
        self.webhooks = WebhookSender()
        self.store.webhook_sink = self.webhooks
        self.auth = Auth(
            self.store,
            token=token,
            client_id=client_id,
            client_secret=client_secret,
            redirect_uri=redirect_uri,
            access_token_ttl=access_token_ttl,
        )
        self.limiter = RateLimiter(rate_limit, block_after, block_seconds)
        self.faults = Faults()
        self.drive = DriveLimits()
        self.log = RequestLog()
        #: Made-up contacts and companies added to the seed (and after each reset).
        self.bulk = (seed_contacts, seed_companies)
        if any(self.bulk) and not (state_file and os.path.exists(state_file)):
            seed_bulk(self.store, *self.bulk)
        self._initial = {
            "rate_limit": rate_limit,
            "latency_ms": latency_ms,
            "access_token_ttl": access_token_ttl,
            "block_after": block_after,
            "block_seconds": block_seconds,
            "moved_to": None,
        }

    @property
    def auth_hint(self) -> str:
        """The long-lived token, shown on the page (it is a local sandbox)."""
        return self.token

    def reset(self) -> None:
        """Seed again and forget requests, faults, limits and run-time settings."""
        self.store.reset()
        if any(self.bulk):
            seed_bulk(self.store, *self.bulk)
        self.log.clear()
        self.faults.clear()
        self.webhooks.clear()
        self.limiter.reset()
        self.drive.reset()
        self.configure(**self._initial)
        self.store.save_if_dirty()

    def configure(self, **settings: Any) -> None:
        """Change run-time settings (``/_sandbox/config``)."""
        if "rate_limit" in settings:
            self.limiter.rate_limit = float(settings["rate_limit"])
        if "block_after" in settings:
            self.limiter.block_after = int(settings["block_after"])
        if "block_seconds" in settings:
            self.limiter.block_seconds = float(settings["block_seconds"])
        if "latency_ms" in settings:
            self.latency_ms = float(settings["latency_ms"])
        if "access_token_ttl" in settings:
            self.auth.access_token_ttl = int(settings["access_token_ttl"])
        if "moved_to" in settings:
            self.auth.moved_to = settings["moved_to"] or None
        if "drive_max_file_size" in settings:
            self.drive.max_file_size = int(settings["drive_max_file_size"])
        if "drive_max_part_size" in settings:
            self.drive.max_part_size = int(settings["drive_max_part_size"])
        if "drop_webhooks" in settings:
            self.webhooks.drop = int(settings["drop_webhooks"])
        if "webhook_delay_ms" in settings:
            self.webhooks.delay_ms = float(settings["webhook_delay_ms"])
        if "duplicate_control" in settings:
            with self.store.lock:
                self.store.data["settings"]["duplicate_control"] = bool(
                    settings["duplicate_control"]
                )
                self.store.touch()

    def config_dict(self) -> dict[str, Any]:
        """Current run-time settings."""
        return {
            "rate_limit": self.limiter.rate_limit,
            "block_after": self.limiter.block_after,
            "block_seconds": self.limiter.block_seconds,
            "latency_ms": self.latency_ms,
            "access_token_ttl": self.auth.access_token_ttl,
            "moved_to": self.auth.moved_to,
            "drop_webhooks": self.webhooks.drop,
            "webhook_delay_ms": self.webhooks.delay_ms,
            "drive_max_file_size": self.drive.max_file_size,
            "drive_max_part_size": self.drive.max_part_size,
            "duplicate_control": bool(
                self.store.data["settings"].get("duplicate_control")
            ),
        }


def create_app(
    *,
    token: str = "sandbox-token",
    rate_limit: float = 7,
    block_after: int = 20,
    block_seconds: float = 60,
    latency_ms: float = 0,
    client_id: str | None = "sandbox-client",
    client_secret: str | None = "sandbox-secret",
    redirect_uri: str | None = None,
    access_token_ttl: int = 86400,
    state_file: str | None = None,
    subdomain: str = "sandbox",
    seed_contacts: int = 0,
    seed_companies: int = 0,
) -> Flask:
    """Build a sandbox app: a local amoCRM account speaking API v4.

    ``block_after`` rejected (429) requests within a minute block the token with
    403 for ``block_seconds``. ``state_file`` loads and persists the account.
    ``seed_contacts`` and ``seed_companies`` add that many made-up ones to the
    seeded account (:mod:`.bulk`), again after every reset.
    """
    app = Flask(__name__, template_folder="templates")
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = Sandbox(
        token=token,
        rate_limit=rate_limit,
        block_after=block_after,
        block_seconds=block_seconds,
        latency_ms=latency_ms,
        client_id=client_id,
        client_secret=client_secret,
        redirect_uri=redirect_uri,
        access_token_ttl=access_token_ttl,
        state_file=state_file,
        subdomain=subdomain,
        seed_contacts=seed_contacts,
        seed_companies=seed_companies,
    )
    for blueprint in (
        meta.bp,
        schema.bp,
        complex_views.bp,
        unsorted.bp,
        notes.bp,
        tags.bp,
        links.bp,
        tasks.bp,
        events_views.bp,
        sources.bp,
        entities.bp,
        drive_entity_bp,
        drive_bp,
        oauth_bp,
        control_bp,
        page.bp,
    ):
        app.register_blueprint(blueprint)
    app.before_request(_before)
    app.after_request(_after)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(OAuthError, _oauth_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app


def _kind(path: str) -> str:
    if path.startswith(("/api/v4", "/drive/")):
        return "api"
    if path.startswith("/oauth2"):
        return "oauth"
    if path == "/oauth":
        return "authorize"
    return "other"


def _sandbox() -> Sandbox:
    from flask import current_app

    return current_app.extensions[EXTENSION_KEY]


def _drop_connection() -> Response:
    """Close the client's connection without an answer."""
    sock = request.environ.get("werkzeug.socket")
    g._sbx_status = 0
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    # Writing this response fails on the closed socket; werkzeug treats that as
    # a dropped connection and stays quiet.
    return Response(b"", status=502)


def _before() -> Response | None:
    g._sbx_request_id = uuid.uuid4().hex[:16]
    kind = _kind(request.path)
    g._sbx_kind = kind
    if kind not in ("api", "oauth"):
        return None
    sbx = _sandbox()
    decision = sbx.faults.decide(request.method, request.path)
    verdict = None
    if kind == "api" and decision.status is None and not decision.drop:
        # The gateway counts a request against the rate limit when it arrives, as
        # amoCRM's does; the latency is the network's, in both directions. (Counted
        # after the sleep, a busy sandbox's late wake-ups would crowd the window.)
        arrived = request.environ.get(ARRIVED) or time.time()
        g._sbx_received = arrived
        header = request.headers.get("Authorization")
        key = fingerprint(header) or f"ip:{request.remote_addr}"
        verdict = sbx.limiter.check(key, at=time.monotonic() - (time.time() - arrived))
    delay = sbx.latency_ms + decision.latency_ms
    if delay > 0:
        time.sleep(delay / 1000.0)
    if decision.drop:
        return _drop_connection()
    g._sbx_lose_answer = decision.lose_answer
    if decision.status is not None:
        status = decision.status
        if status >= 500 or status in (403, 429):
            return html_response(status)
        return problem_response(status, problem_body(status, "Injected fault"))
    if kind != "api":
        return None
    if verdict is not None:
        return html_response(verdict)
    header = request.headers.get("Authorization")
    reason = sbx.auth.check_bearer(header)
    if reason is not None:
        return problem_response(401, problem_body(401, reason))
    return None


def _logged_body() -> Any:
    raw = request.get_data(cache=True)
    if not raw:
        if request.form:
            body: Any = request.form.to_dict()
        else:
            return None
    else:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            if request.form:
                body = request.form.to_dict()
            else:
                return None
    if isinstance(body, dict):
        body = {k: ("***" if k in SECRET_KEYS else v) for k, v in body.items()}
    return body


def _after(response: Response) -> Response:
    kind = getattr(g, "_sbx_kind", _kind(request.path))
    if kind in ("api", "oauth"):
        response.headers["X-Request-Id"] = getattr(g, "_sbx_request_id", "")
    if kind in ("api", "oauth", "authorize"):
        sbx = _sandbox()
        header = request.headers.get("Authorization")
        token = (
            header[len("Bearer ") :].strip()
            if header and header.startswith("Bearer ")
            else None
        )
        sbx.log.add(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string.decode("utf-8", "replace"),
                "status": getattr(g, "_sbx_status", response.status_code),
                "time": time.time(),
                "received": getattr(g, "_sbx_received", None),
                "token": fingerprint(token),
                "body": _logged_body(),
            }
        )
        if request.method != "GET" and response.status_code < 400:
            sbx.store.save_if_dirty()
    if getattr(g, "_sbx_lose_answer", False):
        return _drop_connection()  # the work is done and logged; the answer is lost
    return response


def _api_error(exc: ApiError) -> Response:
    return problem_response(exc.status, exc.body())


def _oauth_error(exc: OAuthError) -> Response:
    return problem_response(exc.status, exc.body())


def _http_error(exc: HTTPException) -> Response:
    if _kind(request.path) in ("api", "oauth"):
        status = exc.code or 500
        detail = exc.description or ""
        return problem_response(status, problem_body(status, detail))
    return exc.get_response()


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    from flask import current_app

    current_app.logger.exception("sandbox error")
    return problem_response(500, problem_body(500, f"{type(exc).__name__}: {exc}"))
