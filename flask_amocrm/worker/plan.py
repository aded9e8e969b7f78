"""Planning: render an event's rule into the amoCRM records it becomes.

Pure code: no Flask, no network. :func:`build_plan` reads the rule (DESIGN.md 3.1) and
the event and returns a :class:`Plan`: the lead, contact and company to create or
update, the incoming lead (unsorted mode), the notes and the tasks, plus the warnings
gathered on the way. Names in the rule (pipelines, users, fields, enum labels, task
types) are turned into ids through the account's metadata, which is asked for only when
a rule needs it (:class:`PlanEnv`).

:meth:`Plan.steps` lists the API steps the plan needs and :meth:`Plan.done` says whether
an event's ``remote`` records them all; :mod:`.execute` makes the calls, and
:meth:`Plan.calls` describes them for ``flask amocrm preview``.

Duplicate control (a section's ``duplicates``) gives an entity a
:class:`~flask_amocrm.dedup.DuplicateRule`; the ``lookup`` step then decides, per
entity, whether to create it or to reuse the earliest duplicate, and saves that in
``remote`` (``found``, ``duplicates``, ``duplicate_notes``). Which of the later steps a
plan needs therefore depends on ``remote``: :meth:`Plan.steps` takes it.
"""

from __future__ import annotations

import html
import time as time_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, time, tzinfo
from typing import TYPE_CHECKING, Any

from ..dedup import (
    CORE_KEYS,
    Criterion,
    DuplicateRule,
    normalize_email,
    normalize_phone,
    normalize_text,
    parse_within,
    phone_query,
)
from ..dedup import STANDARD_CODES as DEDUP_CODES
from ..errors import RuleError
from ..rules.clean import LONG_LIMIT, NAME_LIMIT, TAG_LIMIT, clean_text, parse_number
from ..rules.deadlines import DEFAULT_DEADLINE, deadline
from ..rules.fields import (
    ENTITY,
    ENUM_TYPES,
    STANDARD_FIELDS,
    field_item,
    is_empty,
    known_field,
)
from ..rules.schema import TRACKING_TAGS
from ..rules.templates import render_value

if TYPE_CHECKING:
    from ..amo.metadata import AccountMetadata

#: Lock names for the top-level keys of a payload.
LOCK_KEYS = {
    "name": ("name",),
    "first_name": ("first_name",),
    "last_name": ("last_name",),
    "price": ("price",),
    "pipeline": ("pipeline_id", "status_id"),
    "status": ("status_id",),
    "responsible": ("responsible_user_id",),
    "tags": ("_embedded",),
    "visitor_uid": ("visitor_uid",),
}
#: Every step a plan may need, in the order :mod:`.execute` runs them. ``lookup``
#: (duplicate control) decides between ``update`` and ``create`` per entity.
STEPS = ("lookup", "update", "create", "link", "notes", "tasks")
#: The links an event's entities may need, as ``remote["linked"]`` names them.
_PAIRS = (("lead", "contact"), ("lead", "company"), ("contact", "company"))
#: Campaign tags and the lead tracking field (``tracking_data``) each one fills.
TRACKING_FIELDS = TRACKING_TAGS


@dataclass
class PlanEnv:
    """What planning needs from outside the rule and the event.

    ``metadata`` is the account's :class:`AccountMetadata` or a callable returning it
    (called at most once, and only when a rule needs names resolved). ``pick(key, n)``
    returns the round-robin index (0 … n-1) for a list of responsible users.
    """

    metadata: AccountMetadata | Callable[[], AccountMetadata] | None = None
    pick: Callable[[str, int], int] | None = None
    now: float | None = None
    tz: tzinfo = UTC
    workday_end: time = time(18, 0)
    #: The country assumed for phones written without one (``AMOCRM_PHONE_REGION``).
    phone_region: str = "RU"
    _meta: AccountMetadata | None = field(default=None, repr=False)

    def meta(self, why: str) -> AccountMetadata:
        """The account's metadata; :class:`RuleError` naming ``why`` without it."""
        if self._meta is None:
            source = self.metadata
            if source is None:
                raise RuleError(
                    f"{why} needs the account's metadata, which is not available here"
                )
            self._meta = source() if callable(source) else source
        return self._meta

    @property
    def has_meta(self) -> bool:
        """Whether the metadata was already loaded (nothing is fetched)."""
        return self._meta is not None or (
            self.metadata is not None and not callable(self.metadata)
        )

    def timestamp(self) -> float:
        """Now, in Unix seconds."""
        return self.now if self.now is not None else time_mod.time()


@dataclass
class EntityPlan:
    """One lead, contact or company: what to send when creating it or updating it."""

    #: ``lead``, ``contact`` or ``company``.
    key: str
    payload: dict[str, Any]
    #: An existing entity to update (the rule's ``id``), else ``None``: create.
    id: int | None = None
    #: Payload keys and custom field ids/codes an update never sends (``lock``).
    lock: set[Any] = field(default_factory=set)
    #: Duplicate control for this entity (``duplicates``), if the rule has it.
    duplicates: DuplicateRule | None = None

    @property
    def looks_up(self) -> bool:
        """Whether the ``lookup`` step searches duplicates of this entity."""
        return (
            self.id is None and self.duplicates is not None and self.duplicates.active
        )

    @property
    def entity(self) -> str:
        """The API entity: ``leads``, ``contacts``, ``companies``."""
        return ENTITY[self.key]

    def create_payload(self) -> dict[str, Any]:
        """The body item that creates this entity."""
        return _copy(self.payload)

    def update_payload(
        self, entity_id: int, current: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The PATCH item for ``entity_id``: locked keys left out, tags added (never
        replaced), and multi-value fields (phones, e-mails) merged with ``current``
        (the entity as amoCRM has it), so an update adds a phone instead of
        replacing the ones there."""
        body = _copy(self.payload)
        tags = (body.pop("_embedded", None) or {}).get("tags")
        for name in self.lock:
            for key in LOCK_KEYS.get(str(name), ()):
                body.pop(key, None)
        if tags and "tags" not in self.lock:
            body["tags_to_add"] = tags
        values = []
        for item in body.pop("custom_fields_values", None) or []:
            if item.get("field_id") in self.lock or item.get("field_code") in self.lock:
                continue
            values.append(_merge_multi(item, current))
        if values:
            body["custom_fields_values"] = values
        body["id"] = entity_id
        return body


@dataclass
class NoteSpec:
    """A common note on the event's lead, contact or company."""

    key: str
    text: str
    #: Skip it when the entity already has a note with this text.
    unique: bool = False


@dataclass
class TaskSpec:
    """A task on the event's lead, contact or company."""

    key: str
    payload: dict[str, Any]


@dataclass
class Plan:
    """What one event becomes in amoCRM."""

    lead: EntityPlan | None = None
    contact: EntityPlan | None = None
    company: EntityPlan | None = None
    #: Unsorted mode: the ``leads/unsorted/forms`` item without its ``_embedded``.
    unsorted: dict[str, Any] | None = None
    notes: list[NoteSpec] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)
    #: Remarks for the event's log (rounded prices, unknown labels, cut values).
    warnings: list[str] = field(default_factory=list)
    #: Notes are HTML (``format = "html"``), not plain text.
    html: bool = False

    def entities(self) -> list[EntityPlan]:
        """The lead, contact and company this plan has, in that order."""
        return [e for e in (self.lead, self.contact, self.company) if e is not None]

    def entity(self, key: str) -> EntityPlan | None:
        """The plan of ``lead``, ``contact`` or ``company``."""
        entities = {"lead": self.lead, "contact": self.contact, "company": self.company}
        return entities[key]

    def existing(self, remote: dict[str, Any] | None = None) -> dict[str, int]:
        """The entities that exist already: named by the rule's ``id``, or found by
        the lookup and reused (``update`` or ``use``)."""
        found = (remote or {}).get("found") or {}
        out = {}
        for e in self.entities():
            entity_id = e.id if e.id is not None else found.get(e.key)
            if entity_id:
                out[e.key] = int(entity_id)
        return out

    def updates(self, remote: dict[str, Any] | None = None) -> list[EntityPlan]:
        """The entities the ``update`` step changes: named by id, or reused
        duplicates whose strategy is ``update``."""
        found = (remote or {}).get("found") or {}
        return [
            e
            for e in self.entities()
            if e.id is not None
            or (
                e.key in found
                and e.duplicates is not None
                and e.duplicates.strategy == "update"
            )
        ]

    def needs_lookup(self) -> bool:
        """Whether any entity has duplicate control to apply."""
        return any(e.looks_up for e in self.entities())

    def steps(self, remote: dict[str, Any] | None = None) -> list[str]:
        """The steps this plan needs (a subset of :data:`STEPS`, in order), given
        what the lookup found (``remote``)."""
        existing = self.existing(remote)
        done = (remote or {}).get("done") or []
        steps = []
        # An event that created its entities before the rule had duplicate control
        # must not look itself up now.
        if self.needs_lookup() and not ("create" in done and "lookup" not in done):
            steps.append("lookup")
        if self.updates(remote):
            steps.append("update")
        if self.unsorted is not None or any(
            e.key not in existing for e in self.entities()
        ):
            steps.append("create")
        if self.needs_links(remote):
            steps.append("link")
        if self.notes or (remote or {}).get("duplicate_notes"):
            steps.append("notes")
        if self.tasks:
            steps.append("tasks")
        return steps

    def needs_links(self, remote: dict[str, Any] | None = None) -> bool:
        """Whether links must be made after the entities exist: everything created
        together (one complex lead with new contact and company, or one incoming
        lead) is linked by amoCRM itself."""
        if self.unsorted is not None or len(self.entities()) < 2:
            return False
        existing = self.existing(remote)
        if self.lead is not None and "lead" not in existing:
            return any(
                e.key in existing for e in (self.contact, self.company) if e is not None
            ) and (self.contact is not None and self.company is not None)
        linked = set((remote or {}).get("linked") or [])
        return any(
            f"{a}-{b}" not in linked
            for a, b in _PAIRS
            if self.entity(a) is not None and self.entity(b) is not None
        )

    def done(self, remote: dict[str, Any] | None) -> bool:
        """Whether the event's ``remote`` records every step of this plan: the one
        test of "delivered"."""
        remote = remote or {}
        if "done" not in remote:
            # Events delivered before steps were recorded made one complex call.
            return bool(remote.get("lead_id")) and not self.steps(remote)[1:]
        finished = set(remote["done"])
        return all(step in finished for step in self.steps(remote))

    # -- payloads --------------------------------------------------------------------

    def complex_item(self, ids: dict[str, int | None]) -> dict[str, Any]:
        """The ``leads/complex`` item: the new lead with its contact and company (new
        ones in full, existing ones by id, as ``ids`` gives them)."""
        assert self.lead is not None
        item = self.lead.create_payload()
        embedded = item.setdefault("_embedded", {})
        for key, group in (("contact", "contacts"), ("company", "companies")):
            sub = self.entity(key)
            if sub is None:
                continue
            embedded[group] = [
                {"id": ids[key]} if ids.get(key) else sub.create_payload()
            ]
        if not embedded:
            item.pop("_embedded")
        return item

    def unsorted_item(self) -> dict[str, Any]:
        """The ``leads/unsorted/forms`` item with its lead, contact and company."""
        assert self.unsorted is not None and self.lead is not None
        item = _copy(self.unsorted)
        lead = self.lead.create_payload()
        for key in ("pipeline_id", "status_id"):
            lead.pop(key, None)
        embedded: dict[str, Any] = {"leads": [lead]}
        if self.contact is not None:
            embedded["contacts"] = [self.contact.create_payload()]
        if self.company is not None:
            embedded["companies"] = [self.company.create_payload()]
        item["_embedded"] = embedded
        return item

    def links(
        self, ids: dict[str, int | None], remote: dict[str, Any] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """``(entity, mass-link item)`` pairs linking what this plan has, but those
        the lookup saw linked already (``remote["linked"]``)."""
        out: list[tuple[str, dict[str, Any]]] = []
        linked = set((remote or {}).get("linked") or [])
        lead, contact, company = ids.get("lead"), ids.get("contact"), ids.get("company")
        if lead and contact and "lead-contact" not in linked:
            out.append(
                (
                    "leads",
                    {
                        "entity_id": lead,
                        "to_entity_id": contact,
                        "to_entity_type": "contacts",
                        "metadata": {"main_contact": True},
                    },
                )
            )
        if lead and company:
            out.append(
                (
                    "leads",
                    {
                        "entity_id": lead,
                        "to_entity_id": company,
                        "to_entity_type": "companies",
                    },
                )
            )
        if contact and company:
            out.append(
                (
                    "contacts",
                    {
                        "entity_id": contact,
                        "to_entity_id": company,
                        "to_entity_type": "companies",
                    },
                )
            )
        return out

    def note_items(
        self, ids: dict[str, int | None], remote: dict[str, Any] | None = None
    ) -> list[tuple[str, NoteSpec, dict[str, Any]]]:
        """``(entity, note, body item)`` for every note whose entity exists, the
        lookup's notes listing duplicates (in ``remote``) included."""
        out = []
        extra = [
            NoteSpec(key, text)
            for key, text in ((remote or {}).get("duplicate_notes") or {}).items()
        ]
        for note in [*self.notes, *extra]:
            entity_id = ids.get(note.key)
            if entity_id:
                out.append(
                    (
                        ENTITY[note.key],
                        note,
                        {
                            "entity_id": entity_id,
                            "note_type": "common",
                            "params": {"text": note.text},
                        },
                    )
                )
        return out

    def task_items(self, ids: dict[str, int | None]) -> list[dict[str, Any]]:
        """The ``tasks`` body items, attached to the entities in ``ids``."""
        out = []
        for task in self.tasks:
            entity_id = ids.get(task.key)
            if entity_id:
                out.append(
                    {
                        **task.payload,
                        "entity_id": entity_id,
                        "entity_type": ENTITY[task.key],
                    }
                )
        return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _merge_multi(
    item: dict[str, Any], current: dict[str, Any] | None
) -> dict[str, Any]:
    """Keep the values a multitext field already has (PATCH replaces them all)."""
    if current is None or not any(
        "enum_code" in v or "enum_id" in v and "value" in v for v in item["values"]
    ):
        return item
    for have in current.get("custom_fields_values") or []:
        same = (
            item.get("field_id") is not None
            and have.get("field_id") == item["field_id"]
        ) or (
            item.get("field_code") is not None
            and have.get("field_code") == item["field_code"]
        )
        if not same or have.get("field_type") not in (None, "multitext"):
            continue
        known = {_digits_or_text(v.get("value")) for v in have.get("values") or []}
        kept = [
            {"value": v["value"], "enum_id": v["enum_id"]}
            if v.get("enum_id")
            else {"value": v["value"]}
            for v in have.get("values") or []
        ]
        added = [
            v for v in item["values"] if _digits_or_text(v.get("value")) not in known
        ]
        return {**item, "values": kept + added}
    return item


def _digits_or_text(value: Any) -> str:
    text = str(value or "").strip().casefold()
    digits = "".join(c for c in text if c.isdigit())
    return digits[-10:] if len(digits) >= 7 and "@" not in text else text


# -- building ------------------------------------------------------------------------


def template_variables(event: Any) -> dict[str, Any]:
    """The names a rule's templates see (DESIGN.md 3.1)."""
    context = event.context or {}
    data = event.data or {}
    mail = data.get("mail", {}) if event.kind == "mail" else {}
    return {
        "data": data,
        "data_text": "\n".join(
            f"{key}: {_flat(value)}"
            for key, value in data.items()
            if key != "mail" and not is_empty(value)
        ),
        "form": event.source if event.kind == "form" else None,
        "event": event.source if event.kind == "mail" else None,
        "source": event.source,
        "kind": event.kind,
        "mail": mail if isinstance(mail, dict) else {},
        "utm": context.get("utm", {}),
        "utm_first": context.get("utm_first", {}),
        "page": context.get("page", {}),
        "site": context.get("site", {}),
        "client": context.get("client", {}),
        "cookies": context.get("cookies", {}),
        "files": event.files or [],
        "sent_at": context.get("captured_at"),
        "event_uid": getattr(event, "uid", None),
    }


def _flat(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_flat(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items())
    return str(value)


class _Builder:
    def __init__(
        self, rule: dict[str, Any], event: Any, where: str, env: PlanEnv
    ) -> None:
        self.rule = rule
        self.event = event
        self.where = where
        self.env = env
        self.vars = template_variables(event)
        self.plan = Plan()
        #: Value problems per section: they become a note on that entity.
        self.remarks: dict[str, list[str]] = {"lead": [], "contact": [], "company": []}
        self.html = rule.get("format", "text") == "html"
        self.unsorted = _unsorted_on(rule)
        self._default_user: tuple[bool, int | None] = (False, None)

    # -- small helpers -------------------------------------------------------------

    def render(self, value: Any, where: str, *, escape: bool = False) -> Any:
        return render_value(value, self.vars, where=where, html=escape)

    def warn(self, key: str | None, text: str) -> None:
        self.plan.warnings.append(text)
        if key is not None:
            self.remarks[key].append(text)

    def text(
        self,
        value: Any,
        where: str,
        key: str | None,
        *,
        limit: int = NAME_LIMIT,
        multiline: bool = False,
        escape: bool = False,
    ) -> str:
        rendered = self.render(value, where, escape=escape)
        if isinstance(rendered, list):
            rendered = " ".join(str(v) for v in rendered if not is_empty(v))
        notes: list[str] = []
        text = clean_text(
            rendered, limit=limit, multiline=multiline, where=where, warnings=notes
        )
        for note in notes:
            self.warn(key, note)
        return text

    # -- users, pipelines ------------------------------------------------------------

    def user(self, value: Any, where: str, key: str | None) -> int | None:
        """A user id for ``responsible`` (one user or a round-robin list). An unknown
        or inactive user falls back to the rule's default, else to amoCRM's (the
        token's user), with a warning."""
        choices = value if isinstance(value, list) else [value]
        if len(choices) > 1:
            pick = self.env.pick or (lambda _key, n: 0)
            choice = choices[pick(where, len(choices)) % len(choices)]
        else:
            choice = choices[0]
        wanted = self.render(choice, where)
        if is_empty(wanted):
            return self.default_user(where, key)
        meta = self.env.meta(where)
        user = meta.user(str(wanted).strip())
        if user is not None and user.get("is_active", True):
            return int(user["id"])
        why = "is not active" if user is not None else "is not a user of the account"
        fallback = self.default_user(where, key, skip=value)
        who = f"user {fallback}" if fallback else "amoCRM's default user"
        self.warn(key, f"{where}: {wanted!r} {why}; the responsible is {who}")
        return fallback

    def default_user(self, where: str, key: str | None, skip: Any = None) -> int | None:
        """The rule's ``responsible`` (resolved once per event), or ``None``."""
        value = self.rule.get("responsible")
        if value is None or value == skip:
            return None
        done, user_id = self._default_user
        if not done:
            self._default_user = (True, None)  # no recursion through a bad default
            user_id = self.user(value, f"{self.where}.responsible", key)
            self._default_user = (True, user_id)
        return user_id

    def pipeline_status(
        self, section: dict[str, Any], where: str
    ) -> tuple[int | None, int | None]:
        if "pipeline" not in section and "status" not in section:
            return None, None
        meta = self.env.meta(f"{where}.pipeline")
        pipeline_id = None
        if "pipeline" in section:
            wanted = self.render(section["pipeline"], f"{where}.pipeline")
            pipeline = meta.pipeline(str(wanted).strip())
            if pipeline is None:
                raise RuleError(
                    f"{where}.pipeline: there is no pipeline {wanted!r} "
                    "in the account (see 'flask amocrm check')"
                )
            pipeline_id = int(pipeline["id"])
        status_id = None
        if "status" in section and not self.unsorted:
            wanted = self.render(section["status"], f"{where}.status")
            status = meta.status(pipeline_id, str(wanted).strip())
            if status is None:
                raise RuleError(
                    f"{where}.status: there is no status {wanted!r} in "
                    "that pipeline (see 'flask amocrm check')"
                )
            status_id = int(status["id"])
            if pipeline_id is None:
                main = meta.main_pipeline()
                pipeline_id = int(main["id"]) if main else None
        return pipeline_id, status_id

    # -- fields ----------------------------------------------------------------------

    def resolve_field(
        self, key: str, name: Any, where: str, *, required: bool = True
    ) -> dict[str, Any] | None:
        entity = ENTITY[key]
        static = known_field(entity, name)
        # A standard code the rule names itself is trusted without the metadata; an
        # optional one (a tracking tag) may be missing from the account, which only
        # the metadata tells, and sending it would get the whole lead rejected.
        if static is not None and required and not self.env.has_meta:
            return static
        meta = self.env.meta(where)
        found = meta.field(entity, name)
        if found is None and required:
            raise RuleError(
                f"{where}: the {entity} of the account have no field "
                f"{name!r} (give its code, id or name; see "
                "'flask amocrm check')"
            )
        return found

    def fields(
        self, key: str, section: dict[str, Any], where: str
    ) -> list[dict[str, Any]]:
        wanted: dict[Any, Any] = {}
        for std, code in STANDARD_FIELDS[key].items():
            if std in section:
                wanted[code] = section[std]
        wanted.update(section.get("fields") or {})
        items: list[dict[str, Any]] = []
        seen: set[Any] = set()
        for name, template in wanted.items():
            path = (
                f"{where}.fields.{name}"
                if name in (section.get("fields") or {})
                else f"{where}.{_std_name(key, name)}"
            )
            value = self.render(template, path)
            if is_empty(value):
                continue  # amoCRM rejects empty values; an unfilled field stays as is
            fdef = self.resolve_field(key, name, path)
            assert fdef is not None
            notes: list[str] = []
            item = field_item(fdef, value, where=path, warnings=notes, tz=self.env.tz)
            for note in notes:
                self.warn(key, note)
            ident = item and (item.get("field_id") or item.get("field_code"))
            if item is not None and ident not in seen:
                seen.add(ident)
                items.append(item)
        return items

    def tracking(self, items: list[dict[str, Any]]) -> None:
        setting = self.rule.get("tracking", True)
        if setting is False:
            return
        mapping = dict(TRACKING_FIELDS)
        if isinstance(setting, dict):
            mapping.update(setting)
        utm = self.vars["utm"] or {}
        page = self.vars["page"] or {}
        values = dict(utm)
        referrer = page.get("landing_referrer") or page.get("referrer")
        if referrer:
            values.setdefault("referrer", referrer)
        present = {i.get("field_id") for i in items} | {
            i.get("field_code") for i in items
        }
        for tag, target in mapping.items():
            if target is False or is_empty(values.get(tag)):
                continue
            where = f"{self.where}.tracking.{tag}"
            explicit = isinstance(setting, dict) and tag in setting
            fdef = self.resolve_field("lead", target, where, required=explicit)
            if fdef is None:
                continue  # the account lacks this tracking field: nothing to fill
            notes: list[str] = []
            item = field_item(
                fdef, values[tag], where=where, warnings=notes, tz=self.env.tz
            )
            for note in notes:
                self.warn("lead", note)
            if item and (item.get("field_id") or item.get("field_code")) not in present:
                items.append(item)

    def lock(self, key: str, section: dict[str, Any], where: str) -> set[Any]:
        out: set[Any] = set()
        for name in section.get("lock") or []:
            if name in LOCK_KEYS:
                out.add(name)
                continue
            code = STANDARD_FIELDS[key].get(str(name), name)
            fdef = self.resolve_field(key, code, f"{where}.lock")
            assert fdef is not None
            out.add(fdef["id"] if fdef.get("id") is not None else fdef["code"])
        return out

    # -- duplicate control -----------------------------------------------------------

    def duplicates(
        self, key: str, section: dict[str, Any], where: str, payload: dict[str, Any]
    ) -> DuplicateRule | None:
        """The section's ``duplicates``, with this event's values to compare."""
        setting = section.get("duplicates")
        if not setting:
            return None
        where = f"{where}.duplicates"
        criteria = [
            self.criterion(key, item, f"{where}.match", payload)
            for item in setting["match"]
        ]
        return DuplicateRule(
            key=key,
            criteria=criteria,
            require=setting.get("require", "any"),
            strategy=setting["strategy"],
            scope=setting.get("scope", "contact"),
            open_only=bool(setting.get("open_only", False)),
            within=parse_within(setting["within"]) if "within" in setting else None,
            now=self.env.timestamp(),
            region=self.env.phone_region,
        )

    def criterion(
        self, key: str, item: Any, where: str, payload: dict[str, Any]
    ) -> Criterion:
        text = str(item)
        region = self.env.phone_region
        if text in CORE_KEYS[key]:
            if text == "name":
                name = payload.get("name") or " ".join(
                    str(payload[k])
                    for k in ("first_name", "last_name")
                    if payload.get(k)
                )
                value = normalize_text(name)
                return Criterion(
                    text,
                    "name",
                    values=(value,) if value else (),
                    queries=(" ".join(name.split()),) if value else (),
                )
            raw = payload.get(
                {"price": "price", "pipeline": "pipeline_id", "status": "status_id"}[
                    text
                ]
            )
            value = normalize_text(raw) if raw is not None else None
            return Criterion(text, text, values=(value,) if value else ())
        code = DEDUP_CODES[key].get(text.lower(), item)
        fdef = self.resolve_field(key, code, where)
        assert fdef is not None
        field_id = fdef.get("id")
        field_code = fdef.get("code")
        compare = (
            "phone"
            if field_code == "PHONE"
            else "email"
            if field_code == "EMAIL"
            else "enum"
            if fdef.get("type") in ENUM_TYPES
            else "text"
        )
        values: list[str] = []
        queries: list[str] = []
        for have in payload.get("custom_fields_values") or []:
            same = (field_id is not None and have.get("field_id") == field_id) or (
                field_code is not None and have.get("field_code") == field_code
            )
            if not same:
                continue
            for v in have.get("values") or []:
                raw = v.get("value")
                if compare == "phone":
                    norm, query = normalize_phone(raw, region), phone_query(raw, region)
                elif compare == "email":
                    norm = query = normalize_email(raw)
                elif compare == "enum":
                    norm = (
                        f"enum:{v['enum_id']}"
                        if v.get("enum_id") is not None
                        else normalize_text(raw)
                    )
                    query = None
                else:
                    norm = normalize_text(raw)
                    query = (
                        " ".join(str(raw).split())
                        if isinstance(raw, str) and norm
                        else None
                    )
                if norm and norm not in values:
                    values.append(norm)
                    if query:
                        queries.append(query)
        return Criterion(
            text,
            "field",
            compare,
            field_id,
            str(field_code) if field_code else None,
            tuple(values),
            tuple(queries),
        )

    # -- sections --------------------------------------------------------------------

    def entity_id(self, section: dict[str, Any], where: str) -> int | None:
        if "id" not in section or self.unsorted:
            return None
        value = self.render(section["id"], f"{where}.id")
        if is_empty(value):
            return None
        text = str(value).strip()
        if not text.isdigit():
            raise RuleError(f"{where}.id: {text!r} is not an entity id")
        return int(text)

    def tags(self, section: dict[str, Any], where: str) -> list[dict[str, str]]:
        tags = section.get("tags") or []
        rendered = self.render(
            tags if isinstance(tags, list) else [tags], f"{where}.tags"
        )
        names: list[str] = []
        for tag in rendered:
            for part in tag if isinstance(tag, list) else [tag]:
                text = clean_text(part, limit=TAG_LIMIT)
                if text and text not in names:
                    names.append(text)
        return [{"name": n} for n in names]

    def person(self, key: str) -> EntityPlan | None:
        section = self.rule[key]
        where = f"{self.where}.{key}"
        payload: dict[str, Any] = {}
        names = ("name", "first_name", "last_name") if key == "contact" else ("name",)
        for name in names:
            if name in section:
                text = self.text(section[name], f"{where}.{name}", key)
                if text:
                    payload[name] = text
        values = self.fields(key, section, where)
        if values:
            payload["custom_fields_values"] = values
        entity_id = self.entity_id(section, where)
        if not payload and entity_id is None:
            return None  # the visitor left everything about it empty
        responsible = (
            self.user(section["responsible"], f"{where}.responsible", key)
            if "responsible" in section
            else self.default_user(where, key)
        )
        if responsible:
            payload["responsible_user_id"] = responsible
        tags = self.tags(section, where)
        if tags:
            payload["_embedded"] = {"tags": tags}
        return EntityPlan(
            key,
            payload,
            entity_id,
            self.lock(key, section, where),
            self.duplicates(key, section, where, payload),
        )

    def lead(self) -> EntityPlan | None:
        section = self.rule.get("lead")
        if section is None and not self.unsorted:
            return None
        section = section or {}
        where = f"{self.where}.lead"
        payload: dict[str, Any] = {}
        unsorted = self.rule.get("unsorted")
        name_template = section.get("name")
        if isinstance(unsorted, dict) and "name" in unsorted:
            name_template = unsorted["name"]
        if name_template is not None:
            payload["name"] = self.text(name_template, f"{where}.name", "lead")
        if not payload.get("name"):
            subject = (self.vars["mail"] or {}).get("subject")
            payload["name"] = clean_text(subject or self.event.source, limit=NAME_LIMIT)
        if "price" in section:
            price = self.price(section["price"], f"{where}.price")
            if price is not None:
                payload["price"] = price
        pipeline_id, status_id = self.pipeline_status(section, where)
        if pipeline_id is not None:
            payload["pipeline_id"] = pipeline_id
        if status_id is not None:
            payload["status_id"] = status_id
        responsible = (
            self.user(section["responsible"], f"{where}.responsible", "lead")
            if "responsible" in section
            else self.default_user(where, "lead")
        )
        if responsible:
            payload["responsible_user_id"] = responsible
        visitor_uid = (self.vars["client"] or {}).get("visitor_uid")
        if "visitor_uid" in section:
            visitor_uid = self.render(section["visitor_uid"], f"{where}.visitor_uid")
        if not is_empty(visitor_uid):
            payload["visitor_uid"] = clean_text(visitor_uid, limit=100)
        values = self.fields("lead", section, where)
        self.tracking(values)
        if values:
            payload["custom_fields_values"] = values
        tags = self.tags(section, where)
        if tags:
            payload["_embedded"] = {"tags": tags}
        return EntityPlan(
            "lead",
            payload,
            self.entity_id(section, where),
            self.lock("lead", section, where),
            self.duplicates("lead", section, where, payload),
        )

    def price(self, value: Any, where: str) -> int | None:
        parts = self.render(value if isinstance(value, list) else [value], where)
        total = 0.0
        seen = False
        for part in parts:
            if is_empty(part):
                continue
            number = parse_number(part)
            if number is None:
                self.warn(
                    "lead",
                    f"{where}: {part!r} is not a number and was not added to the price",
                )
                continue
            total += number
            seen = True
        if not seen:
            return None
        rounded = round(total)
        if rounded != total:
            self.plan.warnings.append(f"{where}: {total:g} was rounded to {rounded}")
        return int(rounded)

    # -- notes, files, tasks ---------------------------------------------------------

    def notes(self) -> None:
        group_rule = self.rule.get("group", True)
        pending: dict[tuple[str, bool, bool], list[str]] = {}
        order: list[tuple[str, bool, bool]] = []

        def add(key: str, text: str, unique: bool, group: bool) -> None:
            if not text:
                return
            unique = unique and not self.unsorted
            slot = (key, unique, group)
            if not group:
                self.plan.notes.append(NoteSpec(key, text, unique))
                return
            if slot not in pending:
                pending[slot] = []
                order.append(slot)
            pending[slot].append(text)

        for key in ("lead", "contact", "company"):
            section = self.rule.get(key) or {}
            if self.plan.entity(key) is None:
                continue
            group = section.get("group", group_rule)
            notes = ([section["note"]] if "note" in section else []) + list(
                section.get("notes") or []
            )
            where = f"{self.where}.{key}"
            for i, note in enumerate(notes):
                spec = note if isinstance(note, dict) else {"text": note}
                path = (
                    f"{where}.note"
                    if i == 0 and "note" in section
                    else f"{where}.notes"
                )
                text = self.text(
                    spec["text"],
                    path,
                    None,
                    limit=LONG_LIMIT,
                    multiline=True,
                    escape=self.html,
                )
                add(
                    key,
                    text,
                    bool(spec.get("unique", False)),
                    bool(spec.get("group", group)),
                )
        files_key, files_text = self.files()
        if files_text:
            add(files_key, files_text, False, group_rule)
        # Values that could not go where the rule said are kept in a note.
        for key in ("lead", "contact", "company"):
            remarks = self.remarks[key]
            target = key if self.plan.entity(key) is not None else self._main_key()
            if remarks and target:
                lines = [self._line(r) for r in remarks]
                head = "Flask-AmoCRM could not write some values as the rule says:"
                add(target, self._join([head, *lines]), False, group_rule)
        for slot in order:
            key, unique, _group = slot
            self.plan.notes.append(
                NoteSpec(
                    key, self._join(pending[slot], blank=True)[:LONG_LIMIT], unique
                )
            )

    def _main_key(self) -> str | None:
        for key in ("lead", "contact", "company"):
            if self.plan.entity(key) is not None:
                return key
        return None

    def _line(self, text: str) -> str:
        return f"• {html.escape(text)}" if self.html else f"- {text}"

    def _join(self, parts: list[str], blank: bool = False) -> str:
        if self.html:
            return ("<br><br>" if blank else "<br>").join(parts)
        return ("\n\n" if blank else "\n").join(parts)

    def files(self) -> tuple[str, str]:
        """Files go to a url field (the first) and/or a note (all of them)."""
        setting = self.rule.get("files", {})
        files = [f for f in self.vars["files"] if isinstance(f, dict)]
        if setting is False or not files:
            return "", ""
        setting = setting or {}
        key = setting.get("entity", "lead")
        if self.plan.entity(key) is None:
            key = self._main_key() or ""
        if not key:
            return "", ""
        entity = self.plan.entity(key)
        assert entity is not None
        with_url = [f for f in files if f.get("url")]
        if "field" in setting and with_url:
            where = f"{self.where}.files.field"
            fdef = self.resolve_field(key, setting["field"], where)
            assert fdef is not None
            item = field_item(
                fdef, with_url[0]["url"], where=where, warnings=[], tz=self.env.tz
            )
            if item is not None:
                values = entity.payload.setdefault("custom_fields_values", [])
                values[:] = [
                    v
                    for v in values
                    if not (
                        v.get("field_id") == item.get("field_id")
                        and v.get("field_code") == item.get("field_code")
                    )
                ] + [item]
            if len(files) == 1 and not setting.get("note", False):
                return "", ""
        if setting.get("note", True) is False:
            return "", ""
        lines = ["Files:"]
        for f in files:
            name = str(f.get("name") or f.get("field") or "file")
            url = f.get("url")
            if url and self.html:
                lines.append(
                    f'• <a href="{html.escape(str(url))}">{html.escape(name)}</a>'
                )
            elif url:
                lines.append(f"- {name}: {url}")
            else:
                why = f.get("error") or "not saved"
                lines.append(self._line(f"{name} ({why})"))
        return key, self._join(lines)

    def tasks(self) -> None:
        value = self.rule.get("task")
        if not value:
            return
        tasks = value if isinstance(value, list) else [value]
        if self.unsorted:
            self.plan.warnings.append(
                f"{self.where}.task: incoming leads take no tasks; "
                "the task was not created"
            )
            return
        now = self.env.timestamp()
        for i, task in enumerate(tasks):
            where = f"{self.where}.task" + (f"[{i}]" if isinstance(value, list) else "")
            key = task.get("entity", "lead")
            if self.plan.entity(key) is None:
                raise RuleError(
                    f"{where}.entity: the task is for the {key}, but this "
                    f"event makes no {key} (the rule has no '{key}' "
                    "section, or its values were all empty)"
                )
            payload: dict[str, Any] = {}
            text = self.text(
                task.get("text", "{{ form or event }}"),
                f"{where}.text",
                None,
                limit=LONG_LIMIT,
                multiline=True,
            )
            payload["text"] = text or str(self.event.source)
            when = self.text(
                task.get("deadline", DEFAULT_DEADLINE), f"{where}.deadline", None
            )
            payload["complete_till"] = deadline(
                when or DEFAULT_DEADLINE,
                now=now,
                tz=self.env.tz,
                workday_end=self.env.workday_end,
                where=f"{where}.deadline",
            )
            if "type" in task:
                wanted = self.render(task["type"], f"{where}.type")
                found = self.env.meta(f"{where}.type").task_type(str(wanted).strip())
                if found is None:
                    raise RuleError(
                        f"{where}.type: there is no task type {wanted!r} "
                        "in the account (see 'flask amocrm check')"
                    )
                payload["task_type_id"] = int(found["id"])
            if "duration" in task:
                payload["duration"] = int(task["duration"])
            if "responsible" in task:
                user = self.user(task["responsible"], f"{where}.responsible", key)
            else:
                entity = self.plan.entity(key)
                user = entity.payload.get("responsible_user_id") if entity else None
            if user:
                payload["responsible_user_id"] = user
            self.plan.tasks.append(TaskSpec(key, payload))

    def unsorted_item(self) -> None:
        setting = self.rule.get("unsorted")
        setting = setting if isinstance(setting, dict) else {}
        context = self.event.context or {}
        page = self.vars["page"] or {}
        site = self.vars["site"] or {}
        client = self.vars["client"] or {}
        sent_at = int(context.get("captured_at") or self.env.timestamp())
        where = f"{self.where}.unsorted"
        form_name = self.text(
            setting.get("form_name", self.event.source), f"{where}.form_name", None
        ) or str(self.event.source)
        source_name = (
            self.text(
                setting.get(
                    "source_name", site.get("name") or site.get("domain") or "Site"
                ),
                f"{where}.source_name",
                None,
            )
            or "Site"
        )
        metadata: dict[str, Any] = {
            "form_id": clean_text(self.event.source, limit=100),
            "form_name": form_name,
            "form_page": clean_text(
                page.get("url")
                or (
                    f"https://{site['domain']}"
                    if site.get("domain")
                    else f"{self.event.kind}:{self.event.source}"
                ),
                limit=LONG_LIMIT,
            ),
            "form_sent_at": sent_at,
        }
        if client.get("ip"):
            metadata["ip"] = str(client["ip"])
        if page.get("referrer"):
            metadata["referer"] = clean_text(page["referrer"], limit=LONG_LIMIT)
        if client.get("visitor_uid"):
            metadata["visitor_uid"] = str(client["visitor_uid"])
        item: dict[str, Any] = {
            "source_name": source_name,
            "source_uid": str(getattr(self.event, "uid", None) or self.event.id),
            "created_at": sent_at,
            "metadata": metadata,
        }
        lead = self.plan.lead
        pipeline_id = lead.payload.get("pipeline_id") if lead else None
        if pipeline_id:
            item["pipeline_id"] = pipeline_id
        self.plan.unsorted = item

    def build(self) -> Plan:
        plan = self.plan
        plan.html = self.html
        plan.lead = self.lead()
        for key in ("contact", "company"):
            if key in self.rule:
                setattr(plan, key, self.person(key))
        if not plan.entities():
            raise RuleError(
                f"{self.where}: the rule makes nothing of this event (no "
                "lead, and the contact and company values are all empty)"
            )
        self.cap_fields()
        if self.unsorted:
            self.unsorted_item()
        self.tasks()
        self.notes()
        return plan

    def cap_fields(self) -> None:
        """amoCRM takes at most :data:`MAX_FIELD_VALUES` field values per entity in
        ``leads/complex``; what is over goes into the entity's note instead of getting
        the whole lead rejected. Room is kept for a file link and, on the lead, the
        event-id marker that delivery adds."""
        for entity in self.plan.entities():
            values = entity.payload.get("custom_fields_values") or []
            room = MAX_FIELD_VALUES - 1 - (entity.key == "lead")
            for item in values[room:]:
                ident = item.get("field_code") or item.get("field_id")
                shown = ", ".join(
                    str(v.get("value", v.get("enum_id")))
                    for v in item.get("values") or []
                )
                self.warn(
                    entity.key,
                    f"field {ident} not sent (amoCRM takes at most "
                    f"{MAX_FIELD_VALUES} values per entity): {shown}",
                )
            if len(values) > room:
                entity.payload["custom_fields_values"] = values[:room]


#: ``leads/complex`` refuses an entity with more field values than this.
MAX_FIELD_VALUES = 40


def _std_name(key: str, code: Any) -> str:
    for std, value in STANDARD_FIELDS[key].items():
        if value == code:
            return std
    return str(code)


def _unsorted_on(rule: dict[str, Any]) -> bool:
    value = rule.get("unsorted", False)
    if isinstance(value, dict):
        return bool(value.get("enabled", True))
    return bool(value)


def build_plan(
    rule: dict[str, Any], event: Any, *, where: str, env: PlanEnv | None = None
) -> Plan:
    """Render ``rule`` for ``event``. Raises :class:`RuleError` naming the key."""
    return _Builder(rule, event, where, env or PlanEnv()).build()


__all__ = [
    "STEPS",
    "EntityPlan",
    "NoteSpec",
    "Plan",
    "PlanEnv",
    "TaskSpec",
    "build_plan",
    "template_variables",
]
