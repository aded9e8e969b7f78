"""A plan: the amoCRM records one event becomes, and the steps that send them.

Pure code: no Flask, no network. :func:`~.render.build_plan` renders an event's rule
into a :class:`Plan`: the lead, contact and company to create or update, the incoming
lead (unsorted mode), the notes and the tasks, plus the warnings gathered on the way.

:meth:`Plan.steps` lists the API steps the plan needs and :meth:`Plan.done` says whether
an event's :class:`~flask_amocrm.progress.Progress` records them all; the worker makes
the calls, and :meth:`Plan.calls` describes them for ``flask amocrm preview``.

Duplicate control (a section's ``duplicates``) gives an entity a
:class:`~flask_amocrm.dedup.DuplicateRule`; the ``lookup`` step then decides, per
entity, whether to create it or to reuse the earliest duplicate, and records that in
the progress (``found``, ``duplicates``, ``duplicate_notes``). Which of the later steps
a plan needs therefore depends on the progress: :meth:`Plan.steps` takes it.
"""

from __future__ import annotations

import time as time_mod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, time, tzinfo
from typing import Any, TypeVar, cast

from ..dedup import DuplicateRule
from ..errors import RuleError
from ..i18n import N_
from ..progress import Progress
from ..vocabulary import DEFAULT_PHONE_REGION, ENTITY, LOCK_KEYS
from .account import AccountNames

#: Every step a plan may need, in the order the worker runs them. ``lookup``
#: (duplicate control) decides between ``update`` and ``create`` per entity;
#: ``files`` uploads the event's files to amoCRM's drive (``files = "drive"``).
STEPS = ("lookup", "update", "create", "link", "files", "notes", "tasks")
_T = TypeVar("_T")
#: The links an event's entities may need, as :attr:`Progress.linked` names them.
_PAIRS = (("lead", "contact"), ("lead", "company"), ("contact", "company"))


@dataclass
class PlanEnv:
    """What planning needs from outside the rule and the event.

    ``metadata`` is the account's names (:class:`~.account.AccountNames`) or a
    callable returning them (called at most once, and only when a rule needs names
    resolved). ``pick(key, n)``
    returns the round-robin index (0 … n-1) for a list of responsible users.
    """

    metadata: AccountNames | Callable[[], AccountNames] | None = None
    pick: Callable[[str, int], int] | None = None
    now: float | None = None
    tz: tzinfo = UTC
    workday_end: time = time(18, 0)
    #: The country assumed for phones written without one (``AMOCRM_PHONE_REGION``).
    phone_region: str = DEFAULT_PHONE_REGION
    #: The app's ``SECRET_KEY``: a section's ``id`` taken from the event is verified
    #: with it (:mod:`~flask_amocrm.rules.signing`).
    #: The site's secret key, or its keys (older ``SECRET_KEY_FALLBACKS`` first, the
    #: current one last), that signed ids are verified with.
    secret_key: str | bytes | list[str | bytes] | None = field(default=None, repr=False)
    #: Where the site saved its uploads (``AMOCRM_UPLOAD_FOLDER``): files sent to
    #: amoCRM's drive are read from there.
    upload_folder: str | None = None
    _meta: AccountNames | None = field(default=None, repr=False)

    def meta(self, why: str) -> AccountNames:
        """The account's names; :class:`RuleError` naming ``why`` without them."""
        if self._meta is None:
            source = self.metadata
            if source is None:
                raise RuleError(
                    N_(
                        "%(where)s needs the account's metadata, which is not "
                        "available here",
                        where=why,
                    )
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
class DriveFile:
    """One saved upload of the event, to be put into amoCRM's drive."""

    #: Its place in the event's ``files``: the key of its progress.
    index: int
    #: The visitor's name for it (shown in amoCRM).
    name: str
    #: Where it is on disk (``None``: uploads are not configured here).
    path: str | None
    size: int
    #: Its link on the site, for the note when it cannot go to the drive.
    url: str | None
    #: The form field it came in.
    field: str


@dataclass
class DriveSpec:
    """``files = "drive"``: the files to upload and where they go."""

    files: list[DriveFile]
    #: The sections whose entities the files are attached to (``lead`` ...).
    attach: list[str]
    #: ``file`` custom fields: form field → ``(section, field id)``.
    fields: dict[str, tuple[str, int]] = field(default_factory=dict)


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
    #: Files for amoCRM's drive (``files = "drive"``), if any.
    drive: DriveSpec | None = None

    def entities(self) -> list[EntityPlan]:
        """The lead, contact and company this plan has, in that order."""
        return [e for e in (self.lead, self.contact, self.company) if e is not None]

    def entity(self, key: str) -> EntityPlan | None:
        """The plan of ``lead``, ``contact`` or ``company``."""
        entities = {"lead": self.lead, "contact": self.contact, "company": self.company}
        return entities[key]

    def existing(self, progress: Progress | None = None) -> dict[str, int]:
        """The entities that exist already: named by the rule's ``id``, or found by
        the lookup and reused (``update`` or ``use``)."""
        found = progress.found if progress is not None else {}
        out = {}
        for e in self.entities():
            entity_id = e.id if e.id is not None else found.get(e.key)
            if entity_id:
                out[e.key] = int(entity_id)
        return out

    def updates(self, progress: Progress | None = None) -> list[EntityPlan]:
        """The entities the ``update`` step changes: named by id, or reused
        duplicates whose strategy is ``update``."""
        found = progress.found if progress is not None else {}
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

    def steps(self, progress: Progress | None = None) -> list[str]:
        """The steps this plan needs (a subset of :data:`STEPS`, in order), given
        what the lookup found (``progress``)."""
        progress = progress or Progress()
        existing = self.existing(progress)
        done = progress.done or []
        steps = []
        # An event that created its entities before the rule had duplicate control
        # must not look itself up now.
        if self.needs_lookup() and not ("create" in done and "lookup" not in done):
            steps.append("lookup")
        if self.updates(progress):
            steps.append("update")
        if self.unsorted is not None or any(
            e.key not in existing for e in self.entities()
        ):
            steps.append("create")
        if self.needs_links(progress):
            steps.append("link")
        if self.drive is not None and self.drive.files:
            steps.append("files")
        if self.notes or progress.duplicate_notes or progress.file_notes:
            steps.append("notes")
        if self.tasks:
            steps.append("tasks")
        return steps

    def needs_links(self, progress: Progress | None = None) -> bool:
        """Whether links must be made after the entities exist: everything created
        together (one complex lead with new contact and company, or one incoming
        lead) is linked by amoCRM itself."""
        if self.unsorted is not None or len(self.entities()) < 2:
            return False
        existing = self.existing(progress)
        if self.lead is not None and "lead" not in existing:
            return any(
                e.key in existing for e in (self.contact, self.company) if e is not None
            ) and (self.contact is not None and self.company is not None)
        linked = set(progress.linked if progress is not None else ())
        return any(
            f"{a}-{b}" not in linked
            for a, b in _PAIRS
            if self.entity(a) is not None and self.entity(b) is not None
        )

    def done(self, progress: Progress) -> bool:
        """Whether ``progress`` records every step of this plan: the one test of
        "delivered"."""
        if progress.done is None:
            # Events delivered before steps were recorded made one complex call.
            return bool(progress.lead_id) and not self.steps(progress)[1:]
        finished = set(progress.done)
        return all(step in finished for step in self.steps(progress))

    # -- payloads --------------------------------------------------------------------

    def complex_item(self, ids: Mapping[str, int | None]) -> dict[str, Any]:
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
        self, ids: dict[str, int | None], progress: Progress | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """``(entity, mass-link item)`` pairs linking what this plan has, but those
        the lookup saw linked already (:attr:`Progress.linked`)."""
        out: list[tuple[str, dict[str, Any]]] = []
        linked = set(progress.linked if progress is not None else ())
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
        self, ids: dict[str, int | None], progress: Progress | None = None
    ) -> list[tuple[str, NoteSpec, dict[str, Any]]]:
        """``(entity, note, body item)`` for every note whose entity exists, the
        lookup's notes listing duplicates (:attr:`Progress.duplicate_notes`)
        included."""
        out = []
        notes = progress.duplicate_notes if progress is not None else {}
        extra = [NoteSpec(key, text) for key, text in notes.items()]
        if progress is not None:  # files that could not go to the drive
            extra += [NoteSpec(key, text) for key, text in progress.file_notes.items()]
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


def _copy(value: _T) -> _T:
    """``value`` with its tables and lists copied (payloads are JSON-like)."""
    if isinstance(value, dict):
        return cast(_T, {k: _copy(v) for k, v in value.items()})
    if isinstance(value, list):
        return cast(_T, [_copy(v) for v in value])
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


__all__ = [
    "STEPS",
    "DriveFile",
    "DriveSpec",
    "EntityPlan",
    "NoteSpec",
    "Plan",
    "PlanEnv",
    "TaskSpec",
]
