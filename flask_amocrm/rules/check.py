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

from ..i18n import N_
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
    out: list[str] = []
    for user in value if isinstance(value, list) else [value]:
        if not _fixed(user):
            continue
        _user_id, why = find_user(names, user)
        if why == INACTIVE_USER:
            out.append(
                N_(
                    "%(where)s: the user %(user)s is not active",
                    where=where,
                    user=repr(user),
                )
            )
        elif why is not None:
            out.append(
                N_("%(where)s: there is no user %(user)s", where=where, user=repr(user))
            )
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
                problems.append(_no_field(field_path, entity, name))
                continue
            problems += _enums(field, value, field_path)
        for name in section.get("lock") or []:
            code = lock_field(key, name)
            if code is not None and names.field(entity, code) is None:
                problems.append(_no_field(f"{path}.lock", entity, name))
        if key == "lead":
            problems += _pipeline(section, names, path)
    tracking = rule.get("tracking", True)
    for tag, (field, explicit) in tracking_targets(tracking).items():
        if (
            explicit
            and field not in (False, "note")
            and names.field("leads", field) is None
        ):
            problems.append(_no_field(f"{where}.tracking.{tag}", "leads", field))
    if tracking is not False and not names.field("leads", TRACKING_TAGS["utm_source"]):
        problems.append(
            N_(
                "%(where)s.tracking: the account has no UTM_SOURCE lead field; "
                "campaign tags are written only to the fields it has",
                where=where,
            )
        )
    files = rule.get("files")
    if isinstance(files, dict) and "field" in files:
        entity = ENTITY.get(files.get("entity", "lead"), "leads")
        if names.field(entity, files["field"]) is None:
            problems.append(_no_field(f"{where}.files.field", entity, files["field"]))
    if isinstance(files, dict):
        entity = ENTITY.get(files.get("entity", "lead"), "leads")
        for form_field, name in (files.get("fields") or {}).items():
            found = names.field(entity, name)
            if found is None or found.get("type") != "file":
                problems.append(
                    N_(
                        "%(where)s.files.fields.%(field)s: the %(entity)s have no "
                        "field %(name)s of type file",
                        where=where,
                        field=form_field,
                        entity=entity,
                        name=repr(name),
                    )
                )
    tasks = rule.get("task") or []
    for i, task in enumerate(tasks if isinstance(tasks, list) else [tasks]):
        path = f"{where}.task" + (f"[{i}]" if isinstance(tasks, list) else "")
        if _fixed(task.get("type")) and find_task_type(names, task["type"]) is None:
            problems.append(
                N_(
                    "%(where)s.type: there is no task type %(name)s",
                    where=path,
                    name=repr(task["type"]),
                )
            )
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
    options = ", ".join(str(e.get("value")) for e in field.get("enums") or [])
    return [
        N_(
            "%(where)s: %(value)s is not one of the values of %(field)s (%(options)s)",
            where=where,
            value=repr(_label(label)),
            field=repr(field["name"]),
            options=options,
        )
        for label in labels
        if find_enum(field, label) is None
    ]


def _no_field(where: str, entity: str, name: Any) -> str:
    return N_(
        "%(where)s: the %(entity)s have no field %(name)s",
        where=where,
        entity=entity,
        name=repr(name),
    )


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
            return [
                N_(
                    "%(where)s.pipeline: there is no pipeline %(name)s",
                    where=where,
                    name=repr(section["pipeline"]),
                )
            ]
    elif "pipeline" in section:
        return []
    if (
        "status" in section
        and _fixed(section["status"])
        and find_status(names, pipeline_id, section["status"]) is None
    ):
        return [
            N_(
                "%(where)s.status: there is no status %(name)s in that pipeline",
                where=where,
                name=repr(section["status"]),
            )
        ]
    return []
