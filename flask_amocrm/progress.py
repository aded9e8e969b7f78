"""How far an event's delivery got: the typed form of ``Event.remote``.

Delivery runs in steps (``lookup``, ``update``, ``create``, ``link``, ``files``,
``notes``, ``tasks``) and saves what each step did right after it, so a retry resumes
at the first step not done instead of creating a second lead. :class:`Progress` is
that record; ``Event.remote`` stores it as JSON (:meth:`Progress.to_json`), and
:meth:`Progress.from_json` reads every shape stored so far.

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

#: The section names whose ids a delivery records.
_KEYS = ("lead", "contact", "company")


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool) or value == "":
        return None
    return int(value)


def _ints(values: Any) -> list[int]:
    return [int(v) for v in values or [] if v is not None and not isinstance(v, bool)]


@dataclass
class Progress:
    """What amoCRM has of one event so far."""

    lead_id: int | None = None
    contact_id: int | None = None
    company_id: int | None = None
    #: The incoming lead's uid (unsorted mode).
    unsorted_uid: str | None = None
    #: Notes created, per API entity (``leads``, ``contacts``, ``companies``).
    note_ids: dict[str, list[int]] = field(default_factory=dict)
    task_ids: list[int] = field(default_factory=list)
    #: The finished steps, in order; ``None`` for an event delivered before steps were
    #: recorded (it made one ``leads/complex`` call).
    done: list[str] | None = None
    #: API entities whose notes went out.
    notes_done: list[str] = field(default_factory=list)
    #: Duplicate control: the entity reused per section (``update``, ``use``).
    found: dict[str, int] = field(default_factory=dict)
    #: Duplicate control: every duplicate found per section, earliest first.
    duplicates: dict[str, list[int]] = field(default_factory=dict)
    #: Duplicate control: the text of the note listing the duplicates, per section.
    duplicate_notes: dict[str, str] = field(default_factory=dict)
    #: Links that exist already (``"lead-contact"``): the link step leaves them.
    linked: list[str] = field(default_factory=list)
    #: amoCRM's own duplicate control merged the lead (``leads/complex``).
    merged: bool = False
    #: The create call went out and no answer was recorded yet.
    sending: bool = False
    #: The lead was found again by its event-id marker after a lost answer.
    found_again: bool = False
    #: amoCRM's drive, per file (its index in the event's ``files``): ``uuid``,
    #: ``version_uuid`` once uploaded; ``attached`` (sections done), ``attaching``
    #: (sections whose attach call went out, answer not recorded), ``field``
    #: (its ``file`` field was set), ``error`` (it could not go to the drive).
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Notes about files that could not go to the drive, per section.
    file_notes: dict[str, str] = field(default_factory=dict)
    #: Keys this version does not know, kept as they were.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Progress:
        """The progress stored in ``Event.remote`` (``None`` or ``{}``: nothing yet)."""
        data = dict(data or {})
        done = data.pop("done", None)
        uid = data.pop("unsorted_uid", None)
        return cls(
            lead_id=_int(data.pop("lead_id", None)),
            contact_id=_int(data.pop("contact_id", None)),
            company_id=_int(data.pop("company_id", None)),
            unsorted_uid=str(uid) if uid else None,
            note_ids={
                str(k): _ints(v) for k, v in (data.pop("note_ids", None) or {}).items()
            },
            task_ids=_ints(data.pop("task_ids", None)),
            done=[str(s) for s in done] if done is not None else None,
            notes_done=[str(e) for e in data.pop("notes_done", None) or []],
            found={
                str(k): int(v)
                for k, v in (data.pop("found", None) or {}).items()
                if _int(v)
            },
            duplicates={
                str(k): _ints(v)
                for k, v in (data.pop("duplicates", None) or {}).items()
            },
            duplicate_notes={
                str(k): str(v)
                for k, v in (data.pop("duplicate_notes", None) or {}).items()
            },
            linked=[str(x) for x in data.pop("linked", None) or []],
            merged=bool(data.pop("merged", False)),
            sending=bool(data.pop("sending", False)),
            found_again=bool(data.pop("found_again", False)),
            files={
                str(k): dict(v)
                for k, v in (data.pop("files", None) or {}).items()
                if isinstance(v, dict)
            },
            file_notes={
                str(k): str(v) for k, v in (data.pop("file_notes", None) or {}).items()
            },
            extra=data,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form for ``Event.remote``: unset values left out."""
        out: dict[str, Any] = dict(self.extra)
        for key in ("lead_id", "contact_id", "company_id", "unsorted_uid"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        for key in (
            "note_ids",
            "task_ids",
            "notes_done",
            "found",
            "duplicates",
            "duplicate_notes",
            "linked",
            "files",
            "file_notes",
        ):
            value = getattr(self, key)
            if value:
                out[key] = _copy(value)
        if self.done is not None:
            out["done"] = list(self.done)
        for key in ("merged", "sending", "found_again"):
            if getattr(self, key):
                out[key] = True
        return out

    def mark_done(self, step: str) -> Progress:
        """A copy with ``step`` recorded as finished."""
        done = list(self.done or [])
        if step not in done:
            done.append(step)
        return replace(self, done=done)

    def is_done(self, step: str) -> bool:
        """Whether ``step`` is recorded as finished."""
        return step in (self.done or [])

    def ids(self) -> dict[str, int | None]:
        """The ids amoCRM gave the event's lead, contact and company."""
        return {key: getattr(self, f"{key}_id") for key in _KEYS}


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return list(value)
    return value


__all__ = ["Progress"]
