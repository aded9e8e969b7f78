"""Helpers shared by the API views: bodies, responses, links."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, current_app, request

from ..errors import ApiError, FieldError, ValidationFailed
from ..store import Store

MAX_BATCH = 250


def sandbox() -> Any:
    """The running sandbox (config, store, auth, limiter, faults, log)."""
    return current_app.extensions["amocrm_sandbox"]


def store() -> Store:
    """The account state."""
    return sandbox().store


def hal(body: Any, status: int = 200) -> Response:
    """A success response as amoCRM sends it."""
    return Response(
        json.dumps(body, ensure_ascii=False),
        status=status,
        mimetype="application/hal+json",
    )


def no_content() -> Response:
    """204 with an empty body: empty lists, searches and missing entities."""
    response = Response(status=204)
    response.headers.pop("Content-Type", None)
    return response


def hal_or_204(body: dict[str, Any] | None) -> Response:
    """``body`` as HAL, or 204 when there is nothing to show."""
    if body is None:
        return no_content()
    return hal(body)


def base_url() -> str:
    """``http://host:port`` of the current request."""
    return request.host_url.rstrip("/")


def link(path: str) -> dict[str, Any]:
    """``{"self": {"href": ...}}`` for an API path such as ``/api/v4/leads/1``."""
    return {"self": {"href": base_url() + path}}


def json_body() -> Any:
    """The parsed JSON body; malformed JSON is a 400 problem."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError(400, "Request body is empty")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Request body is not valid JSON") from None


def json_array(max_items: int = MAX_BATCH) -> list[Any]:
    """A non-empty JSON array body of at most ``max_items`` items."""
    body = json_body()
    if not isinstance(body, list):
        raise ApiError(400, "Request body must be an array of objects")
    if not body:
        raise ApiError(400, "Request body must not be empty")
    if len(body) > max_items:
        # The real API refuses more than 250 entities (50 for complex) per call.
        raise ApiError(
            400, f"Too many entities in one request: {len(body)}, at most {max_items}"
        )
    return body


def json_object() -> dict[str, Any]:
    """A JSON object body."""
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be an object")
    return body


def request_id(item: Any, index: int) -> str:
    """The item's client ``request_id``, or its index as the SDK would set it."""
    if isinstance(item, dict) and item.get("request_id") is not None:
        return str(item["request_id"])
    return str(index)


def raise_if_errors(collected: list[tuple[str, list[FieldError]]]) -> None:
    """Raise 400 ``validation-errors`` when any item had errors."""
    bad = [(rid, errors) for rid, errors in collected if errors]
    if bad:
        raise ValidationFailed(bad)


def int_arg(value: Any) -> bool:
    """Whether ``value`` is an int (and not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)
