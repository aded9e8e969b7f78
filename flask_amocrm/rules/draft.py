"""What a ``before_push`` hook sees of a plan, and how its changes go back in.

A :class:`~.plan.Plan` holds amoCRM's JSON payloads; a hook gets a :class:`PushPlan`
instead: the lead, contact and company as :class:`EntityDraft` (name, price, pipeline,
status, responsible user, tags, custom field values), the notes as :class:`NoteDraft`
and the tasks as :class:`TaskDraft`, plain typed attributes. :func:`draft_of` makes the
view; :func:`apply_draft` writes back what the hook changed, attribute by attribute
(comparing with an untouched copy), so what the hook did not touch stays exactly as the
rule rendered it, and the same changes can be put on a plan rendered again (the worker
renders again after reading the account's metadata anew).

Pure code: no Flask, no network.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import RuleError
from .plan import EntityPlan, NoteSpec, Plan, TaskSpec

#: The entities a plan may have.
ENTITIES = ("lead", "contact", "company")
#: The payload keys an :class:`EntityDraft` shows as attributes of its own name.
_SCALARS = (
    "name",
    "first_name",
    "last_name",
    "price",
    "pipeline_id",
    "status_id",
    "responsible_user_id",
)


@dataclass
class FieldValue:
    """One value of a custom field: ``value`` for text, numbers, dates (Unix
    seconds) and flags; ``enum_id`` or ``enum_code`` for a list choice (a phone's
    ``WORK``, a select's option)."""

    value: Any = None
    enum_id: int | None = None
    enum_code: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.value is not None:
            out["value"] = self.value
        if self.enum_id is not None:
            out["enum_id"] = self.enum_id
        if self.enum_code is not None:
            out["enum_code"] = self.enum_code
        return out


@dataclass
class EntityDraft:
    """The lead, contact or company the event creates (or updates).

    Attributes that do not apply to the entity (``price`` on a contact) stay
    ``None``; ``None`` means "not sent". ``fields`` maps a field id (``int``) or a
    field code (``"PHONE"``) to its values.
    """

    name: str | None = None
    #: Contacts only.
    first_name: str | None = None
    last_name: str | None = None
    #: Leads only: whole units of the account's currency.
    price: int | None = None
    pipeline_id: int | None = None
    status_id: int | None = None
    responsible_user_id: int | None = None
    tags: list[str] = field(default_factory=list)
    fields: dict[int | str, list[FieldValue]] = field(default_factory=dict)

    def get_field(self, key: int | str) -> list[Any]:
        """The plain values of field ``key`` (enum choices give their id or code)."""
        return [
            v.value if v.value is not None else (v.enum_id or v.enum_code)
            for v in self.fields.get(key, [])
        ]

    def set_field(self, key: int | str, *values: Any) -> None:
        """Set field ``key`` to ``values`` (plain values or :class:`FieldValue`);
        none: the field is not sent."""
        if not values:
            self.fields.pop(key, None)
            return
        self.fields[key] = [
            v if isinstance(v, FieldValue) else FieldValue(value=v) for v in values
        ]


@dataclass
class NoteDraft:
    """A note on the event's ``lead``, ``contact`` or ``company``."""

    text: str
    entity: str = "lead"
    #: Skip it when the entity already has a note with this text.
    unique: bool = False


@dataclass
class TaskDraft:
    """A task on the event's ``lead``, ``contact`` or ``company``."""

    text: str
    #: When it is due (a naive datetime is read as UTC).
    deadline: datetime
    entity: str = "lead"
    task_type_id: int | None = None
    responsible_user_id: int | None = None
    #: Seconds.
    duration: int | None = None


@dataclass
class PushPlan:
    """What one event is about to become in amoCRM, for a ``before_push`` hook to
    read and change. Setting ``contact`` (or ``company``) to ``None`` leaves it
    out; setting a new :class:`EntityDraft` adds one."""

    lead: EntityDraft | None = None
    contact: EntityDraft | None = None
    company: EntityDraft | None = None
    notes: list[NoteDraft] = field(default_factory=list)
    tasks: list[TaskDraft] = field(default_factory=list)
    #: Whether the event becomes an incoming lead (Unsorted); read only.
    unsorted: bool = False


# -- plan → view -----------------------------------------------------------------------


def _entity_draft(entity: EntityPlan) -> EntityDraft:
    payload = entity.payload
    draft = EntityDraft(
        **{k: copy.deepcopy(payload[k]) for k in _SCALARS if k in payload}
    )
    draft.tags = [
        str(t.get("name"))
        for t in (payload.get("_embedded") or {}).get("tags") or []
        if isinstance(t, dict) and t.get("name")
    ]
    for item in payload.get("custom_fields_values") or []:
        key = item.get("field_id")
        key = key if key is not None else item.get("field_code")
        draft.fields[key] = [
            FieldValue(
                value=copy.deepcopy(v.get("value")),
                enum_id=v.get("enum_id"),
                enum_code=v.get("enum_code"),
            )
            for v in item.get("values") or []
        ]
    return draft


def draft_of(plan: Plan) -> PushPlan:
    """The view of ``plan`` a hook gets (a copy: changing it changes nothing until
    :func:`apply_draft`)."""
    view = PushPlan(unsorted=plan.unsorted is not None)
    for key in ENTITIES:
        entity = plan.entity(key)
        if entity is not None:
            setattr(view, key, _entity_draft(entity))
    view.notes = [NoteDraft(n.text, n.key, n.unique) for n in plan.notes]
    view.tasks = [
        TaskDraft(
            text=str(t.payload.get("text", "")),
            deadline=datetime.fromtimestamp(int(t.payload["complete_till"]), UTC),
            entity=t.key,
            task_type_id=t.payload.get("task_type_id"),
            responsible_user_id=t.payload.get("responsible_user_id"),
            duration=t.payload.get("duration"),
        )
        for t in plan.tasks
    ]
    return view


# -- view → plan -----------------------------------------------------------------------


def _fail(where: str, problem: str) -> RuleError:
    return RuleError(f"before_push hook: plan.{where} {problem}")


def _check_entity(key: str, draft: Any) -> EntityDraft:
    if not isinstance(draft, EntityDraft):
        raise _fail(key, f"must be an EntityDraft or None, not {type(draft).__name__}")
    for name in ("name", "first_name", "last_name"):
        value = getattr(draft, name)
        if value is not None and not isinstance(value, str):
            raise _fail(f"{key}.{name}", "must be a text or None")
    for name in ("price", "pipeline_id", "status_id", "responsible_user_id"):
        value = getattr(draft, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int)
        ):
            raise _fail(f"{key}.{name}", "must be a whole number or None")
    if not isinstance(draft.tags, list) or not all(
        isinstance(t, str) for t in draft.tags
    ):
        raise _fail(f"{key}.tags", "must be a list of texts")
    if not isinstance(draft.fields, dict):
        raise _fail(f"{key}.fields", "must be a dict of field id or code to values")
    for fkey, values in draft.fields.items():
        if isinstance(fkey, bool) or not isinstance(fkey, int | str):
            raise _fail(f"{key}.fields", f"has a key that is no id or code: {fkey!r}")
        if not isinstance(values, list) or not all(
            isinstance(v, FieldValue) for v in values
        ):
            raise _fail(
                f"{key}.fields[{fkey!r}]",
                "must be a list of FieldValue (use set_field for plain values)",
            )
    return draft


def _write(entity: EntityPlan, before: EntityDraft | None, after: EntityDraft) -> None:
    """Put what differs between ``before`` and ``after`` into the payload."""
    payload = entity.payload
    for name in _SCALARS:
        value = getattr(after, name)
        if before is not None and getattr(before, name) == value:
            continue
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    if before is None or before.tags != after.tags:
        embedded = payload.setdefault("_embedded", {})
        if after.tags:
            embedded["tags"] = [{"name": t} for t in dict.fromkeys(after.tags)]
        else:
            embedded.pop("tags", None)
        if not embedded:
            payload.pop("_embedded")
    if before is None or before.fields != after.fields:
        items = []
        for key, values in after.fields.items():
            if not values:
                continue
            ident = "field_id" if isinstance(key, int) else "field_code"
            items.append({ident: key, "values": [v.to_json() for v in values]})
        if items:
            payload["custom_fields_values"] = items
        else:
            payload.pop("custom_fields_values", None)


def apply_draft(plan: Plan, before: PushPlan, after: PushPlan) -> None:
    """Change ``plan`` as the hook changed ``before`` into ``after``. Raises
    :class:`~flask_amocrm.errors.RuleError` naming what the hook set wrong."""
    if not isinstance(after, PushPlan):
        raise _fail("", "was replaced by something that is not a PushPlan")
    for key in ENTITIES:
        old, new = getattr(before, key), getattr(after, key)
        if new is None:
            if old is not None:
                if key == "lead" and plan.unsorted is not None:
                    raise _fail("lead", "cannot be removed from an incoming lead")
                setattr(plan, key, None)
                # its notes and tasks go with it (unless the hook wrote new lists)
                plan.notes = [n for n in plan.notes if n.key != key]
                plan.tasks = [t for t in plan.tasks if t.key != key]
            continue
        new = _check_entity(key, new)
        entity = plan.entity(key)
        if entity is None:
            entity = EntityPlan(key, {})
            setattr(plan, key, entity)
            old = None
        _write(entity, old, new)
    if after.notes != before.notes:
        notes = []
        for i, note in enumerate(after.notes):
            if not isinstance(note, NoteDraft) or not isinstance(note.text, str):
                raise _fail(f"notes[{i}]", "must be a NoteDraft with a text")
            if note.entity not in ENTITIES:
                raise _fail(f"notes[{i}].entity", "must be lead, contact or company")
            notes.append(NoteSpec(note.entity, note.text, bool(note.unique)))
        plan.notes = notes
    if after.tasks != before.tasks:
        if after.tasks and plan.unsorted is not None:
            raise _fail("tasks", "must stay empty: incoming leads take no tasks")
        plan.tasks = [_task(i, t) for i, t in enumerate(after.tasks)]
    if not plan.entities():
        raise _fail("", "has no lead, contact or company left: raise Cancel instead")
    keys = [("notes", i, n.key) for i, n in enumerate(plan.notes)]
    keys += [("tasks", i, t.key) for i, t in enumerate(plan.tasks)]
    for what, i, key in keys:
        if plan.entity(key) is None:
            raise _fail(
                f"{what}[{i}].entity", f"is the {key}, which the plan no longer has"
            )


def _task(index: int, task: Any) -> TaskSpec:
    where = f"tasks[{index}]"
    if not isinstance(task, TaskDraft) or not isinstance(task.text, str):
        raise _fail(where, "must be a TaskDraft with a text")
    if task.entity not in ENTITIES:
        raise _fail(f"{where}.entity", "must be lead, contact or company")
    if not isinstance(task.deadline, datetime):
        raise _fail(f"{where}.deadline", "must be a datetime")
    deadline = task.deadline
    if deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=UTC)
    payload: dict[str, Any] = {
        "text": task.text,
        "complete_till": int(deadline.timestamp()),
    }
    for name in ("task_type_id", "responsible_user_id", "duration"):
        value = getattr(task, name)
        if value is not None:
            payload[name] = int(value)
    return TaskSpec(task.entity, payload)


__all__ = [
    "EntityDraft",
    "FieldValue",
    "NoteDraft",
    "PushPlan",
    "TaskDraft",
    "apply_draft",
    "draft_of",
]
