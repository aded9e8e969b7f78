"""Checking rules against an account (``flask amocrm check``).

Loading the rules checks their shape; this checks what only the account knows: that
every field, enum label, pipeline, status, user and task type a rule names by a fixed
value exists there. Values that are templates (``{{ data.x }}``) are known only per
event, so they are left to delivery, where a miss is a warning or a failed event with
the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .fields import ENTITY, ENUM_TYPES, STANDARD_FIELDS
from .schema import TRACKING_TAGS, find_rule, rule_names

if TYPE_CHECKING:
    from ..amo.metadata import AccountMetadata

_LOCK_NAMES = {
    "name",
    "first_name",
    "last_name",
    "price",
    "pipeline",
    "status",
    "responsible",
    "tags",
    "visitor_uid",
}


def _fixed(value: Any) -> bool:
    return (
        isinstance(value, int | str)
        and not isinstance(value, bool)
        and "{" not in str(value)
    )


def check_rules(rules: dict[str, Any], meta: AccountMetadata) -> list[str]:
    """Every problem found, each naming the rule and key; empty when all is well."""
    problems: list[str] = []
    for kind, source, where in rule_names(rules):
        rule = find_rule(rules, kind, source) or {}
        problems += _check_rule(rule, meta, where)
    return problems


def _users(value: Any, meta: AccountMetadata, where: str) -> list[str]:
    out = []
    for user in value if isinstance(value, list) else [value]:
        if not _fixed(user):
            continue
        found = meta.user(str(user).strip())
        if found is None:
            out.append(f"{where}: there is no user {user!r}")
        elif not found.get("is_active", True):
            out.append(f"{where}: the user {user!r} is not active")
    return out


def _check_rule(rule: dict[str, Any], meta: AccountMetadata, where: str) -> list[str]:
    problems: list[str] = []
    if "responsible" in rule:
        problems += _users(rule["responsible"], meta, f"{where}.responsible")
    for key, entity in ENTITY.items():
        section = rule.get(key)
        if not isinstance(section, dict):
            continue
        path = f"{where}.{key}"
        if "responsible" in section:
            problems += _users(section["responsible"], meta, f"{path}.responsible")
        wanted: dict[Any, tuple[str, Any]] = {
            code: (f"{path}.{std}", section[std])
            for std, code in STANDARD_FIELDS[key].items()
            if std in section
        }
        wanted.update(
            {
                name: (f"{path}.fields.{name}", value)
                for name, value in (section.get("fields") or {}).items()
            }
        )
        for name, (field_path, value) in wanted.items():
            field = meta.field(entity, name)
            if field is None:
                problems.append(f"{field_path}: the {entity} have no field {name!r}")
                continue
            problems += _enums(meta, field, value, field_path)
        for name in section.get("lock") or []:
            if name in _LOCK_NAMES:
                continue
            code = STANDARD_FIELDS[key].get(str(name), name)
            if meta.field(entity, code) is None:
                problems.append(f"{path}.lock: the {entity} have no field {name!r}")
        if key == "lead":
            problems += _pipeline(section, meta, path)
    tracking = rule.get("tracking", True)
    if isinstance(tracking, dict):
        for tag, field in tracking.items():
            if field is not False and meta.field("leads", field) is None:
                problems.append(
                    f"{where}.tracking.{tag}: the leads have no field {field!r}"
                )
    if tracking is not False and not meta.field("leads", TRACKING_TAGS["utm_source"]):
        problems.append(
            f"{where}.tracking: the account has no UTM_SOURCE lead field; "
            "campaign tags are written only to the fields it has"
        )
    files = rule.get("files")
    if isinstance(files, dict) and "field" in files:
        entity = ENTITY.get(files.get("entity", "lead"), "leads")
        if meta.field(entity, files["field"]) is None:
            problems.append(
                f"{where}.files.field: the {entity} have no field {files['field']!r}"
            )
    tasks = rule.get("task") or []
    for i, task in enumerate(tasks if isinstance(tasks, list) else [tasks]):
        path = f"{where}.task" + (f"[{i}]" if isinstance(tasks, list) else "")
        if _fixed(task.get("type")) and meta.task_type(str(task["type"])) is None:
            problems.append(f"{path}.type: there is no task type {task['type']!r}")
        if "responsible" in task:
            problems += _users(task["responsible"], meta, f"{path}.responsible")
    return problems


def _enums(
    meta: AccountMetadata, field: dict[str, Any], value: Any, where: str
) -> list[str]:
    if field.get("type") not in ENUM_TYPES:
        return []
    labels = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            item = item.get("enum_id", item.get("enum", item.get("value")))
        if _fixed(item):
            labels.append(item)
    return [
        f"{where}: {label!r} is not one of the values of {field['name']!r} ("
        + ", ".join(str(e.get("value")) for e in field.get("enums") or [])
        + ")"
        for label in labels
        if meta.enum_id(field, label) is None
    ]


def _pipeline(section: dict[str, Any], meta: AccountMetadata, where: str) -> list[str]:
    pipeline_id = None
    if "pipeline" in section and _fixed(section["pipeline"]):
        pipeline = meta.pipeline(str(section["pipeline"]).strip())
        if pipeline is None:
            return [f"{where}.pipeline: there is no pipeline {section['pipeline']!r}"]
        pipeline_id = pipeline["id"]
    elif "pipeline" in section:
        return []
    if (
        "status" in section
        and _fixed(section["status"])
        and meta.status(pipeline_id, str(section["status"]).strip()) is None
    ):
        return [
            f"{where}.status: there is no status {section['status']!r} in that pipeline"
        ]
    return []
