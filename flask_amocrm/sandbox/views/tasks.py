"""Tasks."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from .. import events
from ..errors import INVALID_TYPE, NOT_BLANK, ApiError, FieldError
from ..records import ENTITIES, echoed_key_errors, is_int
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

bp = Blueprint("sandbox_tasks", __name__, url_prefix="/api/v4")

TASK_KEYS = {
    "id",
    "text",
    "complete_till",
    "entity_id",
    "entity_type",
    "task_type_id",
    "responsible_user_id",
    "duration",
    "is_completed",
    "result",
    "created_by",
    "updated_by",
    "created_at",
    "updated_at",
    "request_id",
}
INT_KEYS = {
    "complete_till",
    "entity_id",
    "task_type_id",
    "responsible_user_id",
    "duration",
    "created_by",
    "updated_by",
    "created_at",
    "updated_at",
}


def _check(s: Store, item: Any, existing: dict[str, Any] | None) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    errors = echoed_key_errors(item, TASK_KEYS)
    for key in INT_KEYS:
        if item.get(key) is not None and not is_int(item[key]):
            errors.append(
                FieldError(INVALID_TYPE, key, "This value should be of type int.")
            )
    if existing is None:
        for key in ("text", "complete_till"):
            if item.get(key) in (None, ""):
                errors.append(
                    FieldError(NOT_BLANK, key, "This value should not be blank.")
                )
    if (
        "text" in item
        and item["text"] is not None
        and not isinstance(item["text"], str)
    ):
        errors.append(
            FieldError(INVALID_TYPE, "text", "This value should be of type string.")
        )
    entity_type = item.get(
        "entity_type", existing.get("entity_type") if existing else None
    )
    entity_id = item.get("entity_id", existing.get("entity_id") if existing else None)
    if entity_type is not None and entity_type not in ENTITIES:
        errors.append(FieldError.not_a_choice("entity_type"))
    elif entity_id is not None:
        if entity_type is None:
            errors.append(
                FieldError(NOT_BLANK, "entity_type", "This value should not be blank.")
            )
        elif is_int(entity_id) and entity_id not in s.entities(entity_type):
            errors.append(FieldError.not_a_choice("entity_id"))
    if is_int(item.get("task_type_id")) and not any(
        t["id"] == item["task_type_id"] for t in s.data["task_types"]
    ):
        errors.append(FieldError.not_a_choice("task_type_id"))
    for key in ("responsible_user_id", "created_by"):
        if is_int(item.get(key)) and item[key] != 0 and s.user(item[key]) is None:
            errors.append(FieldError.not_a_choice(key))
    if "is_completed" in item and not isinstance(item["is_completed"], bool):
        errors.append(
            FieldError(
                INVALID_TYPE, "is_completed", "This value should be of type bool."
            )
        )
    result = item.get("result")
    if result not in (None, []) and (
        not isinstance(result, dict) or not isinstance(result.get("text", ""), str)
    ):
        errors.append(
            FieldError(INVALID_TYPE, "result", "This value should be of type object.")
        )
    return errors


def render_task(task: dict[str, Any]) -> dict[str, Any]:
    """A task as the API returns it."""
    out = dict(task)
    out["_links"] = link(f"/api/v4/tasks/{task['id']}")
    return out


def _apply(
    s: Store, item: dict[str, Any], existing: dict[str, Any] | None
) -> dict[str, Any]:
    ts = now()
    admin = s.data["account"]["current_user_id"]
    if existing is None:
        task = {
            "id": s.next_id("tasks"),
            "created_by": item.get("created_by", admin),
            "updated_by": item.get("created_by", admin),
            "created_at": item.get("created_at") or ts,
            "updated_at": item.get("updated_at") or ts,
            "responsible_user_id": item.get("responsible_user_id") or admin,
            "group_id": 0,
            "entity_id": item.get("entity_id"),
            "entity_type": item.get("entity_type"),
            "duration": item.get("duration", 0),
            "is_completed": bool(item.get("is_completed", False)),
            "task_type_id": item.get("task_type_id", 1),
            "text": item["text"],
            "result": item.get("result") or [],
            "complete_till": item["complete_till"],
            "account_id": s.account_id,
        }
        s.data["tasks"][task["id"]] = task
    else:
        task = existing
        was_completed = bool(task.get("is_completed"))
        for key in (
            "text",
            "complete_till",
            "entity_id",
            "entity_type",
            "task_type_id",
            "responsible_user_id",
            "duration",
            "is_completed",
            "result",
            "updated_by",
        ):
            if key in item:
                task[key] = item[key]
        task["updated_at"] = item.get("updated_at") or ts
    events.task_saved(
        s, task, existing is None, was_completed if existing is not None else False
    )
    s.touch()
    return task


@bp.get("/tasks")
def list_tasks() -> Response:
    """Tasks with amoCRM's filters; 204 when none."""
    s = store()
    with s.lock:
        page, limit = paging()
        tasks = list(s.data["tasks"].values())
        filters = parse_nested(request.args, "filter")
        tasks = apply_filters(
            tasks,
            filters,
            {
                "id",
                "responsible_user_id",
                "is_completed",
                "entity_type",
                "entity_id",
                "updated_at",
                "created_by",
            },
            {"task_type": lambda t, w: _match_type(t, w)},
        )
        tasks = order_items(
            tasks,
            parse_nested(request.args, "order"),
            ("created_at", "complete_till", "id"),
        )
        body = envelope("tasks", tasks, page, limit)
        if body is None:
            return no_content()
        body["_embedded"]["tasks"] = [
            render_task(t) for t in body["_embedded"]["tasks"]
        ]
        return hal(body)


def _match_type(task: dict[str, Any], wanted: Any) -> bool:
    from ..search import match_value

    return match_value(task.get("task_type_id"), wanted)


@bp.get("/tasks/<int:task_id>")
def get_task(task_id: int) -> Response:
    """One task; 204 when missing."""
    s = store()
    with s.lock:
        task = s.data["tasks"].get(task_id)
        if task is None:
            return no_content()
        return hal(render_task(task))


@bp.post("/tasks")
def create_tasks() -> Response:
    """Create tasks; ``text`` and ``complete_till`` are required."""
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        raise_if_errors(
            [
                (rid, _check(s, item, None))
                for rid, item in zip(rids, items, strict=True)
            ]
        )
        tasks = [_apply(s, item, None) for item in items]
        return hal(
            {
                "_links": {"self": {"href": f"{base_url()}/api/v4/tasks"}},
                "_embedded": {
                    "tasks": [
                        {
                            "id": t["id"],
                            "request_id": rid,
                            "_links": link(f"/api/v4/tasks/{t['id']}"),
                        }
                        for t, rid in zip(tasks, rids, strict=True)
                    ]
                },
            }
        )


@bp.patch("/tasks")
def update_tasks() -> Response:
    """Update tasks by id (e.g. close them with a result)."""
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        checked, targets = [], []
        for rid, item in zip(rids, items, strict=True):
            task = None
            if isinstance(item, dict) and is_int(item.get("id")):
                task = s.data["tasks"].get(item["id"])
            if task is None:
                checked.append(
                    (
                        rid,
                        [FieldError.not_a_choice("id")],
                    )
                )
            else:
                checked.append((rid, _check(s, item, task)))
            targets.append(task)
        raise_if_errors(checked)
        tasks = [_apply(s, item, t) for item, t in zip(items, targets, strict=True)]
        return hal(
            {
                "_embedded": {
                    "tasks": [
                        {
                            "id": t["id"],
                            "updated_at": t["updated_at"],
                            "request_id": rid,
                            "_links": link(f"/api/v4/tasks/{t['id']}"),
                        }
                        for t, rid in zip(tasks, rids, strict=True)
                    ]
                }
            }
        )


@bp.patch("/tasks/<int:task_id>")
def update_task(task_id: int) -> Response:
    """Update one task from a single object."""
    s = store()
    item = json_object()
    with s.lock:
        task = s.data["tasks"].get(task_id)
        if task is None:
            raise ApiError(404, "Task not found")
        raise_if_errors([("0", _check(s, item, task))])
        _apply(s, item, task)
        return hal(
            {
                "id": task["id"],
                "updated_at": task["updated_at"],
                "_links": link(f"/api/v4/tasks/{task['id']}"),
            }
        )
