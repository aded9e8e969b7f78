"""Notes of leads, contacts and companies."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from .. import events
from ..errors import INVALID_TYPE, NOT_BLANK, NOT_EXPECTED, ApiError, FieldError
from ..records import echoed_key_errors, is_int
from ..search import apply_filters, envelope, order_items, paging, parse_nested
from ..store import Store, now
from .common import (
    base_url,
    hal,
    json_array,
    json_object,
    link,
    no_content,
    raise_if_errors,
    request_id,
    store,
)

bp = Blueprint("sandbox_notes", __name__, url_prefix="/api/v4")
ENTITY = "<any(leads, contacts, companies):entity>"

# params each creatable note type takes: (required, optional)
NOTE_TYPES: dict[str, tuple[set[str], set[str]]] = {
    "common": ({"text"}, set()),
    "call_in": (
        {"uniq", "duration", "source", "link", "phone"},
        {"call_result", "call_status", "call_responsible"},
    ),
    "call_out": (
        {"uniq", "duration", "source", "link", "phone"},
        {"call_result", "call_status", "call_responsible"},
    ),
    "service_message": ({"service", "text"}, set()),
    "extended_service_message": ({"service", "text"}, set()),
    "geolocation": ({"text", "address", "longitude", "latitude"}, set()),
    "sms_in": ({"text", "phone"}, set()),
    "sms_out": ({"text", "phone"}, set()),
    "attachment": ({"file_uuid", "file_name"}, {"version_uuid"}),
}
NOTE_KEYS = {
    "id",
    "entity_id",
    "note_type",
    "params",
    "created_by",
    "updated_by",
    "created_at",
    "updated_at",
    "responsible_user_id",
    "request_id",
    "is_need_to_trigger_digital_pipeline",
}


def _check(
    s: Store,
    entity: str,
    item: Any,
    *,
    existing: dict[str, Any] | None,
    path_entity_id: int | None,
) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    errors = echoed_key_errors(item, NOTE_KEYS)
    entity_id = path_entity_id if path_entity_id is not None else item.get("entity_id")
    if existing is None:
        if entity_id is None:
            errors.append(
                FieldError(NOT_BLANK, "entity_id", "This value should not be blank.")
            )
        elif (
            not is_int(entity_id)
            or entity_id not in s.entities(entity)
            or s.entities(entity)[entity_id].get("is_deleted")
        ):
            errors.append(FieldError.not_a_choice("entity_id"))
    note_type = item.get("note_type", existing["note_type"] if existing else None)
    if note_type not in NOTE_TYPES:
        errors.append(FieldError.not_a_choice("note_type"))
        return errors
    params = item.get("params")
    if params is None and existing is not None:
        return errors
    if not isinstance(params, dict):
        errors.append(
            FieldError(NOT_BLANK, "params", "This value should not be blank.")
        )
        return errors
    required, optional = NOTE_TYPES[note_type]
    for key in params:
        if key not in required | optional:
            errors.append(
                FieldError(
                    NOT_EXPECTED, f"params.{key}", "This field was not expected."
                )
            )
    for key in sorted(required):
        if key not in params or params[key] in (None, ""):
            errors.append(
                FieldError(
                    NOT_BLANK, f"params.{key}", "This value should not be blank."
                )
            )
    for key in ("created_by", "responsible_user_id"):
        value = item.get(key)
        if value not in (None, 0) and (not is_int(value) or s.user(value) is None):
            errors.append(FieldError.not_a_choice(key))
    return errors


def render_note(entity: str, note: dict[str, Any]) -> dict[str, Any]:
    """A note as the API returns it."""
    out = {k: v for k, v in note.items() if not k.startswith("_")}
    out["_links"] = link(f"/api/v4/{entity}/{note['entity_id']}/notes/{note['id']}")
    return out


def _apply(
    s: Store,
    entity: str,
    item: dict[str, Any],
    entity_id: int | None,
    existing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ts = now()
    admin = s.data["account"]["current_user_id"]
    if existing is None:
        note = {
            "id": s.next_id("notes"),
            "entity_id": entity_id if entity_id is not None else item["entity_id"],
            "created_by": item.get("created_by", admin),
            "updated_by": item.get("created_by", admin),
            "created_at": item.get("created_at") or ts,
            "updated_at": item.get("updated_at") or ts,
            "responsible_user_id": item.get("responsible_user_id") or admin,
            "group_id": 0,
            "note_type": item["note_type"],
            "params": dict(item["params"]),
            "account_id": s.account_id,
            "is_pinned": False,
        }
        s.data["notes"][entity][note["id"]] = note
        events.note_added(s, entity, note)
    else:
        note = existing
        if "note_type" in item:
            note["note_type"] = item["note_type"]
        if item.get("params") is not None:
            note["params"] = dict(item["params"])
        note["updated_at"] = item.get("updated_at") or ts
        if "updated_by" in item:
            note["updated_by"] = item["updated_by"]
    s.touch()
    return note


def _list(entity: str, entity_id: int | None) -> Response:
    s = store()
    with s.lock:
        page, limit = paging()
        notes = list(s.data["notes"][entity].values())
        if entity_id is not None:
            notes = [n for n in notes if n["entity_id"] == entity_id]
        filters = parse_nested(request.args, "filter")
        notes = apply_filters(
            notes, filters, {"id", "note_type", "updated_at", "entity_id"}
        )
        notes = order_items(
            notes, parse_nested(request.args, "order"), ("updated_at", "id")
        )
        body = envelope("notes", notes, page, limit)
        if body is None:
            return no_content()
        body["_embedded"]["notes"] = [
            render_note(entity, n) for n in body["_embedded"]["notes"]
        ]
        return hal(body)


@bp.get(f"/{ENTITY}/notes")
def list_notes(entity: str) -> Response:
    """Notes of every entity of a type; 204 when none."""
    return _list(entity, None)


@bp.get(f"/{ENTITY}/<int:entity_id>/notes")
def list_entity_notes(entity: str, entity_id: int) -> Response:
    """Notes of one entity; 204 when none."""
    return _list(entity, entity_id)


@bp.get(f"/{ENTITY}/<int:entity_id>/notes/<int:note_id>")
def get_note(entity: str, entity_id: int, note_id: int) -> Response:
    """One note."""
    s = store()
    with s.lock:
        note = s.data["notes"][entity].get(note_id)
        if note is None or note["entity_id"] != entity_id:
            return no_content()
        return hal(render_note(entity, note))


@bp.get(f"/{ENTITY}/notes/<int:note_id>")
def get_note_by_id(entity: str, note_id: int) -> Response:
    """One note by its id alone, without the parent entity (ref. 7; the SDK's
    ``EntityNotes::getOne``). A missing note answers 204, as a missing entity."""
    s = store()
    with s.lock:
        note = s.data["notes"][entity].get(note_id)
        if note is None:
            return no_content()
        return hal(render_note(entity, note))


def _create(entity: str, entity_id: int | None) -> Response:
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        raise_if_errors(
            [
                (rid, _check(s, entity, item, existing=None, path_entity_id=entity_id))
                for rid, item in zip(rids, items, strict=True)
            ]
        )
        notes = [_apply(s, entity, item, entity_id) for item in items]
        return hal(
            {
                "_links": {"self": {"href": f"{base_url()}{request.path}"}},
                "_embedded": {
                    "notes": [
                        {
                            "id": n["id"],
                            "entity_id": n["entity_id"],
                            "request_id": rid,
                            "_links": render_note(entity, n)["_links"],
                        }
                        for n, rid in zip(notes, rids, strict=True)
                    ]
                },
            }
        )


@bp.post(f"/{ENTITY}/notes")
def create_notes(entity: str) -> Response:
    """Create notes; each names its ``entity_id``."""
    return _create(entity, None)


@bp.post(f"/{ENTITY}/<int:entity_id>/notes")
def create_entity_notes(entity: str, entity_id: int) -> Response:
    """Create notes of the entity named in the path."""
    return _create(entity, entity_id)


def _update(entity: str, entity_id: int | None) -> Response:
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        checked, targets = [], []
        for rid, item in zip(rids, items, strict=True):
            note = None
            if isinstance(item, dict) and is_int(item.get("id")):
                note = s.data["notes"][entity].get(item["id"])
                if (
                    note is not None
                    and entity_id is not None
                    and note["entity_id"] != entity_id
                ):
                    note = None
            if note is None:
                checked.append(
                    (
                        rid,
                        [FieldError.not_a_choice("id")],
                    )
                )
            else:
                checked.append(
                    (rid, _check(s, entity, item, existing=note, path_entity_id=None))
                )
            targets.append(note)
        raise_if_errors(checked)
        notes = [
            _apply(s, entity, item, None, note)
            for item, note in zip(items, targets, strict=True)
        ]
        return hal(
            {
                "_embedded": {
                    "notes": [
                        {
                            "id": n["id"],
                            "entity_id": n["entity_id"],
                            "updated_at": n["updated_at"],
                            "request_id": rid,
                            "_links": render_note(entity, n)["_links"],
                        }
                        for n, rid in zip(notes, rids, strict=True)
                    ]
                }
            }
        )


@bp.patch(f"/{ENTITY}/notes")
def update_notes(entity: str) -> Response:
    """Update notes by id."""
    return _update(entity, None)


@bp.patch(f"/{ENTITY}/<int:entity_id>/notes")
def update_entity_notes(entity: str, entity_id: int) -> Response:
    """Update notes of one entity by id."""
    return _update(entity, entity_id)


@bp.patch(f"/{ENTITY}/<int:entity_id>/notes/<int:note_id>")
def update_note(entity: str, entity_id: int, note_id: int) -> Response:
    """Update one note from a single object."""
    s = store()
    item = json_object()
    with s.lock:
        note = s.data["notes"][entity].get(note_id)
        if note is None or note["entity_id"] != entity_id:
            raise ApiError(404, "Note not found")
        raise_if_errors(
            [("0", _check(s, entity, item, existing=note, path_entity_id=None))]
        )
        _apply(s, entity, item, None, note)
        return hal(
            {
                "id": note["id"],
                "updated_at": note["updated_at"],
                "_links": render_note(entity, note)["_links"],
            }
        )


@bp.post(f"/{ENTITY}/notes/<int:note_id>/<any(pin, unpin):action>")
def pin_note(entity: str, note_id: int, action: str) -> Response:
    """Pin or unpin a note: 204."""
    s = store()
    with s.lock:
        note = s.data["notes"][entity].get(note_id)
        if note is None:
            raise ApiError(404, "Note not found")
        note["is_pinned"] = action == "pin"
        s.touch()
        return no_content()
