"""Duplicate control: normalising phones and e-mails, and deciding what is a duplicate.

Pure code: no Flask, no network. A rule's ``duplicates`` setting (docs/duplicates.md)
becomes a :class:`DuplicateRule` when the event is planned: the criteria to compare,
each with the new entity's values already normalised. The worker's lookup step
(:mod:`.worker.lookup`) searches amoCRM with :meth:`DuplicateRule.searches` and keeps
only the candidates that :meth:`DuplicateRule.matches`: amoCRM's ``query`` is
full-text, so a hit means nothing until the actual field was compared.

Phones are compared in E.164 (``phonenumbers``, with the site's default region, so
``8 912 345-67-89``, ``+7 (912) 345 67 89`` and ``912 345 67 89`` are one number);
e-mails trimmed and lower-cased; texts with their white space collapsed, without case.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from .i18n import N_, localize, site_locale
from .vocabulary import DEFAULT_PHONE_REGION, fold

#: Strategies: ``note`` (create, and note the duplicates), ``update`` (update and reuse
#: the earliest duplicate), ``use`` (reuse the earliest duplicate as it is).
STRATEGIES = ("note", "update", "use")
#: ``any``: one criterion matching makes a duplicate; ``all``: every one must.
REQUIRE = ("any", "all")
#: Where lead duplicates are looked for.
SCOPES = ("contact", "all")
#: Lead statuses of every pipeline that close a deal: won, lost.
CLOSED_STATUSES = (142, 143)
#: amoCRM's web pages of an entity's card, per API entity.
CARD_PATHS = {
    "leads": "leads/detail",
    "contacts": "contacts/detail",
    "companies": "companies/detail",
}

_WITHIN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# -- normalisation -------------------------------------------------------------------


def normalize_phone(value: Any, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """The phone in E.164 (``+79123456789``), or its bare digits when
    ``phonenumbers`` cannot read it as a possible number; ``None`` without digits.

    ``region`` is the country assumed for numbers written without one
    (``AMOCRM_PHONE_REGION``)."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    digits = "".join(c for c in text if c.isdigit())
    if not digits:
        return None
    try:
        number = phonenumbers.parse(text, region.upper() or None)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_possible_number(number):
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return digits


def phone_query(value: Any, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """What to give amoCRM's ``query`` for a phone: its national number, which is
    part of the phone however it was stored (``8 912…``, ``+7 912…``)."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    try:
        number = phonenumbers.parse(text, region.upper() or None)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_possible_number(number):
        return str(number.national_number)
    digits = "".join(c for c in text if c.isdigit())
    return digits or None


def normalize_email(value: Any) -> str | None:
    """The e-mail trimmed and lower-cased; ``None`` when empty."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip().lower()
    return text or None


def normalize_text(value: Any) -> str | None:
    """A text or number for comparison: white space collapsed, case folded, numbers
    written one way (``"3"``, ``3`` and ``3.0`` are equal)."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    if isinstance(value, int | float):
        return _number(float(value))
    if isinstance(value, dict):
        value = " ".join(str(v) for v in value.values() if v is not None)
    text = fold(value)
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return _number(float(text))
    return text or None


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def parse_within(value: Any) -> int | None:
    """Seconds for a time window: ``"7d"``, ``"12h"``, ``"30m"``, ``"2w"``, ``"90s"``
    or a number of seconds; ``None`` when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    match = _WITHIN.match(str(value)) if isinstance(value, str) else None
    if match is None or int(match.group(1)) <= 0:
        return None
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def card_url(base_url: str, entity: str, entity_id: int) -> str:
    """The amoCRM web page of an entity's card (``https://x.amocrm.ru/leads/detail/5``)."""
    return f"{base_url.rstrip('/')}/{CARD_PATHS[entity]}/{entity_id}"


def lock_name(key: str) -> str:
    """A short, safe name for a lock on ``key`` (keys hold visitors' e-mails)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# -- rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """One thing compared: a core key (``name``, ``price``, ``pipeline``,
    ``status``) or a custom field, with the new entity's normalised values."""

    #: How the rule names it (for messages and the event's log).
    label: str
    #: ``name``, ``price``, ``pipeline``, ``status`` or ``field``.
    kind: str
    #: ``phone``, ``email``, ``enum`` or ``text``: how values are normalised.
    compare: str = "text"
    field_id: int | None = None
    field_code: str | None = None
    values: tuple[str, ...] = ()
    #: The texts to search amoCRM with (``query``): none when this cannot be
    #: searched as text (numbers, ids, list values).
    queries: tuple[str, ...] = ()

    def candidate_values(self, entity: dict[str, Any], region: str) -> set[str]:
        """This criterion's normalised values in an entity as amoCRM returns it."""
        if self.kind == "name":
            names = [entity.get("name")]
            parts = [entity.get("first_name"), entity.get("last_name")]
            if any(parts):
                names.append(" ".join(str(p) for p in parts if p))
            return {n for n in (normalize_text(v) for v in names) if n}
        if self.kind == "price":
            return {n for n in [normalize_text(entity.get("price"))] if n}
        if self.kind == "pipeline":
            value = entity.get("pipeline_id")
            return {str(value)} if value is not None else set()
        if self.kind == "status":
            value = entity.get("status_id")
            return {str(value)} if value is not None else set()
        out: set[str] = set()
        for item in entity.get("custom_fields_values") or []:
            same = (
                self.field_id is not None and item.get("field_id") == self.field_id
            ) or (
                self.field_code is not None
                and item.get("field_code") == self.field_code
            )
            if not same:
                continue
            for value in item.get("values") or []:
                key = value_key(value, self.compare, region)
                if key:
                    out.add(key)
        return out

    def matches(self, entity: dict[str, Any], region: str) -> bool:
        """Whether ``entity`` holds one of the new entity's values."""
        return bool(self.values) and bool(
            set(self.values) & self.candidate_values(entity, region)
        )


def value_key(value: dict[str, Any], compare: str, region: str) -> str | None:
    """One ``custom_fields_values`` value, normalised for ``compare`` (``phone``,
    ``email``, ``enum`` or ``text``). Enum values compare by their id, which both
    the rule's item and amoCRM's answer carry."""
    if compare == "enum" and value.get("enum_id") is not None:
        return f"enum:{value['enum_id']}"
    raw = value.get("value")
    if compare == "phone":
        return normalize_phone(raw, region)
    if compare == "email":
        return normalize_email(raw)
    return normalize_text(raw)


@dataclass
class DuplicateRule:
    """An entity's ``duplicates`` setting, rendered for one event."""

    #: ``contact``, ``company`` or ``lead``.
    key: str
    criteria: list[Criterion]
    require: str = "any"
    strategy: str = "update"
    #: Leads only: among the leads of the event's contact, or all leads.
    scope: str = "contact"
    #: Leads only: leave won and lost leads out.
    open_only: bool = False
    #: Leads only: consider leads created at most this many seconds before ``now``.
    within: int | None = None
    #: The moment the event is handled, in Unix seconds (for ``within``).
    now: float = 0.0
    #: The country assumed for phones written without one.
    region: str = DEFAULT_PHONE_REGION
    #: Remarks for the event's log.
    remarks: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Whether there is anything to compare: with ``any`` one filled criterion,
        with ``all`` every criterion filled (an empty one can match nothing)."""
        filled = [c for c in self.criteria if c.values]
        if self.require == "all":
            return bool(self.criteria) and len(filled) == len(self.criteria)
        return bool(filled)

    def searches(self) -> list[tuple[Criterion | None, str | None]]:
        """The searches to make, in the rule's order, as ``(criterion, query)``.

        With ``all`` one search is enough (every duplicate holds each value), by
        the first criterion that can be searched as text. With ``any``, one per
        value of each filled criterion. Contacts and companies are found by text
        only; a lead criterion that is no text is searched by its filter
        (:meth:`filters`), with ``query`` ``None``."""
        filled = [c for c in self.criteria if c.values]
        if self.require == "all":
            for c in filled:
                if c.queries:
                    return [(c, c.queries[0])]
            return [(None, None)] if self.key == "lead" else []
        out: list[tuple[Criterion | None, str | None]] = []
        for c in filled:
            if c.queries:
                out.extend((c, q) for q in c.queries)
            elif self.key == "lead":
                out.append((c, None))
        return out

    def filters(self, criterion: Criterion | None) -> dict[str, Any]:
        """``filter[...]`` parameters narrowing a lead search (amoCRM may ignore
        filters; every hit is checked with :meth:`matches` all the same)."""
        params: dict[str, Any] = {}
        if self.within:
            params["filter[created_at][from]"] = int(self.now - self.within)
        wanted = (
            self.criteria
            if self.require == "all"
            else ([criterion] if criterion is not None else [])
        )
        by_kind = {c.kind: c for c in wanted if c.values}
        if "price" in by_kind:
            params["filter[price]"] = by_kind["price"].values[0]
        if "pipeline" in by_kind and "status" in by_kind:
            params["filter[statuses][0][pipeline_id]"] = by_kind["pipeline"].values[0]
            params["filter[statuses][0][status_id]"] = by_kind["status"].values[0]
        elif "pipeline" in by_kind:
            params["filter[pipeline_id]"] = by_kind["pipeline"].values[0]
        for c in wanted:
            if (
                c.compare == "enum"
                and c.field_id is not None
                and c.values
                and c.values[0].startswith("enum:")
            ):
                params[f"filter[custom_fields_values][{c.field_id}][]"] = c.values[0][
                    len("enum:") :
                ]
        return params

    def matches(self, entity: dict[str, Any]) -> bool:
        """Whether ``entity`` (as amoCRM returns it) is a duplicate."""
        if entity.get("is_deleted"):
            return False
        if self.key == "lead":
            if self.open_only and entity.get("status_id") in CLOSED_STATUSES:
                return False
            if (
                self.within
                and int(entity.get("created_at") or 0) < self.now - self.within
            ):
                return False
        results = [c.matches(entity, self.region) for c in self.criteria if c.values]
        if self.require == "all":
            return len(results) == len(self.criteria) and all(results)
        return any(results)

    def matched_labels(self, entity: dict[str, Any]) -> list[str]:
        """The criteria ``entity`` matched (for the event's log)."""
        return [c.label for c in self.criteria if c.matches(entity, self.region)]

    def lock_keys(self) -> list[str]:
        """The keys under which two events could find each other as duplicates;
        deciding and creating is serialised per key across workers."""
        keys = []
        for c in self.criteria:
            for value in c.values:
                keys.append(
                    f"{self.key}:{c.kind}:{c.field_id or c.field_code or ''}:{value}"
                )
        if self.require == "all" and keys:
            return ["|".join(sorted(keys))]
        return sorted(set(keys))


def pick(
    rule: DuplicateRule, candidates: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The duplicates among ``candidates``, earliest first (by creation, then id),
    each once."""
    seen: dict[int, dict[str, Any]] = {}
    for entity in candidates:
        if (
            entity.get("id") is not None
            and entity["id"] not in seen
            and rule.matches(entity)
        ):
            seen[entity["id"]] = entity
    return sorted(
        seen.values(), key=lambda e: (int(e.get("created_at") or 0), int(e["id"]))
    )


def duplicates_note(
    found: list[tuple[str, int, list[str]]], base_url: str, *, html_format: bool = False
) -> str:
    """The text of a note listing duplicates: ``(entity, id, matched labels)`` each,
    as links to their cards in amoCRM."""
    head = localize(N_("Possible duplicates:"), site_locale())
    lines = [head]
    for entity, entity_id, labels in found:
        url = card_url(base_url, entity, entity_id)
        what = f"{entity[:-1] if entity != 'companies' else 'company'} {entity_id}"
        why = f" (same {', '.join(labels)})" if labels else ""
        if html_format:
            lines.append(
                f'• <a href="{html.escape(url)}">{html.escape(what)}</a>'
                f"{html.escape(why)}"
            )
        else:
            lines.append(f"- {what}: {url}{why}")
    return ("<br>" if html_format else "\n").join(lines)


__all__ = [
    "CLOSED_STATUSES",
    "REQUIRE",
    "SCOPES",
    "STRATEGIES",
    "Criterion",
    "DuplicateRule",
    "card_url",
    "duplicates_note",
    "lock_name",
    "normalize_email",
    "normalize_phone",
    "normalize_text",
    "parse_within",
    "phone_query",
    "pick",
    "value_key",
]
