"""Checking rules against an account (``flask amocrm check``).

Loading the rules checks their shape; this checks what only the account knows: that
every field, enum label, pipeline, status, user and task type a rule names by a fixed
value exists there. Values that are templates (``{{ data.x }}``) are known only per
event, so they are left to delivery, where a miss is a warning or a failed event with
the reason. Whether a name resolves is decided by the same functions rendering uses
(:mod:`.account`, :mod:`.render.entities`, :func:`.fields.find_enum`).
"""

from __future__ import annotations

from typing import Any

from ..vocabulary import ENTITY, TRACKING_TAGS
from .account import (
    INACTIVE_USER,
    AccountNames,
    find_pipeline,
    find_status,
    find_task_type,
    find_user,
)
from .fields import ENUM_TYPES, find_enum
from .render.entities import lock_field, section_fields, tracking_targets
from .schema import find_rule, rule_names


def _fixed(value: Any) -> bool:
    return (
        isinstance(value, int | str)
        and not isinstance(value, bool)
        and "{" not in str(value)
    )


def check_rules(rules: dict[str, Any], names: AccountNames) -> list[str]:
    """Every problem found, each naming the rule and key; empty when all is well."""
    problems: list[str] = []
    for kind, source, where in rule_names(rules):
        rule = find_rule(rules, kind, source) or {}
        problems += _check_rule(rule, names, where)
    return problems


def _users(value: Any, names: AccountNames, where: str) -> list[str]:
    out = []
    for user in value if isinstance(value, list) else [value]:
        if not _fixed(user):
            continue
        _user_id, why = find_user(names, user)
        if why == INACTIVE_USER:
            out.append(f"{where}: the user {user!r} is not active")
        elif why is not None:
            out.append(f"{where}: there is no user {user!r}")
    return out


def _check_rule(rule: dict[str, Any], names: AccountNames, where: str) -> list[str]:
    problems: list[str] = []
    if "responsible" in rule:
        problems += _users(rule["responsible"], names, f"{where}.responsible")
    for key, entity in ENTITY.items():
        section = rule.get(key)
        if not isinstance(section, dict):
            continue
        path = f"{where}.{key}"
        if "responsible" in section:
            problems += _users(section["responsible"], names, f"{path}.responsible")
        for name, (field_path, value) in section_fields(key, section, path).items():
            field = names.field(entity, name)
            if field is None:
                problems.append(f"{field_path}: the {entity} have no field {name!r}")
                continue
            problems += _enums(field, value, field_path)
        for name in section.get("lock") or []:
            code = lock_field(key, name)
            if code is not None and names.field(entity, code) is None:
                problems.append(f"{path}.lock: the {entity} have no field {name!r}")
        if key == "lead":
            problems += _pipeline(section, names, path)
    tracking = rule.get("tracking", True)
    for tag, (field, explicit) in tracking_targets(tracking).items():
        if (
            explicit
            and field not in (False, "note")
            and names.field("leads", field) is None
        ):
            problems.append(
                f"{where}.tracking.{tag}: the leads have no field {field!r}"
            )
    if tracking is not False and not names.field("leads", TRACKING_TAGS["utm_source"]):
        problems.append(
            f"{where}.tracking: the account has no UTM_SOURCE lead field; "
            "campaign tags are written only to the fields it has"
        )
    files = rule.get("files")
    if isinstance(files, dict) and "field" in files:
        entity = ENTITY.get(files.get("entity", "lead"), "leads")
        if names.field(entity, files["field"]) is None:
            problems.append(
                f"{where}.files.field: the {entity} have no field {files['field']!r}"
            )
    if isinstance(files, dict):
        entity = ENTITY.get(files.get("entity", "lead"), "leads")
        for form_field, name in (files.get("fields") or {}).items():
            found = names.field(entity, name)
            if found is None or found.get("type") != "file":
                problems.append(
                    f"{where}.files.fields.{form_field}: the {entity} have no "
                    f"field {name!r} of type file"
                )
    tasks = rule.get("task") or []
    for i, task in enumerate(tasks if isinstance(tasks, list) else [tasks]):
        path = f"{where}.task" + (f"[{i}]" if isinstance(tasks, list) else "")
        if _fixed(task.get("type")) and find_task_type(names, task["type"]) is None:
            problems.append(f"{path}.type: there is no task type {task['type']!r}")
        if "responsible" in task:
            problems += _users(task["responsible"], names, f"{path}.responsible")
    return problems


def _enums(field: dict[str, Any], value: Any, where: str) -> list[str]:
    if field.get("type") not in ENUM_TYPES:
        return []
    labels = [
        item
        for item in (value if isinstance(value, list) else [value])
        if _fixed(item if not isinstance(item, dict) else _label(item))
    ]
    return [
        f"{where}: {_label(label)!r} is not one of the values of {field['name']!r} ("
        + ", ".join(str(e.get("value")) for e in field.get("enums") or [])
        + ")"
        for label in labels
        if find_enum(field, label) is None
    ]


def _label(item: Any) -> Any:
    """The label or id an enum value names (``{enum = "Courier"}`` → ``Courier``)."""
    if isinstance(item, dict):
        return item.get(
            "enum_id", item.get("enum", item.get("enum_code", item.get("value")))
        )
    return item


def _pipeline(section: dict[str, Any], names: AccountNames, where: str) -> list[str]:
    pipeline_id = None
    if "pipeline" in section and _fixed(section["pipeline"]):
        pipeline_id = find_pipeline(names, section["pipeline"])
        if pipeline_id is None:
            return [f"{where}.pipeline: there is no pipeline {section['pipeline']!r}"]
    elif "pipeline" in section:
        return []
    if (
        "status" in section
        and _fixed(section["status"])
        and find_status(names, pipeline_id, section["status"]) is None
    ):
        return [
            f"{where}.status: there is no status {section['status']!r} in that pipeline"
        ]
    return []
