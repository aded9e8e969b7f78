"""A small amoCRM API v4 client on :mod:`requests`.

Every non-success answer becomes a typed :class:`~flask_amocrm.errors.APIError`;
204 is an empty result (``None``), not an error. Credentials never reach the logs.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import requests

from ..errors import (
    AccountBlockedError,
    APIError,
    AuthError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitError,
    ServerError,
    TransportError,
    ValidationError,
)

log = logging.getLogger("flask_amocrm.amo")

_CONNECT_TIMEOUT = 5.0
_LOG_BODY = 2000


class AmoClient:
    """Talk to one amoCRM account with a bearer token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 15.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = "flask-amocrm"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
    ) -> Any:
        """Make one call; return the parsed JSON body, or ``None`` for 204."""
        url = f"{self.base_url}{path}"
        started = time.monotonic()
        try:
            response = self.session.request(
                method,
                url,
                params=params,
                json=json_body,
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=(_CONNECT_TIMEOUT, self.timeout),
            )
        except requests.ConnectionError as exc:
            # A refused connection never reached amoCRM; a dropped one may have.
            sent = not _never_connected(exc)
            log.warning("%s %s failed: %s", method, path, type(exc).__name__)
            raise TransportError(f"{method} {path}: {type(exc).__name__}",
                                 sent=sent) from None
        except requests.Timeout as exc:
            sent = not isinstance(exc, requests.ConnectTimeout)
            log.warning("%s %s timed out", method, path)
            raise TransportError(f"{method} {path}: timed out", sent=sent) from None
        duration = (time.monotonic() - started) * 1000
        log.info("%s %s -> %s in %.0f ms", method, path, response.status_code, duration)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request body: %s", _short(json_body))
            log.debug("response body: %s", response.text[:_LOG_BODY])
        return _result(response, method, path)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, json_body=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json_body=body)


def _never_connected(exc: requests.ConnectionError) -> bool:
    """Whether the connection was never made (so the request surely did not arrive)."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)


def _short(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)[:_LOG_BODY]


def _result(response: requests.Response, method: str, path: str) -> Any:
    status = response.status_code
    if status == 204 or (200 <= status < 300 and not response.content):
        return None
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text[:_LOG_BODY]
    if 200 <= status < 300:
        return body
    raise error_for(status, body, f"{method} {path}")


def error_for(status: int, body: Any, what: str) -> APIError:
    """The exception for a non-success answer."""
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("title") or "")
        if body.get("hint"):
            detail = f"{detail} ({body['hint']})"
    message = f"{what}: HTTP {status}" + (f": {detail}" if detail else "")
    if status == 400:
        errors = body.get("validation-errors") if isinstance(body, dict) else None
        if errors:
            parts = [
                f"item {item.get('request_id')}: {err.get('path')}: {err.get('code')}"
                + (f" ({err.get('detail')})" if err.get("detail") else "")
                for item in errors
                for err in item.get("errors", [])
            ]
            message += "; " + "; ".join(parts)
        return ValidationError(message, status=status, body=body, errors=errors or [])
    mapping: dict[int, type[APIError]] = {
        401: AuthError,
        402: PaymentRequiredError,
        403: AccountBlockedError,
        404: NotFoundError,
        429: RateLimitError,
    }
    if status in mapping:
        return mapping[status](message, status=status, body=body)
    if status >= 500:
        return ServerError(message, status=status, body=body)
    return APIError(message, status=status, body=body)
