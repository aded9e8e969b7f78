"""Duplicate control in the worker: the ``lookup`` step and the locks around it.

Before a batch creates anything, :func:`lookup` searches amoCRM for duplicates of every
entity that has duplicate control (:mod:`flask_amocrm.dedup`), decides per entity
whether to create it or reuse the earliest duplicate, and saves that decision in the
event's :class:`~flask_amocrm.progress.Progress` at once (``found``, ``duplicates``,
``duplicate_notes``, ``linked`` and the ids of the entities reused), so a retry never
decides differently.

Searching costs one GET per value searched: a contact search asks for the contacts'
leads too (``with=leads``) when the lead's duplicates are looked for among them, and
those leads are then read for the whole batch in one call.

Two workers must not both decide "new" for the same person and both create it, so
:class:`KeyLocks` serialises lookup and create per normalised key (E.164 phone,
e-mail, name ...) across processes and machines: a Redis lock per key, or a row in
``amocrm_flags`` without Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import shared
from ..amo.client import AmoClient
from ..dedup import DuplicateRule, duplicates_note, lock_name, pick
from ..hooks import for_events
from ..i18n import N_
from ..rules.plan import EntityPlan
from ..vocabulary import ENTITY

if TYPE_CHECKING:
    from ..state import AppState
    from .delivery import Delivery

log = logging.getLogger("flask_amocrm.worker")

#: One search reads at most this many candidates (amoCRM's largest page).
SEARCH_LIMIT = 250
#: A lock expires after this many seconds, so a killed worker cannot hold a person
#: for ever; longer than a batch takes from its lookups to its creates.
LOCK_TTL = 300
#: How long a batch waits for the locks of its keys before it leaves the events
#: whose keys another worker holds for a later attempt.
LOCK_WAIT = 30.0


# -- the lookup step -----------------------------------------------------------------


def lookup(client: AmoClient, deliveries: list[Delivery]) -> None:
    """Search the duplicates of each delivery's entities, decide, and record."""
    found: dict[str, dict[str, list[dict[str, Any]]]] = {
        d.request_id: {} for d in deliveries
    }
    contact_leads: dict[str, list[int]] = {d.request_id: [] for d in deliveries}
    for d in deliveries:
        for key in ("contact", "company"):
            entity = d.plan.entity(key)
            if entity is None or not entity.looks_up:
                continue
            with_leads = key == "contact" and _leads_of_contact(d)
            with for_events([d.event.id]):
                dups = _search(client, entity, with_leads=with_leads)
            found[d.request_id][key] = dups
            if with_leads:
                contact_leads[d.request_id] += [
                    lead["id"]
                    for dup in dups
                    for lead in (dup.get("_embedded") or {}).get("leads") or []
                ]
    _contacts_leads_by_id(client, deliveries, contact_leads)
    leads = _read_leads(
        client, sorted({i for ids in contact_leads.values() for i in ids})
    )
    for d in deliveries:
        lead = d.plan.lead
        if lead is None or not lead.looks_up:
            continue
        assert lead.duplicates is not None
        if lead.duplicates.scope == "contact":
            candidates = [leads[i] for i in contact_leads[d.request_id] if i in leads]
            found[d.request_id]["lead"] = pick(lead.duplicates, candidates)
        else:
            with for_events([d.event.id]):
                found[d.request_id]["lead"] = _search(client, lead)
    for d in deliveries:
        _decide(client, d, found[d.request_id], contact_leads[d.request_id])


def _leads_of_contact(d: Delivery) -> bool:
    lead = d.plan.lead
    return bool(
        lead is not None
        and lead.looks_up
        and lead.duplicates is not None
        and lead.duplicates.scope == "contact"
    )


def _search(
    client: AmoClient, entity: EntityPlan, *, with_leads: bool = False
) -> list[dict[str, Any]]:
    """The duplicates of ``entity``, earliest first. With ``any``, the searches stop
    at the first one that finds a duplicate (one call for a returning visitor)."""
    rule = entity.duplicates
    assert rule is not None
    for criterion, query in rule.searches():
        items = client.search(
            entity.entity,
            query,
            with_="leads" if with_leads else None,
            filters=rule.filters(criterion) if entity.key == "lead" else None,
            limit=SEARCH_LIMIT,
            oldest_first=True,
        )
        dups = pick(rule, items)
        if dups:
            return dups
    return []


def _contacts_leads_by_id(
    client: AmoClient, deliveries: list[Delivery], contact_leads: dict[str, list[int]]
) -> None:
    """The leads of contacts the rules name by id (lead scope ``contact``): one call
    for the batch."""
    wanted = {
        d.request_id: d.plan.contact.id
        for d in deliveries
        if _leads_of_contact(d)
        and d.plan.contact is not None
        and d.plan.contact.id is not None
    }
    if not wanted:
        return
    ids = sorted(set(wanted.values()))
    contacts = {
        item["id"]: item for item in client.read("contacts", ids, with_="leads")
    }
    for rid, contact_id in wanted.items():
        embedded = (contacts.get(contact_id) or {}).get("_embedded") or {}
        contact_leads[rid] += [lead["id"] for lead in embedded.get("leads") or []]


def _read_leads(client: AmoClient, ids: list[int]) -> dict[int, dict[str, Any]]:
    return {item["id"]: item for item in client.read("leads", ids)}


def _decide(
    client: AmoClient,
    d: Delivery,
    found: dict[str, list[dict[str, Any]]],
    contact_leads: list[int],
) -> None:
    """Turn what was found into ``found``, ``duplicates`` and ``duplicate_notes``,
    and record them (the step ``lookup``)."""
    unsorted = d.plan.unsorted is not None
    reused: dict[str, int] = {}
    duplicates: dict[str, list[int]] = {}
    notes: dict[str, list[tuple[str, int, list[str]]]] = {}
    lines: list[str] = []
    for key in ("contact", "company", "lead"):
        dups = found.get(key) or []
        entity = d.plan.entity(key)
        if not dups or entity is None or entity.duplicates is None:
            continue
        rule: DuplicateRule = entity.duplicates
        duplicates[key] = [dup["id"] for dup in dups]
        listed = [(ENTITY[key], dup["id"], rule.matched_labels(dup)) for dup in dups]
        if unsorted:
            # Incoming leads are always new: the duplicates are listed on the lead.
            notes.setdefault("lead", []).extend(listed)
            lines.append(
                N_(
                    "duplicate control: %(count)s duplicate %(key)s(s) listed in a "
                    "note (incoming lead)",
                    count=len(dups),
                    key=key,
                )
            )
        elif rule.strategy == "note":
            notes.setdefault(key, []).extend(listed)
            lines.append(
                N_(
                    "duplicate control: a new %(key)s; %(count)s duplicate(s) listed "
                    "in a note",
                    key=key,
                    count=len(dups),
                )
            )
        else:
            main = dups[0]
            reused[key] = main["id"]
            d.current[key] = main
            same = ", ".join(rule.matched_labels(main))
            if rule.strategy == "update":
                line = N_(
                    "duplicate control: %(key)s %(id)s updated (same %(same)s)",
                    key=key,
                    id=main["id"],
                    same=same,
                )
            else:
                line = N_(
                    "duplicate control: %(key)s %(id)s used as it is (same %(same)s)",
                    key=key,
                    id=main["id"],
                    same=same,
                )
            lines.append(line)
    texts = {
        key: duplicates_note(items, client.base_url, html_format=d.plan.html)
        for key, items in notes.items()
    }
    # A lead found among the leads of the very contact this event uses is linked to
    # it already: the link step need not do it again.
    linked = []
    contact = d.plan.contact
    if "lead" in reused and contact is not None:
        if contact.id is not None:
            own = contact_leads  # they are all that contact's
        else:
            main = d.current.get("contact") or {}
            own = [x["id"] for x in (main.get("_embedded") or {}).get("leads") or []]
        if reused["lead"] in own:
            linked.append("lead-contact")
    if lines:
        d.note(*lines)
    d.record(
        "lookup",
        found=reused,
        duplicates=duplicates,
        duplicate_notes=texts,
        linked=linked,
        **{f"{key}_id": entity_id for key, entity_id in reused.items()},
    )


def lock_keys(d: Delivery) -> list[str]:
    """The keys whose lookup and create this delivery serialises with other
    workers. A lead looked for among its contact's leads needs none of its own
    when the contact has keys: the person's keys cover it."""
    keys: list[str] = []
    for entity in d.plan.entities():
        if entity.looks_up and entity.duplicates is not None:
            keys += [f"{entity.entity}:{k}" for k in entity.duplicates.lock_keys()]
    lead = d.plan.lead
    if (
        lead is not None
        and lead.duplicates is not None
        and lead.duplicates.scope == "contact"
        and any(not k.startswith("leads:") for k in keys)
    ):
        keys = [k for k in keys if not k.startswith("leads:")]
    return sorted(set(keys))


# -- locks ---------------------------------------------------------------------------


class KeyLocks:
    """Locks per duplicate-control key, shared by every worker on every machine
    (:func:`flask_amocrm.shared.acquire`). Keys are hashed: they hold visitors'
    data."""

    def __init__(
        self, state: AppState, *, ttl: int = LOCK_TTL, wait: float = LOCK_WAIT
    ) -> None:
        self.state = state
        self.ttl = ttl
        self.wait = wait

    @contextmanager
    def hold(self, keys: Iterable[str]) -> Iterator[set[str]]:
        """Take the locks of ``keys`` in sorted order (so two workers never wait for
        each other in a circle) and release them on leaving; yields the keys that
        another worker held for longer than ``wait``."""
        deadline = time.monotonic() + self.wait
        held: list[shared.Held] = []
        missed: set[str] = set()
        try:
            for key in sorted(set(keys)):
                lock = shared.acquire(
                    self.state,
                    f"dup:{lock_name(key)}",
                    ttl=self.ttl,
                    wait=max(deadline - time.monotonic(), 0.01),
                    account=True,  # every site feeding the account shares its people
                )
                if lock is None:
                    missed.add(key)
                else:
                    held.append(lock)
            yield missed
        finally:
            for lock in reversed(held):
                shared.release(self.state, lock)


class NoLocks:
    """Stand-in for :class:`KeyLocks` where one process delivers alone (tests,
    ``preview``): nothing to serialise with."""

    @contextmanager
    def hold(self, keys: Iterable[str]) -> Iterator[set[str]]:
        """Hold nothing; no key is missed."""
        yield set()


def key_locks(state: AppState) -> KeyLocks:
    """The duplicate-control locks of an app."""
    return KeyLocks(state)
