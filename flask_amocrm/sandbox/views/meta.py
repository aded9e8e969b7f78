"""Account, users, pipelines, statuses and custom fields."""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, Response, request

from ..errors import (
    INVALID_TYPE,
    NOT_BLANK,
    NOT_EXPECTED,
    NOT_SUPPORTED,
    ApiError,
    FieldError,
)
from ..records import ENTITIES
from ..search import (
    apply_filters,
    envelope,
    order_items,
    paging,
    parse_nested,
    with_options,
)
from ..seed import ENTITY_FIELD_TYPES, make_field
from .common import (
    base_url,
    hal,
    json_array,
    link,
    no_content,
    raise_if_errors,
    request_id,
    store,
)

bp = Blueprint("sandbox_meta", __name__, url_prefix="/api/v4")
ENTITY = "<any(leads, contacts, companies):entity>"
FIELDS_PER_PAGE = 50
ACCOUNT_WITH = {
    "amojo_id",
    "amojo_rights",
    "users_groups",
    "task_types",
    "version",
    "entity_names",
    "datetime_settings",
    "drive_url",
    "uuid",
    "invoices_settings",
    "is_api_filter_enabled",
}


@bp.get("/account")
def account() -> Response:
    """The account, with the ``with=`` parts clients ask for."""
    s = store()
    with_ = with_options()
    with s.lock:
        data = dict(s.data["account"])
        out = {
            k: v for k, v in data.items() if k not in ("amojo_id", "uuid", "version")
        }
        embedded: dict[str, Any] = {}
        for key in ("amojo_id", "uuid", "version"):
            if key in with_:
                out[key] = data[key]
        if "is_api_filter_enabled" in with_:
            out["is_api_filter_enabled"] = True
        if "drive_url" in with_:
            out["drive_url"] = f"{base_url()}/drive"
        if "amojo_rights" in with_:
            embedded["amojo_rights"] = {"can_direct": True, "can_create_groups": True}
        if "users_groups" in with_:
            embedded["users_groups"] = [{"id": 0, "name": "Отдел продаж", "uuid": None}]
        if "task_types" in with_:
            embedded["task_types"] = copy.deepcopy(s.data["task_types"])
        if "entity_names" in with_:
            embedded["entity_names"] = {
                "leads": {"ru": {"gender": "f", "plural_form": {"dative": "сделкам"}}}
            }
        if "datetime_settings" in with_:
            embedded["datetime_settings"] = {
                "date_pattern": "d.m.Y H:i",
                "short_date_pattern": "d.m.Y",
                "short_time_pattern": "H:i",
                "date_format": "d.m.Y",
                "time_format": "H:i:s",
                "timezone": "UTC",
                "timezone_offset": "+00:00",
            }
        if "invoices_settings" in with_:
            embedded["invoices_settings"] = {"lang": "ru", "invoices_catalog_id": None}
        if embedded:
            out["_embedded"] = embedded
        out["_links"] = link("/api/v4/account")
        return hal(out)


def _user(user: dict[str, Any], with_: set[str]) -> dict[str, Any]:
    out = copy.deepcopy(user)
    out["_links"] = link(f"/api/v4/users/{user['id']}")
    embedded: dict[str, Any] = {"roles": [], "groups": []}
    if "group" in with_:
        embedded["groups"] = [{"id": 0, "name": "Отдел продаж"}]
    out["_embedded"] = embedded
    if "uuid" in with_:
        out["uuid"] = f"00000000-0000-4000-8000-{user['id']:012d}"
    return out


@bp.get("/users")
def users() -> Response:
    """Users of the account (the seeded token acts as the admin)."""
    s = store()
    with s.lock:
        page, limit = paging()
        with_ = with_options()
        body = envelope(
            "users",
            [_user(u, with_) for u in s.data["users"]],
            page,
            limit,
            total=True,
            page_count=True,
        )
        if body is None:
            return no_content()
        return hal(body)


@bp.get("/users/<int:user_id>")
def user(user_id: int) -> Response:
    """One user; 404 when missing."""
    s = store()
    with s.lock:
        found = s.user(user_id)
        if found is None:
            raise ApiError(404, "User not found")
        return hal(_user(found, with_options()))


def _status(status: dict[str, Any]) -> dict[str, Any]:
    out = dict(status)
    out["_links"] = link(
        f"/api/v4/leads/pipelines/{status['pipeline_id']}/statuses/{status['id']}"
    )
    return out


def _pipeline(pipeline: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in pipeline.items() if k != "statuses"}
    out["_links"] = link(f"/api/v4/leads/pipelines/{pipeline['id']}")
    out["_embedded"] = {"statuses": [_status(st) for st in pipeline["statuses"]]}
    return out


@bp.get("/leads/pipelines")
def pipelines() -> Response:
    """All pipelines with their statuses."""
    s = store()
    with s.lock:
        items = [_pipeline(p) for p in s.data["pipelines"]]
        return hal(
            {
                "_total_items": len(items),
                "_links": link("/api/v4/leads/pipelines"),
                "_embedded": {"pipelines": items},
            }
        )


def _find_pipeline(pipeline_id: int) -> dict[str, Any]:
    found = store().pipeline(pipeline_id)
    if found is None:
        raise ApiError(404, "Pipeline not found")
    return found


@bp.get("/leads/pipelines/<int:pipeline_id>")
def pipeline(pipeline_id: int) -> Response:
    """One pipeline; 404 ``Pipeline not found`` when missing."""
    with store().lock:
        return hal(_pipeline(_find_pipeline(pipeline_id)))


@bp.get("/leads/pipelines/<int:pipeline_id>/statuses")
def statuses(pipeline_id: int) -> Response:
    """A pipeline's statuses."""
    with store().lock:
        found = _find_pipeline(pipeline_id)
        items = [_status(st) for st in found["statuses"]]
        if "descriptions" in with_options():
            for st in items:
                st["descriptions"] = []
        return hal(
            {
                "_total_items": len(items),
                "_links": link(f"/api/v4/leads/pipelines/{pipeline_id}/statuses"),
                "_embedded": {"statuses": items},
            }
        )


@bp.get("/leads/pipelines/<int:pipeline_id>/statuses/<int:status_id>")
def status(pipeline_id: int, status_id: int) -> Response:
    """One status of a pipeline."""
    with store().lock:
        found = _find_pipeline(pipeline_id)
        for st in found["statuses"]:
            if st["id"] == status_id:
                return hal(_status(st))
        raise ApiError(404, "Status not found")


def _field(field: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(field)
    out["_links"] = link(f"/api/v4/{field['entity_type']}/custom_fields/{field['id']}")
    return out


@bp.get(f"/{ENTITY}/custom_fields")
def custom_fields(entity: str) -> Response:
    """An entity's custom fields, at most 50 per page."""
    s = store()
    with s.lock:
        page, limit = paging(FIELDS_PER_PAGE, clamp=True)
        items = list(s.fields(entity))
        filters = parse_nested(request.args, "filter")
        items = apply_filters(items, filters, {"type", "id"})
        items = order_items(items, parse_nested(request.args, "order"), ("sort", "id"))
        body = envelope(
            "custom_fields", items, page, limit, total=True, page_count=True
        )
        if body is None:
            return no_content()
        body["_embedded"]["custom_fields"] = [
            _field(f) for f in body["_embedded"]["custom_fields"]
        ]
        return hal(body)


@bp.get(f"/{ENTITY}/custom_fields/<int:field_id>")
def custom_field(entity: str, field_id: int) -> Response:
    """One custom field; 404 ``Custom field not found`` when missing."""
    s = store()
    with s.lock:
        for field in s.fields(entity):
            if field["id"] == field_id:
                return hal(_field(field))
        raise ApiError(404, "Custom field not found")


FIELD_KEYS = {
    "name",
    "type",
    "code",
    "sort",
    "enums",
    "is_api_only",
    "is_required",
    "is_visible",
    "group_id",
    "settings",
    "remind",
    "currency",
    "required_statuses",
    "tracking_callback",
    "request_id",
    "search_in",
}
ENUM_TYPES = {
    "select",
    "multiselect",
    "radiobutton",
    "multitext",
    "smart_address",
    "category",
}


def _check_field(entity: str, item: Any, taken: set[str]) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    errors = [
        FieldError(NOT_EXPECTED, k, "This field was not expected.")
        for k in item
        if k not in FIELD_KEYS
    ]
    if not isinstance(item.get("name"), str) or not item["name"].strip():
        errors.append(FieldError(NOT_BLANK, "name", "This value should not be blank."))
    if item.get("type") not in ENTITY_FIELD_TYPES[entity]:
        errors.append(FieldError.not_a_choice("type"))
    code = item.get("code")
    if code is not None and (not isinstance(code, str) or code in taken):
        errors.append(FieldError(NOT_SUPPORTED, "code", "This code is already used."))
    enums = item.get("enums")
    if item.get("type") in ENUM_TYPES:
        if not isinstance(enums, list) or not enums:
            errors.append(FieldError(NOT_BLANK, "enums", "Enums are required."))
        else:
            for i, enum in enumerate(enums):
                if not isinstance(enum, dict) or not isinstance(enum.get("value"), str):
                    errors.append(
                        FieldError(
                            INVALID_TYPE,
                            f"enums.{i}.value",
                            "This value should be of type string.",
                        )
                    )
    elif enums is not None:
        errors.append(FieldError(NOT_EXPECTED, "enums", "This field was not expected."))
    return errors


class _Ids:
    def __init__(self, s: Any) -> None:
        self.s = s

    def next_field(self) -> int:
        return self.s.next_id("field")

    def next_enum(self) -> int:
        return self.s.next_id("enum")


@bp.post(f"/{ENTITY}/custom_fields")
def create_custom_fields(entity: str) -> Response:
    """Create custom fields (answered 200, as other creates; the Kommo errors page
    shows a 201 for this call, so clients should accept both)."""
    s = store()
    items = json_array()
    with s.lock:
        taken = {f["code"] for f in s.fields(entity) if f["code"]}
        rids = [request_id(item, i) for i, item in enumerate(items)]
        raise_if_errors(
            [
                (rid, _check_field(entity, item, taken))
                for rid, item in zip(rids, items, strict=True)
            ]
        )
        out = []
        for rid, item in zip(rids, items, strict=True):
            enums = None
            if item.get("enums"):
                enums = [(e["value"], e.get("code")) for e in item["enums"]]
            field = make_field(
                _Ids(s),
                entity,
                item["name"].strip(),
                item["type"],
                code=item.get("code"),
                enums=enums,
                sort=int(item.get("sort") or 500),
                api_only=bool(item.get("is_api_only")),
            )
            field["is_required"] = bool(item.get("is_required"))
            s.fields(entity).append(field)
            rendered = _field(field)
            rendered["request_id"] = rid
            out.append(rendered)
        s.touch()
        return hal(
            {
                "_total_items": len(out),
                "_links": link(f"/api/v4/{entity}/custom_fields"),
                "_embedded": {"custom_fields": out},
            }
        )


__all__ = ["ENTITIES", "bp"]
