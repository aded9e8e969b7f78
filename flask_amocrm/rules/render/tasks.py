"""Tasks: the rule's ``task`` (one table or a list), on the lead, contact or company.

The deadline is a phrase (:mod:`flask_amocrm.rules.deadlines`) read in the account's
time zone; the task goes to its own ``responsible``, else to its entity's. Incoming
leads take no tasks.
"""

from __future__ import annotations

from typing import Any

from ...errors import RuleError
from ...i18n import N_
from ..account import find_task_type
from ..clean import LONG_LIMIT
from ..deadlines import DEFAULT_DEADLINE, deadline
from ..plan import TaskSpec
from .builder import PlanBuilder
from .people import user


def tasks(b: PlanBuilder) -> None:
    """Add the rule's tasks to the plan."""
    value = b.rule.get("task")
    if not value:
        return
    items = value if isinstance(value, list) else [value]
    if b.unsorted:
        b.plan.warnings.append(
            N_(
                "%(where)s.task: incoming leads take no tasks; the task was not "
                "created",
                where=b.where,
            )
        )
        return
    now = b.env.timestamp()
    for i, task in enumerate(items):
        where = f"{b.where}.task" + (f"[{i}]" if isinstance(value, list) else "")
        b.plan.tasks.append(_task(b, task, where, now))


def _task(b: PlanBuilder, task: dict[str, Any], where: str, now: float) -> TaskSpec:
    key = task.get("entity", "lead")
    entity = b.plan.entity(key)
    if entity is None:
        raise RuleError(
            N_(
                "%(where)s.entity: the task is for the %(key)s, but this event "
                "makes no %(key)s (the rule has no '%(key)s' section, or its "
                "values were all empty)",
                where=where,
                key=key,
            )
        )
    payload: dict[str, Any] = {}
    text = b.text(
        task.get("text", "{{ form or event }}"),
        f"{where}.text",
        None,
        limit=LONG_LIMIT,
        multiline=True,
    )
    payload["text"] = text or str(b.event.source)
    when = b.text(task.get("deadline", DEFAULT_DEADLINE), f"{where}.deadline", None)
    payload["complete_till"] = deadline(
        when or DEFAULT_DEADLINE,
        now=now,
        tz=b.env.tz,
        workday_end=b.env.workday_end,
        where=f"{where}.deadline",
    )
    if "type" in task:
        wanted = b.render(task["type"], f"{where}.type")
        type_id = find_task_type(b.env.meta(f"{where}.type"), wanted)
        if type_id is None:
            raise RuleError(
                N_(
                    "%(where)s.type: there is no task type %(name)s in the account "
                    "(see 'flask amocrm check')",
                    where=where,
                    name=repr(wanted),
                )
            )
        payload["task_type_id"] = type_id
    if "duration" in task:
        payload["duration"] = int(task["duration"])
    if "responsible" in task:
        user_id = user(b, task["responsible"], f"{where}.responsible", key)
    else:
        user_id = entity.payload.get("responsible_user_id")
    if user_id:
        payload["responsible_user_id"] = user_id
    return TaskSpec(key, payload)


__all__ = ["tasks"]
