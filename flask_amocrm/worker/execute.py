"""Executing plans against amoCRM, batch first.

:func:`execute` takes the deliveries of one batch (each an event with its plan) and
runs the plans' steps (:data:`~flask_amocrm.rules.plan.STEPS`) for all of them
together, one step after the other: each step is one call per entity type for the
whole batch, as many items a call as amoCRM takes of that kind
(:data:`~flask_amocrm.amo.client.BATCH_SIZE`, 50, of what carries custom fields:
``leads/complex``, ``leads/unsorted/forms``, ``contacts``, ``companies`` and their
``PATCH``; :data:`~flask_amocrm.amo.client.WRITE_LIMIT`, 250, of notes, tasks and
links); the ``files`` step (:mod:`.drive`) goes file by file.

After each call the ids amoCRM returned are recorded in each event's
:class:`~flask_amocrm.progress.Progress` and saved at once, with the step marked done,
so a retry resumes at the first step not done instead of creating a second lead. A
validation error on one item fails that event only; the rest of its chunk is sent
again without it. An error of a whole call (network, 5xx, 429) is raised after the
progress made so far was saved.

Duplicate control decides between creating and reusing: its lookups and the creates
they decide run under per-person locks (:class:`~.lookup.KeyLocks`), so two workers
never both create one person; events of one batch that share a person go in separate
rounds, the later one finding what the earlier one created.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Protocol

from ..amo.client import BATCH_SIZE, WRITE_LIMIT, AmoClient
from ..errors import AmoCRMError, ValidationError
from ..hooks import for_events
from ..i18n import N_
from ..vocabulary import ENTITY, fold
from .delivery import Delivery
from .drive import upload_files
from .index import ContactIndex
from .lookup import NoLocks, lock_keys, lookup
from .markers import find_again_or_mark

log = logging.getLogger("flask_amocrm.worker")


#: The steps whose items go :data:`WRITE_LIMIT` (250) a call: a batch that has them
#: shares more calls the larger it is, up to 250 events; a batch without them shares
#: nothing more above 50 (one ``leads/complex`` call) and only sends its first call
#: later.
WIDE_STEPS = ("link", "notes", "tasks")


def shares_wide_calls(deliveries: Sequence[Delivery]) -> bool:
    """Whether any of these deliveries still has a step of :data:`WIDE_STEPS`."""
    return any(d.pending(step) for d in deliveries for step in WIDE_STEPS)


def _save(deliveries: Sequence[Delivery]) -> None:
    """Commit the progress of these deliveries (they share one session)."""
    if deliveries:
        deliveries[0].save()


class Locks(Protocol):
    """What :func:`execute` needs of :class:`~.lookup.KeyLocks`."""

    def hold(self, keys: list[str]) -> Any:
        """A context manager holding ``keys``; it yields the keys it missed."""


def execute(
    client: AmoClient,
    deliveries: list[Delivery],
    *,
    locks: Locks | None = None,
    index: ContactIndex | None = None,
) -> None:
    """Make the calls for every delivery. Errors of one item land on its
    :attr:`Delivery.error`; an error of the whole call is raised.

    ``locks`` (:class:`~.lookup.KeyLocks`) serialises duplicate control with other
    workers; without it, only this batch's own events are kept apart. ``index``
    (:class:`~.index.ContactIndex`) answers the lookups of contacts and companies
    and learns what the batch creates and updates."""
    for delivery in deliveries:
        delivery.autosave = False
    try:
        _execute(client, deliveries, locks or NoLocks(), index)
    finally:
        _save(deliveries)
        for delivery in deliveries:
            delivery.autosave = True


def _execute(
    client: AmoClient,
    deliveries: list[Delivery],
    locks: Locks,
    index: ContactIndex | None,
) -> None:
    waiting: list[Delivery] = []
    for group in _rounds(deliveries):
        keyed = {
            d.request_id: lock_keys(d)
            for d in group
            if d.pending("lookup") or (d.plan.needs_lookup() and d.pending("create"))
        }
        with locks.hold(sorted({k for keys in keyed.values() for k in keys})) as missed:
            busy = [d for d in group if set(keyed.get(d.request_id, ())) & missed]
            for d in busy:
                # Another worker is deciding about the same person: next attempt.
                d.note(
                    N_(
                        "duplicate control: another worker is handling the same "
                        "person; trying again"
                    )
                )
            waiting += busy
            group = [d for d in group if d not in busy]
            lookup(client, [d for d in group if d.pending("lookup")], index)
            _save(group)  # a retry must not decide differently
            _update(client, [d for d in group if d.pending("update")])
            _save(group)
            _create(client, [d for d in group if d.pending("create")])
            _save(group)
            if index is not None:  # before the locks go: the next worker finds it
                index.remember(group)
    deliveries = [d for d in deliveries if d not in waiting]
    for step in (_link, _files, _notes, _tasks):
        step(client, [d for d in deliveries if d.pending(step.__name__[1:])])
        _save(deliveries)


def _rounds(deliveries: list[Delivery]) -> list[list[Delivery]]:
    """The batch split so that no two events of one round share a duplicate-control
    key: the later one must look up after the earlier one created (amoCRM's own
    duplicate control never compares leads of one request either)."""
    rounds: list[tuple[list[Delivery], set[str]]] = []
    for d in deliveries:
        keys = set(lock_keys(d)) if d.plan.needs_lookup() else set()
        for members, taken in rounds:
            if not keys & taken:
                members.append(d)
                taken |= keys
                break
        else:
            rounds.append(([d], keys))
    return [members for members, _ in rounds] or [[]]


# -- sending -------------------------------------------------------------------------


Group = tuple[Delivery, list[dict[str, Any]]]
#: A batch verb of the client with its entity bound, e.g.
#: ``partial(client.create, "contacts")``: items in, one answer item per item out.
Write = Callable[[list[dict[str, Any]]], list[dict[str, Any] | None]]


def _chunks(groups: list[Group], size: int) -> Iterator[list[Group]]:
    """Chunks of at most ``size`` items that never split one delivery's items."""
    chunk: list[Group] = []
    count = 0
    for group in groups:
        if chunk and count + len(group[1]) > size:
            yield chunk
            chunk, count = [], 0
        chunk.append(group)
        count += len(group[1])
    if chunk:
        yield chunk


def _send(
    what: str,
    write: Write,
    groups: list[Group],
    done: Callable[[Delivery, list[dict[str, Any] | None]], None],
    *,
    per_call: int,
) -> None:
    """Send every group's items with ``write``, chunk by chunk (``per_call`` items a
    call at most: :data:`BATCH_SIZE` of what carries custom fields,
    :data:`WRITE_LIMIT` of notes, tasks and links); call ``done(delivery, answers)``
    right after the chunk holding them was answered. ``what`` names the call in the
    errors of rejected items.

    An event whose items cannot be written as JSON (a lone surrogate, a number too
    large) fails alone before anything is sent. A 400 that names no item is not
    blamed on the whole chunk: the chunk is split in halves, each sent again (as
    for a 504), until the event that amoCRM refuses is alone and fails alone."""
    sendable = [g for g in groups if g[1] and _encodable(what, g)]
    for chunk in _chunks(sendable, per_call):
        _send_chunk(what, write, chunk, done)


def _encodable(what: str, group: Group) -> bool:
    """Whether the group's items can be sent; if not, its delivery fails."""
    try:
        json.dumps(group[1], ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeError, ValueError, OverflowError, TypeError) as exc:
        group[0].error = ValidationError(
            N_(
                "the data of this event cannot be sent to amoCRM (%(what)s): "
                "%(kind)s: %(error)s",
                what=what,
                kind=type(exc).__name__,
                error=_short(exc),
            ),
            status=None,
        )
        return False
    return True


def _short(exc: BaseException) -> str:
    # Not the value itself: the message names the position, never the data.
    if isinstance(exc, UnicodeEncodeError):
        return f"cannot encode {exc.object[exc.start : exc.end]!a} as {exc.encoding}"
    return str(exc)[:200]


def _send_chunk(
    what: str,
    write: Write,
    chunk: list[Group],
    done: Callable[[Delivery, list[dict[str, Any] | None]], None],
) -> None:
    while chunk:
        body = []
        for delivery, items in chunk:
            many = len(items) > 1
            for n, item in enumerate(items):
                rid = f"{delivery.request_id}-{n}" if many else delivery.request_id
                body.append(dict(item, request_id=rid))
        try:
            # A veto of this request (a before_api_call hook) is for these events.
            with for_events(d.event.id for d, _ in chunk):
                answers = write(body)
        except ValidationError as exc:
            if _reject(exc, [d for d, _ in chunk], what=what):
                chunk = [g for g in chunk if g[0].error is None]
                continue
            if len(chunk) == 1:
                # Not tied to an item, but this event was alone: it is the bad one.
                chunk[0][0].error = ValidationError(
                    N_(
                        "amoCRM rejected the data (%(what)s): %(error)s",
                        what=what,
                        error=str(exc),
                    ),
                    body=exc.body,
                    errors=exc.errors,
                )
                return
            half = len(chunk) // 2
            log.warning(
                "%s: 400 naming no item on %d events; sending %d and %d",
                what,
                len(chunk),
                half,
                len(chunk) - half,
            )
            _send_chunk(what, write, chunk[:half], done)
            _send_chunk(what, write, chunk[half:], done)
            return
        position = 0
        for delivery, items in chunk:
            done(delivery, answers[position : position + len(items)])
            position += len(items)
        _save([d for d, _ in chunk])  # what amoCRM made is known before more
        return


def _reject(exc: ValidationError, deliveries: list[Delivery], *, what: str) -> bool:
    """Give each delivery whose item was rejected its own ValidationError; whether
    every error named an item of this chunk."""
    by_id = {d.request_id: d for d in deliveries}
    found: list[tuple[Delivery, dict[str, Any]]] = []
    for item in exc.errors:
        delivery = by_id.get(str(item.get("request_id")).split("-")[0])
        if delivery is None:
            return False
        found.append((delivery, item))
    for delivery, item in found:
        details = "; ".join(
            f"{e.get('path')}: {e.get('code')}"
            + (f" ({e.get('detail')})" if e.get("detail") else "")
            for e in item.get("errors", [])
        )
        delivery.error = ValidationError(
            N_(
                "amoCRM rejected the data (%(what)s): %(error)s",
                what=what,
                error=details,
            ),
            body=exc.body,
            errors=[item],
        )
    return bool(found)


# -- steps ---------------------------------------------------------------------------


def _update(client: AmoClient, deliveries: list[Delivery]) -> None:
    """PATCH the entities the rules name by id, and the duplicates reused with
    ``update`` (one call per entity type), after reading them, so multi-value
    fields keep what they hold (the lookup read the duplicates already)."""
    for key, entity in ENTITY.items():
        targets = []
        for d in deliveries:
            progress = d.progress
            plan = next((e for e in d.plan.updates(progress) if e.key == key), None)
            if plan is not None:
                targets.append((d, plan, d.plan.existing(progress)[key]))
        if not targets:
            continue
        ids = sorted({i for d, _, i in targets if key not in d.current})
        current = {item["id"]: item for item in client.read(entity, ids)}
        groups: list[Group] = []
        for delivery, plan, entity_id in targets:
            have = delivery.current.get(key) or current.get(entity_id)
            if have is None:
                delivery.error = AmoCRMError(
                    N_(
                        "the rule's %(key)s.id is %(id)s, but amoCRM has no such "
                        "%(key)s",
                        key=key,
                        id=entity_id,
                    )
                )
                continue
            groups.append((delivery, [plan.update_payload(entity_id, have)]))

        def done(
            d: Delivery, _answers: list[dict[str, Any] | None], key: str = key
        ) -> None:
            d.record(**{f"{key}_id": d.plan.existing(d.progress)[key]})

        _send(
            f"PATCH {entity}",
            partial(client.update, entity),
            groups,
            done,
            per_call=BATCH_SIZE,
        )
    for delivery in deliveries:
        if delivery.error is None:
            delivery.record("update")


def _create(client: AmoClient, deliveries: list[Delivery]) -> None:
    find_again_or_mark(
        client,
        [d for d in deliveries if d.plan.lead is not None and not d.ids()["lead"]],
    )
    deliveries = [d for d in deliveries if d.pending("create")]
    unsorted = [d for d in deliveries if d.plan.unsorted is not None]
    complex_ = [
        d
        for d in deliveries
        if d.plan.unsorted is None and d.plan.lead is not None and not d.ids()["lead"]
    ]
    separate = [d for d in deliveries if d not in unsorted and d not in complex_]

    def unsorted_done(d: Delivery, answers: list[dict[str, Any] | None]) -> None:
        answer = answers[0] or {}
        embedded = answer.get("_embedded") or {}
        first = {
            k: ((embedded.get(k) or [{}])[0] or {}).get("id")
            for k in ("leads", "contacts", "companies")
        }
        if not answer.get("uid") or not first["leads"]:
            d.error = AmoCRMError("leads/unsorted/forms answered without the item")
            return
        d.record(
            "create",
            unsorted_uid=answer["uid"],
            lead_id=first["leads"],
            contact_id=first["contacts"],
            company_id=first["companies"],
        )

    _send(
        "POST leads/unsorted/forms",
        client.create_unsorted,
        [(d, [d.plan.unsorted_item()]) for d in unsorted],
        unsorted_done,
        per_call=BATCH_SIZE,
    )

    def complex_done(d: Delivery, answers: list[dict[str, Any] | None]) -> None:
        answer = answers[0]
        if not answer or not answer.get("id"):
            d.error = AmoCRMError("leads/complex answered without the item")
            return
        ids = d.ids()
        merged = bool(answer.get("merged"))
        extra: dict[str, Any] = {}
        if merged:
            # amoCRM's own duplicate control reused its lead and contact: a note
            # of ours about duplicates would now point at the entity itself.
            extra["duplicate_notes"] = {}
            d.note(
                N_(
                    "amoCRM's duplicate control merged this event into lead %(id)s",
                    id=answer["id"],
                )
            )
        d.record(
            "create",
            lead_id=answer["id"],
            contact_id=answer.get("contact_id") or ids["contact"],
            company_id=answer.get("company_id") or ids["company"],
            merged=merged,
            **extra,
        )

    _send(
        "POST leads/complex",
        client.create_complex,
        [(d, [d.plan.complex_item(d.ids())]) for d in complex_],
        complex_done,
        per_call=BATCH_SIZE,
    )

    # Without a new lead, contacts and companies are created on their own.
    for key in ("company", "contact"):
        entity = ENTITY[key]
        todo = [
            d for d in separate if d.plan.entity(key) is not None and not d.ids()[key]
        ]

        def done(
            d: Delivery, answers: list[dict[str, Any] | None], key: str = key
        ) -> None:
            answer = answers[0]
            if not answer or not answer.get("id"):
                d.error = AmoCRMError(f"{key} create answered without the item")
                return
            d.record(**{f"{key}_id": answer["id"]})

        groups: list[Group] = []
        for d in todo:
            sub = d.plan.entity(key)
            assert sub is not None
            groups.append((d, [sub.create_payload()]))
        _send(
            f"POST {entity}",
            partial(client.create, entity),
            groups,
            done,
            per_call=BATCH_SIZE,
        )
    for delivery in separate:
        if delivery.error is None:
            delivery.record("create")


def _link(client: AmoClient, deliveries: list[Delivery]) -> None:
    """Link what was not created together (mass ``link``, one call per entity)."""
    for entity in ("leads", "contacts"):
        groups = [
            (
                d,
                [item for e, item in d.plan.links(d.ids(), d.progress) if e == entity],
            )
            for d in deliveries
        ]
        _send(
            f"POST {entity}/link",
            partial(client.link, entity),
            groups,
            lambda _d, _a: None,
            per_call=WRITE_LIMIT,
        )
    for delivery in deliveries:
        if delivery.error is None:
            delivery.record("link")


def _files(client: AmoClient, deliveries: list[Delivery]) -> None:
    """Upload the event's files to amoCRM's drive and attach them (:mod:`.drive`)."""
    upload_files(client, deliveries)


def _notes(client: AmoClient, deliveries: list[Delivery]) -> None:
    """Add the notes, one call per entity type; a ``unique`` note is skipped when
    its entity already has a note with the same text. On a retry every note is
    checked that way, so a call cut off after amoCRM stored it adds nothing twice."""
    for entity in ("leads", "contacts", "companies"):
        todo = [d for d in deliveries if entity not in d.progress.notes_done]
        planned = {
            d.request_id: [
                (n, body)
                for e, n, body in d.plan.note_items(d.ids(), d.progress)
                if e == entity
            ]
            for d in todo
        }
        check = {
            body["entity_id"]
            for d in todo
            for note, body in planned[d.request_id]
            if note.unique or d.event.attempts > 1
        }
        existing = _existing_notes(client, entity, sorted(check)) if check else {}
        groups: list[Group] = []
        for d in todo:
            items = []
            for note, body in planned[d.request_id]:
                seen = existing.get(body["entity_id"], set())
                if (note.unique or d.event.attempts > 1) and fold(note.text) in seen:
                    continue
                items.append(body)
            groups.append((d, items))

        def done(
            d: Delivery, answers: list[dict[str, Any] | None], entity: str = entity
        ) -> None:
            progress = d.progress
            note_ids = dict(progress.note_ids)
            note_ids[entity] = [
                *note_ids.get(entity, []),
                *[int(a["id"]) for a in answers if a and a.get("id")],
            ]
            d.record(note_ids=note_ids, notes_done=[*progress.notes_done, entity])

        _send(
            f"POST {entity}/notes",
            partial(client.add_notes, entity),
            groups,
            done,
            per_call=WRITE_LIMIT,
        )
        for d, items in groups:
            if not items and d.error is None:
                done(d, [])
    for delivery in deliveries:
        if delivery.error is None:
            delivery.record("notes")


def _existing_notes(
    client: AmoClient, entity: str, ids: list[int]
) -> dict[int, set[str]]:
    """The normalised texts of the common notes each of these entities has."""
    out: dict[int, set[str]] = {}
    for note in client.list_notes(entity, ids, note_type="common"):
        text = (note.get("params") or {}).get("text")
        if text is not None:
            out.setdefault(int(note["entity_id"]), set()).add(fold(text))
    return out


def _tasks(client: AmoClient, deliveries: list[Delivery]) -> None:
    """Add the tasks in one call. On a retry, a task its entity already has (same
    text) is not added again: the call that created it may have been cut off before
    the answer was saved."""

    def done(d: Delivery, answers: list[dict[str, Any] | None]) -> None:
        d.record("tasks", task_ids=[int(a["id"]) for a in answers if a and a.get("id")])

    planned = {d.request_id: d.plan.task_items(d.ids()) for d in deliveries}
    check: dict[str, set[int]] = {}
    for d in deliveries:
        if d.event.attempts > 1:
            for item in planned[d.request_id]:
                check.setdefault(item["entity_type"], set()).add(item["entity_id"])
    existing = {
        (entity, entity_id, text)
        for entity, ids in check.items()
        for entity_id, text in _existing_tasks(client, entity, sorted(ids))
    }
    groups: list[Group] = []
    for d in deliveries:
        items = [
            item
            for item in planned[d.request_id]
            if d.event.attempts <= 1
            or (item["entity_type"], item["entity_id"], fold(item["text"]))
            not in existing
        ]
        groups.append((d, items))
    _send("POST tasks", client.add_tasks, groups, done, per_call=WRITE_LIMIT)
    for d in deliveries:
        if d.error is None and not d.progress.is_done("tasks"):
            d.record("tasks", task_ids=[])


def _existing_tasks(
    client: AmoClient, entity: str, ids: list[int]
) -> list[tuple[int, str]]:
    """``(entity_id, normalised text)`` of the tasks these entities have."""
    return [
        (int(t["entity_id"]), fold(t.get("text")))
        for t in client.list_tasks(entity, ids)
    ]
