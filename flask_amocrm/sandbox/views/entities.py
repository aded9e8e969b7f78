"""``/api/v4/{leads,contacts,companies}``: list, get, create, update (ref. 2, 3)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from ..errors import NOT_BLANK, ApiError, FieldError
from ..records import apply_item, check_item, is_int, render
from ..search import (
    apply_filters,
    envelope,
    match_custom_fields,
    match_value,
    order_items,
    paging,
    parse_nested,
    text_matches,
    with_options,
)
from .common import (
    base_url,
    hal,
    hal_or_204,
    json_array,
    json_object,
    link,
    no_content,
    raise_if_errors,
    request_id,
    store,
)

bp = Blueprint("sandbox_entities", __name__, url_prefix="/api/v4")

ENTITY = "<any(leads, contacts, companies):entity>"
SIMPLE_FILTERS = {
    "id",
    "name",
    "price",
    "created_at",
    "updated_at",
    "closed_at",
    "created_by",
    "updated_by",
    "responsible_user_id",
    "pipeline_id",
    "status_id",
}


def _statuses_filter(item: dict[str, Any], wanted: Any) -> bool:
    options = wanted.values() if isinstance(wanted, dict) else wanted
    if not isinstance(options, (list, type({}.values()))):
        return True
    for option in options:
        if not isinstance(option, dict):
            continue
        if match_value(
            item.get("pipeline_id"), option.get("pipeline_id")
        ) and match_value(item.get("status_id"), option.get("status_id")):
            return True
    return False


def visible(entity: str, obj: dict[str, Any], with_: set[str]) -> bool:
    """Whether a list shows ``obj``: deleted ones only with ``only_deleted``,
    and contacts of a pending incoming lead not at all."""
    if obj.get("is_deleted"):
        return "only_deleted" in with_
    if "only_deleted" in with_:
        return False
    return not obj.get("is_unsorted", False)


def list_page(entity: str, items: list[dict[str, Any]], with_: set[str]) -> Response:
    """Search, filter, order and page ``items``, then render the page."""
    s = store()
    page, limit = paging()
    query = request.args.get("query")
    if query:
        items = [o for o in items if text_matches(o, query)]
    filters = parse_nested(request.args, "filter")
    items = apply_filters(
        items,
        filters,
        SIMPLE_FILTERS,
        {"statuses": _statuses_filter, "custom_fields_values": match_custom_fields},
    )
    items = order_items(
        items, parse_nested(request.args, "order"), ("created_at", "updated_at", "id")
    )
    body = envelope(entity, items, page, limit)
    if body is None:
        return no_content()
    body["_embedded"][entity] = [
        render(s, entity, o, with_, link) for o in body["_embedded"][entity]
    ]
    return hal(body)


@bp.get(f"/{ENTITY}")
def list_entities(entity: str) -> Response:
    """A page of leads, contacts or companies; 204 when nothing matches."""
    s = store()
    with_ = with_options()
    with s.lock:
        stored = s.entities(entity)
        wanted = parse_nested(request.args, "filter").get("id")
        if isinstance(wanted, list):
            # filter[id][]=...: read those, not the whole account (same result)
            ids = {int(i) for i in wanted if str(i).isdigit()}
            chosen = [stored[i] for i in sorted(ids) if i in stored]
        else:
            chosen = list(stored.values())
        items = [o for o in chosen if visible(entity, o, with_)]
        return list_page(entity, items, with_)


@bp.get(f"/{ENTITY}/<int:entity_id>")
def get_entity(entity: str, entity_id: int) -> Response:
    """One entity. A missing id answers 204, as the real API does for lists and
    as the Krukov SDK expects (amoCRM's documentation allows 204 or 404)."""
    s = store()
    with s.lock:
        obj = s.entities(entity).get(entity_id)
        if obj is None or obj.get("is_deleted"):
            return no_content()
        return hal(render(s, entity, obj, with_options(), link))


def _created(entity: str, obj: dict[str, Any], rid: str) -> dict[str, Any]:
    out: dict[str, Any] = {"id": obj["id"]}
    if entity == "contacts":
        out["is_deleted"] = False
        out["is_unsorted"] = False
    out["request_id"] = rid
    out["_links"] = link(f"/api/v4/{entity}/{obj['id']}")
    return out


@bp.post(f"/{ENTITY}")
def create_entities(entity: str) -> Response:
    """Create up to 250 entities from an array."""
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        raise_if_errors(
            [
                (rid, check_item(s, entity, item))
                for rid, item in zip(rids, items, strict=True)
            ]
        )
        created = [apply_item(s, entity, item) for item in items]
        return hal(
            {
                "_links": {"self": {"href": f"{base_url()}/api/v4/{entity}"}},
                "_embedded": {
                    entity: [
                        _created(entity, o, rid)
                        for o, rid in zip(created, rids, strict=True)
                    ]
                },
            }
        )


def _updated(entity: str, obj: dict[str, Any], rid: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": obj["id"], "updated_at": obj["updated_at"]}
    if rid is not None:
        out["request_id"] = rid
    out["_links"] = link(f"/api/v4/{entity}/{obj['id']}")
    return out


@bp.patch(f"/{ENTITY}")
def update_entities(entity: str) -> Response:
    """Update up to 250 entities; each item names its ``id``."""
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        checked = []
        targets = []
        for rid, item in zip(rids, items, strict=True):
            obj = None
            errors: list[FieldError] = []
            if not isinstance(item, dict) or item.get("id") is None:
                errors.append(
                    FieldError(NOT_BLANK, "id", "This value should not be blank.")
                )
            else:
                obj = s.entities(entity).get(item["id"]) if is_int(item["id"]) else None
                if obj is None or obj.get("is_deleted"):
                    errors.append(FieldError.not_a_choice("id"))
                else:
                    errors += check_item(s, entity, item, existing=obj, creating=False)
            checked.append((rid, errors))
            targets.append(obj)
        raise_if_errors(checked)
        updated = [
            apply_item(s, entity, item, obj)
            for item, obj in zip(items, targets, strict=True)
        ]
        return hal(
            {
                "_links": {"self": {"href": f"{base_url()}/api/v4/{entity}"}},
                "_embedded": {
                    entity: [
                        _updated(entity, o, rid)
                        for o, rid in zip(updated, rids, strict=True)
                    ]
                },
            }
        )


@bp.patch(f"/{ENTITY}/<int:entity_id>")
def update_entity(entity: str, entity_id: int) -> Response:
    """Update one entity from a single object."""
    s = store()
    item = json_object()
    with s.lock:
        obj = s.entities(entity).get(entity_id)
        if obj is None or obj.get("is_deleted"):
            raise ApiError(404, f"{entity[:-1].capitalize()} not found")
        item = {k: v for k, v in item.items() if k != "id"}
        raise_if_errors(
            [
                (
                    request_id(item, 0),
                    check_item(s, entity, item, existing=obj, creating=False),
                )
            ]
        )
        apply_item(s, entity, item, obj)
        return hal(_updated(entity, obj, None))


__all__ = ["bp", "hal_or_204"]
