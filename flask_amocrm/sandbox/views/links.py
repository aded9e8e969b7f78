"""Links between entities."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from ..errors import INVALID_TYPE, NOT_BLANK, NOT_EXPECTED, ApiError, FieldError
from ..records import LINKABLE, add_link, is_int, links_of, remove_link
from ..search import match_value, parse_nested
from ..store import Store
from .common import (
    hal,
    json_array,
    link,
    no_content,
    raise_if_errors,
    request_id,
    store,
)

bp = Blueprint("sandbox_links", __name__, url_prefix="/api/v4")
ENTITY = "<any(leads, contacts, companies):entity>"
LINK_KEYS = {"entity_id", "to_entity_id", "to_entity_type", "metadata", "request_id"}


def _entity_exists(s: Store, entity: str, entity_id: Any) -> bool:
    obj = s.entities(entity).get(entity_id) if is_int(entity_id) else None
    return obj is not None and not obj.get("is_deleted")


def _check(s: Store, entity: str, item: Any, mass: bool) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    errors = [
        FieldError(NOT_EXPECTED, k, "This field was not expected.")
        for k in item
        if k not in LINK_KEYS or (k == "entity_id" and not mass)
    ]
    if mass:
        if item.get("entity_id") is None:
            errors.append(
                FieldError(NOT_BLANK, "entity_id", "This value should not be blank.")
            )
        elif not _entity_exists(s, entity, item["entity_id"]):
            errors.append(FieldError.not_a_choice("entity_id"))
    to_type = item.get("to_entity_type")
    if to_type not in LINKABLE[entity]:
        # Catalog elements and customers are not part of the sandbox.
        errors.append(FieldError.not_a_choice("to_entity_type"))
    elif not _entity_exists(s, to_type, item.get("to_entity_id")):
        errors.append(FieldError.not_a_choice("to_entity_id"))
    metadata = item.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        errors.append(
            FieldError(INVALID_TYPE, "metadata", "This value should be of type object.")
        )
    return errors


def _do(entity: str, entity_id: int | None, unlink: bool) -> Response:
    s = store()
    items = json_array()
    with s.lock:
        if entity_id is not None and not _entity_exists(s, entity, entity_id):
            raise ApiError(404, "Entity not found")
        rids = [request_id(item, i) for i, item in enumerate(items)]
        raise_if_errors(
            [
                (rid, _check(s, entity, item, entity_id is None))
                for rid, item in zip(rids, items, strict=True)
            ]
        )
        out = []
        for item in items:
            eid = entity_id if entity_id is not None else item["entity_id"]
            if unlink:
                remove_link(
                    s, entity, eid, item["to_entity_type"], item["to_entity_id"]
                )
                continue
            forward = add_link(
                s,
                entity,
                eid,
                item["to_entity_type"],
                item["to_entity_id"],
                item.get("metadata"),
            )
            out.append(
                {
                    "entity_id": eid,
                    "entity_type": entity,
                    "to_entity_id": forward["to_entity_id"],
                    "to_entity_type": forward["to_entity_type"],
                    "metadata": dict(forward["metadata"]) or None,
                }
            )
        if unlink:
            return no_content()
        return hal(
            {
                "_total_items": len(out),
                "_links": link(request.path),
                "_embedded": {"links": out},
            }
        )


@bp.post(f"/{ENTITY}/<int:entity_id>/link")
def link_one(entity: str, entity_id: int) -> Response:
    """Link one entity to others."""
    return _do(entity, entity_id, unlink=False)


@bp.post(f"/{ENTITY}/<int:entity_id>/unlink")
def unlink_one(entity: str, entity_id: int) -> Response:
    """Unlink: 204."""
    return _do(entity, entity_id, unlink=True)


@bp.post(f"/{ENTITY}/link")
def link_mass(entity: str) -> Response:
    """Link many entities; each item names its ``entity_id``."""
    return _do(entity, None, unlink=False)


@bp.post(f"/{ENTITY}/unlink")
def unlink_mass(entity: str) -> Response:
    """Unlink many: 204."""
    return _do(entity, None, unlink=True)


def _render(entity: str, entity_id: int, lk: dict[str, Any]) -> dict[str, Any]:
    return {
        "entity_id": entity_id,
        "entity_type": entity,
        "to_entity_id": lk["to_entity_id"],
        "to_entity_type": lk["to_entity_type"],
        "metadata": dict(lk["metadata"]) or None,
    }


def _filtered(entity: str, ids: list[int]) -> Response:
    s = store()
    filters = parse_nested(request.args, "filter")
    out = []
    for entity_id in ids:
        for lk in links_of(s, entity, entity_id):
            if "to_entity_type" in filters and not match_value(
                lk["to_entity_type"], filters["to_entity_type"]
            ):
                continue
            if "to_entity_id" in filters and not match_value(
                lk["to_entity_id"], filters["to_entity_id"]
            ):
                continue
            out.append(_render(entity, entity_id, lk))
    if not out:
        return no_content()
    return hal(
        {
            "_total_items": len(out),
            "_links": link(request.path),
            "_embedded": {"links": out},
        }
    )


@bp.get(f"/{ENTITY}/<int:entity_id>/links")
def links_one(entity: str, entity_id: int) -> Response:
    """Links of one entity; 204 when none."""
    with store().lock:
        return _filtered(entity, [entity_id])


@bp.get(f"/{ENTITY}/links")
def links_mass(entity: str) -> Response:
    """Links of the entities named by ``filter[entity_id][]``."""
    with store().lock:
        wanted = parse_nested(request.args, "filter").get("entity_id")
        if wanted is None:
            raise ApiError(400, "filter[entity_id] is required")
        values = wanted if isinstance(wanted, list) else [wanted]
        ids = [int(v) for v in values if str(v).isdigit()]
        return _filtered(entity, ids)
