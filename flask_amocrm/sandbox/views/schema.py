"""Changing the account's schema: custom fields and their groups, pipelines and
their statuses (ref. 4.1 and 5).

Reads of pipelines, statuses and fields are in :mod:`.meta`; this module holds the
writes, and the custom-field groups list.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from ..errors import (
    INVALID_TYPE,
    NOT_BLANK,
    NOT_EXPECTED,
    NOT_SUPPORTED,
    ApiError,
    FieldError,
)
from ..records import ENTITIES, IGNORED_KEYS, LOST, WON
from ..search import envelope, paging
from ..store import Store
from .common import (
    hal,
    json_array,
    json_object,
    link,
    no_content,
    raise_if_errors,
    request_id,
    store,
)
from .meta import ENUM_TYPES, FIELD_KEYS, FIELDS_PER_PAGE, _field, _pipeline, _status

bp = Blueprint("sandbox_schema", __name__, url_prefix="/api/v4")
ENTITY = "<any(leads, contacts, companies):entity>"

# Keys a field update may change. ``type`` and ``entity_type`` are fixed once the
# field exists; the read-only keys of a fetched field sent back are ignored.
FIELD_UPDATE_KEYS = (FIELD_KEYS - {"type"}) | {"id"}
FIELD_READ_ONLY = IGNORED_KEYS | {
    "type",
    "entity_type",
    "is_predefined",
    "is_deletable",
    "hidden_statuses",
    "chained_lists",
    "_embedded",
}
MAX_PIPELINES = 50
MAX_STATUSES = 100
PIPELINE_KEYS = {"name", "sort", "is_main", "is_unsorted_on", "request_id", "id"}
PIPELINE_READ_ONLY = IGNORED_KEYS | {"is_archive", "_embedded"}
STATUS_KEYS = {"name", "sort", "color", "request_id", "id", "descriptions"}
STATUS_READ_ONLY = IGNORED_KEYS | {"is_editable", "pipeline_id", "type"}


def _unexpected(
    item: dict[str, Any], writable: set[str], ignored: set[str]
) -> list[FieldError]:
    return [
        FieldError(NOT_EXPECTED, k, "This field was not expected.")
        for k in item
        if k not in writable and k not in ignored
    ]


# -- custom fields -----------------------------------------------------------


def _find_field(s: Store, entity: str, field_id: Any) -> dict[str, Any] | None:
    for field in s.fields(entity):
        if field["id"] == field_id:
            return field
    return None


def _check_field_update(
    s: Store, entity: str, item: Any, field: dict[str, Any] | None
) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    if field is None:
        return [FieldError.not_a_choice("id")]
    errors = _unexpected(item, FIELD_UPDATE_KEYS, FIELD_READ_ONLY)
    if "name" in item and (
        not isinstance(item["name"], str) or not item["name"].strip()
    ):
        errors.append(FieldError(NOT_BLANK, "name", "This value should not be blank."))
    code = item.get("code")
    if code is not None and code != field["code"]:
        taken = {f["code"] for f in s.fields(entity) if f["code"]}
        if not isinstance(code, str) or code in taken or field["is_predefined"]:
            errors.append(
                FieldError(NOT_SUPPORTED, "code", "This code is already used.")
            )
    if "sort" in item and not isinstance(item["sort"], int):
        errors.append(
            FieldError(INVALID_TYPE, "sort", "This value should be of type int.")
        )
    enums = item.get("enums")
    if enums is not None:
        if field["type"] not in ENUM_TYPES:
            errors.append(
                FieldError(NOT_EXPECTED, "enums", "This field was not expected.")
            )
        elif not isinstance(enums, list) or not enums:
            errors.append(FieldError(NOT_BLANK, "enums", "Enums are required."))
        else:
            known = {e["id"] for e in field["enums"] or []}
            for i, enum in enumerate(enums):
                if not isinstance(enum, dict) or not isinstance(enum.get("value"), str):
                    errors.append(
                        FieldError(
                            INVALID_TYPE,
                            f"enums.{i}.value",
                            "This value should be of type string.",
                        )
                    )
                elif "id" in enum and enum["id"] not in known:
                    errors.append(FieldError.not_a_choice(f"enums.{i}.id"))
    return errors


def _apply_field_update(s: Store, field: dict[str, Any], item: dict[str, Any]) -> None:
    # name and enums are applied on their own, below.
    for key in FIELD_UPDATE_KEYS - {"id", "name", "enums", "request_id"}:
        if key in item:
            field[key] = item[key]
    if "name" in item:
        field["name"] = item["name"].strip()
    if item.get("enums") is not None:
        # The list sent replaces the enums: an item with ``id`` keeps (and may
        # rename) that enum, one without is a new enum, one left out is removed.
        old = {e["id"]: e for e in field["enums"] or []}
        new = []
        for i, enum in enumerate(item["enums"]):
            kept = dict(old[enum["id"]]) if "id" in enum else {"id": s.next_id("enum")}
            kept["value"] = enum["value"]
            kept["sort"] = enum.get("sort", kept.get("sort", 10 * (i + 1)))
            kept["code"] = enum.get("code", kept.get("code"))
            new.append(kept)
        field["enums"] = new
    s.touch()


@bp.patch(f"/{ENTITY}/custom_fields")
def update_custom_fields(entity: str) -> Response:
    """Update fields by ``id`` (an array), all or none."""
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        targets = [
            _find_field(s, entity, item.get("id")) if isinstance(item, dict) else None
            for item in items
        ]
        raise_if_errors(
            [
                (rid, _check_field_update(s, entity, item, field))
                for rid, item, field in zip(rids, items, targets, strict=True)
            ]
        )
        out = []
        for rid, item, field in zip(rids, items, targets, strict=True):
            assert field is not None
            _apply_field_update(s, field, item)
            rendered = _field(field)
            rendered["request_id"] = rid
            out.append(rendered)
        return hal(
            {
                "_total_items": len(out),
                "_links": link(f"/api/v4/{entity}/custom_fields"),
                "_embedded": {"custom_fields": out},
            }
        )


@bp.patch(f"/{ENTITY}/custom_fields/<int:field_id>")
def update_custom_field(entity: str, field_id: int) -> Response:
    """Update one field from a single object; 404 when it does not exist."""
    s = store()
    item = json_object()
    with s.lock:
        field = _find_field(s, entity, field_id)
        if field is None:
            raise ApiError(404, "Custom field not found")
        item = {k: v for k, v in item.items() if k != "id"}
        raise_if_errors(
            [(request_id(item, 0), _check_field_update(s, entity, item, field))]
        )
        _apply_field_update(s, field, item)
        return hal(_field(field))


@bp.delete(f"/{ENTITY}/custom_fields/<int:field_id>")
def delete_custom_field(entity: str, field_id: int) -> Response:
    """Delete a field: 204. Its values leave every entity. A predefined field
    (``is_deletable: false``: PHONE, EMAIL, the UTM fields...) cannot be deleted."""
    s = store()
    with s.lock:
        field = _find_field(s, entity, field_id)
        if field is None:
            raise ApiError(404, "Custom field not found")
        if not field.get("is_deletable", True):
            raise ApiError(400, "Custom field can not be deleted")
        s.fields(entity).remove(field)
        for obj in s.entities(entity).values():
            values = obj.get("custom_fields_values")
            if values:
                kept = [v for v in values if v.get("field_id") != field_id]
                obj["custom_fields_values"] = kept or None
        s.touch()
        return no_content()


def _groups(s: Store, entity: str) -> list[dict[str, Any]]:
    """The default group (``id`` "default", predefined) holding every field with
    no ``group_id``, then one group per other ``group_id`` the fields name."""
    by_group: dict[str, list[int]] = {}
    for field in sorted(s.fields(entity), key=lambda f: (f["sort"], f["id"])):
        by_group.setdefault(field.get("group_id") or "default", []).append(field["id"])
    by_group.setdefault("default", [])
    out = []
    for sort, (group_id, ids) in enumerate(
        sorted(by_group.items(), key=lambda kv: kv[0] != "default")
    ):
        default = group_id == "default"
        out.append(
            {
                "id": group_id,
                "name": "Основное" if default else str(group_id),
                "sort": sort,
                "entity_type": entity,
                "is_predefined": default,
                "type": "custom_field_group",
                "fields": ids,
                "_links": link(f"/api/v4/{entity}/custom_fields/groups/{group_id}"),
            }
        )
    return out


@bp.get(f"/{ENTITY}/custom_fields/groups")
def custom_field_groups(entity: str) -> Response:
    """The entity's field groups (the SDK's ``CustomFieldGroups``)."""
    s = store()
    with s.lock:
        page, limit = paging(FIELDS_PER_PAGE, clamp=True)
        body = envelope(
            "custom_field_groups",
            _groups(s, entity),
            page,
            limit,
            total=True,
            page_count=True,
        )
        return hal(body) if body is not None else no_content()


@bp.get(f"/{ENTITY}/custom_fields/groups/<group_id>")
def custom_field_group(entity: str, group_id: str) -> Response:
    """One field group; 404 when there is none with that id."""
    s = store()
    with s.lock:
        for group in _groups(s, entity):
            if group["id"] == group_id:
                return hal(group)
        raise ApiError(404, "Custom field group not found")


# -- pipelines and statuses --------------------------------------------------


def _find_pipeline(s: Store, pipeline_id: int) -> dict[str, Any]:
    found = s.pipeline(pipeline_id)
    if found is None:
        raise ApiError(404, "Pipeline not found")
    return found


def _check_name(item: dict[str, Any], required: bool) -> list[FieldError]:
    if "name" not in item and not required:
        return []
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        return [FieldError(NOT_BLANK, "name", "This value should not be blank.")]
    return []


def _check_sort(item: dict[str, Any]) -> list[FieldError]:
    if "sort" in item and (
        not isinstance(item["sort"], int) or isinstance(item["sort"], bool)
    ):
        return [FieldError(INVALID_TYPE, "sort", "This value should be of type int.")]
    return []


def _check_status(item: Any, required: bool) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    errors = _unexpected(item, STATUS_KEYS, STATUS_READ_ONLY)
    errors += _check_name(item, required) + _check_sort(item)
    if "color" in item and not isinstance(item["color"], str):
        errors.append(
            FieldError(INVALID_TYPE, "color", "This value should be of type string.")
        )
    return errors


def _check_pipeline(item: Any, creating: bool) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    errors = _unexpected(item, PIPELINE_KEYS, PIPELINE_READ_ONLY)
    errors += _check_name(item, creating) + _check_sort(item)
    for key in ("is_main", "is_unsorted_on"):
        if key in item and not isinstance(item[key], bool):
            errors.append(
                FieldError(INVALID_TYPE, key, "This value should be of type bool.")
            )
    if creating:
        embedded = item.get("_embedded")
        statuses = embedded.get("statuses") if isinstance(embedded, dict) else None
        if not isinstance(statuses, list) or not statuses:
            errors.append(
                FieldError(
                    NOT_BLANK, "_embedded.statuses", "This value should not be blank."
                )
            )
        else:
            for i, st in enumerate(statuses):
                for err in _check_status(st, required=True):
                    err.path = f"_embedded.statuses.{i}.{err.path}".rstrip(".")
                    errors.append(err)
            if len(statuses) + 3 > MAX_STATUSES:
                errors.append(
                    FieldError(
                        NOT_SUPPORTED,
                        "_embedded.statuses",
                        f"A pipeline holds at most {MAX_STATUSES} statuses.",
                    )
                )
    return errors


def _system_status(
    s: Store, pipeline_id: int, status_id: int, name: str, sort: int, color: str
) -> dict[str, Any]:
    return {
        "id": status_id,
        "name": name,
        "sort": sort,
        "is_editable": False,
        "pipeline_id": pipeline_id,
        "color": color,
        "type": 1 if status_id not in (WON, LOST) else 0,
        "account_id": s.account_id,
    }


def _new_status(
    s: Store, pipeline_id: int, item: dict[str, Any], sort: int
) -> dict[str, Any]:
    return {
        "id": s.next_id("status"),
        "name": item["name"].strip(),
        "sort": item.get("sort", sort),
        "is_editable": True,
        "pipeline_id": pipeline_id,
        "color": item.get("color") or "#99ccff",
        "type": 0,
        "account_id": s.account_id,
    }


def _set_main(s: Store, pipeline: dict[str, Any]) -> None:
    for other in s.data["pipelines"]:
        other["is_main"] = other is pipeline


@bp.post("/leads/pipelines")
def create_pipelines() -> Response:
    """Create pipelines from an array; each needs ``name`` and its statuses in
    ``_embedded.statuses``. Every pipeline gets the system statuses: Incoming
    leads (type 1) first, and 142 (won) and 143 (lost) last; a status sent with
    id 142 or 143 renames that system status instead of adding one."""
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        raise_if_errors(
            [
                (rid, _check_pipeline(item, True))
                for rid, item in zip(rids, items, strict=True)
            ]
        )
        if len(s.data["pipelines"]) + len(items) > MAX_PIPELINES:
            raise ApiError(400, f"An account holds at most {MAX_PIPELINES} pipelines")
        out = []
        for rid, item in zip(rids, items, strict=True):
            pid = s.next_id("pipeline")
            sort = item.get("sort", 10 * (len(s.data["pipelines"]) + 1))
            pipeline: dict[str, Any] = {
                "id": pid,
                "name": item["name"].strip(),
                "sort": sort,
                "is_main": False,
                "is_unsorted_on": item.get("is_unsorted_on", True),
                "is_archive": False,
                "account_id": s.account_id,
                "statuses": [],
            }
            won = {"name": "Успешно реализовано", "color": "#CCFF66"}
            lost = {"name": "Закрыто и не реализовано", "color": "#D5D8DB"}
            regular = []
            for st in item["_embedded"]["statuses"]:
                if st.get("id") == WON:
                    won.update({k: st[k] for k in ("name", "color") if k in st})
                elif st.get("id") == LOST:
                    lost.update({k: st[k] for k in ("name", "color") if k in st})
                else:
                    regular.append(st)
            statuses = [
                _system_status(
                    s, pid, s.next_id("status"), "Неразобранное", 10, "#c1c1c1"
                )
            ]
            statuses += [
                _new_status(s, pid, st, 20 + 10 * i) for i, st in enumerate(regular)
            ]
            statuses.append(
                _system_status(s, pid, WON, won["name"], 10000, won["color"])
            )
            statuses.append(
                _system_status(s, pid, LOST, lost["name"], 11000, lost["color"])
            )
            pipeline["statuses"] = statuses
            s.data["pipelines"].append(pipeline)
            if item.get("is_main"):
                _set_main(s, pipeline)
            rendered = _pipeline(pipeline)
            rendered["request_id"] = rid
            out.append(rendered)
        s.touch()
        return hal(
            {
                "_total_items": len(out),
                "_links": link("/api/v4/leads/pipelines"),
                "_embedded": {"pipelines": out},
            }
        )


@bp.patch("/leads/pipelines/<int:pipeline_id>")
def update_pipeline(pipeline_id: int) -> Response:
    """Change a pipeline's ``name``, ``sort``, ``is_main``, ``is_unsorted_on``.
    The main pipeline stays main until another is made main."""
    s = store()
    item = json_object()
    with s.lock:
        pipeline = _find_pipeline(s, pipeline_id)
        errors = _check_pipeline(item, False)
        if item.get("is_main") is False and pipeline["is_main"]:
            errors.append(
                FieldError(
                    NOT_SUPPORTED, "is_main", "The account needs a main pipeline."
                )
            )
        raise_if_errors([(request_id(item, 0), errors)])
        if "name" in item:
            pipeline["name"] = item["name"].strip()
        for key in ("sort", "is_unsorted_on"):
            if key in item:
                pipeline[key] = item[key]
        if item.get("is_main"):
            _set_main(s, pipeline)
        s.touch()
        return hal(_pipeline(pipeline))


def _has_leads(s: Store, pipeline_id: int, status_id: int | None = None) -> bool:
    for lead in s.entities("leads").values():
        if lead.get("is_deleted") or lead.get("pipeline_id") != pipeline_id:
            continue
        if status_id is None or lead.get("status_id") == status_id:
            return True
    return False


@bp.delete("/leads/pipelines/<int:pipeline_id>")
def delete_pipeline(pipeline_id: int) -> Response:
    """Delete a pipeline: 204. The main pipeline, and one that still holds
    leads, cannot be deleted (400)."""
    s = store()
    with s.lock:
        pipeline = _find_pipeline(s, pipeline_id)
        if pipeline["is_main"]:
            raise ApiError(400, "The main pipeline can not be deleted")
        if _has_leads(s, pipeline_id):
            raise ApiError(400, "The pipeline has leads; move them first")
        s.data["pipelines"].remove(pipeline)
        s.touch()
        return no_content()


@bp.post("/leads/pipelines/<int:pipeline_id>/statuses")
def create_statuses(pipeline_id: int) -> Response:
    """Add statuses (an array) before the closing 142 and 143."""
    s = store()
    items = json_array()
    with s.lock:
        pipeline = _find_pipeline(s, pipeline_id)
        rids = [request_id(item, i) for i, item in enumerate(items)]
        raise_if_errors(
            [
                (rid, _check_status(item, True))
                for rid, item in zip(rids, items, strict=True)
            ]
        )
        if len(pipeline["statuses"]) + len(items) > MAX_STATUSES:
            raise ApiError(400, f"A pipeline holds at most {MAX_STATUSES} statuses")
        regular = [st for st in pipeline["statuses"] if st["id"] not in (WON, LOST)]
        closing = [st for st in pipeline["statuses"] if st["id"] in (WON, LOST)]
        top = max((st["sort"] for st in regular), default=10)
        out = []
        for i, (rid, item) in enumerate(zip(rids, items, strict=True)):
            st = _new_status(s, pipeline_id, item, top + 10 * (i + 1))
            regular.append(st)
            rendered = _status(st)
            rendered["request_id"] = rid
            out.append(rendered)
        pipeline["statuses"] = sorted(regular, key=lambda st: st["sort"]) + closing
        s.touch()
        return hal(
            {
                "_total_items": len(out),
                "_links": link(f"/api/v4/leads/pipelines/{pipeline_id}/statuses"),
                "_embedded": {"statuses": out},
            }
        )


def _find_status(pipeline: dict[str, Any], status_id: int) -> dict[str, Any]:
    for st in pipeline["statuses"]:
        if st["id"] == status_id:
            return st
    raise ApiError(404, "Status not found")


@bp.patch("/leads/pipelines/<int:pipeline_id>/statuses/<int:status_id>")
def update_status(pipeline_id: int, status_id: int) -> Response:
    """Change a status's ``name``, ``sort``, ``color``. 142 and 143 may be renamed
    and recoloured but keep their place; the Incoming-leads stage cannot change."""
    s = store()
    item = json_object()
    with s.lock:
        pipeline = _find_pipeline(s, pipeline_id)
        st = _find_status(pipeline, status_id)
        errors = _check_status(item, False)
        changes = {
            k for k in ("name", "sort", "color") if k in item and item[k] != st[k]
        }
        if st["type"] == 1 and changes:
            errors.append(
                FieldError(
                    NOT_SUPPORTED, "id", "The Incoming leads stage can not be changed."
                )
            )
        if st["id"] in (WON, LOST) and "sort" in changes:
            errors.append(
                FieldError(NOT_EXPECTED, "sort", "This field was not expected.")
            )
        raise_if_errors([(request_id(item, 0), errors)])
        if "name" in item:
            st["name"] = item["name"].strip()
        for key in ("sort", "color"):
            if key in item:
                st[key] = item[key]
        regular = [x for x in pipeline["statuses"] if x["id"] not in (WON, LOST)]
        closing = [x for x in pipeline["statuses"] if x["id"] in (WON, LOST)]
        pipeline["statuses"] = sorted(regular, key=lambda x: x["sort"]) + closing
        s.touch()
        return hal(_status(st))


@bp.delete("/leads/pipelines/<int:pipeline_id>/statuses/<int:status_id>")
def delete_status(pipeline_id: int, status_id: int) -> Response:
    """Delete a status: 204. The system statuses (Incoming leads, 142 won, 143
    lost) cannot be deleted, nor a status that still holds leads (400)."""
    s = store()
    with s.lock:
        pipeline = _find_pipeline(s, pipeline_id)
        st = _find_status(pipeline, status_id)
        if not st["is_editable"] or st["id"] in (WON, LOST) or st["type"] == 1:
            raise ApiError(400, "A system status can not be deleted")
        if _has_leads(s, pipeline_id, status_id):
            raise ApiError(400, "The status has leads; move them first")
        pipeline["statuses"].remove(st)
        s.touch()
        return no_content()


__all__ = ["ENTITIES", "bp"]
