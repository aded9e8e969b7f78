"""Tags of leads, contacts and companies."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from ..errors import INVALID_TYPE, NOT_BLANK, NOT_EXPECTED, FieldError
from ..records import create_tag, find_tag
from ..search import apply_filters, envelope, paging, parse_nested
from .common import (
    hal,
    json_array,
    link,
    no_content,
    raise_if_errors,
    request_id,
    store,
)

bp = Blueprint("sandbox_tags", __name__, url_prefix="/api/v4")
ENTITY = "<any(leads, contacts, companies):entity>"


@bp.get(f"/{ENTITY}/tags")
def list_tags(entity: str) -> Response:
    """Tags of an entity type: ``filter[name]``, ``filter[id][]``, ``query``."""
    s = store()
    with s.lock:
        page, limit = paging()
        tags = sorted(s.data["tags"][entity].values(), key=lambda t: t["id"])
        filters = parse_nested(request.args, "filter")
        tags = apply_filters(
            tags, filters, {"id"}, {"name": lambda t, w: t["name"] == w}
        )
        query = (request.args.get("query") or "").lower()
        if query:
            tags = [t for t in tags if query in t["name"].lower()]
        body = envelope("tags", [dict(t) for t in tags], page, limit)
        if body is None:
            return no_content()
        return hal(body)


def _check(entity: str, item: Any) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    allowed = {"name", "request_id"} | ({"color"} if entity == "leads" else set())
    errors = [
        FieldError(NOT_EXPECTED, k, "This field was not expected.")
        for k in item
        if k not in allowed
    ]
    if not isinstance(item.get("name"), str) or not item["name"].strip():
        errors.append(FieldError(NOT_BLANK, "name", "This value should not be blank."))
    return errors


@bp.post(f"/{ENTITY}/tags")
def create_tags(entity: str) -> Response:
    """Create tags. Tag names are unique per entity type, so an existing name
    answers with the existing tag (our reading; amoCRM's documentation is silent)."""
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        raise_if_errors(
            [(rid, _check(entity, item)) for rid, item in zip(rids, items, strict=True)]
        )
        out = []
        for rid, item in zip(rids, items, strict=True):
            tag = find_tag(s, entity, name=item["name"].strip()) or create_tag(
                s, entity, item["name"].strip(), item.get("color")
            )
            out.append(
                {
                    "id": tag["id"],
                    "name": tag["name"],
                    "color": tag.get("color"),
                    "request_id": rid,
                }
            )
        return hal(
            {
                "_total_items": len(out),
                "_links": link(f"/api/v4/{entity}/tags"),
                "_embedded": {"tags": out},
            }
        )
